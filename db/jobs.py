"""Background jobs: the one job record, where job state lives, and the worker that runs jobs off the request.

The app never does long work inside a request handler: it ``submit``s a job (a kind and JSON parameters)
to the :class:`Worker` and polls ``status``. Handlers are registered by kind, each on a :class:`Lane`; every
lane has its own queue and thread, so the live demo (lane ``live``) never waits behind a batch generation or
a report (lane ``batch``, one job at a time). Job state lives in a :class:`JobStore`: in memory
(:class:`MemoryJobStore`) or the database's ``jobs`` table (:class:`DbJobStore`), so a page reload, another
process or a restarted server sees the same state. On start, jobs a stopped process left ``running`` are
marked failed and ``queued`` ones run again.

The handlers themselves live with their rooms (``generation.worker``, ``analysis.jobs``); ``app.py`` registers
them all before the server accepts a request.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import Job, JobStatus

if TYPE_CHECKING:
    from db.session import Database
    from db.workspace import Workspace

__all__ = [
    "FINISHED",
    "DbJobStore",
    "Handler",
    "JobContext",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "Lane",
    "MemoryJobStore",
    "Worker",
    "list_jobs",
]

log = logging.getLogger(__name__)

FINISHED = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})
INTERRUPTED = "interrupted (the app stopped)"
#: a running job whose worker has not reported for this long is taken as interrupted
STALE_AFTER_S = 600.0


class Lane(enum.StrEnum):
    """A queue with its own thread: ``live`` (the demo, short) never waits behind ``batch`` (long work)."""

    LIVE = "live"
    BATCH = "batch"


@dataclass(frozen=True)
class JobRecord:
    """A snapshot of one job: the only job model outside the ORM row (worker, console and tests use it)."""

    id: int
    kind: str
    params: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    progress: float = 0.0
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


def _now() -> datetime:
    """UTC now without tzinfo, as the database stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


def _record(row: Job) -> JobRecord:
    return JobRecord(
        id=row.id,
        kind=row.kind,
        params=dict(row.params or {}),
        status=JobStatus(row.status),
        progress=float(row.progress or 0.0),
        message=row.message or "",
        result=dict(row.result or {}),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


class JobStore(Protocol):
    """Where job state lives."""

    def create(self, kind: str, params: dict[str, Any]) -> JobRecord:
        """Add a queued job and return it."""
        ...

    def get(self, job_id: int) -> JobRecord:
        """The job's current state (``KeyError`` if unknown)."""
        ...

    def update(self, job_id: int, **changes: Any) -> JobRecord:
        """Change fields of a job and return its new state."""
        ...

    def with_status(self, status: JobStatus) -> list[JobRecord]:
        """Jobs in ``status``, oldest first."""
        ...

    def claim(self, job_id: int, owner: str) -> bool:
        """Atomically move a queued job to running for ``owner``; False if another worker got it first."""
        ...

    def fail_abandoned(self, stale_after_s: float) -> list[int]:
        """Fail running jobs whose worker has not reported for ``stale_after_s`` (it stopped); their ids."""
        ...


class MemoryJobStore:
    """A thread-safe in-process :class:`JobStore` (tests, one-off CLI runs)."""

    def __init__(self) -> None:
        self._jobs: dict[int, JobRecord] = {}
        self._lock = threading.Lock()

    def create(self, kind: str, params: dict[str, Any]) -> JobRecord:
        with self._lock:
            job = JobRecord(id=len(self._jobs) + 1, kind=kind, params=dict(params), created_at=_now())
            self._jobs[job.id] = job
            return job

    def get(self, job_id: int) -> JobRecord:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no job with id {job_id}")
            return self._jobs[job_id]

    def update(self, job_id: int, **changes: Any) -> JobRecord:
        with self._lock:
            self._jobs[job_id] = replace(self._jobs[job_id], **changes)
            return self._jobs[job_id]

    def with_status(self, status: JobStatus) -> list[JobRecord]:
        with self._lock:
            return [job for job in self._jobs.values() if job.status == status]

    def claim(self, job_id: int, owner: str) -> bool:
        with self._lock:
            job = self._jobs[job_id]
            if job.status != JobStatus.QUEUED:
                return False
            self._jobs[job_id] = replace(job, status=JobStatus.RUNNING, started_at=_now(), message="started")
            return True

    def fail_abandoned(self, stale_after_s: float) -> list[int]:
        # One process holds a memory store: every running job at start-up was interrupted.
        with self._lock:
            ids = [j.id for j in self._jobs.values() if j.status == JobStatus.RUNNING]
            for job_id in ids:
                self._jobs[job_id] = replace(self._jobs[job_id], status=JobStatus.FAILED, message=INTERRUPTED)
            return ids


class DbJobStore:
    """A :class:`JobStore` on the database's ``jobs`` table (``db.models.Job``)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, kind: str, params: dict[str, Any]) -> JobRecord:
        with self.database.session() as session:
            row = Job(kind=kind, params=dict(params))
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, job_id: int) -> JobRecord:
        with self.database.session() as session:
            row = session.get(Job, job_id)
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            return _record(row)

    def update(self, job_id: int, **changes: Any) -> JobRecord:
        with self.database.session() as session:
            row = session.get(Job, job_id)
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            for key, value in changes.items():
                setattr(row, key, value)
            row.heartbeat_at = _now()
            session.flush()
            return _record(row)

    def with_status(self, status: JobStatus) -> list[JobRecord]:
        with self.database.session() as session:
            query = select(Job).where(Job.status == status).order_by(Job.created_at, Job.id)
            return [_record(row) for row in session.scalars(query)]

    def claim(self, job_id: int, owner: str) -> bool:
        now = _now()
        with self.database.session() as session:
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, owner=owner, started_at=now, heartbeat_at=now, message="started")
            )
            return bool(getattr(done, "rowcount", 0) == 1)

    def fail_abandoned(self, stale_after_s: float) -> list[int]:
        cutoff = _now() - timedelta(seconds=stale_after_s)
        with self.database.session() as session:
            rows = list(
                session.scalars(
                    select(Job).where(
                        Job.status == JobStatus.RUNNING, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
                    )
                )
            )
            for row in rows:
                row.status, row.message, row.finished_at = JobStatus.FAILED, INTERRUPTED, _now()
            return [row.id for row in rows]


def list_jobs(
    session: Session, *, limit: int = 20, kinds: tuple[str, ...] | None = None, study: str | None = None
) -> list[JobRecord]:
    """The most recent background jobs, newest first; optionally of some kinds only, or of one study only.

    A job records its study in its parameters (``params["study"]``: the console's generation and report
    jobs); with ``study`` given, jobs of other studies and jobs of no study (the live demo's) are left out.
    """
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    if study is not None:
        query = query.where(Job.params["study"].as_string() == study)
    return [_record(row) for row in session.scalars(query)]


@dataclass
class JobContext:
    """What a handler gets besides its parameters: progress reporting, cancellation and the workspace."""

    job_id: int
    store: JobStore
    workspace: Workspace | None
    cancel_event: threading.Event

    def report(self, done: int, total: int, message: str = "") -> None:
        """Record progress ``done / total`` (and an optional message)."""
        fraction = done / total if total else 1.0
        self.store.update(self.job_id, progress=fraction, message=message or f"{done}/{total}")

    def cancelled(self) -> bool:
        """Whether cancellation was requested (handlers poll this between batches)."""
        return self.cancel_event.is_set()

    def require_workspace(self) -> Workspace:
        """The workspace; a job kind that needs one fails clearly without it."""
        if self.workspace is None:
            raise RuntimeError(f"job {self.job_id} needs a workspace (database and media store); the worker has none")
        return self.workspace


Handler = Callable[[dict[str, Any], JobContext], dict[str, Any]]


@dataclass(frozen=True)
class Registration:
    """A job kind's handler and the lane it runs on."""

    handler: Handler
    lane: Lane


class Worker:
    """Runs jobs off the request handlers: one thread and one queue per :class:`Lane`, in submission order.

    Parameters
    ----------
    store
        Job state (default: in memory).
    workspace
        The workspace handed to every handler (``JobContext.workspace``).
    stale_after_s
        A running job whose worker has not reported for this long is failed at start-up.
    """

    def __init__(
        self, store: JobStore | None = None, workspace: Workspace | None = None, stale_after_s: float = STALE_AFTER_S
    ) -> None:
        self.store: JobStore = store if store is not None else MemoryJobStore()
        self.workspace = workspace
        self.stale_after_s = stale_after_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.handlers: dict[str, Registration] = {}
        self._queues: dict[Lane, queue.Queue[int | None]] = {lane: queue.Queue() for lane in Lane}
        self._threads: dict[Lane, threading.Thread] = {}
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def register(self, kind: str, handler: Handler, lane: Lane = Lane.BATCH) -> Worker:
        """Run ``kind`` jobs with ``handler`` on ``lane``; register every kind before :meth:`start`."""
        if self._threads:
            raise RuntimeError(f"register job kind {kind!r} before the worker starts")
        self.handlers[kind] = Registration(handler, Lane(lane))
        return self

    @property
    def started(self) -> bool:
        """Whether the lane threads are running."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads.values())

    def start(self) -> Worker:
        """Start one thread per lane (idempotent); fail interrupted jobs and queue the waiting ones."""
        with self._lock:
            if self.started:
                return self
            if not self.handlers:  # a bare worker (a reader of job state) leaves every queued job alone
                log.warning("worker %s has no job kinds registered: it runs nothing", self.owner)
                return self
            # Only jobs whose worker stopped reporting are failed: on a database shared by several
            # servers, another server's running job keeps its heartbeat fresh and is left alone.
            for job_id in self.store.fail_abandoned(self.stale_after_s):
                log.warning("job %d was interrupted by a stop; marked failed", job_id)
            for job in self.store.with_status(JobStatus.QUEUED):
                if job.kind in self.handlers:
                    log.info("job %d (%s) queued before the start: queued again", job.id, job.kind)
                    self._enqueue(job.id, job.kind)
                else:
                    log.error("job %d has kind %r, which no handler runs: marked failed", job.id, job.kind)
                    self.store.update(
                        job.id, status=JobStatus.FAILED, finished_at=_now(), message=f"no handler for {job.kind!r}"
                    )
            for lane in Lane:
                thread = threading.Thread(
                    target=self._run, args=(lane,), name=f"medsynth-worker-{lane.value}", daemon=True
                )
                self._threads[lane] = thread
                thread.start()
        log.info("worker %s started with job kinds %s", self.owner, ", ".join(sorted(self.handlers)) or "none")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask every lane to finish after its current job and wait for them."""
        threads, self._threads = self._threads, {}
        for lane in threads:
            self._queues[lane].put(None)
        for thread in threads.values():
            thread.join(timeout)

    def _enqueue(self, job_id: int, kind: str) -> None:
        self._cancel.setdefault(job_id, threading.Event())
        self._queues[self.handlers[kind].lane].put(job_id)

    def submit(self, kind: str, params: dict[str, Any] | None = None) -> int:
        """Queue a job of ``kind`` with JSON ``params``; returns its id.

        Raises
        ------
        KeyError
            For a kind no handler is registered for (a wiring bug, not a user's mistake).
        """
        if kind not in self.handlers:
            raise KeyError(f"unknown job kind {kind!r}; expected one of {', '.join(sorted(self.handlers))}")
        job = self.store.create(kind, params or {})
        self._enqueue(job.id, kind)
        return job.id

    def status(self, job_id: int) -> JobRecord:
        """The job's current state."""
        return self.store.get(job_id)

    def cancel(self, job_id: int) -> JobRecord:
        """Cancel a queued job, or ask a running one to stop after its current batch."""
        self._cancel.setdefault(job_id, threading.Event()).set()
        job = self.store.get(job_id)
        if job.status == JobStatus.QUEUED:
            job = self.store.update(job_id, status=JobStatus.CANCELLED, finished_at=_now(), message="cancelled")
        return job

    def wait(self, job_id: int, timeout: float = 60.0, poll_s: float = 0.05) -> JobRecord:
        """Block until the job finishes (tests, CLI); raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.store.get(job_id)
            if job.status in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout:g} s")
            time.sleep(poll_s)

    def _run(self, lane: Lane) -> None:
        jobs = self._queues[lane]
        while True:
            job_id = jobs.get()
            if job_id is None:
                return
            self._run_one(job_id)

    def _run_one(self, job_id: int) -> None:
        job = self.store.get(job_id)
        cancel = self._cancel.setdefault(job_id, threading.Event())
        if job.status != JobStatus.QUEUED or cancel.is_set():
            return
        if not self.store.claim(job_id, self.owner):  # another worker on the same database took it
            return
        log.info("job %d (%s) started", job_id, job.kind)
        started = time.perf_counter()
        ctx = JobContext(job_id, self.store, self.workspace, cancel)
        try:
            result = self.handlers[job.kind].handler(job.params, ctx)
        except Exception as exc:  # a job failing must not kill the worker; the log keeps the traceback
            log.exception("job %d (%s) failed after %.1f s", job_id, job.kind, time.perf_counter() - started)
            self.store.update(
                job_id,
                status=JobStatus.FAILED,
                finished_at=_now(),
                message=f"{type(exc).__name__}: {exc}",
                result={"traceback": traceback.format_exc(limit=8)},
            )
            return
        final = JobStatus.CANCELLED if cancel.is_set() else JobStatus.DONE
        progress = self.store.get(job_id).progress if final == JobStatus.CANCELLED else 1.0
        self.store.update(
            job_id, status=final, finished_at=_now(), progress=progress, result=result or {}, message=final.value
        )
        log.info("job %d (%s) %s in %.1f s", job_id, job.kind, final.value, time.perf_counter() - started)
