"""The comparison's report: one row per contender (quality and cost side by side) in ``report.csv`` and
``report.html``."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compare import stages
from compare.config import CompareConfig

if TYPE_CHECKING:
    from db.workspace import Workspace


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


def _thumbnail(image: Any, size: int = 96) -> str:
    copy = image.convert("RGB")
    copy.thumbnail((size, size))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: Any) -> str:
    if not _present(value):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:.3e}" if abs(value) >= 1e9 else f"{value:,}"
    return html.escape(str(value))


def render_html(
    config: CompareConfig,
    rows: list[dict[str, Any]],
    metrics: dict[str, Any],
    samples: list[tuple[str, Any, dict[str, Any]]],
) -> str:
    """The side-by-side report: settings, the quality + cost table, notes and one sample per prompt."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    notes = [
        f"Feature extractor: {metrics['extractor']} (weights sha256 {metrics['weights_sha256'][:12]}); "
        f"preprocessing: {metrics['preprocess']}.",
        "Every contender is scored against the same real held-out images at the same N of generated images.",
        "FLOPs are counted by torch.utils.flop_counter for one image (text encoding, every denoising step, "
        "VAE decode); seconds and peak memory are medians/maxima of the recorded generations.",
    ]
    if "random" in metrics["extractor"]:
        notes.append("This extractor has random weights: a pipeline check, not a reportable quality figure.")
    if metrics.get("alignment"):
        notes.append(f"Alignment: mean image-prompt cosine similarity with {metrics['alignment']}.")
    notes += [f"Warning: {w}" for w in metrics.get("warnings", [])]
    grid_head = "<th>prompt</th><th>real</th>" + "".join(f"<th>{html.escape(r['contender'])}</th>" for r in rows)
    grid = ""
    for prompt, real, by_contender in samples:
        cells = "".join(
            f'<td><img src="{_thumbnail(by_contender[r["contender"]])}" alt=""></td>'
            if r["contender"] in by_contender
            else "<td>&ndash;</td>"
            for r in rows
        )
        grid += f'<tr><td>{html.escape(prompt)}</td><td><img src="{_thumbnail(real)}" alt=""></td>{cells}</tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(config.name)}: comparison</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}
img{{image-rendering:pixelated;width:96px}}</style></head><body>
<h1>Comparison {html.escape(config.name)}</h1>
<p>Dataset <b>{html.escape(config.dataset)}</b>; {len(samples)} of the held-out prompts shown below.</p>
<h2>Quality and cost</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Notes</h2><ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>
<h2>Samples</h2>
<table><thead><tr>{grid_head}</tr></thead><tbody>{grid}</tbody></table>
</body></html>
"""


def write_report(
    workspace: Workspace, config: CompareConfig, outputs: dict[str, dict[str, Any]], cases: list[Any], out: Path
) -> dict[str, Any]:
    import pandas as pd

    rows = report_rows(config, outputs)
    csv_path, html_path = out / "report.csv", out / "report.html"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    shown = cases[:4]
    real = stages.real_images(workspace, shown)
    samples = []
    for case, real_image in zip(shown, real, strict=True):
        firsts = {}
        for contender in config.contenders:
            model_id, _, _ = stages.model_row(workspace, config.model_name(contender))
            images = stages.generated_images(workspace, model_id, [case.id])
            if images:
                firsts[contender.name] = images[0][1]
        samples.append((case.prompt, real_image, firsts))
    html_path.write_text(render_html(config, rows, outputs["metrics"], samples), encoding="utf-8")
    return {"csv": str(csv_path), "html": str(html_path), "rows": rows}
