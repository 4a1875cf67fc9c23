"""The comparison's report: one row per contender (quality and cost side by side) in ``report.csv``, and the
page through the project's one report pipeline (:func:`report_content` computes, then
:func:`analysis.report.render_report` writes ``report.html``, ``report.md``, ``tables/`` and the zip)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from analysis.report import ImageGrid, ReportContent, ReportSection, render_report
from compare import stages
from compare.config import CompareConfig

if TYPE_CHECKING:
    from PIL import Image

    from db.generated import CaseRef

#: A sample row of the report: the prompt, its real image and each contender's first image (by contender name).
Sample = tuple[str, "Image.Image", dict[str, "Image.Image"]]
#: Held-out prompts shown with their images.
SAMPLES_SHOWN = 4


def _present(value: Any) -> bool:
    """Neither ``None`` nor NaN."""
    return value is not None and value == value


def report_rows(config: CompareConfig, outputs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per contender: quality (every metric with its extractor) and cost, side by side."""
    metric_rows = outputs["metrics"]["rows"]
    rows = []
    for contender in config.contenders:
        train = outputs.get(f"train:{contender.name}") or {}
        cost = outputs[f"cost:{contender.name}"]
        row: dict[str, Any] = {
            "contender": contender.name,
            "kind": contender.kind,
            "model": config.model_name(contender),
            "base": contender.base or (contender.config if contender.kind == "msdm" else ""),
        }
        for metric in metric_rows:
            if metric["model"] == contender.name:
                row[metric["metric"]] = metric["value"]
                if _present(metric.get("ci_low")):
                    row[f"{metric['metric']}_ci"] = f"{metric['ci_low']:.4g} to {metric['ci_high']:.4g}"
                row["n_generated"] = metric.get("n_a")
                if _present(metric.get("n_b")):
                    row["n_real"] = metric["n_b"]
        params = cost.get("parameters") or {}
        peak = cost.get("peak_memory_bytes")
        row |= {
            "parameters": params.get("total"),
            "trainable_parameters": train.get("trainable_parameters"),
            "train_steps": train.get("train_steps"),
            "train_hours": train["train_seconds"] / 3600.0 if train.get("train_seconds") is not None else None,
            "train_device_hours": train.get("device_hours"),
            "train_device": train.get("train_device"),
            "train_flops": train.get("train_flops"),
            "seconds_per_image": cost.get("seconds_per_image"),
            "peak_memory_mib": peak / 2**20 if peak is not None else None,
            "peak_memory_kind": cost.get("peak_memory_kind"),
            "flops_per_image": cost.get("flops_per_image"),
            "generation_device": cost.get("device"),
        }
        rows.append(row)
    return rows


def _thumbnail(image: Image.Image, size: int = 96) -> bytes:
    """A PNG thumbnail (RGB, at most ``size`` pixels a side)."""
    copy = image.convert("RGB")
    copy.thumbnail((size, size))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    return buffer.getvalue()


def report_content(
    config: CompareConfig, rows: list[dict[str, Any]], metrics: Mapping[str, Any], samples: Sequence[Sample]
) -> ReportContent:
    """The side-by-side report, computed: settings and methods, the quality + cost table, notes and one sample
    per shown prompt (pure; :func:`analysis.report.render_report` writes it)."""
    import pandas as pd

    methods = [
        f"Dataset {config.dataset}; {len(samples)} of the held-out prompts are shown with their images.",
        f"Feature extractor: {metrics['extractor']} (weights sha256 {metrics['weights_sha256'][:12]}); "
        f"preprocessing: {metrics['preprocess']}.",
        "Every contender is scored against the same real held-out images at the same N of generated images.",
        "FLOPs are counted by torch.utils.flop_counter for one image (text encoding, every denoising step, "
        "VAE decode); seconds and peak memory are medians/maxima of the recorded generations.",
    ]
    if metrics.get("alignment"):
        methods.append(f"Alignment: mean image-prompt cosine similarity with {metrics['alignment']}.")
    notes = []
    if "random" in metrics["extractor"]:
        notes.append("This extractor has random weights: a pipeline check, not a reportable quality figure.")
    notes += [f"Warning: {w}" for w in metrics.get("warnings", [])]
    quality = ReportSection(
        "Quality and cost",
        tables={"quality_and_cost": pd.DataFrame(rows)},
        notes=notes,
        captions={"quality_and_cost": "Quality and cost of each contender"},
    )
    names = tuple(str(row["contender"]) for row in rows)
    grid = ImageGrid(
        columns=("real", *names),
        rows=tuple(
            (prompt, (_thumbnail(real), *(_thumbnail(by[n]) if n in by else None for n in names)))
            for prompt, real, by in samples
        ),
        label="prompt",
    )
    shown = ReportSection(
        "Samples", images={"samples": grid}, captions={"samples": "The real image and each contender's first image"}
    )
    stamp = {
        "comparison": config.name,
        "dataset": config.dataset,
        "extractor": metrics["extractor"],
        "weights_sha256": metrics["weights_sha256"],
        "preprocess": metrics["preprocess"],
        "alignment": metrics.get("alignment"),
    }
    return ReportContent(f"Comparison {config.name}", methods[0], methods, [quality, shown], stamp, 0.95)


def write_report(ctx: stages.StageContext, outputs: dict[str, dict[str, Any]], cases: list[CaseRef]) -> dict[str, Any]:
    """The ``report`` stage: ``report.csv`` (the rows at full precision) and the rendered report in ``out``."""
    import pandas as pd

    workspace, config, out = ctx.workspace, ctx.config, ctx.out
    rows = report_rows(config, outputs)
    csv_path = out / "report.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    shown = cases[:SAMPLES_SHOWN]
    samples: list[Sample] = []
    for case, real_image in zip(shown, stages.real_images(workspace, shown, distinct=False), strict=True):
        firsts = {}
        for contender in config.contenders:
            model_id, _, _ = stages.model_row(workspace, config.model_name(contender))
            images = stages.generated_images(workspace, model_id, [case.id])
            if images:
                firsts[contender.name] = images[0][1]
        samples.append((case.prompt, real_image, firsts))
    rendered = render_report(report_content(config, rows, outputs["metrics"], samples), out)
    return {"csv": str(csv_path), "html": str(rendered.html_path), "rows": rows}
