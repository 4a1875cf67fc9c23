"""The worker's ``compare`` job is wired by ``app.build_worker`` to the compare package's run."""

from __future__ import annotations

from pathlib import Path

from app import build_worker
from compare.jobs import COMPARE_JOB, compare_job
from db.jobs import JobStatus, Lane
from db.workspace import Workspace


def test_build_worker_runs_compare_jobs_on_the_batch_lane(tmp_path: Path) -> None:
    ws = Workspace.open(f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path / "data")
    worker = build_worker(ws)
    registration = worker.handlers[COMPARE_JOB]
    assert registration.handler is compare_job and registration.lane == Lane.BATCH
    missing = tmp_path / "missing.toml"
    job_id = worker.submit(COMPARE_JOB, {"config": str(missing)})
    worker.start()
    try:
        job = worker.wait(job_id, timeout=60)
    finally:
        worker.stop(timeout=10)
        ws.close()
    assert job.status == JobStatus.FAILED and "missing.toml" in job.message and "does not exist" in job.message
