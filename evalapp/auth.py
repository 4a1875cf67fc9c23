"""Who is calling: anonymous, a rater (signed session cookie) or the coordinator (password, bound server-side).

Identity is established on the server and cannot be forged by a client:

* every browser holds one HttpOnly, SameSite=Lax cookie ``medsynth_session`` whose value is an HMAC-signed
  payload (a random session id; for a rater, the rater's row id and a fingerprint of their token hash, so a
  reissued or revoked link stops the old cookie at once);
* a rater gets that cookie by opening their personal link ``/?rater=TOKEN``: the server checks the token,
  sets the cookie and redirects to ``/`` so the token leaves the address bar (see :func:`enter_response`);
* the coordinator signs in with a password inside the app; :func:`coordinator_login` binds the cookie's
  session id to the coordinator role in a server-side table (never in the cookie), with an absolute expiry
  (:data:`COORDINATOR_SESSION_S`) and an idle expiry (:data:`COORDINATOR_IDLE_S`); signing out ends it.

Wrong passwords are slowed by a per-client back-off (:class:`LoginGuard`): no global lock, no sleeping
in a worker. A client that is backing off is refused before its password is checked (and, at the HTTP
level, before its request joins Gradio's queue: see :mod:`evalapp.http_guard`), so an attacker cannot
delay a coordinator signing in from another address.

Every Gradio handler calls :func:`identify` (or :func:`require_rater` / :func:`require_coordinator`), which
reads the cookie from ``request.request.cookies``. Tokens and cookies are never logged.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import heapq
import hmac
import itertools
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from starlette.requests import Request as StarletteRequest
from starlette.responses import RedirectResponse, Response

from db.raters import rater_access, rater_by_token
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
COORDINATOR_IDLE_S = 2 * 3600
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
class _Failures:
    count: int = 0
    last: float = 0.0
    in_flight_since: float | None = None


@dataclass
class LoginGuard:
    """Per-client back-off for the coordinator password (clients are told apart by their address).

    The first :attr:`free_failures` wrong passwords of a client cost nothing (typos); after that the client
    must wait ``base_delay_s * 2**k`` seconds (capped at :attr:`max_delay_s`) before its next attempt is
    even checked. Failures older than :attr:`window_s` are forgotten; a success clears them. A client may
    have one attempt in flight at a time (:meth:`admit`), so it cannot queue many password checks at once.
    Nothing here sleeps, and :attr:`lock` is held only for a dictionary update. At most :attr:`max_clients`
    addresses are remembered (the oldest are dropped), so a flood of addresses cannot exhaust memory.
    """

    base_delay_s: float = 1.0
    free_failures: int = 3
    max_delay_s: float = 60.0
    window_s: float = 900.0
    in_flight_s: float = 30.0
    max_clients: int = 10_000
    clients: OrderedDict[str, _Failures] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _entry(self, client: str, now: float) -> _Failures | None:
        entry = self.clients.get(client)
        if entry is not None and entry.in_flight_since is None and now - entry.last > self.window_s:
            del self.clients[client]
            return None
        return entry

    def _wait(self, entry: _Failures | None, now: float) -> float:
        if entry is None or entry.count < self.free_failures:
            return 0.0
        delay = min(self.base_delay_s * 2 ** (entry.count - self.free_failures), self.max_delay_s)
        return max(0.0, entry.last + delay - now)

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds ``client`` must wait before a password of theirs is checked (0: now)."""
        now = time.time() if now is None else now
        with self.lock:
            return self._wait(self._entry(client, now), now)

    def admit(self, client: str, now: float | None = None) -> float:
        """Let one attempt of ``client`` through (returns 0), or the seconds to wait: backing off, or an
        attempt of theirs still in flight."""
        now = time.time() if now is None else now
        with self.lock:
            entry = self._entry(client, now)
            wait = self._wait(entry, now)
            if wait > 0:
                return wait
            if (
                entry is not None
                and entry.in_flight_since is not None
                and now - entry.in_flight_since < self.in_flight_s
            ):
                return 1.0
            if entry is None:
                entry = self.clients[client] = _Failures()
                while len(self.clients) > self.max_clients:
                    self.clients.popitem(last=False)
            entry.in_flight_since = now
            return 0.0

    def failures(self, client: str) -> int:
        """How many recent wrong passwords ``client`` has."""
        with self.lock:
            entry = self.clients.get(client)
            return entry.count if entry is not None else 0

    def release(self, client: str) -> None:
        """End ``client``'s attempt in flight without an outcome (it was refused before any check)."""
        with self.lock:
            entry = self.clients.get(client)
            if entry is not None:
                entry.in_flight_since = None

    def record(self, client: str, ok: bool, now: float | None = None) -> float:
        """Note the outcome of an attempt; returns the wait now imposed on ``client``."""
        now = time.time() if now is None else now
        with self.lock:
            if ok:
                self.clients.pop(client, None)
                return 0.0
            entry = self._entry(client, now) or _Failures()
            entry.count, entry.last, entry.in_flight_since = entry.count + 1, now, None
            self.clients[client] = entry
            self.clients.move_to_end(client)
            while len(self.clients) > self.max_clients:
                self.clients.popitem(last=False)
            return self._wait(entry, now)


class CheckQueue:
    """At most ``slots`` password checks (argon2: CPU- and memory-hard) run at once; a waiting check goes
    ahead of those from clients with more recent failures, so a coordinator who has not mistyped is checked
    next even while attackers' checks are waiting. Waiting is bounded (one attempt in flight per client,
    see :meth:`LoginGuard.admit`) and gives up after ``max_wait_s``.
    """

    def __init__(self, slots: int = 1, max_wait_s: float = 30.0) -> None:
        self.free = slots
        self.max_wait_s = max_wait_s
        self.waiting: list[tuple[int, int]] = []
        self.order = itertools.count()
        self.cond = threading.Condition()

    @contextmanager
    def slot(self, priority: int) -> Iterator[bool]:
        """Wait for a slot (lower ``priority`` first); yields False if none came within ``max_wait_s``."""
        granted = self._acquire(priority)
        try:
            yield granted
        finally:
            if granted:
                with self.cond:
                    self.free += 1
                    self.cond.notify_all()

    def _acquire(self, priority: int) -> bool:
        ticket = (priority, next(self.order))
        deadline = time.monotonic() + self.max_wait_s
        with self.cond:
            heapq.heappush(self.waiting, ticket)
            while not (self.free > 0 and self.waiting[0] == ticket):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.waiting.remove(ticket)
                    heapq.heapify(self.waiting)
                    self.cond.notify_all()
                    return False
                self.cond.wait(left)
            heapq.heappop(self.waiting)
            self.free -= 1
            if self.free > 0:
                self.cond.notify_all()  # the next in line may start too
            return True


@dataclass
class CoordinatorSession:
    """A signed-in coordinator browser: absolute and idle expiry."""

    expires_at: float
    last_seen: float


@dataclass
class AuthConfig:
    """Process-wide authentication state, installed by the server with :func:`configure`."""

    database: Database
    secret_key: bytes
    secure_cookies: bool = False
    login_failure_delay_s: float = 1.0
    coordinator_sessions: dict[str, CoordinatorSession] = field(default_factory=dict)
    guard: LoginGuard = field(default_factory=LoginGuard)
    checks: CheckQueue = field(default_factory=CheckQueue)
    lock: threading.Lock = field(default_factory=threading.Lock)


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
        database=database,
        secret_key=key,
        secure_cookies=secure_cookies,
        login_failure_delay_s=login_failure_delay_s,
        guard=LoginGuard(base_delay_s=login_failure_delay_s),
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
        access = rater_access(session, rater_id)
    if access is None or fingerprint is None:
        return False
    return (
        not access.revoked
        and access.study_open
        and hmac.compare_digest(token_fingerprint(access.token_hash), fingerprint)
    )


def _coordinator_sid_active(sid: str, now: float | None = None) -> bool:
    """Whether ``sid`` is a signed-in coordinator session (expired ones are dropped; a hit refreshes it)."""
    cfg = config()
    now = time.time() if now is None else now
    with cfg.lock:
        held = cfg.coordinator_sessions.get(sid)
        if held is None:
            return False
        if held.expires_at < now or now - held.last_seen > COORDINATOR_IDLE_S:
            del cfg.coordinator_sessions[sid]
            return False
        held.last_seen = now
        return True


def is_coordinator(request: gr.Request | StarletteRequest | None) -> bool:
    """Whether ``request`` carries a signed-in coordinator's cookie (in memory: no database query)."""
    sess = read_session(request)
    return sess is not None and _coordinator_sid_active(sess.sid)


def identify(request: gr.Request | StarletteRequest | None) -> Identity:
    """Who sent ``request``: the coordinator, an active rater, or anonymous."""
    sess = read_session(request)
    if sess is None:
        return ANONYMOUS
    if _coordinator_sid_active(sess.sid):
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


def client_key(request: gr.Request | StarletteRequest | None) -> str:
    """The address a request came from (behind a proxy, uvicorn puts the forwarded client here)."""
    inner = _starlette(request)
    host = inner.client.host if inner is not None and inner.client is not None else "?"
    return host


@dataclass(frozen=True)
class LoginResult:
    """The outcome of a sign-in: ``ok``, or how long this client must wait before trying again."""

    ok: bool
    retry_after_s: float = 0.0

    def message(self) -> str:
        """What the sign-in form says (the same for a wrong password and a missing session)."""
        if self.ok:
            return ""
        if self.retry_after_s > 0:
            return f"Too many wrong passwords from this address: wait {max(1, round(self.retry_after_s))} s."
        return "Wrong password, or this browser has no session yet (reload the page)."


def coordinator_sign_in(request: gr.Request | StarletteRequest | None, password: str) -> LoginResult:
    """Verify the password and bind this browser's session to the coordinator role.

    A client (address) that is backing off after wrong passwords is refused at once, without checking the
    password (see :class:`LoginGuard`); nothing sleeps. Password checks take turns (:class:`CheckQueue`),
    clients without recent failures first, so a coordinator signs in at normal speed while attackers'
    checks wait. A request without a session cookie fails like a wrong
    password (open the page in a browser first).
    """
    cfg = config()
    client = client_key(request)
    wait = cfg.guard.retry_after(client)
    if wait > 0:
        cfg.guard.release(client)
        return LoginResult(False, wait)
    sess = read_session(request)
    if sess is None:
        ok = False
    else:
        with cfg.checks.slot(cfg.guard.failures(client)) as granted:
            if not granted:  # too many checks waiting: not this client's fault, no failure recorded
                cfg.guard.release(client)
                return LoginResult(False, 5.0)
            ok = verify_coordinator_password(cfg.database, password)
    wait = cfg.guard.record(client, ok)
    if not ok or sess is None:
        return LoginResult(False, wait)
    now = time.time()
    with cfg.lock:
        cfg.coordinator_sessions[sess.sid] = CoordinatorSession(expires_at=now + COORDINATOR_SESSION_S, last_seen=now)
    return LoginResult(True)


def coordinator_login(request: gr.Request | StarletteRequest | None, password: str) -> bool:
    """:func:`coordinator_sign_in`, as a plain yes/no."""
    return coordinator_sign_in(request, password).ok


def coordinator_logout(request: gr.Request | StarletteRequest | None) -> None:
    """End the coordinator session bound to this browser (no-op otherwise)."""
    sess = read_session(request)
    if sess is not None:
        cfg = config()
        with cfg.lock:
            cfg.coordinator_sessions.pop(sess.sid, None)
