"""A rater client over plain HTTP, a ``python app.py`` server process, and the exactly-once check.

Used by the load and kill tests (``tests/load``) and by ``benchmarks/run_all.py``. Everything talks to a
server on 127.0.0.1 only, through the same requests a browser makes:

* ``GET /?rater=TOKEN`` once (the server answers with the signed session cookie and a redirect);
* Gradio's queue protocol for the page's events (``POST /gradio_api/queue/join`` with the event's
  ``fn_index``, then the ``/gradio_api/queue/data`` event stream until ``process_completed``). The rater
  events are private (absent from the API page), so their ``fn_index`` is read from ``/config`` as the
  page does.

A rater's run (:func:`run_rater`) rates every pair with random answers and misbehaves at random: double
submits (the same display token twice at once), retries after a dropped connection (same token again),
refreshes (a new display of the same pair) and stale tabs (submitting the old display after a refresh).
Every submission the server answered with the next screen is an acknowledgement (:class:`Ack`);
:func:`check_exactly_once` then compares them with the database.

Public: :class:`AppServer`, :func:`seed_load_study`, :class:`RaterSession`, :class:`Behaviour`,
:func:`run_rater`, :func:`run_raters`, :func:`check_exactly_once`, :func:`first_unrated`,
:func:`integrity_check`, :func:`percentiles`.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
COOKIE_NAME = "medsynth_session"  # evalapp.auth.COOKIE_NAME (kept literal: the client knows only HTTP)
LOAD_STUDY = "load-study"
LOAD_DATASET = "gi-load"
LOAD_MODELS = ("load-model-blur", "load-model-poster")
N_FIXED_OUTPUTS = 5  # status, form, header, left, right come before the questions in the rater outputs
N_EXTRA_INPUTS = 2  # the head-to-head preferences, after the display id (evalapp.rater_view.EXTRA_QUESTIONS)
PAIR_RE = re.compile(r"Pair (\d+) of (\d+)")
IMG_RE = re.compile(r'src="(/m/[^"]+)"')
SERVER_GONE = (httpx.TransportError,)


class ServerGone(RuntimeError):
    """The server stopped answering (killed, restarting, or the connection dropped)."""


# ----------------------------------------------------------------------------------------------- server


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def app_env() -> dict[str, str]:
    """The environment for app subprocesses: offline, no analytics, one torch thread."""
    env = dict(os.environ)
    env.update(
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _import_env(env: dict[str, str]) -> dict[str, str]:
    """The environment without what pytest changes per test (``PYTEST_CURRENT_TEST``)."""
    return {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}


class LaunchedProcess:
    """A process forked by a :class:`Launcher`: the part of ``subprocess.Popen`` that :class:`AppServer` uses."""

    def __init__(self, launcher: Launcher, pid: int) -> None:
        self._launcher = launcher
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self._launcher.exit_code(self.pid)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it ended just now
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        code = self._launcher.wait_exit(self.pid, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        self.returncode = code
        return code


class Launcher:
    """``tests/load/launcher.py``: forks ``python app.py ARGS`` processes from an interpreter that has
    imported ``modules`` once (the 5 s of imports each server start would pay). See that module."""

    #: what ``python app.py serve`` imports before it opens the database
    SERVE = ("app", "evalapp.server", "compare.jobs", "analysis.jobs", "generation.worker", "generation.demo_study")
    #: what ``python app.py generate`` imports before its first image (torch, diffusers, a CLIP text encoder)
    GENERATE = ("app", "db.workspace", "generation.batch", "generation.pipelines",
                "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")  # fmt: skip

    def __init__(self, modules: Sequence[str] = SERVE) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "load" / "launcher.py"), *modules],
            cwd=REPO,
            env=app_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._env = app_env()
        self._lock = threading.Condition()
        self._pids: list[int] = []
        self._exits: dict[int, int] = {}
        self._ready = False
        threading.Thread(target=self._read, daemon=True, name="launcher-reader").start()
        with self._lock:
            if not self._lock.wait_for(lambda: self._ready or self._process.poll() is not None, timeout=180):
                raise RuntimeError("the launcher did not finish its imports within 180 s")
            if not self._ready:
                raise RuntimeError(f"the launcher exited with {self._process.returncode} during its imports")

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            message = json.loads(line)
            with self._lock:
                if "ready" in message:
                    self._ready = True
                elif "pid" in message:
                    self._pids.append(int(message["pid"]))
                else:
                    self._exits[int(message["exit"])] = int(message["code"])
                self._lock.notify_all()
        with self._lock:
            self._ready = False
            self._lock.notify_all()

    def spawn(self, command: Sequence[str], log_path: Path) -> LaunchedProcess:
        """Fork ``command`` (``[python, app.py, *args]``) with stdout and stderr appended to ``log_path``."""
        if Path(command[1]) != REPO / "app.py":
            raise ValueError(f"the launcher runs app.py only, not {command[1]}")
        env = app_env()
        if _import_env(env) != _import_env(self._env):  # the imports already ran under the launcher's
            raise RuntimeError("the environment changed since the launcher started: start a new launcher")
        request = {"argv": ["app.py", *command[2:]], "cwd": str(REPO), "env": env, "log": str(log_path)}
        assert self._process.stdin is not None
        with self._lock:
            seen = len(self._pids)
            self._process.stdin.write((json.dumps(request) + "\n").encode())
            self._process.stdin.flush()
            if not self._lock.wait_for(lambda: len(self._pids) > seen, timeout=30):
                raise RuntimeError("the launcher did not fork within 30 s")
            return LaunchedProcess(self, self._pids[seen])

    def exit_code(self, pid: int) -> int | None:
        with self._lock:
            return self._exits.get(pid)

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        with self._lock:
            self._lock.wait_for(lambda: pid in self._exits, timeout=timeout)
            return self._exits.get(pid)

    def close(self) -> None:
        """End the launcher (its children are stopped by their :class:`AppServer`)."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)


@dataclass
class AppServer:
    """``python app.py --data-dir D [--db URL] serve --port P --no-demo`` as a subprocess on 127.0.0.1.

    The process gets its own process group; :meth:`kill` sends a signal to that group only and
    :meth:`stop` (also the context-manager exit) always ends it, so a failing test leaves nothing behind.
    With a ``launcher`` the same command is forked from it (:class:`Launcher`: no 5 s of imports per start);
    without one it is a new interpreter, as a user starts it.
    """

    data_dir: Path
    db_url: str | None = None
    demo: bool = False
    port: int = 0
    log_path: Path | None = None
    extra_args: Sequence[str] = ()
    launcher: Launcher | None = None
    process: subprocess.Popen[bytes] | LaunchedProcess | None = field(default=None, init=False)
    started_s: float = field(default=0.0, init=False)
    _log: Any = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        """The exact command line (what a user types, with this server's folders)."""
        cmd = [sys.executable, str(REPO / "app.py"), "--data-dir", str(self.data_dir)]
        if self.db_url:
            cmd += ["--db", self.db_url]
        cmd += ["serve", "--host", HOST, "--port", str(self.port)]
        return cmd + ([] if self.demo else ["--no-demo"]) + list(self.extra_args)

    def start(self, timeout_s: float = 180.0, ready_path: str = "/") -> float:
        """Start the server and wait for its first HTTP 200 on ``ready_path``; returns the seconds that took."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is already running")
        self.port = self.port or free_port()
        log_path = self.log_path or self.data_dir.parent / f"server-{self.port}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        started = time.perf_counter()
        if self.launcher is not None:
            self.process = self.launcher.spawn(self.command(), log_path)
        else:
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env=app_env(),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = started + timeout_s
        with httpx.Client(timeout=5) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the server exited with {self.process.returncode}:\n{tail}")
                try:
                    if client.get(self.url + ready_path).status_code == 200:
                        self.started_s = time.perf_counter() - started
                        return self.started_s
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server did not answer on {self.url}{ready_path} within {timeout_s:.0f} s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the server's process group and wait for it to end."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------- data


def seed_load_study(
    data_dir: Path,
    shared_data: Path,
    *,
    raters: int,
    per_rater: int,
    db_url: str | None = None,
) -> list[str]:
    """Build a study where each of ``raters`` raters rates ``per_rater`` pairs; returns their link tokens.

    The real GI samples (``shared_data/gi``, read in place) are the real side; two "models" are fixed
    PIL transforms of them (a blur and a posterised copy) imported as generated images. ``per_rater``
    must be even and at most twice the number of samples (every rater reads every item).
    """
    from PIL import ImageFilter, ImageOps

    from db.importers import import_dataset, import_generated
    from db.raters import add_rater
    from db.studies import create_study
    from db.workspace import Workspace

    gi = shared_data / "gi"
    rows = list(csv.DictReader((gi / "captions.csv").open(newline="")))
    if per_rater < 2 or per_rater % 2 or per_rater > len(rows):
        # one rater slot reads every pair, so each model needs its own cases (no real image twice per rater)
        raise ValueError(f"per_rater must be even and 2-{len(rows)} (two models, each with its own samples)")
    if raters < 1:
        raise ValueError(f"raters must be at least 1, got {raters}")
    cases = per_rater // 2
    ws = Workspace.open(db_url, data_dir)
    try:
        import_dataset(ws.database, ws.store, "csv", gi / "captions.csv", name=LOAD_DATASET, domain="gi",
                       file_column="file", text_column="caption", limit=2 * cases)  # fmt: skip
        transforms: dict[str, Callable[[Any], Any]] = {
            LOAD_MODELS[0]: lambda im: im.filter(ImageFilter.GaussianBlur(2)),
            LOAD_MODELS[1]: lambda im: ImageOps.posterize(im, 3),
        }
        from PIL import Image

        for n_model, (model, transform) in enumerate(transforms.items()):
            folder = data_dir.parent / f"generated-{model}"
            folder.mkdir(parents=True, exist_ok=True)
            manifest = ["file,case,seed"]
            for n, row in enumerate(rows[: 2 * cases]):
                with Image.open(gi / row["file"]) as img:
                    # At most 512 px and the fastest zlib level: these images only need to be served
                    # (at 256 px); full-size PNGs made a third of the seeding time.
                    small = img.convert("RGB")
                    small.thumbnail((512, 512))
                    transform(small).save(folder / f"g{n:03d}.png", compress_level=1)
                manifest.append(f"g{n:03d}.png,{row['file']},{1000 * n_model + n}")
            (folder / "manifest.csv").write_text("\n".join(manifest) + "\n")
            import_generated(ws.database, ws.store, folder, dataset=LOAD_DATASET, model=model)
        models = ", ".join(f'"{m}"' for m in LOAD_MODELS)
        config = (
            f'name = "{LOAD_STUDY}"\nseed = 3\ndatasets = ["{LOAD_DATASET}"]\nmodels = [{models}]\n'
            f'cases_per_model = {cases}\nraters_per_item = 1\nrater_slots = 1\ntitle = "Load test"\n'
            '[display]\nsize = 256\nfit = "square"\n'
        )
        tokens = []
        with ws.database.session() as session:
            create_study(session, ws.store, config)
        for n in range(raters):
            with ws.database.session() as session:
                tokens.append(add_rater(session, LOAD_STUDY, f"Load rater {n:03d}", "gastroenterology", 5).token)
        return tokens
    finally:
        ws.close()


# ----------------------------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class Completed:
    """A finished queued event: its outputs, the handler's own time (Gradio's ``duration``), the round trip."""

    success: bool
    data: list[Any]
    handler_s: float
    round_trip_s: float
    error: str = ""


def endpoints(client: httpx.Client, prefix: str = "") -> dict[str, int]:
    """``api_name -> fn_index`` of the Gradio app mounted at ``prefix`` (private events included)."""
    config = client.get(prefix + "/config").raise_for_status().json()
    return {dep.get("api_name") or f"fn{dep['id']}": dep["id"] for dep in config["dependencies"]}


def queue_call(
    client: httpx.Client, fn_index: int, data: list[Any], *, prefix: str = "", drop_after_start: bool = False
) -> Completed | None:
    """Run one event through Gradio's queue as a browser does.

    With ``drop_after_start`` the event stream is closed as soon as the server starts processing (a
    connection lost mid-request); returns None then. Raises :class:`ServerGone` on a transport error.
    """
    session_hash = secrets.token_hex(8)
    base = prefix + "/gradio_api/queue"
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None}
    started = time.perf_counter()
    try:
        joined = client.post(base + "/join", json=body)
        if joined.status_code != 200:
            return Completed(False, [], 0.0, time.perf_counter() - started, f"join: {joined.status_code}")
        event_id = joined.json()["event_id"]
        with client.stream("GET", base + "/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event_id:
                    continue
                if drop_after_start and message.get("msg") in ("process_starts", "process_completed"):
                    return None
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    wall = time.perf_counter() - started
                    handler = float(output.get("duration") or 0.0)
                    if message.get("success"):
                        return Completed(True, list(output.get("data") or []), handler, wall)
                    return Completed(False, [], handler, wall, str(output.get("error") or output))
    except SERVER_GONE as exc:
        raise ServerGone(f"{type(exc).__name__}: {exc}") from exc
    raise ServerGone("the event stream ended without completing")


@dataclass(frozen=True)
class Display:
    """A pair shown to the rater: its display token, what the token names, and the progress label."""

    token: str
    position: int
    nonce: str
    number: int
    total: int
    images: tuple[str, ...] = ()

    @property
    def submission_id(self) -> str:
        """The submission id the server derives from this display (``d-`` + nonce)."""
        return f"d-{self.nonce}"


def read_display(token: str) -> tuple[int, str]:
    """(position, nonce) from a display token's payload (signed, not secret: it is the rater's own form)."""
    body = token.split(".", 1)[0]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return int(payload["p"]), str(payload["n"])


@dataclass(frozen=True)
class Screen:
    """What the rater page shows after an event: a pair, the thank-you/paused page, or a refusal."""

    kind: str  # "pair", "done", "refused", "paused", "kept" (the form kept: answers missing)
    display: Display | None = None
    text: str = ""


def parse_screen(outputs: list[Any], n_questions: int) -> Screen:
    """Read the rater page's outputs (see ``evalapp.rater_view.RaterComponents.outputs``)."""
    status, form, header = outputs[0], outputs[1], outputs[2]
    token = outputs[N_FIXED_OUTPUTS + n_questions]
    # a pair: the display token is set and the form is not hidden (after a submission that shows the next
    # pair of the same study, the form's visibility is not sent again: its slot is an empty update)
    hidden = isinstance(form, dict) and form.get("visible") is False
    if not hidden and isinstance(token, str) and token and PAIR_RE.search(str(header)):
        match = PAIR_RE.search(str(header))
        if match is None:
            raise AssertionError(f"a pair screen without 'Pair N of T': {str(header)[:200]!r}")
        position, nonce = read_display(token)
        images = tuple(html.unescape(m[1]) for side in outputs[3:5] if (m := IMG_RE.search(str(side))))
        return Screen("pair", Display(token, position, nonce, int(match[1]), int(match[2]), images))
    text = str(status.get("value", "")) if isinstance(status, dict) else ""
    if "ms-status-done" in text:
        return Screen("done", text=text)
    if "ms-status-paused" in text:
        return Screen("paused", text=text)
    if "ms-status-refused" in text:
        return Screen("refused", text=text)
    return Screen("kept", text=str(outputs[-2]))


def question_keys() -> list[str]:
    """The answer keys in form order."""
    from db.questions import DEFAULT_QUESTIONS

    return [q.key for q in DEFAULT_QUESTIONS.questions]


def random_answers(rng: random.Random) -> dict[str, Any]:
    """A complete, valid answer set (sometimes "cannot assess" with a reason, sometimes a comment)."""
    if rng.random() < 0.05:
        return {"cannot_assess": True, "cannot_assess_reason": f"too dark {rng.randrange(10**6)}"}
    answers: dict[str, Any] = {k: rng.randint(1, 5) for k in ("realism_left", "accuracy_left", "realism_right",
                                                              "accuracy_right", "confidence")}  # fmt: skip
    answers["which_generated"] = rng.choice(["left", "right"])
    if rng.random() < 0.2:
        answers["comment"] = f"note {rng.randrange(10**6)} ünïcode ✓"
    return answers


def form_values(answers: dict[str, Any], keys: Sequence[str]) -> list[Any]:
    """Form inputs in question order, as the page sends them (blank text "", unticked boxes False)."""
    blank = {"comment": "", "cannot_assess": False, "cannot_assess_reason": ""}
    return [answers.get(k, blank.get(k)) for k in keys]


class RaterSession:
    """One rater's browser: the session cookie from their personal link and the page's two events."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 120.0) -> None:
        self.url = url
        self.token = token
        self.client = httpx.Client(base_url=url, timeout=timeout_s)
        self.keys = question_keys()
        self.fn: dict[str, int] = {}

    def close(self) -> None:
        self.client.close()

    def enter(self) -> None:
        """Open the personal link (cookie + redirect) and read the page's event ids."""
        try:
            response = self.client.get("/", params={"rater": self.token}, follow_redirects=False)
            if response.status_code != 303 or COOKIE_NAME not in response.cookies:
                raise AssertionError(f"the personal link answered {response.status_code} without a session cookie")
            self.client.cookies.set(COOKIE_NAME, response.cookies[COOKIE_NAME])
            self.fn = endpoints(self.client)
        except SERVER_GONE as exc:
            raise ServerGone(str(exc)) from exc
        for name in ("handle_load", "handle_submit"):
            if name not in self.fn:
                raise AssertionError(f"the rater page has no {name!r} event; it has {sorted(self.fn)}")

    def refresh_page(self) -> None:
        """Reload the HTML page itself (a browser refresh), then :meth:`load` runs the page-load event."""
        try:
            self.client.get("/").raise_for_status()
        except SERVER_GONE as exc:
            raise ServerGone(str(exc)) from exc

    def _screen(self, done: Completed) -> Screen:
        if not done.success:
            raise AssertionError(f"the server refused a rater event: {done.error}")
        return parse_screen(done.data, len(self.keys))

    def load(self) -> tuple[Screen, Completed]:
        """The page-load event: the next unrated pair."""
        done = queue_call(self.client, self.fn["handle_load"], [])
        assert done is not None
        return self._screen(done), done

    def submit(
        self, display: Display, answers: dict[str, Any], *, drop: bool = False
    ) -> tuple[Screen, Completed] | None:
        """Submit ``answers`` for ``display``; None when ``drop`` closed the connection before the answer."""
        # the last value names the display the answers were given for, as the page does
        data = [display.token, *form_values(answers, self.keys), str(random.randint(800, 9000)), "", display.nonce]
        data += [None] * N_EXTRA_INPUTS  # the head-to-head preferences (hidden in these studies)
        done = queue_call(self.client, self.fn["handle_submit"], data, drop_after_start=drop)
        if done is None:
            return None
        return self._screen(done), done


# ----------------------------------------------------------------------------------------------- behaviour


@dataclass(frozen=True)
class Behaviour:
    """How often a rater misbehaves (probabilities per pair) and how much it may do."""

    double_submit: float = 0.1
    retry: float = 0.1
    refresh: float = 0.1
    stale_tab: float = 0.05
    fetch_images: float = 0.1
    max_events: int = 10_000


@dataclass(frozen=True)
class Ack:
    """A submission the server answered with the next screen."""

    rater: str  # the rater's link token
    position: int
    submission_id: str
    answers: dict[str, Any]


@dataclass
class RaterLog:
    """What one rater did: acknowledgements, answers sent per submission id, timings, the last screen."""

    token: str
    acks: list[Ack] = field(default_factory=list)
    sent: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # submission id -> (position, answers)
    submit_s: list[float] = field(default_factory=list)  # round trip of submit + next pair
    submit_handler_s: list[float] = field(default_factory=list)  # Gradio's handler duration
    load_s: list[float] = field(default_factory=list)
    finished: bool = False
    interrupted: bool = False
    events: int = 0
    total: int = 0  # pairs assigned ("Pair N of T")
    did: Counter[str] = field(default_factory=Counter)  # how often each misbehaviour happened
    errors: list[str] = field(default_factory=list)


def _expect_next(screen: Screen, display: Display, log: RaterLog) -> None:
    """After submitting ``display`` the page must move on (a later pair or the thank-you page)."""
    if screen.kind == "done":
        return
    if screen.kind != "pair" or screen.display is None or screen.display.position <= display.position:
        got = screen.display.position if screen.display else screen.kind
        log.errors.append(f"after submitting position {display.position} the page showed {got} ({screen.text[:120]})")


def run_rater(
    url: str,
    log: RaterLog,
    *,
    seed: int,
    behaviour: Behaviour = Behaviour(),
    stop: threading.Event | None = None,
    max_ratings: int | None = None,
) -> RaterLog:
    """Rate pairs until the thank-you page, ``max_ratings`` acknowledged ratings, ``stop`` or the server dies.

    Appends to ``log`` (a rater resuming after a restart passes the same log). Never raises for a dead
    server: the log is marked ``interrupted`` and what was acknowledged so far stays in it.
    """
    rng = random.Random(seed)
    session = RaterSession(url, log.token)
    budget = behaviour.max_events
    new_acks = 0

    def count() -> None:
        nonlocal budget
        budget -= 1
        log.events += 1
        if budget < 0:
            raise RuntimeError(f"rater exceeded {behaviour.max_events} events without finishing")

    def acknowledge(display: Display, answers: dict[str, Any], result: tuple[Screen, Completed]) -> None:
        nonlocal new_acks
        screen, done = result
        log.acks.append(Ack(log.token, display.position, display.submission_id, answers))
        log.submit_s.append(done.round_trip_s)
        log.submit_handler_s.append(done.handler_s)
        new_acks += 1
        _expect_next(screen, display, log)

    try:
        session.enter()
        screen, done = session.load()
        count()
        log.load_s.append(done.round_trip_s)
        if screen.display is not None:
            log.total = screen.display.total
        while screen.kind == "pair" and screen.display is not None:
            if (stop is not None and stop.is_set()) or (max_ratings is not None and new_acks >= max_ratings):
                return log
            display = screen.display
            answers = random_answers(rng)
            log.sent[display.submission_id] = (display.position, answers)
            if rng.random() < behaviour.fetch_images:
                page_images(session, display)
                log.did["fetch_images"] += 1
            if rng.random() < behaviour.refresh:  # reload the page: a new display of the same pair
                log.did["refresh"] += 1
                session.refresh_page()
                again, done = session.load()
                count()
                log.load_s.append(done.round_trip_s)
                if again.kind != "pair" or again.display is None or again.display.position != display.position:
                    log.errors.append(f"a refresh moved from position {display.position} to {again}")
                    return log
                if rng.random() < behaviour.stale_tab:  # the old tab submits first; the new one follows
                    log.did["stale_tab"] += 1
                    result = session.submit(display, answers)
                    count()
                    assert result is not None
                    acknowledge(display, answers, result)
                display = again.display
                answers = random_answers(rng)
                log.sent[display.submission_id] = (display.position, answers)
            if rng.random() < behaviour.retry:  # the connection drops mid-request; the page sends it again
                count()
                log.did["retry"] += 1
                session.submit(display, answers, drop=True)
            if rng.random() < behaviour.double_submit:  # two clicks at once: same token twice, concurrently
                log.did["double_submit"] += 1
                with ThreadPoolExecutor(2) as pool:
                    futures = [pool.submit(session.submit, display, answers) for _ in range(2)]
                    results = [f.result() for f in futures]
                count()
                count()
                for result in results:
                    assert result is not None
                    acknowledge(display, answers, result)
                screen = results[-1][0]
            else:
                result = session.submit(display, answers)
                count()
                assert result is not None
                acknowledge(display, answers, result)
                screen = result[0]
        log.finished = screen.kind == "done"
        if screen.kind not in ("done", "pair"):
            log.errors.append(f"unexpected screen {screen.kind}: {screen.text[:200]}")
    except ServerGone:
        log.interrupted = True
    finally:
        session.close()
    return log


def page_images(session: RaterSession, display: Display) -> None:
    """Fetch the pair's two images from the media route, with the rater's cookie, as the browser does."""
    for src in display.images:
        try:
            response = session.client.get(src)
        except SERVER_GONE as exc:
            raise ServerGone(str(exc)) from exc
        if response.status_code != 200 or not response.content:
            raise AssertionError(f"an image of the rater's pair answered {response.status_code}")


def run_raters(
    url: str,
    logs: Sequence[RaterLog],
    *,
    seed: int = 0,
    behaviour: Behaviour = Behaviour(),
    stop: threading.Event | None = None,
    max_ratings: int | None = None,
) -> list[RaterLog]:
    """Run every rater of ``logs`` at once (one thread each) and wait for all of them."""
    with ThreadPoolExecutor(max(len(logs), 1)) as pool:
        futures = [
            pool.submit(
                run_rater, url, log, seed=seed * 100_003 + n, behaviour=behaviour, stop=stop, max_ratings=max_ratings
            )
            for n, log in enumerate(logs)
        ]
        return [f.result() for f in futures]


# ----------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class StoredRating:
    """A rating row as the check needs it."""

    rater_token_hash: str
    position: int
    submission_id: str
    answers: dict[str, Any]


def stored_ratings(db_url: str) -> list[StoredRating]:
    """Every rating of the load study, with its rater's token hash and assignment position."""
    from sqlalchemy import select

    from db.models import Assignment, Rater, Rating
    from db.session import open_database

    database = open_database(db_url, upgrade=False)
    try:
        with database.session() as session:
            rows = session.execute(
                select(Rater.token_hash, Assignment.position, Rating.submission_id, Rating.answers)
                .join(Assignment, Rating.assignment_id == Assignment.id)
                .join(Rater, Rating.rater_id == Rater.id)
            ).all()
    finally:
        database.dispose()
    return [StoredRating(h, int(p), s, dict(a)) for h, p, s, a in rows]


def check_exactly_once(db_url: str, logs: Sequence[RaterLog], *, complete: bool = False) -> list[str]:
    """Problems found comparing the acknowledgements of ``logs`` with the database (empty when all is well).

    * every acknowledged (rater, position) has exactly one rating, and no position has two;
    * that rating is one the rater sent for that position: its submission id names a display of it,
      and its answers are the answers sent with that display;
    * no rating exists for a position the rater never submitted;
    * with ``complete``, every rater reached the thank-you page and holds one rating for each of its pairs
      (a submission cut off by a kill may be stored without an acknowledgement: it counts once, too).
    """
    from db.raters import hash_token

    problems: list[str] = []
    by_rater: dict[str, dict[int, list[StoredRating]]] = {}
    for row in stored_ratings(db_url):
        by_rater.setdefault(row.rater_token_hash, {}).setdefault(row.position, []).append(row)
    for log in logs:
        mine = by_rater.get(hash_token(log.token), {})
        name = log.token[:6]
        for position, rows in mine.items():
            if len(rows) != 1:
                problems.append(f"rater {name}: position {position} stored {len(rows)} times")
            for row in rows:
                sent = log.sent.get(row.submission_id)
                if sent is None:
                    problems.append(f"rater {name}: position {position} stored under an id it never sent")
                elif sent[0] != position:
                    problems.append(f"rater {name}: id {row.submission_id} sent for {sent[0]}, stored at {position}")
                elif {k: v for k, v in row.answers.items() if v not in (None, False, "")} != sent[1]:
                    problems.append(f"rater {name}: position {position} stored {row.answers}, sent {sent[1]}")
        for ack in log.acks:
            if ack.position not in mine:
                problems.append(f"rater {name}: acknowledged position {ack.position} is missing")
        if complete:
            if not log.finished:
                problems.append(f"rater {name} did not reach the thank-you page ({log.errors[:3]})")
            if sorted(mine) != list(range(log.total)):
                problems.append(f"rater {name}: positions {sorted(mine)} stored, expected 0-{log.total - 1}")
        problems += [f"rater {name}: {e}" for e in log.errors]
    return problems


def first_unrated(db_url: str, token: str) -> int | None:
    """The rater's first assignment position without a rating (None when all are rated)."""
    from sqlalchemy import select

    from db.models import Assignment, Rater, Rating
    from db.raters import hash_token
    from db.session import open_database

    database = open_database(db_url, upgrade=False)
    try:
        with database.session() as session:
            return session.scalar(
                select(Assignment.position)
                .join(Rater, Assignment.rater_id == Rater.id)
                .outerjoin(Rating, Rating.assignment_id == Assignment.id)
                .where(Rater.token_hash == hash_token(token), Rating.id.is_(None))
                .order_by(Assignment.position)
                .limit(1)
            )
    finally:
        database.dispose()


def integrity_check(db_url: str) -> str:
    """``PRAGMA integrity_check`` of a SQLite database (``"ok"`` when sound); PostgreSQL: a full read.

    On PostgreSQL, every table is read in full and ``amcheck`` is not assumed; the result is ``"ok"`` when
    the reads succeed.
    """
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        import sqlite3

        with sqlite3.connect(url.database or "") as conn:
            return "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar()
        return "ok"
    finally:
        engine.dispose()


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    """The ``qs`` percentiles of ``values`` (NaN for an empty list)."""
    import numpy as np

    if not values:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), qs)]
