"""The worker's ``compare`` job: a comparison run in the background (batch lane), resumable by stage.

``app.build_worker`` calls :func:`register_compare_jobs` before the server accepts a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from db.jobs import JobContext, Lane, Worker

COMPARE_JOB = "compare"


def compare_job(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The ``compare`` handler: run the comparison configured in ``params["config"]`` (resumable by stage)."""
    from compare.run import run_comparison  # torch and the generation stack: imported when a run starts

    def progress(line: str) -> None:
        ctx.store.update(ctx.job_id, message=str(line)[:500])

    result = run_comparison(ctx.require_workspace(), Path(str(params["config"])), progress=progress)
    return {
        "report_html": str(result.report_html),
        "report_csv": str(result.report_csv),
        "stages_run": list(result.stages_run),
        "stages_skipped": list(result.stages_skipped),
        "study": result.study,
    }


def register_compare_jobs(worker: Worker) -> None:
    """Register ``compare`` on the batch lane (one batch job at a time, never before the live demo)."""
    worker.register(COMPARE_JOB, compare_job, Lane.BATCH)
