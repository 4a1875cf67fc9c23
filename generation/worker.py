"""The background worker: runs generation jobs from a queue, off the request handlers, with progress.

The app's coordinator console and demo tab never generate inside a request: they ``submit`` a job
(a kind and JSON parameters) and poll ``status``. One worker thread takes jobs in order, runs the
handler registered for the kind, and writes status / progress / result to a :class:`JobStore` —
in memory (:class:`MemoryJobStore`) or the database's ``jobs`` table (:class:`DbJobStore`), so a page
reload or another process sees the same state. Pipelines stay warm between jobs in a
:class:`~generation.pipelines.PipelineCache` (LRU, keyed by model spec, device and dtype).

Built-in kinds (:func:`default_handlers`): ``generate`` (a dataset with a registered model, resumable)
and ``demo`` (one image for one prompt, stored in the media store). On start, jobs a crashed
process left ``running`` are marked failed and ``queued`` ones are run.
"""

from __future__ import annotations

import enum
import os
import queue
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from generation.pipelines import PipelineCache


class JobState(enum.StrEnum):
    """Life cycle of a job (the same values as ``db.models.JobStatus``)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job."""

    id: int
    kind: str
    params: dict[str, Any]
    status: JobState = JobState.QUEUED
    progress: float = 0.0
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobStore(Protocol):
    """Where job state lives."""

    def create(self, kind: str, params: dict[str, Any]) -> JobInfo:
        """Add a queued job and return it."""
        ...

    def get(self, job_id: int) -> JobInfo:
        """The job's current state (``KeyError`` if unknown)."""
        ...

    def update(self, job_id: int, **changes: Any) -> JobInfo:
        """Change fields of a job and return its new state."""
        ...

    def with_status(self, status: JobState) -> list[JobInfo]:
        """Jobs in ``status``, oldest first."""
        ...

    def claim(self, job_id: int, owner: str) -> bool:
        """Atomically move a queued job to running for ``owner``; False if another worker got it first."""
        ...

    def fail_abandoned(self, stale_after_s: float) -> list[int]:
        """Fail running jobs whose worker has not reported for ``stale_after_s`` (it stopped); their ids."""
        ...


INTERRUPTED = "interrupted (the app stopped)"
#: a running job whose worker has not reported for this long is taken as interrupted
STALE_AFTER_S = 600.0


def _now_naive() -> datetime:
    """UTC now without tzinfo, as the database stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


def _now() -> datetime:
    return datetime.now(UTC)


class MemoryJobStore:
    """A thread-safe in-process :class:`JobStore`."""

    def __init__(self) -> None:
        self._jobs: dict[int, JobInfo] = {}
        self._lock = threading.Lock()

    def create(self, kind: str, params: dict[str, Any]) -> JobInfo:
        with self._lock:
            job = JobInfo(id=len(self._jobs) + 1, kind=kind, params=dict(params), created_at=_now())
            self._jobs[job.id] = job
            return job

    def get(self, job_id: int) -> JobInfo:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(f"no job with id {job_id}")
            return self._jobs[job_id]

    def update(self, job_id: int, **changes: Any) -> JobInfo:
        with self._lock:
            self._jobs[job_id] = replace(self._jobs[job_id], **changes)
            return self._jobs[job_id]

    def with_status(self, status: JobState) -> list[JobInfo]:
        with self._lock:
            return [job for job in self._jobs.values() if job.status == status]

    def claim(self, job_id: int, owner: str) -> bool:
        with self._lock:
            job = self._jobs[job_id]
            if job.status != JobState.QUEUED:
                return False
            self._jobs[job_id] = replace(job, status=JobState.RUNNING, started_at=_now(), message="started")
            return True

    def fail_abandoned(self, stale_after_s: float) -> list[int]:
        # One process holds a memory store: every running job at start-up was interrupted.
        with self._lock:
            ids = [j.id for j in self._jobs.values() if j.status == JobState.RUNNING]
            for job_id in ids:
                self._jobs[job_id] = replace(self._jobs[job_id], status=JobState.FAILED, message=INTERRUPTED)
            return ids


class DbJobStore:
    """A :class:`JobStore` on the database's ``jobs`` table (``db.models.Job``)."""

    def __init__(self, database: Any) -> None:
        self.database = database

    @staticmethod
    def _info(row: Any) -> JobInfo:
        return JobInfo(
            id=row.id,
            kind=row.kind,
            params=dict(row.params or {}),
            status=JobState(getattr(row.status, "value", row.status)),
            progress=float(row.progress or 0.0),
            message=row.message or "",
            result=dict(row.result or {}),
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    def create(self, kind: str, params: dict[str, Any]) -> JobInfo:
        from db.models import Job

        with self.database.session() as session:
            row = Job(kind=kind, params=dict(params))
            session.add(row)
            session.flush()
            return self._info(row)

    def get(self, job_id: int) -> JobInfo:
        from db.models import Job

        with self.database.session() as session:
            row = session.get(Job, job_id)
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            return self._info(row)

    def update(self, job_id: int, **changes: Any) -> JobInfo:
        from db.models import Job, JobStatus

        with self.database.session() as session:
            row = session.get(Job, job_id)
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            for key, value in changes.items():
                setattr(row, key, JobStatus(value.value) if key == "status" else value)
            row.heartbeat_at = _now_naive()
            session.flush()
            return self._info(row)

    def with_status(self, status: JobState) -> list[JobInfo]:
        from sqlalchemy import select

        from db.models import Job, JobStatus

        with self.database.session() as session:
            query = select(Job).where(Job.status == JobStatus(status.value)).order_by(Job.created_at, Job.id)
            return [self._info(row) for row in session.scalars(query)]

    def claim(self, job_id: int, owner: str) -> bool:
        from sqlalchemy import update

        from db.models import Job, JobStatus

        now = _now_naive()
        with self.database.session() as session:
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, owner=owner, started_at=now, heartbeat_at=now, message="started")
            )
            return done.rowcount == 1

    def fail_abandoned(self, stale_after_s: float) -> list[int]:
        from datetime import timedelta

        from sqlalchemy import or_, select

        from db.models import Job, JobStatus

        cutoff = _now_naive() - timedelta(seconds=stale_after_s)
        with self.database.session() as session:
            rows = list(
                session.scalars(
                    select(Job).where(
                        Job.status == JobStatus.RUNNING, or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
                    )
                )
            )
            for row in rows:
                row.status, row.message, row.finished_at = JobStatus.FAILED, INTERRUPTED, _now_naive()
            return [row.id for row in rows]


@dataclass
class JobContext:
    """What a handler gets besides its parameters: progress reporting, cancellation, warm pipelines."""

    job_id: int
    store: JobStore
    cache: PipelineCache
    workspace: Any
    cancel_event: threading.Event

    def report(self, done: int, total: int, message: str = "") -> None:
        """Record progress ``done / total`` (and an optional message)."""
        fraction = done / total if total else 1.0
        self.store.update(self.job_id, progress=fraction, message=message or f"{done}/{total}")

    def cancelled(self) -> bool:
        """Whether cancellation was requested (handlers poll this between batches)."""
        return self.cancel_event.is_set()


Handler = Callable[[dict[str, Any], JobContext], dict[str, Any]]


def _generate_handler(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from generation.batch import GenerationConfig, generate_for_dataset

    if ctx.workspace is None:
        raise ValueError("the generate job needs a workspace (database and media store)")
    report = generate_for_dataset(
        ctx.workspace,
        str(params["dataset"]),
        str(params["model"]),
        GenerationConfig.from_params(params),
        device=str(params.get("device", "auto")),
        progress=False,
        on_progress=ctx.report,
        should_stop=ctx.cancelled,
        cache=ctx.cache,
        limit=params.get("limit"),
    )
    return report.summary()


def _demo_handler(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from generation.batch import GenerationConfig, generate_images, resolve_params
    from generation.pipelines import ModelSpec

    if ctx.workspace is None:
        raise ValueError("the demo job needs a workspace (media store)")
    if params.get("model"):
        from db.generated import get_model

        with ctx.workspace.database.session() as session:
            spec = ModelSpec.from_model(get_model(session, str(params["model"])))
    else:
        spec = ModelSpec.from_record(**params["spec"])
    loaded = ctx.cache.get(spec, str(params.get("device", "auto")))
    config = GenerationConfig.from_params(params, batch_size=1, per_case=1)
    sampling = resolve_params(loaded, config)
    (image,) = generate_images(loaded.pipe, [str(params["prompt"])], [config.seed], sampling, loaded.device)
    info = ctx.workspace.store.put_image(image, source=f"demo image (job {ctx.job_id})")
    return {"sha256": info.sha256, "seed": config.seed, "steps": sampling.steps, "guidance": sampling.guidance}


def default_handlers() -> dict[str, Handler]:
    """The built-in job kinds: ``generate`` and ``demo``."""
    return {"generate": _generate_handler, "demo": _demo_handler}


class Worker:
    """One background thread running jobs in submission order.

    Parameters
    ----------
    store
        Job state (default: in memory).
    handlers
        Job kind -> handler; default :func:`default_handlers`.
    cache
        Warm pipelines shared by every job (default: an LRU of 2).
    workspace
        ``db.workspace.Workspace`` the built-in handlers use.
    """

    def __init__(
        self,
        store: JobStore | None = None,
        handlers: dict[str, Handler] | None = None,
        cache: PipelineCache | None = None,
        workspace: Any = None,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.store: JobStore = store if store is not None else MemoryJobStore()
        self.stale_after_s = stale_after_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.handlers = dict(handlers) if handlers is not None else default_handlers()
        self.cache = cache if cache is not None else PipelineCache(capacity=2)
        self.workspace = workspace
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Worker:
        """Start the thread (idempotent); fail interrupted jobs and queue waiting ones."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            # Only jobs whose worker stopped reporting are failed: on a database shared by several
            # servers, another server's running job keeps its heartbeat fresh and is left alone.
            self.store.fail_abandoned(self.stale_after_s)
            for job in self.store.with_status(JobState.QUEUED):
                self._enqueue(job.id)
            self._thread = threading.Thread(target=self._run, name="medsynth-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to finish after the current job and wait for it."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        self._thread = None

    def _enqueue(self, job_id: int) -> None:
        self._cancel.setdefault(job_id, threading.Event())
        self._queue.put(job_id)

    def submit(self, kind: str, params: dict[str, Any] | None = None) -> int:
        """Queue a job of ``kind`` with JSON ``params``; returns its id.

        Raises
        ------
        ValueError
            For a kind no handler is registered for.
        """
        if kind not in self.handlers:
            raise ValueError(f"unknown job kind {kind!r}; expected one of {', '.join(sorted(self.handlers))}")
        job = self.store.create(kind, params or {})
        self._enqueue(job.id)
        return job.id

    def status(self, job_id: int) -> JobInfo:
        """The job's current state."""
        return self.store.get(job_id)

    def cancel(self, job_id: int) -> JobInfo:
        """Cancel a queued job, or ask a running one to stop after its current batch."""
        self._cancel.setdefault(job_id, threading.Event()).set()
        job = self.store.get(job_id)
        if job.status == JobState.QUEUED:
            job = self.store.update(job_id, status=JobState.CANCELLED, finished_at=_now(), message="cancelled")
        return job

    def wait(self, job_id: int, timeout: float = 60.0, poll_s: float = 0.05) -> JobInfo:
        """Block until the job finishes (tests, CLI); raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.store.get(job_id)
            if job.status in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout:g} s")
            time.sleep(poll_s)

    def _run(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            self._run_one(job_id)

    def _run_one(self, job_id: int) -> None:
        job = self.store.get(job_id)
        cancel = self._cancel.setdefault(job_id, threading.Event())
        if job.status != JobState.QUEUED or cancel.is_set():
            return
        if not self.store.claim(job_id, self.owner):  # another worker on the same database took it
            return
        ctx = JobContext(job_id, self.store, self.cache, self.workspace, cancel)
        try:
            result = self.handlers[job.kind](job.params, ctx)
        except Exception as exc:  # a job failing must not kill the worker
            message = f"{type(exc).__name__}: {exc}"
            detail = traceback.format_exc(limit=8)
            self.store.update(
                job_id, status=JobState.FAILED, finished_at=_now(), message=message, result={"traceback": detail}
            )
            return
        final = JobState.CANCELLED if cancel.is_set() else JobState.DONE
        progress = self.store.get(job_id).progress if final == JobState.CANCELLED else 1.0
        self.store.update(
            job_id, status=final, finished_at=_now(), progress=progress, result=result or {}, message=final.value
        )
