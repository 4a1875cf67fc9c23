"""Render a computed report (:class:`analysis.report.ReportContent`) to files: HTML, tables, figures, a zip.

Rendering is the only step that writes: ``report.html`` (self-contained, escaped, scripts forbidden by its
Content Security Policy), ``tables/<name>.{csv,parquet,json}`` with ``tables/manifest.json`` (full precision,
stamped), ``figures/<name>.{png,svg}`` (300 dpi PNG and vector copies, for a journal) and
``report-files.zip`` holding all of them. The HTML shows tables for reading: human headings, numbers rounded
to meaningful digits, p-values as ``< 0.001``, CIs as ``[low, high]``, rows without an estimate left out with
a note, provenance columns moved to the methods.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.typing import RcKeyType

if TYPE_CHECKING:
    from analysis.report import FigureSpec, ImageGrid, ReportContent, ReportSection

logger = logging.getLogger(__name__)

DPI = 300
FIGURE_FORMATS = ("png", "svg")
"""300-dpi PNG for documents and SVG (vector, text kept as text) for journals; ``bbox_inches="tight"`` on save."""
MAX_HTML_ROWS = 200
FONT: dict[RcKeyType, Any] = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8,
                        "ytick.labelsize": 8, "legend.fontsize": 8, "font.family": "DejaVu Sans",
                        "svg.fonttype": "none", "text.parse_math": False}  # fmt: skip
LIKERT_COLOURS = tuple(matplotlib.colormaps["RdYlBu"](np.linspace(0.08, 0.92, 5)))
"""An ordinal (diverging) palette for 1-5 answers: 1 red ... 3 pale ... 5 blue."""
MODEL_COLOURS = tuple(matplotlib.colormaps["tab10"](np.arange(10)))

# ------------------------------------------------------------------------------------------- labels

TABLE_TITLES = {
    "agreement_overall": "Inter-rater agreement, all raters",
    "agreement_by_model": "Inter-rater agreement by model",
    "agreement_by_specialty": "Inter-rater agreement by rater specialty",
    "icc": "Intraclass correlation (items every rater rated)",
    "intra_rater": "Intra-rater reliability on repeated items",
    "turing_pooled": "Visual Turing test, all raters pooled",
    "turing_per_rater": "Visual Turing test by rater",
    "turing_by_specialty": "Visual Turing test by specialty",
    "turing_by_experience": "Visual Turing test by years of experience",
    "turing_by_model": "Visual Turing test by model",
    "turing_position_bias": "Position bias (left/right)",
    "turing_position_bias_per_rater": "Position bias by rater",
    "turing_confusion": "Turing test answers by side",
    "attention_checks": "Attention checks",
    "model_scores": "Realism and accuracy by model",
    "model_comparisons": "Pairwise model comparisons",
    "friedman": "Friedman test across models",
    "metrics": "Automated image metrics",
    "human_vs_metric_ranking": "Do the metrics rank the models as the experts do?",
    "human_vs_metric_per_model": "Expert scores vs metrics across models",
    "human_vs_metric_per_case": "Expert scores vs per-image metrics, by case",
    "raters": "Raters",
}
COLUMN_LABELS = {
    "n": "N", "std": "SD", "n_items": "Items", "n_ratings": "Ratings", "n_raters": "Raters", "n_cases": "Cases",
    "n_images": "Images", "n_models": "Models", "n_correct": "Correct", "n_a": "N (generated)",
    "n_b": "N (real)", "p_value": "p", "p_holm": "p (Holm)", "d_prime": "d′", "criterion_c": "Criterion c",
    "spearman_rho": "Spearman ρ", "kendall_tau": "Kendall τ", "kendall_tau_orders": "Kendall τ (orders)",
    "icc2_complete_items": "ICC(2,1)", "sd": "SD", "share_4_or_5": "Share 4–5", "std_err": "SE",
    "auc": "AUC", "expert_order": "Expert order", "metric_order": "Metric order", "same_order": "Same order",
    "by": "By", "group": "Group", "statistic": "Statistic", "estimate": "Estimate", "question": "Question",
    "model": "Model", "rater": "Rater", "specialty": "Specialty", "metric": "Metric", "value": "Value",
    "kendalls_w": "Kendall's W", "effect_size": "Effect size", "effect_size_kind": "Effect size kind",
    "peak_memory_mib": "Peak memory (MiB)", "flops_per_image": "FLOPs per image", "train_flops": "Training FLOPs",
    "n_generated": "N (generated)", "n_real": "N (real)",
}  # fmt: skip
VALUE_LABELS = {
    "krippendorff_alpha_ordinal": "Krippendorff's α (ordinal)",
    "krippendorff_alpha_nominal": "Krippendorff's α (nominal)",
    "fleiss_kappa": "Fleiss' κ", "gwet_ac2_quadratic": "Gwet's AC2 (quadratic)", "gwet_ac1": "Gwet's AC1",
    "icc2_complete_items": "ICC(2,1)", "realism_generated": "Realism", "accuracy_generated": "Accuracy",
    "realism_real": "Realism (real images)", "accuracy_real": "Accuracy (real images)",
    "which_generated": "Which is generated", "realism": "Realism", "accuracy": "Accuracy",
    "mann_whitney": "Mann–Whitney U", "wilcoxon": "Wilcoxon signed-rank", "cliffs_delta": "Cliff's δ",
    "rank_biserial": "Rank-biserial r", "between_models": "Between models", "vs_real": "Model vs real",
}  # fmt: skip
CI_PAIRS = (("ci_low", "ci_high"), ("ci_lower", "ci_upper"))
ESTIMATE_COLUMNS = ("estimate", "mean", "accuracy", "value", "spearman_rho", "statistic")
PROVENANCE_PREFIXES = ("version_", "weights_sha256", "preprocess", "backbone", "study_config_sha256")


def human_heading(name: str) -> str:
    """``agreement_by_model`` -> 'Inter-rater agreement by model'; unknown names: words, first capitalised."""
    key = name.split("/")[-1]
    if name in TABLE_TITLES:
        return TABLE_TITLES[name]
    if key in TABLE_TITLES:
        return TABLE_TITLES[key]
    words = re.sub(r"[_/]+", " ", name).strip()
    words = re.sub(r"\bmrmc\b", "MRMC", words)
    words = re.sub(r"\bauc\b", "AUC", words)
    words = re.sub(r"\b2afc\b", "2AFC", words)
    return words[:1].upper() + words[1:]


def column_label(column: str, level: float = 0.95) -> str:
    """A column heading for readers."""
    if column in COLUMN_LABELS:
        return COLUMN_LABELS[column]
    words = column.replace("_", " ")
    return words[:1].upper() + words[1:]


# ------------------------------------------------------------------------------------------ numbers


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and math.isnan(value)


def format_p(value: float) -> str:
    """p-values as journals print them: ``< 0.001`` or three decimals.

    >>> format_p(3.799e-17), format_p(0.04321)
    ('< 0.001', '0.043')
    """
    if _is_missing(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def format_number(value: object) -> str:
    """Meaningful digits: integers as integers, |x| >= 100 one decimal, >= 1 two, else three; no ``-0``.

    >>> [format_number(v) for v in (3.799e-17, -0.0004, 0.5844, 12.345, 1234.56, 19.0)]
    ['0.000', '0.000', '0.584', '12.35', '1234.6', '19']
    """
    if _is_missing(value):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return "∞" if v > 0 else "−∞"
        if v.is_integer() and abs(v) < 1e15 and abs(v) >= 1:
            return str(int(v))
        magnitude = abs(v)
        text = f"{v:.1f}" if magnitude >= 100 else f"{v:.2f}" if magnitude >= 1 else f"{v:.3f}"
        return text[1:] if re.fullmatch(r"-0\.0*", text) else text.replace("-", "−")
    text = str(value)
    return VALUE_LABELS.get(text, text)


def display_table(frame: pd.DataFrame, level: float = 0.95) -> tuple[pd.DataFrame, list[str]]:
    """The table as readers see it (strings) and notes on what was left out."""
    notes: list[str] = []
    frame = frame.copy()
    provenance = [c for c in frame.columns if str(c).startswith(PROVENANCE_PREFIXES)]
    if provenance:
        frame = frame.drop(columns=provenance)
    estimate = next((c for c in ESTIMATE_COLUMNS if c in frame.columns), None)
    if estimate is not None and len(frame):
        empty = frame[estimate].isna()
        if empty.all():
            notes.append("No estimate could be computed for any row (see the table files for the reasons).")
        elif empty.any():
            label_cols = [c for c in ("group", "model", "rater", "question", "by") if c in frame.columns]
            groups = sorted(
                {" / ".join(str(v) for v in row) for row in frame.loc[empty, label_cols[:2]].itertuples(index=False)}
            )
            shown = ", ".join(groups[:8]) + (", ..." if len(groups) > 8 else "")
            notes.append(f"{int(empty.sum())} rows without an estimate omitted (too few raters or answers): {shown}.")
            frame = frame[~empty]
    frame = frame.dropna(axis=1, how="all")
    blank = [c for c in frame.columns if frame[c].astype(str).str.strip().isin(["", "nan", "None", "<NA>"]).all()]
    constant = [c for c in ("by", "group") if c in frame.columns and frame[c].astype(str).nunique() == 1]
    frame = frame.drop(columns=blank + constant)
    out = pd.DataFrame(index=range(len(frame)))
    taken: set[str] = set()
    percent = f"{round(level * 100)}% CI"
    for column in frame.columns:
        if column in taken:
            continue
        pair = next(((lo, hi) for lo, hi in CI_PAIRS if column == lo and hi in frame.columns), None)
        prefix = next((p for p in ("spearman", "kendall") if column == f"{p}_ci_low"), None)
        if prefix is not None:
            pair = (column, f"{prefix}_ci_high")
        if pair is not None:
            lo, hi = frame[pair[0]].to_numpy(), frame[pair[1]].to_numpy()
            out[percent if prefix is None else f"{percent} ({prefix.capitalize()})"] = [
                "–" if _is_missing(a) or _is_missing(b) else f"[{format_number(a)}, {format_number(b)}]"
                for a, b in zip(lo, hi, strict=True)
            ]
            taken.update(pair)
            continue
        values = frame[column].tolist()
        if column.startswith("p_") or column == "p":
            out[column_label(column)] = [format_p(v) for v in values]
        else:
            out[column_label(column)] = [format_number(v) for v in values]
        taken.add(column)
    return out, notes


# ------------------------------------------------------------------------------------------ figures


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure in inches (7 in = two journal columns) at 300 dpi."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _forest(spec: FigureSpec, figure: Figure) -> None:
    rows = spec.data.dropna(subset=["estimate"]).reset_index(drop=True)
    axes = figure.add_subplot()
    labels = [
        f"{format_number(q)} · {format_number(s)}" for q, s in zip(rows["question"], rows["statistic"], strict=True)
    ]
    y = np.arange(len(rows))[::-1]
    err = np.vstack([rows["estimate"] - rows["ci_low"], rows["ci_high"] - rows["estimate"]]).clip(min=0)
    axes.errorbar(rows["estimate"], y, xerr=np.nan_to_num(err), fmt="o", capsize=3, color="#1f4e79")
    axes.set_yticks(y, labels)
    axes.axvline(0, color="grey", lw=0.8)
    lows = rows["ci_low"].to_numpy(dtype=float)
    lowest = float(np.nanmin(lows)) if np.isfinite(lows).any() else 0.0  # no estimate or no CI: the default span
    axes.set_xlim(min(-0.2, lowest - 0.05), 1.0)
    axes.set_xlabel(spec.options.get("xlabel", "Agreement (95% CI)"))


def _likert(spec: FigureSpec, figure: Figure) -> None:
    data = spec.data
    questions = list(dict.fromkeys(data["question"]))
    axes_list = figure.subplots(1, len(questions), sharey=True, squeeze=False)[0]
    for axes, question in zip(axes_list, questions, strict=True):
        part = data[data["question"] == question]
        groups = list(dict.fromkeys(part["group"]))
        left = np.zeros(len(groups))
        for score in range(1, 6):
            share = np.array([part[(part["group"] == g)].set_index("score")["share"].get(score, 0.0) for g in groups])
            axes.barh(range(len(groups)), share, left=left, color=LIKERT_COLOURS[score - 1], label=str(score),
                      edgecolor="white", linewidth=0.5)  # fmt: skip
            left += share
        axes.set_yticks(range(len(groups)), groups)
        axes.invert_yaxis()
        axes.set_xlim(0, 1)
        axes.set_xlabel("Share of ratings")
        axes.set_title(format_number(question))
    axes_list[-1].legend(title="Score", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)


def _rater_accuracy(spec: FigureSpec, figure: Figure) -> None:
    rows = spec.data.sort_values("accuracy").reset_index(drop=True)
    axes = figure.add_subplot()
    y = np.arange(len(rows))
    err = np.vstack([rows["accuracy"] - rows["ci_low"], rows["ci_high"] - rows["accuracy"]]).clip(min=0)
    axes.errorbar(rows["accuracy"], y, xerr=np.nan_to_num(err), fmt="o", capsize=2, color="#1f4e79")
    axes.axvline(0.5, color="#b2182b", lw=1, label="Chance (0.5)")
    axes.set_yticks(y, rows["rater"].astype(str).tolist())
    axes.set_xlim(0, 1)
    axes.set_xlabel("Accuracy identifying the generated image (95% exact CI)")
    axes.legend(loc="lower right", frameon=False)


def _confusion(spec: FigureSpec, figure: Figure) -> None:
    axes = figure.add_subplot()
    values = spec.data.to_numpy(dtype=float)
    axes.imshow(values, cmap="Blues")
    top = values.max() if values.size else 0
    for (row, column), value in np.ndenumerate(values):
        axes.text(column, row, f"{int(value)}", ha="center", va="center", color="white" if value > top / 2 else "black")
    axes.set_xticks([0, 1], ["Answered left", "Answered right"])
    axes.set_yticks([0, 1], ["Generated left", "Generated right"])


def _position_bias(spec: FigureSpec, figure: Figure) -> None:
    data = spec.data
    axes = figure.add_subplot()
    x = np.arange(len(data))
    axes.bar(x, data["share_answered_right"], label="Answered right", color="#6baed6")
    axes.plot(x, data["share_generated_right"], "k_", markersize=12, label="Generated right")
    axes.axhline(0.5, color="#b2182b", lw=1)
    axes.set_xticks(x, data["rater"].astype(str).tolist(), rotation=90 if len(data) > 12 else 0)
    axes.set_ylim(0, 1)
    axes.set_ylabel("Share of answers")
    axes.legend(frameon=False, loc="upper right")


def _scatter(spec: FigureSpec, figure: Figure) -> None:
    data = spec.data
    questions = list(dict.fromkeys(data["question"]))
    axes_list = figure.subplots(1, len(questions), squeeze=False)[0]
    models = sorted(data["model"].astype(str).unique())
    for axes, question in zip(axes_list, questions, strict=True):
        part = data[data["question"] == question]
        for index, model in enumerate(models):
            points = part[part["model"].astype(str) == model]
            size = 36 if spec.options.get("level") == "model" else 14
            axes.scatter(points["value"], points["human"], s=size, alpha=0.8, label=model,
                         color=MODEL_COLOURS[index % len(MODEL_COLOURS)])  # fmt: skip
        axes.set_xlabel(spec.options.get("xlabel", "Metric"))
        axes.set_ylabel(f"Mean expert {format_number(question).lower()} (1–5)")
        axes.set_ylim(0.8, 5.2)
    axes_list[-1].legend(title="Model", frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))


DRAW = {"forest": _forest, "likert": _likert, "rater_accuracy": _rater_accuracy, "confusion": _confusion,
        "position_bias": _position_bias, "scatter": _scatter}  # fmt: skip


def draw(spec: FigureSpec) -> Figure:
    """Draw a figure spec with the report's fonts."""
    with matplotlib.rc_context(FONT):
        figure = new_figure(spec.width, spec.height)
        DRAW[spec.kind](spec, figure)
    return figure


def save_figure(figure: Figure | bytes, directory: Path, stem: str) -> dict[str, Path]:
    """PNG at 300 dpi plus SVG (vector); PNG bytes given by a caller are written as they are."""
    paths: dict[str, Path] = {}
    if isinstance(figure, bytes):
        paths["png"] = directory / f"{stem}.png"
        paths["png"].write_bytes(figure)
        return paths
    with matplotlib.rc_context(FONT):
        # A tight box keeps long titles and labels inside (clipped ROC titles otherwise); computed once, not per
        # format (each "tight" save draws the figure twice).
        canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
        bbox = figure.get_tightbbox(canvas.get_renderer()).padded(0.05)
        for kind in FIGURE_FORMATS:
            paths[kind] = directory / f"{stem}.{kind}"
            figure.savefig(paths[kind], format=kind, dpi=DPI, bbox_inches=bbox, metadata=_metadata(kind))
    return paths


def _metadata(kind: str) -> dict[str, Any] | None:
    # Fixed metadata so that reruns give identical vector files.
    if kind == "svg":
        return {"Date": None}
    return None


# -------------------------------------------------------------------------------------------- files


def safe_name(name: str, taken: set[str]) -> str:
    """A file-system-safe, unique file name."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "table"
    candidate, number = base[:80], 2
    while candidate in taken:
        candidate, number = f"{base[:76]}_{number}", number + 1
    taken.add(candidate)
    return candidate


def plain_frame(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with a default index (a meaningful index becomes columns) and string column names."""
    frame = table.reset_index() if not isinstance(table.index, pd.RangeIndex) else table.copy()
    frame.columns = [str(column) for column in frame.columns]
    return frame


def _write_parquet(frame: pd.DataFrame, path: Path, stamp: Mapping[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        mixed = frame.select_dtypes(include="object").columns
        arrow = pa.Table.from_pandas(frame.astype(dict.fromkeys(mixed, "string")), preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"medsynth.stamp"] = json.dumps(stamp, default=str).encode()
    pq.write_table(arrow.replace_schema_metadata(meta), path)


def write_table(frame: pd.DataFrame, directory: Path, file_name: str, stamp: Mapping[str, Any]) -> dict[str, Path]:
    """CSV, Parquet (stamp in the schema metadata) and JSON (stamp, columns, records) of one table."""
    paths = {kind: directory / f"{file_name}.{kind}" for kind in ("csv", "parquet", "json")}
    frame.to_csv(paths["csv"], index=False)
    _write_parquet(frame, paths["parquet"], stamp)
    records = json.loads(frame.to_json(orient="records", double_precision=15, date_format="iso"))
    document = {"stamp": stamp, "columns": list(frame.columns), "data": records}
    paths["json"].write_text(json.dumps(document, default=str, indent=1), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------------------------- HTML


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def html_table(frame: pd.DataFrame, level: float) -> tuple[str, list[str]]:
    """An HTML table of the display form, and the notes on omitted rows."""
    shown, notes = display_table(frame, level)
    more = len(shown) - MAX_HTML_ROWS
    shown = shown.head(MAX_HTML_ROWS)
    numeric = re.compile(r"^(–|[−-]?[\d.]+|< 0\.001|\[.*\]|∞|−∞)$")
    text_columns = [not all(numeric.match(str(v)) for v in shown[c]) for c in shown.columns]
    align = ["class='t'" if is_text else "" for is_text in text_columns]
    head = "".join(f"<th {a}>{_text(column)}</th>" for a, column in zip(align, shown.columns, strict=True))
    body = "".join(
        "<tr>" + "".join(f"<td {a}>{_text(value)}</td>" for a, value in zip(align, row, strict=True)) + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    )
    if more > 0:
        notes.append(f"Showing {MAX_HTML_ROWS} of {MAX_HTML_ROWS + more} rows; the table files hold all.")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", notes


STYLE = """
body{font-family:Georgia,'Times New Roman',serif;margin:2em auto;max-width:1000px;color:#111;line-height:1.45;
padding:0 1em}h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;
margin-top:2em}h3{font-size:1.02em;margin:1.2em 0 .3em}p.lead{color:#333}.methods{background:#f7f7f4;
padding:.6em 1em;border-left:3px solid #8a8a7a}table{border-collapse:collapse;font:13px/1.35 system-ui,
sans-serif;margin:.3em 0 1em;font-variant-numeric:tabular-nums}th,td{border-top:1px solid #ddd;
border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}th{border-top:2px solid #333;
border-bottom:1px solid #333;font-weight:600}td:first-child,th:first-child,td.t,th.t{text-align:left}
.note{font-size:12px;color:#555}.files{font-size:11px;color:#777}figure{margin:.6em 0 1.2em}
figure img{max-width:100%}figcaption{font-size:13px;color:#333}table.stamp{font-size:11px}
img.thumb{image-rendering:pixelated;width:96px;display:block}
"""


def html_image_grid(grid: ImageGrid) -> str:
    """An image grid as a table of inline PNG thumbnails (``data:`` URIs, allowed by the page's policy)."""
    head = f"<th class='t'>{_text(grid.label)}</th>" + "".join(f"<th>{_text(c)}</th>" for c in grid.columns)

    def cell_html(cell: bytes | None) -> str:
        if cell is None:
            return "<td>–</td>"
        encoded = base64.b64encode(cell).decode("ascii")
        return f"<td><img class='thumb' alt='' src='data:image/png;base64,{encoded}'></td>"

    body = "".join(
        f"<tr><td class='t'>{_text(label)}</td>{''.join(cell_html(cell) for cell in cells)}</tr>"
        for label, cells in grid.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(content: ReportContent, files: Mapping[str, Mapping[str, Path]], figures: Mapping[str, bytes]) -> str:
    """The report page; ``files`` maps ``"<section>:<table>"`` to its table files, ``figures`` to PNG bytes."""
    level = content.level
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>{_text(content.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_text(content.title)}</h1>",
        "<h2 id='methods'>Methods</h2><div class='methods'>",
        *(f"<p>{_text(paragraph)}</p>" for paragraph in content.methods),
        "</div><ol class='toc'>",
        *(f'<li><a href="#s{i}">{_text(s.title)}</a></li>' for i, s in enumerate(content.sections)),
        "<li><a href='#provenance'>Provenance</a></li></ol>",
    ]
    figure_number = 0
    table_number = 0
    for index, section in enumerate(content.sections):
        parts.append(f"<section id='s{index}'><h2>{_text(section.title)}</h2>")
        parts.extend(f"<p class='note'>{_text(note)}</p>" for note in section.notes)
        for name, table in section.tables.items():
            table_number += 1
            body, notes = html_table(plain_frame(table), level)
            links = ", ".join(_text(f"tables/{p.name}") for p in files.get(f"{index}:{name}", {}).values())
            parts.append(f"<h3>Table {table_number}. {_text(section.captions.get(name, human_heading(name)))}</h3>")
            parts.append(body)
            parts.extend(f"<p class='note'>{_text(note)}</p>" for note in notes)
            parts.append(f"<p class='files'>{links}</p>")
        for name in section.figures:
            figure_number += 1
            encoded = base64.b64encode(figures[f"{index}:{name}"]).decode("ascii")
            caption = section.captions.get(name) or human_heading(name)
            parts.append(
                f"<figure><img alt='{_text(caption)}' src='data:image/png;base64,{encoded}'>"
                f"<figcaption>Figure {figure_number}. {_text(caption)}</figcaption></figure>"
            )
        for name, grid in section.images.items():
            parts.append(f"<h3>{_text(section.captions.get(name) or human_heading(name))}</h3>")
            parts.append(html_image_grid(grid))
        parts.append("</section>")
    shown = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in content.stamp.items()}
    rows = "".join(f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in shown.items())
    parts.append(f"<h2 id='provenance'>Provenance</h2><table class='stamp'>{rows}</table></body></html>")
    return "".join(parts)


def render_markdown(content: ReportContent, figure_files: Mapping[str, Path], level: float) -> str:
    """The report as Markdown (for a manuscript draft): methods, notes, rounded tables, figure links."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {content.title}", "", "## Methods", ""]
    for paragraph in content.methods:
        lines += [paragraph, ""]
    table_number = figure_number = 0
    for index, section in enumerate(content.sections):
        lines += [f"## {section.title}", ""]
        lines += [f"_{note}_\n" for note in section.notes]
        for name, table in section.tables.items():
            table_number += 1
            shown, notes = display_table(plain_frame(table), level)
            lines += [f"**Table {table_number}. {section.captions.get(name, human_heading(name))}**", ""]
            lines.append("| " + " | ".join(cell(c) for c in shown.columns) + " |")
            lines.append("|" + "---|" * len(shown.columns))
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
            lines += ["", *(f"_{note}_\n" for note in notes)]
        for name in section.figures:
            figure_number += 1
            caption = section.captions.get(name) or human_heading(name)
            path = figure_files.get(f"{index}:{name}")
            lines += [
                f"![Figure {figure_number}. {caption}]({path})" if path else f"Figure {figure_number}. {caption}",
                "",
            ]
        for name in section.images:
            lines += [f"_{section.captions.get(name) or human_heading(name)}: see report.html._", ""]
    return "\n".join(lines)


def png_bytes(figure: Figure | bytes) -> bytes:
    """PNG at 300 dpi (bytes pass through)."""
    if isinstance(figure, bytes):
        return figure
    buffer = io.BytesIO()
    with matplotlib.rc_context(FONT):
        figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def zip_outputs(out_dir: Path, paths: Sequence[Path]) -> Path:
    """``report-files.zip``: the page, every figure and every table, paths relative to ``out_dir``."""
    archive = out_dir / "report-files.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in paths:
            info = zipfile.ZipInfo(str(path.relative_to(out_dir)), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return archive


def section_figures(section: ReportSection) -> dict[str, Figure | bytes]:
    """Figures of a section drawn from their specs (figures given as objects pass through)."""
    from analysis.report import FigureSpec

    return {name: draw(fig) if isinstance(fig, FigureSpec) else fig for name, fig in section.figures.items()}
