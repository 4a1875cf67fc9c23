"""Job handlers of the analysis room: ``report`` writes a study's report through the same function as the CLI.

``app.py`` registers :func:`report_job` on the worker (batch lane) before the server accepts a request,
so a report queued before a restart runs after it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from db.jobs import JobContext, Lane, Worker

log = logging.getLogger(__name__)

REPORT_JOB = "report"


def report_job(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The ``report`` handler: ``params`` are ``study``, ``out_dir`` and optionally ``resamples`` and ``seed``."""
    # Imported when a report runs: the report's statistics and plotting stack (scipy, statsmodels, matplotlib)
    # would otherwise load on every `serve` start, before the first page is served.
    from analysis.report import ReportConfig
    from analysis.study_report import write_study_report

    study = str(params["study"])
    ctx.report(0, 100, "reading the ratings")

    def on_progress(fraction: float, desc: str = "", *_: object) -> None:
        ctx.report(round(100 * fraction), 100, desc)

    config = ReportConfig(n_resamples=int(params.get("resamples", 1000)), seed=int(params.get("seed", 0)))
    out_dir = Path(str(params["out_dir"]))
    result = write_study_report(ctx.require_workspace(), study, out_dir, config=config, progress=on_progress)
    log.info("report of study %r written to %s", study, result.html_path)
    # the console offers the HTML and one zip of every table and figure, for this study only
    return {
        "study": study,
        "path": str(result.html_path),
        "tables_zip": str(result.zip_path) if result.zip_path else None,
        "seconds": result.seconds,
    }


def register_analysis_jobs(worker: Worker) -> None:
    """Register ``report`` on the batch lane."""
    worker.register(REPORT_JOB, report_job, Lane.BATCH)
