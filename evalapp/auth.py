"""Who is calling: anonymous, a rater (signed session cookie) or the coordinator (password, bound server-side).

Identity is established on the server and cannot be forged by a client:

* every browser holds one HttpOnly, SameSite=Lax cookie ``medsynth_session`` whose value is an HMAC-signed
  payload (a random session id; for a rater, the rater's row id and a fingerprint of their token hash, so a
  reissued or revoked link stops the old cookie at once);
* a rater gets that cookie by opening their personal link ``/?rater=TOKEN``: the server checks the token,
  sets the cookie and redirects to ``/`` so the token leaves the address bar (see :func:`enter_response`);
* the coordinator signs in with a password inside the app; :func:`coordinator_login` binds the cookie's
  session id to the coordinator role in a server-side table (never in the cookie), with an expiry.

Every Gradio handler calls :func:`identify` (or :func:`require_rater` / :func:`require_coordinator`), which
reads the cookie from ``request.request.cookies``. Tokens and cookies are never logged.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from starlette.requests import Request as StarletteRequest
from starlette.responses import RedirectResponse, Response

from db.raters import active_token_hash, rater_by_token
from db.session import Database
from db.settings import (  # noqa: F401 - the password and secret live in db.settings; re-exported for callers
    MIN_PASSWORD_CHARS,
    PASSWORD_ENV,
    PASSWORD_SETTING,
    SECRET_SETTING,
    coordinator_password_hash,
    load_or_create_secret,
    set_coordinator_password,
)

COOKIE_NAME = "medsynth_session"
RATER_COOKIE_MAX_AGE_S = 120 * 24 * 3600
COORDINATOR_SESSION_S = 12 * 3600
REFUSAL = "This page is only open to invited raters. Please use the personal link you were sent."


class Role(enum.StrEnum):
    """What a caller may do."""

    ANONYMOUS = "anonymous"
    RATER = "rater"
    COORDINATOR = "coordinator"


@dataclass(frozen=True)
class Identity:
    """The caller of a handler, as established by the server."""

    role: Role
    rater_id: int | None = None


ANONYMOUS = Identity(Role.ANONYMOUS)


@dataclass(frozen=True)
class Session:
    """The decoded, verified contents of a session cookie."""

    sid: str
    rater_id: int | None = None
    fingerprint: str | None = None


@dataclass
class AuthConfig:
    """Process-wide authentication state, installed by the server with :func:`configure`."""

    database: Database
    secret_key: bytes
    secure_cookies: bool = False
    login_failure_delay_s: float = 1.0
    coordinator_sessions: dict[str, float] = field(default_factory=dict)
    failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    login_lock: threading.Lock = field(default_factory=threading.Lock)


_config: AuthConfig | None = None


def configure(
    database: Database,
    secret_key: bytes | None = None,
    *,
    secure_cookies: bool = False,
    login_failure_delay_s: float = 1.0,
) -> AuthConfig:
    """Install the authentication state used by every handler (the key defaults to the stored one)."""
    global _config
    key = secret_key if secret_key is not None else load_or_create_secret(database)
    if len(key) < 16:
        raise ValueError("the session secret key must be at least 16 bytes")
    _config = AuthConfig(
        database=database, secret_key=key, secure_cookies=secure_cookies, login_failure_delay_s=login_failure_delay_s
    )
    return _config


def config() -> AuthConfig:
    """The installed :class:`AuthConfig` (raises if the server has not configured authentication)."""
    if _config is None:
        raise RuntimeError("evalapp.auth is not configured; call evalapp.auth.configure(database) first")
    return _config


# ----------------------------------------------------------------------------------------------- cookies


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(payload: dict[str, Any], key: bytes) -> str:
    """``base64(json).base64(hmac-sha256)`` of ``payload``."""
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(value: str | None, key: bytes) -> dict[str, Any] | None:
    """The payload of a value made by :func:`sign`, or None if it is malformed or its signature is wrong."""
    if not value or len(value) > 1024 or value.count(".") != 1:
        return None
    body, mac = value.split(".")
    expected = _b64(hmac.new(key, body.encode("ascii", "replace"), hashlib.sha256).digest())
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        payload = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def token_fingerprint(token_hash: str) -> str:
    """A short tag of a rater's stored token hash: a new link (or a revoked one) invalidates old cookies."""
    return token_hash[:16]


def _starlette(request: gr.Request | StarletteRequest | None) -> StarletteRequest | None:
    if request is None:
        return None
    if isinstance(request, StarletteRequest):
        return request
    inner = getattr(request, "request", None)
    return inner if isinstance(inner, StarletteRequest) else None


def _cookie_value(request: gr.Request | StarletteRequest | None) -> str | None:
    inner = _starlette(request)
    if inner is not None:
        return inner.cookies.get(COOKIE_NAME)
    if isinstance(request, gr.Request):  # a pickled request (kwargs only)
        cookies = request.kwargs.get("cookies") or {}
        return cookies.get(COOKIE_NAME) if isinstance(cookies, dict) else None
    return None


def read_session(request: gr.Request | StarletteRequest | None) -> Session | None:
    """The verified session carried by the request's cookie, or None."""
    payload = unsign(_cookie_value(request), config().secret_key)
    if payload is None:
        return None
    sid, rater_id, fp = payload.get("s"), payload.get("r"), payload.get("f")
    if not isinstance(sid, str) or len(sid) < 16:
        return None
    if rater_id is not None and (not isinstance(rater_id, int) or not isinstance(fp, str)):
        return None
    return Session(sid=sid, rater_id=rater_id, fingerprint=fp)


def new_session_value(rater_id: int | None = None, token_hash: str | None = None) -> str:
    """A fresh signed cookie value (a new random session id)."""
    payload: dict[str, Any] = {"s": secrets.token_urlsafe(18), "t": int(time.time())}
    if rater_id is not None and token_hash is not None:
        payload["r"] = rater_id
        payload["f"] = token_fingerprint(token_hash)
    return sign(payload, config().secret_key)


def set_session_cookie(response: Response, value: str, *, max_age: int | None = RATER_COOKIE_MAX_AGE_S) -> None:
    """Attach the session cookie (HttpOnly, SameSite=Lax, Secure behind https)."""
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=config().secure_cookies,
    )


def enter_response(token: str | None) -> Response:
    """Answer a personal link: a valid token sets the rater's cookie; either way redirect to ``/``.

    The redirect removes the token from the address bar and the browser history. A wrong or revoked token
    replaces any session with an anonymous one, so the page shows the polite refusal.
    """
    with config().database.session() as session:
        rater = rater_by_token(session, token)
        value = new_session_value(rater.id, rater.token_hash) if rater is not None else new_session_value()
    response = RedirectResponse("/", status_code=303)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    set_session_cookie(response, value)
    return response


# ----------------------------------------------------------------------------------------------- identity


def _rater_active(rater_id: int, fingerprint: str | None) -> bool:
    with config().database.session() as session:
        token_hash = active_token_hash(session, rater_id)
    if token_hash is None or fingerprint is None:
        return False
    return hmac.compare_digest(token_fingerprint(token_hash), fingerprint)


def identify(request: gr.Request | StarletteRequest | None) -> Identity:
    """Who sent ``request``: the coordinator, an active rater, or anonymous."""
    sess = read_session(request)
    if sess is None:
        return ANONYMOUS
    cfg = config()
    with cfg.lock:
        expiry = cfg.coordinator_sessions.get(sess.sid)
        if expiry is not None and expiry < time.time():
            del cfg.coordinator_sessions[sess.sid]
            expiry = None
    if expiry is not None:
        return Identity(Role.COORDINATOR)
    if sess.rater_id is not None and _rater_active(sess.rater_id, sess.fingerprint):
        return Identity(Role.RATER, sess.rater_id)
    return ANONYMOUS


def require_rater(request: gr.Request | StarletteRequest | None) -> Identity:
    """The calling rater; otherwise a polite :class:`gr.Error` that reveals nothing."""
    who = identify(request)
    if who.role != Role.RATER:
        raise gr.Error(REFUSAL, print_exception=False)
    return who


def require_coordinator(request: gr.Request | StarletteRequest | None) -> Identity:
    """The coordinator; otherwise a polite :class:`gr.Error` that reveals nothing."""
    who = identify(request)
    if who.role != Role.COORDINATOR:
        raise gr.Error("Please sign in as the study coordinator first.", print_exception=False)
    return who


# ----------------------------------------------------------------------------------------------- coordinator


def verify_coordinator_password(database: Database, password: str) -> bool:
    """Check ``password`` against $MEDSYNTH_COORDINATOR_PASSWORD (constant time) or the stored argon2 hash."""
    if not isinstance(password, str) or not password:
        return False
    env = os.environ.get(PASSWORD_ENV)
    if env and hmac.compare_digest(env.encode("utf-8", "surrogatepass"), password.encode("utf-8", "surrogatepass")):
        return True
    stored = coordinator_password_hash(database)
    if not stored:
        return False
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    try:
        return PasswordHasher().verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _client_key(request: gr.Request | StarletteRequest | None) -> str:
    inner = _starlette(request)
    host = inner.client.host if inner is not None and inner.client is not None else "?"
    return host


def coordinator_login(request: gr.Request | StarletteRequest | None, password: str) -> bool:
    """Verify the password and bind this browser's session to the coordinator role.

    Checks are serialised and every failure is followed by a delay that doubles with each recent failure
    from the same address (up to 30 s), so guessing is slow. Returns False without detail on any failure,
    including a request that carries no session cookie (open the page in a browser first).
    """
    cfg = config()
    sess = read_session(request)
    client = _client_key(request)
    with cfg.login_lock:
        ok = sess is not None and verify_coordinator_password(cfg.database, password)
        if ok:
            with cfg.lock:
                cfg.failures.pop(client, None)
                cfg.coordinator_sessions[sess.sid] = time.time() + COORDINATOR_SESSION_S  # type: ignore[union-attr]
            return True
        count, last = cfg.failures.get(client, (0, 0.0))
        if time.time() - last > 600:
            count = 0
        cfg.failures[client] = (count + 1, time.time())
        time.sleep(min(cfg.login_failure_delay_s * (2**count), 30.0))
    return False


def coordinator_logout(request: gr.Request | StarletteRequest | None) -> None:
    """End the coordinator session bound to this browser (no-op otherwise)."""
    sess = read_session(request)
    if sess is not None:
        cfg = config()
        with cfg.lock:
            cfg.coordinator_sessions.pop(sess.sid, None)
