"""The rights matrix: every endpoint of the running app x {anonymous, rater A, rater B, coordinator}.

Endpoints are enumerated from the live server itself: the FastAPI routes outside Gradio, every mounted Gradio
app, and every event handler in each app's config (private ones included: a browser reaches them by
``fn_index`` through the queue, and so does this test). Each handler must be classified below; a new handler
that is not breaks the test, as does an enumeration that finds nothing.

Each call goes through the same queue protocol the browser uses, with the identity's session cookie. An
unauthorised caller must never succeed; the authorised caller, given the same inputs, must succeed (so a
handler that fails for everyone, which would pass vacuously, is caught too).
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.routing import Mount, Route

from db.models import Model, Rater, Rating, Study
from db.questions import DEFAULT_QUESTIONS, QuestionKind
from db.raters import rater_by_token
from evalapp.auth import REFUSAL
from evalapp.rater_view import read_display_token
from tests.evalapp.conftest import COORDINATOR_PASSWORD, STUDY, AppEnv, study_toml


class Access(enum.StrEnum):
    """Who may use an endpoint."""

    PUBLIC = "public"  # anyone; must leak nothing (checked per endpoint)
    RATER = "rater"  # an active rater, on their own items only
    COORDINATOR = "coordinator"
    DEMO = "demo"  # anyone while the live demo is open; nobody while it is closed


# (mount, api_name) -> who may call it. Every Gradio event of the app must appear here.
EVENTS: dict[tuple[str, str], Access] = {
    ("/", "handle_load"): Access.RATER,
    ("/", "handle_pause"): Access.RATER,
    ("/", "handle_submit"): Access.RATER,
    ("/coordinator", "coordinator_page_state"): Access.PUBLIC,
    ("/coordinator", "coordinator_signin"): Access.PUBLIC,
    ("/coordinator", "coordinator_signout"): Access.PUBLIC,
    ("/coordinator", "coord_refresh"): Access.COORDINATOR,
    ("/coordinator", "coord_select_study"): Access.COORDINATOR,
    ("/coordinator", "coord_tick"): Access.COORDINATOR,
    ("/coordinator", "coord_load_config"): Access.COORDINATOR,
    ("/coordinator", "coord_create_study"): Access.COORDINATOR,
    ("/coordinator", "coord_add_rater"): Access.COORDINATOR,
    ("/coordinator", "coord_revoke_rater"): Access.COORDINATOR,
    ("/coordinator", "coord_new_link"): Access.COORDINATOR,
    ("/coordinator", "coord_generate"): Access.COORDINATOR,
    ("/coordinator", "coord_export"): Access.COORDINATOR,
    ("/coordinator", "coord_set_demo"): Access.COORDINATOR,
    ("/coordinator", "coord_report"): Access.COORDINATOR,
    ("/coordinator", "coord_report_file"): Access.COORDINATOR,
    ("/demo", "demo_generate"): Access.DEMO,
    ("/demo", "demo_refresh"): Access.PUBLIC,
}
# FastAPI routes outside the Gradio mounts.
ROUTES: dict[str, Access] = {"/healthz": Access.PUBLIC, "/m/{token}": Access.RATER}
OPTIONAL = {"coord_report", "coord_report_file"}  # only when analysis.report.write_report exists
IDENTITIES = ("anonymous", "rater_a", "rater_b", "coordinator")
TINY_MODEL = "tiny-sd-rights"


# ----------------------------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class Outcome:
    """What a queued event returned."""

    success: bool
    data: list[Any]
    error: str = ""


@dataclass
class Browser:
    """One browser session: a cookie, and calls through Gradio's queue exactly as the page makes them."""

    url: str
    cookie: str | None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        headers = {"Cookie": f"medsynth_session={self.cookie}"} if self.cookie else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=120)

    @staticmethod
    def prefix(mount: str) -> str:
        return "" if mount == "/" else mount

    def call(self, mount: str, fn_index: int, data: list[Any]) -> Outcome:
        """Join the queue for ``fn_index`` with ``data`` and read the event stream until it completes."""
        session_hash = secrets.token_hex(8)
        base = self.prefix(mount) + "/gradio_api/queue"
        body = {"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None}
        joined = self.client.post(base + "/join", json=body)
        if joined.status_code != 200:
            return Outcome(False, [], f"join refused: {joined.status_code} {joined.text[:200]}")
        event_id = joined.json()["event_id"]
        with self.client.stream("GET", base + "/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                    output = message.get("output") or {}
                    if message.get("success"):
                        return Outcome(True, list(output.get("data") or []))
                    return Outcome(False, [], str(output.get("error") or output))
        raise AssertionError(f"the event stream of fn {fn_index} on {mount} ended without completing")

    def upload(self, mount: str, name: str, content: bytes) -> dict[str, Any]:
        """Upload a file as the page does; returns the FileData payload for an input."""
        response = self.client.post(self.prefix(mount) + "/gradio_api/upload", files={"files": (name, content)})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


@dataclass(frozen=True)
class Endpoint:
    """One Gradio event handler of the running app."""

    mount: str
    fn_index: int
    api_name: str
    inputs: list[int]
    outputs: list[int]


@dataclass
class App:
    """The enumerated app: mounts, events, component defaults."""

    mounts: list[str]
    routes: list[str]
    endpoints: dict[tuple[str, str], Endpoint]
    defaults: dict[tuple[str, int], Any]

    def defaults_for(self, endpoint: Endpoint) -> list[Any]:
        return [self.defaults.get((endpoint.mount, cid)) for cid in endpoint.inputs]


def _fastapi(env: AppEnv) -> Any:
    app = env.server.server.config.app
    while not hasattr(app, "routes"):  # unwrap ASGI middleware down to the FastAPI app
        app = app.app
    return app


def enumerate_app(env: AppEnv) -> App:
    """Every non-Gradio route, every Gradio mount, and every event handler in each mount's config."""
    fastapi_app = _fastapi(env)
    mounts = sorted(r.path or "/" for r in fastapi_app.routes if isinstance(r, Mount))
    routes = sorted(r.path for r in fastapi_app.routes if isinstance(r, Route) and not isinstance(r, Mount))
    endpoints: dict[tuple[str, str], Endpoint] = {}
    defaults: dict[tuple[str, int], Any] = {}
    with httpx.Client(base_url=env.url, timeout=30) as client:
        for mount in mounts:
            config = client.get(Browser.prefix(mount) + "/config").json()
            for comp in config["components"]:
                defaults[(mount, comp["id"])] = comp.get("props", {}).get("value")
            for dep in config["dependencies"]:
                if not dep.get("backend_fn", True):
                    continue  # front-end only (js): nothing runs on the server
                name = dep.get("api_name") or f"fn{dep['id']}"
                assert (mount, name) not in endpoints, f"two handlers named {name!r} on {mount}"
                endpoints[(mount, name)] = Endpoint(mount, dep["id"], name, dep["inputs"], dep["outputs"])
    return App(mounts, routes, endpoints, defaults)


def base_name(api_name: str) -> str:
    """Gradio names a second event of the same function ``name_1``: it has the same rights."""
    stem, _, suffix = api_name.rpartition("_")
    return stem if stem and suffix.isdigit() else api_name


def access_of(mount: str, api_name: str) -> Access | None:
    return EVENTS.get((mount, base_name(api_name)))


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def app(app_env: AppEnv) -> App:
    return enumerate_app(app_env)


@pytest.fixture(scope="module")
def tiny_model(app_env: AppEnv, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Stable Diffusion pipeline registered as a model, so the live demo can really generate."""
    from db.generated import register_model
    from generation.testing import save_tiny_pipeline

    folder = save_tiny_pipeline("sd", tmp_path_factory.mktemp("tiny-sd") / "pipe")
    with app_env.workspace.database.session() as session:
        if session.scalar(select(Model).where(Model.name == TINY_MODEL)) is None:
            register_model(session, TINY_MODEL, kind="diffusers", source=str(folder))
    return TINY_MODEL


@dataclass
class Matrix:
    """The four browsers, and rater A's current pair (display token, image URL)."""

    browsers: dict[str, Browser]
    rater_a: int
    rater_b: int


@pytest.fixture(scope="module")
def matrix(app_env: AppEnv, app: App) -> Matrix:
    a, b = app_env.add_rater(STUDY), app_env.add_rater(STUDY)
    browsers = {
        "anonymous": Browser(app_env.url, app_env.cookie()),
        "rater_a": Browser(app_env.url, app_env.cookie(a.token)),
        "rater_b": Browser(app_env.url, app_env.cookie(b.token)),
        "coordinator": Browser(app_env.url, app_env.cookie()),
    }
    signin = app.endpoints[("/coordinator", "coordinator_signin")]
    signed = browsers["coordinator"].call("/coordinator", signin.fn_index, [COORDINATOR_PASSWORD])
    assert signed.success and signed.data[1].get("visible") is True, signed
    return Matrix(browsers, a.rater_pk, b.rater_pk)


# ----------------------------------------------------------------------------------------------- helpers


def answers_in_order() -> list[Any]:
    """A complete, valid answer set in question order (what the form sends)."""
    values: list[Any] = []
    for q in DEFAULT_QUESTIONS.questions:
        values.append(
            {QuestionKind.SCALE: 3, QuestionKind.CHOICE: (q.choices or ("left",))[0], QuestionKind.FLAG: False}.get(
                q.kind, ""
            )
        )
    return values


def extra_inputs() -> list[Any]:
    """The head-to-head preference inputs after the display id (empty in a real-vs-generated study)."""
    from evalapp.rater_view import EXTRA_QUESTIONS

    return [None] * len(EXTRA_QUESTIONS)


def rater_pair(app: App, browser: Browser, load: Endpoint | None = None) -> tuple[str, str]:
    """(display token, left image URL) of the browser's current pair, via a page-load handler."""
    load = load or app.endpoints[("/", "handle_load")]
    out = browser.call("/", load.fn_index, [])
    assert out.success, out
    token = out.data[5 + len(DEFAULT_QUESTIONS.questions)]
    left = str(out.data[3])
    src = left.split('src="', 1)[1].split('"', 1)[0] if 'src="' in left else ""
    return str(token or ""), src


def ratings_of(env: AppEnv, rater_pk: int) -> int:
    with env.workspace.database.session() as session:
        return len(list(session.scalars(select(Rating.id).where(Rating.rater_id == rater_pk))))


def coordinator_inputs(
    env: AppEnv, who: str, uploaded: dict[str, Any]
) -> tuple[dict[str, Callable[[Browser], list[Any]]], str]:
    """Inputs per coordinator endpoint (unique names per identity) and the token of the rater to relink.

    ``uploaded`` is a file the coordinator uploaded (nobody else may upload): every identity names it."""
    spare = env.add_rater(STUDY, name=f"Spare for {who}")
    relinked = env.add_rater(STUDY, name=f"Relinked for {who}")
    tag = f"{who}-{secrets.token_hex(3)}"
    models = list(study_models(env))
    inputs: dict[str, Callable[[Browser], list[Any]]] = {
        "coord_refresh": lambda _b: [STUDY],
        "coord_select_study": lambda _b: [STUDY],
        "coord_tick": lambda _b: [STUDY],
        "coord_load_config": lambda _b: [uploaded],
        "coord_create_study": lambda _b: [study_toml(f"rights-{tag}", 1), STUDY],
        "coord_add_rater": lambda _b: [STUDY, f"Added by {tag}", "radiology", 3],
        "coord_new_link": lambda _b: [STUDY, relinked.public_id],
        "coord_revoke_rater": lambda _b: [STUDY, spare.public_id],
        "coord_generate": lambda _b: [STUDY, models[:1], "cpu", 2, 1.0, 0],
        "coord_export": lambda _b: [STUDY, "csv"],
        "coord_set_demo": lambda _b: [True],
        "coord_report": lambda _b: [STUDY],
        "coord_report_file": lambda _b: [STUDY],
    }
    return inputs, relinked.token


def study_models(env: AppEnv) -> list[str]:
    with env.workspace.database.session() as session:
        return list(session.scalar(select(Study).where(Study.name == STUDY)).config["models"])  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------- tests


def test_every_endpoint_is_classified(app: App) -> None:
    assert app.mounts, "found no Gradio mounts"
    assert app.endpoints, "found no event handlers: the enumeration is broken"
    assert {"/", "/coordinator", "/demo"} <= set(app.mounts), app.mounts
    unclassified = sorted(f"{m} {n}" for (m, n) in app.endpoints if access_of(m, n) is None)
    assert not unclassified, f"unclassified handlers (add them to EVENTS with their rights): {unclassified}"
    unknown_routes = sorted(set(app.routes) - set(ROUTES))
    assert not unknown_routes, f"unclassified routes: {unknown_routes}"
    present = {(m, base_name(n)) for (m, n) in app.endpoints}
    missing = sorted(f"{m} {n}" for (m, n) in EVENTS if (m, n) not in present and n not in OPTIONAL)
    assert not missing, f"classified but gone (stale table): {missing}"


def test_coordinator_endpoints(app: App, matrix: Matrix, app_env: AppEnv) -> None:
    """Anonymous and raters fail on every coordinator handler, with no side effect; the coordinator succeeds."""
    names = [n for (m, n) in app.endpoints if access_of(m, n) == Access.COORDINATOR]
    assert len(names) >= 10
    uploaded = matrix.browsers["coordinator"].upload("/coordinator", "study.toml", study_toml("up", 1).encode())
    for who in IDENTITIES:
        inputs, old_token = coordinator_inputs(app_env, who, uploaded)
        browser = matrix.browsers[who]
        for name in names:
            endpoint = app.endpoints[("/coordinator", name)]
            out = browser.call("/coordinator", endpoint.fn_index, inputs[base_name(name)](browser))
            if who == "coordinator":
                assert out.success, f"the coordinator could not use {name}: {out.error}"
            else:
                assert not out.success, f"{who} used the coordinator handler {name}: {out.data}"
                assert "sign in" in out.error.lower(), (name, out.error)
        with app_env.workspace.database.session() as session:
            created = session.scalar(select(Study.id).where(Study.name.like(f"rights-{who}-%")))
            added = session.scalar(select(Rater.id).where(Rater.name.like(f"Added by {who}-%")))
            spare = session.scalar(select(Rater).where(Rater.name == f"Spare for {who}"))
            relinked = session.scalar(select(Rater).where(Rater.name == f"Relinked for {who}"))
            changed = {
                "study created": created is not None,
                "rater added": added is not None,
                "link revoked": spare is not None and spare.revoked_at is not None,
                "link reissued": relinked is not None and rater_by_token(session, old_token) is None,
            }
        expected = who == "coordinator"
        assert changed == dict.fromkeys(changed, expected), (who, changed)


def test_public_handlers_leak_nothing(app: App, matrix: Matrix) -> None:
    """Page state, sign-in with a wrong password and sign-out give a non-coordinator nothing."""
    state = app.endpoints[("/coordinator", "coordinator_page_state")]
    signout = app.endpoints[("/coordinator", "coordinator_signout")]
    refresh = app.endpoints[("/demo", "demo_refresh")]
    for who in IDENTITIES:
        out = matrix.browsers[who].call("/demo", refresh.fn_index, [])
        assert out.success and STUDY not in json.dumps(out.data), who
        out = matrix.browsers[who].call("/coordinator", state.fn_index, [])
        assert out.success
        shown = out.data[1].get("visible")
        studies = out.data[4]
        if who == "coordinator":
            assert shown is True and STUDY in json.dumps(studies)
        else:
            assert shown is False and STUDY not in json.dumps(out.data), who
            for (mount, name), signin in app.endpoints.items():
                if mount != "/coordinator" or base_name(name) != "coordinator_signin":
                    continue
                # the sign-in back-off (per address: every test browser is 127.0.0.1) may ask to wait first
                for _ in range(50):
                    wrong = matrix.browsers[who].call("/coordinator", signin.fn_index, ["not-the-password"])
                    if wrong.success or "429" not in wrong.error:
                        break
                    time.sleep(0.1)
                assert wrong.success and wrong.data[1].get("visible") is not True
                assert STUDY not in json.dumps(wrong.data)
            assert matrix.browsers[who].call("/coordinator", signout.fn_index, []).success


def test_rater_endpoints(app: App, matrix: Matrix, app_env: AppEnv) -> None:
    """Only rater A reaches rater A's pair: its display token, its images, its submission."""
    pause, submit = (app.endpoints[("/", n)] for n in ("handle_pause", "handle_submit"))
    loads = [e for (m, n), e in app.endpoints.items() if m == "/" and base_name(n) == "handle_load"]
    token_a, image_a = rater_pair(app, matrix.browsers["rater_a"])
    assert token_a and image_a.startswith("/m/"), "rater A got no pair (positive control)"
    for who in ("anonymous", "coordinator"):
        for load in loads:
            token, image = rater_pair(app, matrix.browsers[who], load)
            assert token == "" and image == "", f"{who} received a pair from {load.api_name}"
        assert not matrix.browsers[who].call("/", pause.fn_index, []).success, who
    for load in loads:
        assert rater_pair(app, matrix.browsers["rater_b"], load)[0], f"rater B got no pair from {load.api_name}"
    for who in ("rater_a", "rater_b"):
        assert matrix.browsers[who].call("/", pause.fn_index, []).success, who

    with httpx.Client(base_url=app_env.url, timeout=30) as client:
        for who in IDENTITIES:
            browser = matrix.browsers[who]
            got = client.get(image_a, headers=browser.client.headers)
            assert (got.status_code == 200) == (who == "rater_a"), (who, got.status_code)

    answered_for = read_display_token(token_a).nonce  # type: ignore[union-attr]  # the display answered
    data = [token_a, *answers_in_order(), 1234, "2026-01-01T00:00:00Z", answered_for, *extra_inputs()]
    before = ratings_of(app_env, matrix.rater_a), ratings_of(app_env, matrix.rater_b)
    for who in ("anonymous", "rater_b", "coordinator"):
        out = matrix.browsers[who].call("/", submit.fn_index, data)
        assert not out.success, f"{who} submitted rater A's pair"
        assert out.error == REFUSAL or "not available" in out.error, f"{who} failed for another reason: {out.error}"
    assert (ratings_of(app_env, matrix.rater_a), ratings_of(app_env, matrix.rater_b)) == before
    assert matrix.browsers["rater_a"].call("/", submit.fn_index, data).success
    assert ratings_of(app_env, matrix.rater_a) == before[0] + 1


def test_demo_follows_the_switch(app: App, matrix: Matrix, tiny_model: str) -> None:
    """Open: everyone may generate. Closed by the coordinator: nobody may."""
    demo = app.endpoints[("/demo", "demo_generate")]
    switch = app.endpoints[("/coordinator", "coord_set_demo")]
    coordinator = matrix.browsers["coordinator"]
    data = ["a small polyp", tiny_model, 7, 2, 1.0]
    try:
        assert coordinator.call("/coordinator", switch.fn_index, [False]).success
        for who in IDENTITIES:
            out = matrix.browsers[who].call("/demo", demo.fn_index, data)
            assert not out.success and "switched off" in out.error, who
        assert coordinator.call("/coordinator", switch.fn_index, [True]).success
        for who in IDENTITIES:
            out = matrix.browsers[who].call("/demo", demo.fn_index, data)
            assert out.success, f"{who}: {out.error}"
            assert "seed 7" in out.data[1] and out.data[0], out.data
    finally:
        coordinator.call("/coordinator", switch.fn_index, [True])


def test_routes(app: App, app_env: AppEnv) -> None:
    with httpx.Client(base_url=app_env.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/m/forged.token").status_code == 404


def test_signout_ends_the_coordinator_session(app: App, app_env: AppEnv) -> None:
    browser = Browser(app_env.url, app_env.cookie())
    signin = app.endpoints[("/coordinator", "coordinator_signin")]
    signout = app.endpoints[("/coordinator", "coordinator_signout")]
    refresh = app.endpoints[("/coordinator", "coord_refresh")]
    assert browser.call("/coordinator", signin.fn_index, [COORDINATOR_PASSWORD]).data[1]["visible"] is True
    assert browser.call("/coordinator", refresh.fn_index, [STUDY]).success
    assert browser.call("/coordinator", signout.fn_index, []).success
    assert not browser.call("/coordinator", refresh.fn_index, [STUDY]).success
