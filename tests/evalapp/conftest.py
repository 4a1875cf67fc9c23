"""Fixtures for the app tests: a workspace with real GI samples, two "models", studies, raters, a live server.

The two models are deterministic PIL transforms of the real images (a blur and a posterised, rotated
copy), written as JPEG files with a manifest and recorded through :func:`db.importers.import_generated`. The server
runs in a background thread on a free 127.0.0.1 port for the whole test session.

Helpers for other test files:

* ``app_env.add_rater(study, name=None)`` -> :class:`RaterLogin` (id, token, personal link);
* ``app_env.cookie(token=None)`` -> the session cookie value a browser would get (anonymous without token);
* ``app_env.request(cookie)`` -> a ``gr.Request`` carrying that cookie, for calling handlers directly;
* ``app_env.gradio_headers(cookie)`` -> headers for ``gradio_client.Client(..., headers=...)``;
* ``app_env.coordinator_password`` -> the stored coordinator password.

(Test files cannot import this module under ``--import-mode=importlib``: use the fixture's methods.)
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
from PIL import Image, ImageFilter, ImageOps
from starlette.requests import Request

from db.generated import dataset_cases
from db.importers import import_dataset, import_generated
from db.models import Case
from db.raters import add_rater
from db.studies import create_study
from db.workspace import Workspace
from evalapp.auth import COOKIE_NAME
from evalapp.server import AppContext, RunningServer, start_server

DATASET = "gi-leakcheck-set"
MODELS = ("Zephyrine-Diffusion-7", "Quokkanet-GAN-3")
SEEDS = {MODELS[0]: 918273645, MODELS[1]: 564738291}
N_CASES = 8
STUDY = "pilot-study"
SMALL_STUDY = "browser-study"
COORDINATOR_PASSWORD = "a-long-coordinator-password"


def _blur(img: Image.Image) -> Image.Image:
    return img.convert("RGB").filter(ImageFilter.GaussianBlur(2))


def _poster(img: Image.Image) -> Image.Image:
    return ImageOps.posterize(img.convert("RGB"), 3).rotate(3)


TRANSFORMS = {MODELS[0]: _blur, MODELS[1]: _poster}


def study_toml(name: str, per_model: int, *, attention: float = 0.0, repeat: float = 0.0, size: int = 384) -> str:
    """A study config over both fixture models; every rater reads every item."""
    models = ", ".join(f'"{m}"' for m in MODELS)
    return (
        f'name = "{name}"\nseed = 11\ndatasets = ["{DATASET}"]\nmodels = [{models}]\n'
        f"cases_per_model = {per_model}\nraters_per_item = 1\nrater_slots = 1\n"
        f"attention_fraction = {attention}\nrepeat_fraction = {repeat}\n"
        f'title = "Polyp image study"\n[display]\nsize = {size}\nfit = "square"\n'
    )


@dataclass(frozen=True)
class RaterLogin:
    """A rater added for a test."""

    rater_pk: int
    public_id: str
    token: str
    link: str


@dataclass
class AppEnv:
    """The live app and its data."""

    workspace: Workspace
    server: RunningServer
    data_dir: Path
    case_keys: list[str]
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ctx(self) -> AppContext:
        return self.server.ctx

    def add_rater(self, study: str = STUDY, name: str | None = None, specialty: str = "gastroenterology") -> RaterLogin:
        from db.models import Rater

        with self.workspace.database.session() as session:
            new = add_rater(session, study, name or f"Rater {next(self._names)}", specialty, 5)
        with self.workspace.database.session() as session:
            from sqlalchemy import select

            pk = session.scalar(select(Rater.id).where(Rater.public_id == new.rater_id))
        return RaterLogin(int(pk), new.rater_id, new.token, self.ctx.rater_link(new.token))

    coordinator_password: str = COORDINATOR_PASSWORD

    @staticmethod
    def request(cookie: str | None, host: str = "127.0.0.1") -> gr.Request:
        """A ``gr.Request`` carrying ``cookie`` (see :func:`fake_request`)."""
        return fake_request(cookie, host)

    @staticmethod
    def gradio_headers(cookie: str) -> dict[str, str]:
        """Headers for ``gradio_client.Client(url, headers=...)`` speaking with this session."""
        return gradio_headers(cookie)

    def cookie(self, token: str | None = None) -> str:
        """The session cookie the server sets for a personal link (or for a plain page load)."""
        url = f"{self.url}/?rater={token}" if token is not None else f"{self.url}/"
        with httpx.Client(follow_redirects=False, timeout=30) as client:
            response = client.get(url)
        value = response.cookies.get(COOKIE_NAME)
        assert value, f"no session cookie from {url.split('?')[0]} (status {response.status_code})"
        return value


def fake_request(cookie: str | None, host: str = "127.0.0.1") -> gr.Request:
    """A ``gr.Request`` as Gradio builds it for a queued event, carrying ``cookie``."""
    headers = [(b"cookie", f"{COOKIE_NAME}={cookie}".encode())] if cookie else []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/gradio_api/queue/join",
        "headers": headers,
        "query_string": b"",
        "client": (host, 50000),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
    }
    return gr.Request(request=Request(scope), session_hash="test-session")


def gradio_headers(cookie: str) -> dict[str, str]:
    """Headers that make ``gradio_client.Client`` speak with this session."""
    return {"Cookie": f"{COOKIE_NAME}={cookie}"}


def _build_workspace(root: Path, shared_data: Path, db_url: str | None = None) -> tuple[Workspace, list[str]]:
    ws = Workspace.open(db_url, root / "data")
    gi = shared_data / "gi"
    import_dataset(
        ws.database,
        ws.store,
        "csv",
        gi / "captions.csv",
        name=DATASET,
        domain="gi",
        file_column="file",
        text_column="caption",
        limit=N_CASES,
    )
    with ws.database.session() as session:
        cases = dataset_cases(session, DATASET)
    for model in MODELS:  # write each model's images beside a manifest, as an external generator would
        folder = root / "generated" / model
        folder.mkdir(parents=True)
        rows = ["file,case,seed"]
        for n, case in enumerate(cases):
            with ws.database.session() as session:
                sha = session.get(Case, case.id).image_sha256  # type: ignore[union-attr]
            TRANSFORMS[model](ws.store.open(sha)).save(folder / f"out_{n:03d}.jpg", quality=92)
            rows.append(f"out_{n:03d}.jpg,{case.key},{SEEDS[model]}")
        (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
        import_generated(ws.database, ws.store, folder, dataset=DATASET, model=model)
    with ws.database.session() as session:
        create_study(session, ws.store, study_toml(STUDY, 4, attention=0.13, repeat=0.13))
        create_study(session, ws.store, study_toml(SMALL_STUDY, 2))
    return ws, [c.key for c in cases]


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def app_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_data: Path
) -> Iterator[AppEnv]:
    """A workspace with real samples, two models, two studies, and the app serving it: on SQLite, and on
    a fresh PostgreSQL database where ``MEDSYNTH_TEST_PG_URL`` names a server (as in CI)."""
    import os
    import uuid

    from tests.pg import PG_ADMIN_URL_ENV, drop_postgres, fresh_postgres_url

    root = tmp_path_factory.mktemp("medsynth-app")
    db_url, pg_name, admin = None, None, os.environ.get(PG_ADMIN_URL_ENV)
    if request.param == "postgresql":
        if not admin:
            pytest.skip(f"PostgreSQL variant: set {PG_ADMIN_URL_ENV} (.ci/run starts a server and sets it)")
        pg_name = f"medsynth_app_{uuid.uuid4().hex[:12]}"
        db_url = fresh_postgres_url(admin, pg_name)
    ws, keys = _build_workspace(root, shared_data, db_url)
    from evalapp.auth import set_coordinator_password

    set_coordinator_password(ws.database, COORDINATOR_PASSWORD)
    from app import build_worker

    ctx = AppContext(workspace=ws, demo_enabled=True, login_failure_delay_s=0.01, worker=build_worker(ws))
    server = start_server(ctx)
    try:
        yield AppEnv(workspace=ws, server=server, data_dir=root / "data", case_keys=keys)
    finally:
        server.stop()
        ws.close()
        if pg_name and admin:
            drop_postgres(admin, pg_name)


# ----------------------------------------------------------------------------------------------- browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (skipped, with the reason, when it is not installed)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to run browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# ----------------------------------------------------------------------------------------------- leak scan

LEAK_WORDS = re.compile(r"real|fake|synthetic|generated|model|seed|sha|diffusion|gan\b|\.jpe?g|\.png", re.IGNORECASE)
IMAGE_URL = re.compile(r"^/m/([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$")
IMAGE_PAYLOAD_KEYS = {"k", "r", "p", "s", "z", "n"}


@dataclass
class LeakScanner:
    """Finds what must never reach a rater: names, hashes, file names, seeds, and side markers on images.

    ``markers`` are exact strings taken from the database (model names and sources, dataset names, case
    keys and file names, sha256 digests and their 10-character prefixes, distinctive seeds, item ids).
    :meth:`scan_text` looks for them in any text (page, script, JSON, event stream, headers);
    :meth:`scan_dom` also checks every image and figure of the rater form for attributes or captions that
    say which side is real, and that image URLs carry only the opaque per-display token.
    """

    markers: set[str]

    def scan_text(self, text: str, where: str = "") -> list[str]:
        return [f"{where}: {m!r}" for m in sorted(self.markers) if m in text]

    def scan_dom(self, html_text: str, where: str = "dom") -> list[str]:
        found = self.scan_text(html_text, where)
        for tag in re.findall(r"<(?:img|figure|figcaption|button)\b[^>]*>", html_text, flags=re.IGNORECASE):
            for name, value in re.findall(r'([\w:-]+)\s*=\s*"([^"]*)"', tag):
                if name in ("src", "data-src", "data-zoom"):
                    found += self.check_image_url(html.unescape(value), where)
                elif LEAK_WORDS.search(name) or LEAK_WORDS.search(value):
                    found.append(f"{where}: attribute {name}={value!r} on {tag[:60]!r}")
        for caption in re.findall(r"<figcaption\b[^>]*>(.*?)</figcaption>", html_text, flags=re.S | re.I):
            text = re.sub(r"<[^>]+>", " ", caption)
            if LEAK_WORDS.search(text):
                found.append(f"{where}: caption {text.strip()!r}")
        return found

    @staticmethod
    def check_image_url(url: str, where: str = "") -> list[str]:
        if url.startswith(("data:", "blob:")) or "/gradio_api/" in url or url.startswith(("http://", "https://")):
            return []
        match = IMAGE_URL.match(url)
        if match is None:
            return [f"{where}: image URL {url!r} is not an opaque /m/ token"]
        raw = match.group(1)
        try:
            payload = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        except ValueError:
            return [f"{where}: image URL {url!r} is not a signed /m/ token"]
        if not isinstance(payload, dict):
            return [f"{where}: image URL {url!r} is not a signed /m/ token"]
        extra = set(payload) - IMAGE_PAYLOAD_KEYS
        return [f"{where}: image token carries {sorted(extra)}"] if extra else []


def leak_markers(workspace: Workspace) -> set[str]:
    """Every identifying string of the workspace's images, models, datasets and items."""
    from sqlalchemy import select

    from db.models import Dataset, GeneratedImage, ImageBlob, Model, StudyItem

    markers: set[str] = set()
    with workspace.database.session() as session:
        for name, source in session.execute(select(Model.name, Model.source)):
            markers |= {name, source}
        for name, source in session.execute(select(Dataset.name, Dataset.source)):
            markers |= {name, source, Path(source).name}
        for key, source_file in session.execute(select(Case.key, Case.source_file)):
            markers |= {key, Path(key).stem, source_file, Path(source_file).name}
        for (sha,) in session.execute(select(ImageBlob.sha256)):
            markers |= {sha, sha[:10]}
        for seed, params in session.execute(select(GeneratedImage.seed, GeneratedImage.parameters)):
            markers.add(str(seed))
            markers |= {str(v) for v in (params or {}).values()}
        markers |= set(session.scalars(select(StudyItem.public_id)))
    return {m for m in markers if m and len(m) >= 6}


@pytest.fixture(scope="session")
def leak_scanner(app_env: AppEnv) -> LeakScanner:
    """A :class:`LeakScanner` loaded with every identifying string of the test workspace."""
    scanner = LeakScanner(leak_markers(app_env.workspace))
    assert len(scanner.markers) > 60, "the leak scan needs the workspace's names and hashes to look for"
    return scanner


# ----------------------------------------------------------------------------------------------- rater page

ANSWER_KEYS = ("4", "3", "2", "5", "l", "4")  # realism L, accuracy L, realism R, accuracy R, which, confidence


@dataclass
class RaterPage:
    """A rater's browser tab, driven by keyboard only."""

    page: Any

    def progress(self) -> str:
        return self.page.locator("#ms-progress").inner_text()

    def wait_pair(self, number: int, total: int) -> None:
        """Wait until pair ``number`` is shown and both images have loaded."""
        self.page.wait_for_function(
            """([label]) => {
                const p = document.querySelector('#ms-progress');
                const imgs = [...document.querySelectorAll('.ms-img')];
                return p && p.textContent.trim() === label && imgs.length === 2
                    && imgs.every(i => i.complete && i.naturalWidth > 0)
                    && window.msReadyFor === imgs[0].getAttribute('src');
            }""",
            arg=[f"Pair {number} of {total}"],
            timeout=20_000,
        )
        self.close_instructions()

    def close_instructions(self) -> None:
        """Close the instructions start screen (shown before a rater's first pair) if it is open."""
        if self.page.evaluate("!!document.querySelector('#ms-intro:not([hidden])')"):
            self.page.keyboard.press("Enter")
            self.page.wait_for_function("!document.querySelector('#ms-intro:not([hidden])')")

    def answer(self, keys: tuple[str, ...] = ANSWER_KEYS) -> None:
        """Press ``keys``; with the full set, wait until all six choice questions show an answer."""
        for key in keys:
            self.page.keyboard.press(key)
            self.page.wait_for_timeout(40)
        if len(keys) == len(ANSWER_KEYS):
            self.page.wait_for_function(
                "document.querySelectorAll('#ms-form input[type=radio]:checked').length === 6", timeout=5_000
            )

    def submit(self) -> None:
        self.page.keyboard.press("Enter")

    def wait_text(self, text: str) -> None:
        self.page.get_by_text(text).first.wait_for(timeout=20_000)


@dataclass
class NetworkLog:
    """What a page received: every response's URL with its headers (``bodies``, also the headers of every
    ``/m/`` image in ``image_headers`` and its URL in ``image_urls``) and the text body of every other finished
    request. Headers are taken as responses arrive: a finished-request event can be missed for an image whose
    request the page replaced."""

    bodies: list[tuple[str, str]] = field(default_factory=list)
    image_headers: list[dict[str, str]] = field(default_factory=list)
    image_urls: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> NetworkLog:
        page.on("response", self._response)
        page.on("requestfinished", self._finished)
        return self

    def _response(self, response: Any) -> None:
        self.bodies.append((response.url, response.url + " " + str(response.headers)))
        if "/m/" in response.url:
            self.image_headers.append(response.headers)
            self.image_urls.append(response.url)

    def _finished(self, request: Any) -> None:
        import contextlib

        response = request.response()
        if response is None or "/m/" in request.url:
            return
        with contextlib.suppress(Exception):  # bodies of redirects are not available
            self.bodies.append((request.url, response.body().decode("utf-8", "replace")))


@pytest.fixture
def network_log() -> Callable[[Any], NetworkLog]:
    """Factory: ``network_log(page)`` starts recording what ``page`` receives -> :class:`NetworkLog`."""
    return lambda page: NetworkLog().attach(page)


@pytest.fixture
def open_rater_page(browser: Any) -> Iterator[Any]:
    """Factory: open a rater's personal link in a fresh browser context (1366x768) -> :class:`RaterPage`."""
    contexts: list[Any] = []

    def _open(link: str, width: int = 1366, height: int = 768) -> RaterPage:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(link)
        return RaterPage(page)

    yield _open
    for context in contexts:
        context.close()
