"""What Gradio serves around MedSynth's handlers, narrowed to what each page needs (a pure-ASGI middleware).

Gradio mounts the same routes under every app (``/``, ``/coordinator``, ``/demo``): uploads, a file route
that serves any file under its upload folder, monitoring, streaming, proxies. :class:`GradioGuard` sits in
front of the FastAPI app and decides per mount (:class:`MountPolicy`):

* **uploads** (``POST <mount>/gradio_api/upload``): only where a handler takes a file (the coordinator's
  TOML), only with a signed-in coordinator's cookie (403 otherwise; 404 on the other apps), only with a
  ``Content-Length`` of at most the mount's cap (411 / 413 before a byte is read);
* **files** (``<mount>/gradio_api/file=PATH``): only files inside the mount's own cache folder (where
  Gradio copies what that app's handlers return), never a URL (Gradio would fetch it) and, on the
  coordinator's mount, only with a coordinator cookie (403) and ``Cache-Control: no-store``; the rater
  page needs no files (404);
* **sign-in**: a queue request for the coordinator's sign-in from a client that is backing off after wrong
  passwords (or has an attempt in flight) is answered ``429`` with ``Retry-After`` before it joins the
  queue, so it holds no worker slot (:class:`evalapp.auth.LoginGuard`);
* **closed**: monitoring, streaming input, proxy, component-server, recording, run-history and vibe-edit
  routes answer 404 on every mount (MedSynth uses none of them).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evalapp import auth

log = logging.getLogger(__name__)

API = "/gradio_api"
UPLOAD = f"{API}/upload"
FILE_ROUTES = (f"{API}/file=", f"{API}/file/")
QUEUE_JOIN = f"{API}/queue/join"
CLOSED_PREFIXES = (
    "/monitoring",
    f"{API}/monitoring",
    f"{API}/stream",
    f"{API}/proxy=",
    f"{API}/component_server",
    f"{API}/process_recording",
    f"{API}/run-history",
    f"{API}/runs",
    f"{API}/vibe",
    f"{API}/undo-vibe",
    f"{API}/dev/",
    f"{API}/mcp",
    f"{API}/openapi.json",
    "/login",
    "/logout",
)
MAX_JOIN_BODY = 4 * 1024 * 1024  # a queue request of the coordinator (a pasted config is at most 100k chars)
MULTIPART_OVERHEAD = 16 * 1024  # boundaries and part headers around the uploaded bytes
STATIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/theme.css", "/favicon.ico", "/manifest.json", "/robots.txt")


@dataclass(frozen=True)
class MountPolicy:
    """What one mounted Gradio app may do beyond its queue."""

    prefix: str  # "" for the app at "/"
    files_dir: Path | None = None  # the only folder its file route serves (None: no files)
    coordinator_only: bool = False  # files and uploads need a signed-in coordinator; responses are no-store
    max_upload_bytes: int = 0  # 0: no uploads
    signin_fns: frozenset[int] = frozenset()  # fn_index of the coordinator's sign-in events


def _status(code: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(text, status_code=code, headers={"Cache-Control": "no-store", **(headers or {})})


def inside(raw_path: str, folder: Path) -> bool:
    """Whether ``raw_path`` (as a file route receives it) names a file inside ``folder`` (symlinks resolved)."""
    if not raw_path or "://" in raw_path or raw_path.startswith(("http:", "https:", "//")) or "\x00" in raw_path:
        return False
    try:
        target = Path(os.path.abspath(raw_path)).resolve()
        return target.is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


class GradioGuard:
    """Pure-ASGI middleware applying a :class:`MountPolicy` per mounted app (see the module docstring)."""

    def __init__(self, app: ASGIApp, policies: list[MountPolicy]) -> None:
        self.app = app
        # longest prefix first, so "/coordinator" wins over "" (the rater app at "/")
        self.policies = sorted(policies, key=lambda p: len(p.prefix), reverse=True)

    def policy_for(self, path: str) -> tuple[MountPolicy, str]:
        """The policy of the mount serving ``path`` and the path inside that mount."""
        for policy in self.policies:
            if not policy.prefix:
                return policy, path
            if path == policy.prefix or path.startswith(policy.prefix + "/"):
                return policy, path[len(policy.prefix) :] or "/"
        return MountPolicy(prefix=""), path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy, sub = self.policy_for(scope.get("path", ""))
        method = scope.get("method", "GET")
        refusal: Response | None = None
        no_store = policy.coordinator_only and not sub.startswith(STATIC_PREFIXES)
        if sub.startswith(CLOSED_PREFIXES):
            refusal = _status(404, "Not Found")
        elif sub.rstrip("/") == UPLOAD:
            refusal = self.check_upload(policy, scope)
        elif sub.startswith(FILE_ROUTES):
            refusal = self.check_file(policy, sub, scope)
            no_store = True
        elif sub == QUEUE_JOIN and method == "POST" and policy.signin_fns:
            body = await self.read_body(receive)
            if body is None:
                refusal = _status(413, "Request too large")
            else:
                refusal = self.check_signin(policy, body, scope)
                receive = self.replay(body, receive)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if no_store:
            send = self.with_no_store(send)
        await self.app(scope, receive, send)

    # ------------------------------------------------------------------------------------------- checks

    @staticmethod
    def check_upload(policy: MountPolicy, scope: Scope) -> Response | None:
        if policy.max_upload_bytes <= 0:
            return _status(404, "Not Found")
        if policy.coordinator_only and not auth.is_coordinator(Request(scope)):
            return _status(403, "Sign in as the study coordinator to upload files.")
        length = Request(scope).headers.get("content-length")
        if length is None or not length.isdigit():
            return _status(411, "Length Required")
        if int(length) > policy.max_upload_bytes + MULTIPART_OVERHEAD:
            return _status(413, f"Uploads are limited to {policy.max_upload_bytes // 1024} KiB.")
        return None

    @staticmethod
    def check_file(policy: MountPolicy, sub: str, scope: Scope) -> Response | None:
        if policy.coordinator_only and not auth.is_coordinator(Request(scope)):
            return _status(403, "Sign in as the study coordinator to download this file.")
        raw = next(sub[len(p) :] for p in FILE_ROUTES if sub.startswith(p))
        if policy.files_dir is None or not inside(raw, policy.files_dir):
            return _status(404, "Not Found")
        return None

    @staticmethod
    def check_signin(policy: MountPolicy, body: bytes, scope: Scope) -> Response | None:
        try:
            fn_index = json.loads(body).get("fn_index")
        except (ValueError, AttributeError):
            return None  # Gradio answers malformed requests itself
        if fn_index not in policy.signin_fns:
            return None
        client = auth.client_key(Request(scope))
        wait = auth.config().guard.admit(client)
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        log.info("coordinator sign-in refused for %.0f s (back-off)", seconds)
        return JSONResponse(
            {"detail": auth.LoginResult(False, seconds).message()},
            status_code=429,
            headers={"Retry-After": str(seconds), "Cache-Control": "no-store"},
        )

    # ------------------------------------------------------------------------------------------- plumbing

    @staticmethod
    async def read_body(receive: Receive) -> bytes | None:
        """The whole request body, or None when it exceeds :data:`MAX_JOIN_BODY`."""
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_JOIN_BODY:
                return None
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        return b"".join(chunks)

    @staticmethod
    def replay(body: bytes, receive: Receive) -> Receive:
        """A ``receive`` that yields ``body`` once, then defers to the real one (disconnects)."""
        sent = False

        async def again() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return again

    @staticmethod
    def with_no_store(send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message["headers"] = [*headers, (b"cache-control", b"no-store")]
            await send(message)

        return sending
