"""The MedSynth web app: one FastAPI application serving the rater page, the coordinator and the demo.

Layout of the URL space:

* ``/`` — the blinded rater page (its own Gradio Blocks: a rater's browser never receives the coordinator's
  components or API); ``/?rater=TOKEN`` is a rater's personal link: the middleware checks the token, sets
  the signed session cookie and redirects to ``/`` (see :mod:`evalapp.auth`);
* ``/m/<token>`` — blinded images (:mod:`evalapp.media_routes`);
* ``/coordinator/`` — the coordinator's Blocks, built by ``evalapp.coordinator_view.build_coordinator_tab``;
* ``/demo/`` — the public demo, built by ``evalapp.demo_view.build_demo_tab`` (only with ``demo=True``).

``serve`` runs it with uvicorn; the access log is off and, if switched on, query strings are redacted, so
rater tokens never reach a log.

Around Gradio's own routes, :class:`evalapp.http_guard.GradioGuard` closes what MedSynth does not use and
narrows uploads, file downloads and coordinator sign-in per mount; every response carries the headers of
:data:`SECURITY_HEADERS`. ``docs/deployment.md`` lists every endpoint and who may use it.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gradio as gr
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.jobs import DbJobStore, Worker
from db.settings import PUBLIC_URL_SETTING, set_setting
from db.workspace import Workspace
from evalapp import auth
from evalapp.coordinator_view import build_coordinator_tab
from evalapp.demo_view import build_demo_tab
from evalapp.http_guard import GradioGuard, MountPolicy
from evalapp.media_routes import install_media_routes
from evalapp.rater_view import build_rater_blocks, page_assets

log = logging.getLogger("medsynth.server")

COORDINATOR_PATH = "/coordinator"
DEMO_PATH = "/demo"
MAX_UPLOAD_BYTES = 1024 * 1024  # the coordinator's TOML upload; no other app takes files
SIGNIN_FN = "coordinator_signin"
# Gradio's page needs inline scripts (its config) and runs event ``js=`` snippets with Function(): hence
# 'unsafe-inline' and 'unsafe-eval' for scripts. Everything else is same-origin only: no framing, no
# plugins, no external fonts, scripts or connections (a rater page cannot send anything elsewhere).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "media-src 'self' data: blob:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


@dataclass
class AppContext:
    """What every view of the app needs: the workspace, switches, the signing key and the public URL."""

    workspace: Workspace
    demo_enabled: bool = False
    secret_key: bytes = b""
    base_url: str = "http://127.0.0.1:7860"
    login_failure_delay_s: float = 1.0
    #: the background worker with every job kind registered (``app.build_worker``); a bare one if None
    worker: Worker | None = None

    def jobs(self) -> Worker:
        """The started background worker (a bare one on the database if the caller wired none in)."""
        if self.worker is None:
            self.worker = Worker(DbJobStore(self.workspace.database), workspace=self.workspace)
        return self.worker.start()

    def rater_link(self, token: str) -> str:
        """The personal link of a rater holding ``token``."""
        from db.raters import rater_link

        return rater_link(self.base_url, token)


# ----------------------------------------------------------------------------------------------- middleware


class SessionMiddleware:
    """Pure-ASGI middleware: personal-link entry, a session cookie for every page, security headers.

    * ``GET /?rater=TOKEN`` is answered here (cookie + redirect to ``/``): the token never reaches Gradio;
    * a page load without a valid session cookie gets a fresh anonymous one (the coordinator's login binds
      to it);
    * every response gets the :data:`SECURITY_HEADERS` (CSP with ``frame-ancestors 'none'``,
      ``Referrer-Policy: no-referrer``, ``X-Content-Type-Options: nosniff``...).
    """

    def __init__(self, app: ASGIApp, page_paths: tuple[str, ...]) -> None:
        self.app = app
        self.page_paths = page_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        is_get = scope.get("method") == "GET"
        if is_get and path == "/":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if "rater" in query:
                response = auth.enter_response((query.get("rater") or [""])[0])
                await response(scope, receive, send)
                return
        needs_cookie = is_get and path in self.page_paths and auth.read_session(Request(scope)) is None
        cookie_header = b""
        if needs_cookie:
            cookie = SimpleCookie()
            cookie[auth.COOKIE_NAME] = auth.new_session_value()
            morsel = cookie[auth.COOKIE_NAME]
            morsel["path"] = "/"
            morsel["httponly"] = True
            morsel["samesite"] = "Lax"
            morsel["max-age"] = str(auth.RATER_COOKIE_MAX_AGE_S)
            if auth.config().secure_cookies:
                morsel["secure"] = True
            cookie_header = morsel.OutputString().encode("latin-1")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if cookie_header:
                    headers.append((b"set-cookie", cookie_header))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RedactQueryFilter(logging.Filter):
    """Strip query strings from uvicorn access-log records (personal links carry tokens there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?", 1)[0], *args[3:])
        return True


# ----------------------------------------------------------------------------------------------- assembly


def files_folder(name: str) -> Path:
    """A fresh private folder (mode 0700) inside Gradio's upload folder for one mount's output files."""
    root = Path(gr.utils.get_upload_folder())
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"medsynth-{name}-", dir=root)).resolve()


def _mount(
    app: FastAPI,
    blocks: gr.Blocks,
    path: str,
    *,
    css: str = "",
    head: str = "",
    files_dir: Path | None = None,
    max_file_size: int = 0,
    allowed_paths: list[str] | None = None,
) -> None:
    """Mount ``blocks`` at ``path``: queue only, no monitoring, Gradio's own path checks on, and every file
    its handlers return copied into ``files_dir`` (the only folder :class:`GradioGuard` serves for it)."""
    blocks.queue(api_open=False, default_concurrency_limit=4, max_size=512)
    if files_dir is not None:
        for block in blocks.blocks.values():
            block.GRADIO_CACHE = str(files_dir)
    # Uploaded and returned files are deleted an hour after they were made (and all at a restart).
    blocks.delete_cache = (600, 3600)
    gr.mount_gradio_app(
        app,
        blocks,
        path=path,
        footer_links=[],
        ssr_mode=False,
        show_error=True,
        mcp_server=False,
        pwa=False,
        run_history=False,
        css=css or None,
        head=head or None,
        theme=gr.themes.Soft(),
        enable_monitoring=False,
        max_file_size=max_file_size or 1,
        allowed_paths=allowed_paths,
    )
    # Gradio checks that an input file lies in its upload folder (and that a returned file is one the app
    # may serve) only once the Blocks "has launched", which a mounted app never does: switch it on.
    blocks.has_launched = True


def _fn_ids(blocks: gr.Blocks, name: str) -> frozenset[int]:
    return frozenset(fid for fid, fn in blocks.fns.items() if getattr(fn, "name", None) == name)


def build_app(ctx: AppContext) -> FastAPI:
    """The whole app for ``ctx``: auth configured, media routes, coordinator and demo mounts, rater page at ``/``."""
    auth.configure(
        ctx.workspace.database,
        ctx.secret_key or None,
        secure_cookies=ctx.base_url.startswith("https://"),
        login_failure_delay_s=ctx.login_failure_delay_s,
    )
    if not ctx.secret_key:
        ctx.secret_key = auth.config().secret_key
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    install_media_routes(app, ctx.workspace.database, ctx.workspace.store)
    pages = ["/"]
    policies = [MountPolicy(prefix="")]  # the rater page: no uploads, no files
    ctx.jobs()  # every job kind is registered and queued jobs run before a request arrives
    with gr.Blocks(title="MedSynth coordinator", analytics_enabled=False) as blocks:
        build_coordinator_tab(ctx)
    folder = files_folder("coordinator")
    reports = Path(ctx.workspace.settings.data_dir) / "reports"  # returned reports come from here
    _mount(
        app,
        blocks,
        COORDINATOR_PATH,
        files_dir=folder,
        max_file_size=MAX_UPLOAD_BYTES,
        allowed_paths=[str(reports)],
    )
    policies.append(
        MountPolicy(
            prefix=COORDINATOR_PATH,
            files_dir=folder,
            coordinator_only=True,
            max_upload_bytes=MAX_UPLOAD_BYTES,
            signin_fns=_fn_ids(blocks, SIGNIN_FN),
        )
    )
    pages += [COORDINATOR_PATH, COORDINATOR_PATH + "/"]
    if ctx.demo_enabled:
        with gr.Blocks(title="MedSynth demo", analytics_enabled=False) as blocks:
            build_demo_tab(ctx)
        folder = files_folder("demo")
        _mount(app, blocks, DEMO_PATH, files_dir=folder)
        policies.append(MountPolicy(prefix=DEMO_PATH, files_dir=folder))
        pages += [DEMO_PATH, DEMO_PATH + "/"]
    rater_blocks, _ = build_rater_blocks()
    css, head = page_assets()
    _mount(app, rater_blocks, "/", css=css, head=head, files_dir=files_folder("rater"))
    return SessionMiddleware(GradioGuard(app, policies), tuple(pages))  # type: ignore[return-value]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """uvicorn settings: no access log (tokens travel in query strings), warnings only."""
    logging.getLogger("uvicorn.access").addFilter(RedactQueryFilter())
    return uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", lifespan="on")


@dataclass
class RunningServer:
    """A server running in a background thread (tests, benchmarks)."""

    server: uvicorn.Server
    thread: threading.Thread
    url: str
    ctx: AppContext

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_server(ctx: AppContext, host: str = "127.0.0.1", port: int | None = None) -> RunningServer:
    """Build the app and run it in a daemon thread; returns once it accepts connections."""
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    if ctx.base_url == AppContext.base_url:
        ctx.base_url = url
    server = uvicorn.Server(uvicorn_config(build_app(ctx), host, port))
    thread = threading.Thread(target=server.run, name="medsynth-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the MedSynth server did not start on {url}")
        time.sleep(0.05)
    return RunningServer(server, thread, url, ctx)


def serve(
    workspace: Workspace,
    host: str = "127.0.0.1",
    port: int = 7860,
    demo: bool = False,
    root_url: str | None = None,
    *,
    worker: Worker | None = None,
    notice: str = "",
) -> None:
    """Serve the app until interrupted. ``root_url`` is the public address used in rater links.

    ``worker`` carries every job kind (``app.build_worker`` registers generation, demo, compare and report);
    it starts before the server accepts a request, so jobs queued before a restart run again. ``notice`` is
    printed after the address (the demo study's links).
    """
    base = (root_url or f"http://{host}:{port}").rstrip("/")
    ctx = AppContext(workspace=workspace, demo_enabled=demo, base_url=base, worker=worker)
    set_setting(workspace.database, PUBLIC_URL_SETTING, base)  # `rater add` prints links with this address
    app = build_app(ctx)
    log.info("serving on %s with job kinds %s", base, ", ".join(sorted(ctx.jobs().handlers)) or "none")
    print(f"MedSynth is serving on {base}/ (coordinator: {base}{COORDINATOR_PATH}/)", flush=True)
    if notice:
        print(notice, flush=True)
    uvicorn.Server(uvicorn_config(app, host, port)).run()
