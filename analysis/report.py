"""The study report: one self-contained HTML file plus every table as CSV, Parquet and JSON.

``write_report`` runs the human-rating analyses (agreement, intra-rater reliability, the visual
Turing test, per-model scores), adds an MRMC section when :mod:`analysis.mrmc` is available, and
any ``extra_sections`` other parts plug in (e.g. automated image metrics). Everything shown comes
from the ratings table, so every string is HTML-escaped; the page also carries a Content Security
Policy that forbids scripts. Each table is stamped with how it was made (study config hash, n,
seed, resamples, library versions, the caller's stamp) in ``tables/manifest.json``, in the JSON
file and in the Parquet schema metadata.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import importlib
import io
import json
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.agreement import BootstrapMethod, agreement_table, icc, intra_rater_reliability, ratings_matrix
from analysis.scores import SCORE_QUESTIONS, friedman_table, model_comparisons, model_scores
from analysis.turing import DEFAULT_MAX_FAILURE_RATE, headline, turing_test

__all__ = ["ReportConfig", "ReportResult", "ReportSection", "write_report"]

Progress = Callable[..., object]
"""Called as ``progress(fraction, desc=step)`` (the signature of ``gradio.Progress``)."""

MAX_HTML_ROWS = 200
_COLUMNS = [
    "study_config_sha256", "item", "item_kind", "repeat_of", "case", "rater", "rater_name", "specialty",
    "years", "model", "generated_side", "position", "realism_generated", "realism_real", "accuracy_generated",
    "accuracy_real", "which_generated", "confidence", "correct", "cannot_assess",
]  # fmt: skip


@dataclass
class ReportSection:
    """A section of the report that another part of MedSynth plugs in.

    Attributes
    ----------
    title : str
    tables : dict of name to DataFrame
        Written to ``tables/`` as CSV, Parquet and JSON and shown in the HTML (first rows).
    figures : dict of name to matplotlib Figure or PNG bytes
        Embedded as inline base64 PNG.
    notes : list of str
        Paragraphs shown above the tables (plain text; escaped).
    """

    title: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure | bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReportConfig:
    """How the analyses run.

    Attributes
    ----------
    n_resamples, seed, method, confidence_level
        Item bootstrap of agreement and scores.
    exclude_flagged_raters : bool
        Leave raters flagged by attention checks out of the Turing test (always reported).
    max_failure_rate : float
        Attention failure rate above which a rater is flagged.
    include_mrmc : bool
        Add the MRMC section when :mod:`analysis.mrmc` provides it.
    """

    n_resamples: int = 1000
    seed: int = 0
    method: BootstrapMethod = "percentile"
    confidence_level: float = 0.95
    exclude_flagged_raters: bool = False
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    include_mrmc: bool = True


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and what it holds."""

    html_path: Path
    tables_dir: Path
    manifest_path: Path
    tables: dict[str, dict[str, Path]]
    sections: tuple[str, ...]
    seconds: float


# --------------------------------------------------------------------------------------------
# Stamps and files
# --------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("numpy", "pandas", "scipy", "matplotlib", "pyarrow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _safe_name(name: str, taken: set[str]) -> str:
    """A file-system-safe, unique table file name."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "table"
    candidate, number = base[:80], 2
    while candidate in taken:
        candidate, number = f"{base[:76]}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _plain_frame(table: pd.DataFrame) -> pd.DataFrame:
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


def _write_table(frame: pd.DataFrame, directory: Path, file_name: str, stamp: Mapping[str, Any]) -> dict[str, Path]:
    paths = {kind: directory / f"{file_name}.{kind}" for kind in ("csv", "parquet", "json")}
    frame.to_csv(paths["csv"], index=False)
    _write_parquet(frame, paths["parquet"], stamp)
    records = json.loads(frame.to_json(orient="records", double_precision=15, date_format="iso"))
    document = {"stamp": stamp, "columns": list(frame.columns), "data": records}
    paths["json"].write_text(json.dumps(document, default=str, indent=1), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 3.6, left: float = 0.12, bottom: float = 0.18) -> Figure:
    """A pyplot-free Agg figure with fixed margins (constrained layout is slow with many labels)."""
    figure = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=left, bottom=bottom, right=0.97, top=0.9)
    return figure


def _png(figure: Figure | bytes) -> bytes:
    if isinstance(figure, bytes):
        return figure
    buffer = io.BytesIO()
    with matplotlib.rc_context({"text.parse_math": False}):
        figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _agreement_figure(table: pd.DataFrame) -> Figure:
    figure = _figure(7.0, 0.28 * max(len(table), 4) + 1.2, left=0.42, bottom=0.12)
    axes = figure.add_subplot()
    rows = table.dropna(subset=["estimate"]).reset_index(drop=True)
    labels = [f"{q} / {s}" for q, s in zip(rows["question"], rows["statistic"], strict=True)]
    y = np.arange(len(rows))
    err = np.vstack([rows["estimate"] - rows["ci_low"], rows["ci_high"] - rows["estimate"]]).clip(min=0)
    axes.errorbar(rows["estimate"], y, xerr=np.nan_to_num(err), fmt="o", capsize=3)
    axes.set_yticks(y, labels, fontsize=7)
    axes.axvline(0, color="grey", lw=0.8)
    axes.set_xlabel("agreement (95% bootstrap CI)")
    axes.set_title("Inter-rater agreement, all raters")
    return figure


def _score_distribution_figure(frame: pd.DataFrame) -> Figure:
    figure = _figure(8.0, 3.4, left=0.08, bottom=0.3)
    figure.subplots_adjust(right=0.9, wspace=0.35)
    for index, question in enumerate(SCORE_QUESTIONS):
        axes = figure.add_subplot(1, len(SCORE_QUESTIONS), index + 1)
        normal = frame[frame["item_kind"] == "normal"]
        series: dict[str, np.ndarray] = {
            str(model): part[f"{question}_generated"].to_numpy(dtype=float, na_value=np.nan)
            for model, part in normal.groupby("model", sort=True)
        }
        series["real"] = normal[f"{question}_real"].to_numpy(dtype=float, na_value=np.nan)
        bottom = np.zeros(len(series))
        for score in range(1, 6):
            share = np.array(
                [np.mean(v[~np.isnan(v)] == score) if (~np.isnan(v)).any() else 0.0 for v in series.values()]
            )
            axes.bar(range(len(series)), share, bottom=bottom, label=str(score))
            bottom += share
        axes.set_xticks(range(len(series)), list(series), rotation=30, ha="right", fontsize=7)
        axes.set_title(question)
        axes.set_ylabel("share of ratings")
    axes.legend(title="score", fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return figure


def _turing_rater_figure(per_rater: pd.DataFrame) -> Figure:
    rows = per_rater.sort_values("accuracy").reset_index(drop=True)
    figure = _figure(7.0, 0.22 * max(len(rows), 6) + 1.2, left=0.18, bottom=0.12)
    axes = figure.add_subplot()
    y = np.arange(len(rows))
    err = np.vstack([rows["accuracy"] - rows["ci_low"], rows["ci_high"] - rows["accuracy"]]).clip(min=0)
    axes.errorbar(rows["accuracy"], y, xerr=np.nan_to_num(err), fmt="o", capsize=2)
    axes.axvline(0.5, color="red", lw=1, label="chance")
    axes.set_yticks(y, rows["rater"].astype(str).tolist(), fontsize=6)
    axes.set_xlim(0, 1)
    axes.set_xlabel("accuracy: which image is generated (95% exact CI)")
    axes.legend(fontsize=7)
    return figure


def _confusion_figure(confusion: pd.DataFrame) -> Figure:
    figure = _figure(4.2, 3.2, left=0.3, bottom=0.12)
    axes = figure.add_subplot()
    values = confusion.to_numpy(dtype=float)
    axes.imshow(values, cmap="Blues")
    for (row, column), value in np.ndenumerate(values):
        axes.text(column, row, f"{int(value)}", ha="center", va="center")
    axes.set_xticks([0, 1], ["answered left", "answered right"])
    axes.set_yticks([0, 1], ["generated left", "generated right"])
    axes.set_title("Turing test answers")
    return figure


def _position_bias_figure(per_rater: pd.DataFrame) -> Figure:
    figure = _figure(7.0, 3.2, left=0.08, bottom=0.3)
    axes = figure.add_subplot()
    x = np.arange(len(per_rater))
    axes.bar(x, per_rater["share_answered_right"], label="answered right")
    axes.plot(x, per_rater["share_generated_right"], "k_", markersize=10, label="generated right")
    axes.axhline(0.5, color="red", lw=1)
    axes.set_xticks(x, per_rater["rater"].astype(str).tolist(), rotation=90, fontsize=6)
    axes.set_ylim(0, 1)
    axes.set_ylabel("share")
    axes.set_title("Position bias per rater")
    axes.legend(fontsize=7)
    return figure


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _mrmc_section(ratings: pd.DataFrame) -> ReportSection | None:
    """The MRMC section if :mod:`analysis.mrmc` exists and offers ``mrmc_from_ratings``; else None."""
    try:
        mrmc = importlib.import_module("analysis.mrmc")
    except ImportError:
        return None
    if not hasattr(mrmc, "mrmc_from_ratings"):
        return None
    section = ReportSection("MRMC ROC analysis (Obuchowski-Rockette)")
    try:
        if hasattr(mrmc, "mrmc_report_section"):
            parts = mrmc.mrmc_report_section(ratings)
            section.tables.update({f"mrmc/{name}": table for name, table in parts.get("tables", {}).items()})
            section.figures.update({f"mrmc/{name}": figure for name, figure in parts.get("figures", {}).items()})
            section.notes.extend(str(note) for note in parts.get("notes", []))
        else:
            result = mrmc.mrmc_from_ratings(ratings)
            section.tables.update({f"mrmc/{name}": table for name, table in result.tables().items()})
    except ValueError as error:  # a design the MRMC analysis cannot handle is reported, not fatal
        section.notes.append(f"MRMC analysis not possible: {error}")
    return section


def _icc_section_table(frame: pd.DataFrame) -> tuple[pd.DataFrame | None, str]:
    rows = []
    for question in ("realism_generated", "accuracy_generated"):
        matrix = ratings_matrix(frame[frame["item_kind"] == "normal"], question)
        try:
            rows.append(icc(matrix.values).assign(question=question))
        except ValueError as error:
            return None, f"ICC not computed: {error}"
    return pd.concat(rows, ignore_index=True), "ICC on the items every rater rated (listwise deletion)."


def _analysis_frame(ratings: pd.DataFrame) -> pd.DataFrame:
    """The columns the analyses use, strings as categoricals: row filters then move int codes, not strings."""
    frame = ratings[_COLUMNS]
    text = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c]) or frame[c].dtype == object]
    return frame.astype(dict.fromkeys(text, "category"))


def _analysis_sections(
    frame: pd.DataFrame, config: ReportConfig, step: Callable[[str], None]
) -> tuple[list[ReportSection], dict[str, Any]]:
    boot = {
        "n_resamples": config.n_resamples,
        "seed": config.seed,
        "method": config.method,
        "confidence_level": config.confidence_level,
    }
    step("headline Turing result")
    headline_section = ReportSection(
        "Headline: can raters tell generated from real?",
        tables={
            "turing_headline": headline(frame, descriptive=True),
            "turing_headline_by_model": headline(frame, by="model"),
        },
        notes=[
            "Accuracy of 'which image is generated?' (0.5 = chance = indistinguishable). Inference treats raters "
            "AND pairs as random (method column); p_value tests accuracy = 0.5, p_equivalence (TOST) tests "
            "|accuracy - 0.5| < 0.1. The pooled binomial row is descriptive only: it treats answers as independent."
        ],
    )
    step("agreement")
    overall = agreement_table(frame, **boot)
    step("agreement by model and specialty")
    by_model = agreement_table(frame, by="model", **boot)
    by_specialty = agreement_table(frame, by="specialty", **boot)
    icc_table, icc_note = _icc_section_table(frame)
    agreement = ReportSection(
        "Inter-rater agreement",
        tables={"agreement_overall": overall, "agreement_by_model": by_model, "agreement_by_specialty": by_specialty},
        figures={"agreement": _agreement_figure(overall)},
        notes=[
            f"Items resampled (raters fixed), {config.n_resamples} {config.method} bootstrap resamples, "
            f"seed {config.seed}. Normal items only. Scores: Krippendorff's alpha (ordinal), Fleiss' kappa, "
            "Gwet's AC2 (quadratic weights), ICC(2,1) on complete items; which_generated: alpha (nominal), "
            "Fleiss' kappa, Gwet's AC1.",
            icc_note,
        ],
    )
    if icc_table is not None:
        agreement.tables["icc"] = icc_table
    step("intra-rater reliability")
    intra = ReportSection(
        "Intra-rater reliability (repeat items)",
        tables={"intra_rater": intra_rater_reliability(frame)},
        notes=["Each repeat item is compared with the same rater's first answer; the Turing answer as correct/wrong."],
    )
    step("visual Turing test")
    turing = turing_test(
        frame, exclude_flagged_raters=config.exclude_flagged_raters, max_failure_rate=config.max_failure_rate
    )
    flagged = turing.attention.loc[turing.attention["flagged"], "rater"].astype(str).tolist()
    turing_notes = [
        "2AFC: accuracy_generated_right / _left = accuracy when the generated image was on the right / left; "
        "d' = (z(H) - z(F)) / sqrt(2) with the log-linear correction. These tables are descriptive: their exact "
        "binomial tests treat answers as independent (p_holm: Holm across rows); the headline section has the "
        "inference. Accuracy near 0.5 means raters cannot tell the model's images from real ones.",
        f"Raters flagged by attention checks: {', '.join(flagged) if flagged else 'none'}; "
        + (
            f"excluded from the Turing test: {', '.join(turing.excluded_raters) or 'none'}."
            if config.exclude_flagged_raters
            else "not excluded."
        ),
    ]
    turing_section = ReportSection(
        "Visual Turing test",
        tables=turing.tables(),
        figures={
            "accuracy_by_rater": _turing_rater_figure(turing.per_rater),
            "confusion": _confusion_figure(turing.confusion),
            "position_bias": _position_bias_figure(turing.position_bias_per_rater),
        },
        notes=turing_notes,
    )
    step("per-model scores")
    scores = ReportSection(
        "Per-model realism and accuracy",
        tables={
            "model_scores": model_scores(frame, n_resamples=config.n_resamples, seed=config.seed),
            "model_comparisons": model_comparisons(frame),
            "friedman": friedman_table(frame),
        },
        figures={"score_distributions": _score_distribution_figure(frame)},
        notes=[
            "Means over ratings with item-bootstrap percentile CIs; the real images are the ceiling. "
            "Comparisons on per-item (unpaired, Mann-Whitney, Cliff's delta) or per-case (paired, Wilcoxon, "
            "rank-biserial) means, Holm-corrected per question and family."
        ],
    )
    return [headline_section, agreement, intra, turing_section, scores], boot


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "NA"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def _html_table(frame: pd.DataFrame) -> str:
    shown = frame.head(MAX_HTML_ROWS)
    head = "".join(f"<th>{_text(column)}</th>" for column in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_text(_cell(value))}</td>" for value in row) + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    )
    more = (
        f'<p class="more">Showing {MAX_HTML_ROWS} of {len(frame)} rows; see the files for all.</p>'
        if len(frame) > MAX_HTML_ROWS
        else ""
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.stamp{font-size:11px;color:#555}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.more{font-size:11px;color:#555}
"""


def _html(
    title: str, stamp: Mapping[str, Any], sections: Sequence[ReportSection], files: Mapping[str, dict[str, Path]]
) -> str:
    shown = {key: value if isinstance(value, str) else json.dumps(value, default=str) for key, value in stamp.items()}
    stamp_rows = "".join(f"<tr><th>{_text(key)}</th><td>{_text(value)}</td></tr>" for key, value in shown.items())
    toc = "".join(f'<li><a href="#s{i}">{_text(s.title)}</a></li>' for i, s in enumerate(sections))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_text(title)}</h1><table class='stamp'>{stamp_rows}</table><ol>{toc}</ol>",
    ]
    for index, section in enumerate(sections):
        parts.append(f"<section id='s{index}'><h2>{_text(section.title)}</h2>")
        parts.extend(f"<p>{_text(note)}</p>" for note in section.notes)
        for name, figure in section.figures.items():
            encoded = base64.b64encode(_png(figure)).decode("ascii")
            parts.append(f"<figure><img alt='{_text(name)}' src='data:image/png;base64,{encoded}'></figure>")
        for name, table in section.tables.items():
            links = ", ".join(_text(f"tables/{path.name}") for path in files.get(f"{index}:{name}", {}).values())
            parts.append(f"<h3>{_text(name)}</h3><p class='stamp'>{links}</p>{_html_table(_plain_frame(table))}")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def write_report(
    ratings: pd.DataFrame,
    out_dir: Path,
    *,
    title: str,
    stamp: dict[str, Any],
    extra_sections: Sequence[ReportSection] = (),
    progress: Progress | None = None,
    config: ReportConfig | None = None,
) -> ReportResult:
    """Analyse a tidy ratings table and write ``out_dir/report.html`` and ``out_dir/tables/``.

    Parameters
    ----------
    ratings : pandas.DataFrame
        The tidy ratings table (docs/ratings-table.md).
    out_dir : Path
        Created if missing; ``report.html``, ``tables/<name>.{csv,parquet,json}`` and
        ``tables/manifest.json`` are (over)written.
    title : str
        Page title (escaped).
    stamp : dict
        How the data were made (e.g. study name, export time); merged into every table's stamp.
    extra_sections : sequence of ReportSection
        Sections from other parts (automated metrics, ...), appended after the built-in ones.
    progress : callable, optional
        Called as ``progress(fraction, desc=step)``; ``None`` shows a tqdm bar.
    config : ReportConfig, optional
        Bootstrap size, seed, attention-check handling, MRMC on/off.

    Returns
    -------
    ReportResult
    """
    started = time.perf_counter()
    config = config or ReportConfig()
    missing = sorted(set(_COLUMNS) - set(ratings.columns))
    if missing:
        raise ValueError(f"ratings table lacks columns {missing}; see docs/ratings-table.md")
    if ratings.empty:
        raise ValueError("ratings table is empty; nothing to report")
    out_dir = Path(out_dir)
    tables_dir = out_dir / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    steps = ["agreement", "agreement by model and specialty", "intra-rater reliability", "visual Turing test"]
    steps += ["per-model scores", "MRMC", "writing tables", "writing HTML"]
    bar = None
    if progress is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="report", unit="step")
    done = 0

    def step(name: str) -> None:
        nonlocal done
        if progress is not None:
            progress(done / len(steps), desc=name)
        elif bar is not None:
            bar.set_description(name)
            if done:
                bar.update(1)
        done += 1

    frame = _analysis_frame(ratings)
    sections, boot = _analysis_sections(frame, config, step)
    step("MRMC")
    mrmc_section = _mrmc_section(ratings) if config.include_mrmc else None
    if mrmc_section is not None:
        sections.append(mrmc_section)
    from analysis.preference import head_to_head_report_parts  # head-to-head studies (issue 18)

    for title, parts in head_to_head_report_parts(ratings, config.n_resamples, config.seed, config.confidence_level):
        sections.append(ReportSection(title, parts["tables"], parts["figures"], parts["notes"]))
    sections.extend(extra_sections)

    step("writing tables")
    hashes = sorted(map(str, ratings["study_config_sha256"].dropna().unique()))
    base_stamp = {
        **stamp,
        "study_config_sha256": hashes[0] if len(hashes) == 1 else hashes,
        "n_ratings": len(ratings),
        "n_raters": int(ratings["rater"].nunique()),
        "n_items": int(ratings["item"].nunique()),
        "bootstrap": boot,
        "versions": _versions(),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    taken: set[str] = set()
    files: dict[str, dict[str, Path]] = {}
    manifest: list[dict[str, Any]] = []
    for index, section in enumerate(sections):
        for name, table in section.tables.items():
            plain = _plain_frame(table)
            file_name = _safe_name(name, taken)
            table_stamp = {**base_stamp, "section": section.title, "table": name, "n_rows": len(plain)}
            paths = _write_table(plain, tables_dir, file_name, table_stamp)
            files[f"{index}:{name}"] = paths
            manifest.append({"files": {k: p.name for k, p in paths.items()}, "stamp": table_stamp})
    manifest_path = tables_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, default=str, indent=1), encoding="utf-8")

    step("writing HTML")
    html_path = out_dir / "report.html"
    html_path.write_text(_html(title, {**stamp, **base_stamp}, sections, files), encoding="utf-8")
    if progress is not None:
        progress(1.0, desc="done")
    if bar is not None:
        bar.update(1)
        bar.close()
    return ReportResult(
        html_path=html_path,
        tables_dir=tables_dir,
        manifest_path=manifest_path,
        tables={paths["csv"].stem: paths for paths in files.values()},
        sections=tuple(section.title for section in sections),
        seconds=time.perf_counter() - started,
    )
