"""Run (or resume) a comparison: the stages in order, each skipped when its fingerprint is unchanged.

:func:`run_comparison` is ``python app.py compare CONFIG.toml`` and the worker's ``compare`` job.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compare import stages
from compare.config import CompareConfig, parse_compare_config
from compare.manifest import Manifest, fingerprint
from compare.report import write_report
from db.errors import InputError

if TYPE_CHECKING:
    from db.workspace import Workspace

Progress = Callable[[str], None]


@dataclass
class ComparisonResult:
    """What :func:`run_comparison` did and wrote."""

    name: str
    out_dir: Path
    manifest: Path
    report_csv: Path
    report_html: Path
    rows: list[dict[str, Any]]
    stages_run: list[str]
    stages_skipped: list[str]
    study: str | None = None


def resolve_out_dir(workspace: Workspace, config: CompareConfig, config_path: Path | None) -> Path:
    """``out_dir`` relative to the config file, or ``<data dir>/compare/<name>``."""
    if config.out_dir:
        path = Path(config.out_dir).expanduser()
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        return path
    return Path(workspace.settings.data_dir) / "compare" / config.name


def run_comparison(
    workspace: Workspace, config_path: str | Path, *, progress: Progress | None = None
) -> ComparisonResult:
    """``app.py compare CONFIG.toml``: run (or resume) every stage of the comparison and write the report.

    Parameters
    ----------
    workspace
        A ``db.workspace.Workspace``.
    config_path
        The TOML config (see :func:`parse_compare_config`).
    progress
        Called with one line per stage (default: silent).

    Returns
    -------
    ComparisonResult

    Raises
    ------
    db.errors.InputError
        For a missing or bad config, an unknown dataset split, too few cases, or a folder model without images.
    db.errors.NotFoundError
        For an unknown dataset or registered model.
    """
    from generation.pipelines import PipelineCache

    path = Path(config_path)
    if not path.is_file():
        raise InputError(f"comparison config {path} does not exist")
    config = parse_compare_config(path.read_text(encoding="utf-8"), source=str(path))
    say = progress or (lambda _line: None)
    bars = progress is not None  # the command line shows progress bars for every long stage
    out = resolve_out_dir(workspace, config, path)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.open(out, workspace.database, config.name)
    ran: list[str] = []
    skipped: list[str] = []
    outputs: dict[str, dict[str, Any]] = {}
    prints: dict[str, str] = {}

    def stage(key: str, depends: Sequence[Any], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        stage_print = fingerprint(key, *depends)
        prints[key] = stage_print
        found = manifest.done(key, stage_print)
        if found is not None:
            skipped.append(key)
            say(f"{key}: done before, skipped")
            outputs[key] = found
            return found
        say(f"{key}: running")
        started = time.perf_counter()
        result = run()
        manifest.record(key, stage_print, result, started)
        ran.append(key)
        say(f"{key}: done in {time.perf_counter() - started:.1f} s")
        outputs[key] = result
        return result

    ctx = stages.StageContext(workspace, config, out, PipelineCache(capacity=1), bars=bars)
    split_depends = ["by-group-v2", config.dataset, dataclasses.asdict(config.split)]
    chosen = stage("split", split_depends, partial(stages.split, ctx, say))
    cases = stages.held_out_cases(workspace, config, chosen["held_out"])
    for contender in config.contenders:
        upstream: list[Any] = [prints["split"], dataclasses.asdict(contender)]
        if contender.kind != "registered":
            stage(f"train:{contender.name}", upstream, partial(stages.train, ctx, contender, chosen["train"]))
            upstream.append(prints[f"train:{contender.name}"])
        gen_key = f"generate:{contender.name}"
        stage(gen_key, [*upstream, config.generation_for(contender)], partial(stages.generate, ctx, contender, cases))
        stage(f"cost:{contender.name}", [prints[gen_key]], partial(stages.cost, ctx, contender, cases))
    ctx.cache.clear()
    generated = [prints[f"generate:{c.name}"] for c in config.contenders]
    stage("metrics", [generated, dataclasses.asdict(config.metrics)], partial(stages.metrics, ctx, cases))
    costs = [prints[f"cost:{c.name}"] for c in config.contenders]
    report = stage("report", [prints["metrics"], costs], partial(write_report, ctx, outputs, cases))
    study_name = None
    if config.study is not None:
        made = stage("study", [generated, config.study], partial(stages.study, ctx, [c.key for c in cases]))
        study_name = made["study"]
    return ComparisonResult(
        name=config.name,
        out_dir=out,
        manifest=manifest.path,
        report_csv=Path(report["csv"]),
        report_html=Path(report["html"]),
        rows=report["rows"],
        stages_run=ran,
        stages_skipped=skipped,
        study=study_name,
    )
