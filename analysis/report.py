"""The study report in two steps: :func:`compute_report` (pure: tables, figure data, methods text) then
:func:`render_report` (HTML, tables, 300-dpi and vector figures, a zip; see :mod:`analysis.report_render`).

``write_report`` does both for a tidy ratings table; :func:`analysis.study_report.write_study_report` is the one
entry the CLI and the coordinator console call for a study. The human-rating analyses (agreement,
intra-rater reliability, the visual Turing test, per-model scores, MRMC) always run; ``extra_sections`` add
automated metrics, expert-vs-metric comparisons, memorisation checks. Every section carries its own methods
sentences, written from the objects that made its numbers (the statistics named in its tables, the bootstrap
settings, the extractor stamp), so the Methods paragraph cannot drift from what was computed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from matplotlib.figure import Figure

from analysis import report_render
from analysis.agreement import (
    BootstrapMethod,
    agreement_table,
    icc,
    icc_unbalanced,
    intra_rater_reliability,
    ratings_matrix,
)
from analysis.mrmc import mrmc_report_section
from analysis.scores import SCORE_QUESTIONS, friedman_table, model_comparisons, model_differences, model_scores
from analysis.turing import DEFAULT_MAX_FAILURE_RATE, headline, turing_test
from db.errors import InputError
from db.questions import ANALYSED_QUESTIONS, Question, QuestionKind

__all__ = [
    "FigureSpec",
    "ReportConfig",
    "ReportContent",
    "ReportResult",
    "ReportSection",
    "compute_report",
    "render_report",
    "write_report",
]

logger = logging.getLogger(__name__)

Progress = Callable[..., object]
"""Called as ``progress(fraction, desc=step)`` (the signature of ``gradio.Progress``)."""

_COLUMNS = [
    "study_config_sha256", "item", "item_kind", "repeat_of", "case", "rater", "rater_name", "specialty",
    "years", "model", "generated_side", "position", "realism_generated", "realism_real", "accuracy_generated",
    "accuracy_real", "which_generated", "confidence", "correct", "cannot_assess",
]  # fmt: skip
FigureKind = Literal["forest", "likert", "rater_accuracy", "confusion", "position_bias", "scatter"]


@dataclass(frozen=True)
class FigureSpec:
    """The data of one figure; :mod:`analysis.report_render` draws it (``kind`` names the drawing)."""

    kind: FigureKind
    data: pd.DataFrame
    width: float = 7.0
    height: float = 3.2
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageGrid:
    """Images shown in a table (e.g. one sample per prompt and model): a label and PNG bytes per row.

    ``columns`` are the headings of the image columns; each row is ``(label, cells)`` with one cell per column,
    ``None`` where there is no image. Shown in the HTML only (thumbnails), never written as a table.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[bytes | None, ...]], ...]
    label: str = ""


@dataclass
class ReportSection:
    """One section: tables, figures (specs, or ready matplotlib figures / PNG bytes), notes, methods.

    Attributes
    ----------
    title : str
        A heading for readers.
    tables : dict of name to DataFrame
        Written to ``tables/`` in full precision; shown rounded in the HTML.
    figures : dict of name to FigureSpec, Figure or PNG bytes
    notes : list of str
        Short findings and caveats shown under the heading.
    methods : list of str
        Sentences for the report's Methods paragraph (how this section's numbers were made).
    captions : dict of name to str
        Table / figure / image grid captions (default: a heading made from the name).
    images : dict of name to ImageGrid
        Thumbnails in a table, after the figures (HTML only).
    """

    title: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, FigureSpec | Figure | bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)
    images: dict[str, ImageGrid] = field(default_factory=dict)


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
        Add the MRMC (Obuchowski-Rockette) section.
    rater_labels : {"codes", "names"}
        Show raters as stable codes R01, R02 ... (default; names stay out of the report) or by their names.
    """

    n_resamples: int = 1000
    seed: int = 0
    method: BootstrapMethod = "percentile"
    confidence_level: float = 0.95
    exclude_flagged_raters: bool = False
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    include_mrmc: bool = True
    rater_labels: Literal["codes", "names"] = "codes"


@dataclass(frozen=True)
class ReportContent:
    """Everything the report shows, computed and not yet written."""

    title: str
    summary: str
    methods: list[str]
    sections: list[ReportSection]
    stamp: dict[str, Any]
    level: float


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and what it holds."""

    html_path: Path
    tables_dir: Path
    manifest_path: Path
    tables: dict[str, dict[str, Path]]
    sections: tuple[str, ...]
    seconds: float
    figures_dir: Path | None = None
    zip_path: Path | None = None


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("numpy", "pandas", "scipy", "matplotlib", "pyarrow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def rater_label_map(ratings: pd.DataFrame, mode: Literal["codes", "names"] = "codes") -> dict[str, str]:
    """Rater id -> R01, R02 ... (ids sorted, so labels are stable across reruns), or -> display name."""
    ids = sorted(map(str, ratings["rater"].dropna().unique()))
    codes = {rater: f"R{i:02d}" for i, rater in enumerate(ids, start=1)}
    if mode == "codes":
        return codes
    names = ratings.drop_duplicates("rater").set_index(ratings.drop_duplicates("rater")["rater"].astype(str))
    names_map = {rater: str(names.loc[rater, "rater_name"]) if "rater_name" in names else rater for rater in ids}
    counts = pd.Series(list(names_map.values())).value_counts()
    return {r: n if counts[n] == 1 else f"{n} ({codes[r]})" for r, n in names_map.items()}


def _relabel(section: ReportSection, labels: Mapping[str, str], drop_names: bool) -> None:
    """Raters shown by their labels in every table, figure and note of a section."""
    for name, table in list(section.tables.items()):
        frame = table.copy()
        for column in ("rater", "reader"):
            if column in frame.columns:
                frame[column] = frame[column].astype(str).map(lambda r: labels.get(r, r))
        if drop_names and "rater_name" in frame.columns:
            frame = frame.drop(columns="rater_name")
        section.tables[name] = frame
    for name, spec in list(section.figures.items()):
        if isinstance(spec, FigureSpec) and "rater" in spec.data.columns:
            data = spec.data.assign(rater=spec.data["rater"].astype(str).map(lambda r: labels.get(r, r)))
            section.figures[name] = FigureSpec(spec.kind, data, spec.width, spec.height, spec.options)
    notes = []
    for note in section.notes:
        for rater, label in labels.items():
            note = note.replace(rater, label)
        notes.append(note)
    section.notes = notes


def _likert_data(frame: pd.DataFrame) -> pd.DataFrame:
    """Share of each score 1-5 per question and per model (and the real images)."""
    normal = frame[frame["item_kind"] == "normal"]
    rows = []
    for question in SCORE_QUESTIONS:
        series = {
            str(m): part[f"{question}_generated"] for m, part in normal.groupby("model", sort=True, observed=True)
        }
        series["Real images"] = normal[f"{question}_real"]
        for group, values in series.items():
            answered = pd.to_numeric(values, errors="coerce").dropna()
            for score in range(1, ANALYSED_QUESTIONS[f"{question}_generated"].scale_max + 1):
                share = float((answered == score).mean()) if len(answered) else 0.0
                rows.append({"question": question, "group": group, "score": score, "share": share})
    return pd.DataFrame(rows)


def _answer_values(question: Question) -> str:
    """The answers a question takes, for prose: ``1-5`` or ``left / right``."""
    if question.kind == QuestionKind.SCALE:
        return f"1-{question.scale_max}"
    return " / ".join(question.choices) if question.choices else "yes / no"


def _level_prose(key: str) -> str:
    """``ordinal (1-5)``: the question's level of measurement and answers, from the schema."""
    question = ANALYSED_QUESTIONS.get(key)
    return "" if question is None else f"{question.level} ({_answer_values(question)}), "


def _statistic_list(table: pd.DataFrame, question: str) -> str:
    stats = table.loc[table["question"] == question, "statistic"].dropna().unique()
    return ", ".join(report_render.VALUE_LABELS.get(str(s), str(s)) for s in stats)


def _pct(level: float) -> str:
    return f"{round(level * 100)}%"


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _mrmc_section(ratings: pd.DataFrame, level: float) -> ReportSection:
    """The MRMC section (Obuchowski-Rockette with Hillis df) from :func:`analysis.mrmc.mrmc_report_section`."""
    section = ReportSection("Multi-reader multi-case ROC analysis")
    try:
        parts = mrmc_report_section(ratings, conf_level=level)
    except ValueError as error:  # a design the MRMC analysis cannot handle is reported, not fatal
        section.notes.append(f"MRMC analysis not possible: {error}")
        return section
    section.tables.update({f"mrmc/{name}": table for name, table in parts["tables"].items()})
    section.figures.update({f"mrmc/{name}": figure for name, figure in parts["figures"].items()})
    section.notes.extend(str(note) for note in parts["notes"])
    for score in parts["results"]:
        section.captions[f"mrmc/{score}/roc"] = f"Empirical ROC curves by model ({score} score), reader-averaged AUC"
    designs: dict[str, list[str]] = {}  # scores analysed the same way share one sentence
    for score, result in parts["results"].items():
        how = (
            f"Obuchowski-Rockette with Hillis degrees of freedom, {result.cov_method} covariance, design "
            f"{result.design}, {len(result.readers)} readers x {len(result.tests)} models; random readers and cases"
        )
        designs.setdefault(how, []).append(score)
    for how, scores in designs.items():
        section.methods.append(
            f"Discrimination of generated from real images ({' and '.join(scores)} score"
            f"{'s' if len(scores) > 1 else ''}) was analysed as a multi-reader multi-case ROC study ({how})."
        )
    return section


def _icc_section_table(frame: pd.DataFrame) -> tuple[pd.DataFrame | None, str]:
    """The six ICC forms when every rater rated every item; else (K-of-N designs) the one-way random ICC of
    the unbalanced data, which uses every rating instead of silently skipping ICC."""
    rows, sparse = [], False
    for question in ("realism_generated", "accuracy_generated"):
        matrix = ratings_matrix(frame[frame["item_kind"] == "normal"], question)
        try:
            rows.append(icc(matrix.values).assign(question=question))
        except ValueError:
            sparse = True
            try:
                rows.append(icc_unbalanced(matrix.values).assign(question=question))
            except ValueError as error:
                return None, f"ICC not computed: {error}"
    if sparse:
        return pd.concat(rows, ignore_index=True), (
            "Not every rater rated every item (a K-of-N design): ICC is the one-way random ICC(1) / ICC(1,k0) of "
            "the unbalanced data (Searle's n0; Donner's F intervals), using every rating."
        )
    return pd.concat(rows, ignore_index=True), "ICC (six Shrout-Fleiss forms) on the crossed rater x item table."


def _headline_section(frame: pd.DataFrame, config: ReportConfig) -> ReportSection:
    """The study's answer first: can raters tell generated from real? Raters and pairs random, TOST too."""
    overall = headline(frame, confidence_level=config.confidence_level, descriptive=True)
    by_model = headline(frame, by="model", confidence_level=config.confidence_level)
    methods = sorted({str(m) for m in overall["method"].dropna()} - {"pooled binomial (descriptive)"})
    return ReportSection(
        "Headline: can raters tell generated from real?",
        tables={"turing_headline": overall, "turing_headline_by_model": by_model},
        notes=[
            "Accuracy of 'which image is generated?' (0.5 = chance = indistinguishable). Inference treats raters "
            "AND pairs as random (method column); p_value tests accuracy = 0.5, p_equivalence (TOST) tests "
            "|accuracy - 0.5| < 0.1. The pooled binomial row is descriptive only: it treats answers as independent."
        ],
        methods=[
            "The headline visual Turing result is the share of correct answers to 'which image is generated?' on "
            f"normal pairs, with raters and pairs as random effects ({'; '.join(methods) or 'see method column'}); "
            "it is tested against chance (0.5) and, for indistinguishability, by two one-sided tests with an "
            f"equivalence margin of 0.1 ({_pct(config.confidence_level)} intervals)."
        ],
    )


def _analysis_frame(ratings: pd.DataFrame) -> pd.DataFrame:
    """The columns the analyses use, strings as categoricals: row filters then move int codes, not strings."""
    frame = ratings[_COLUMNS]
    text = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c]) or frame[c].dtype == object]
    return frame.astype(dict.fromkeys(text, "category"))


def _agreement_section(frame: pd.DataFrame, config: ReportConfig, step: Callable[[str], None]) -> ReportSection:
    boot = functools.partial(agreement_table, n_resamples=config.n_resamples, seed=config.seed,
                             method=config.method, confidence_level=config.confidence_level)  # fmt: skip
    step("agreement")
    overall = boot(frame)
    step("agreement by model and specialty")
    by_model = boot(frame, by="model")
    by_specialty = boot(frame, by="specialty")
    icc_table, icc_note = _icc_section_table(frame)
    questions = list(dict.fromkeys(overall["question"].astype(str)))
    by_stats: dict[str, list[str]] = {}
    for question in questions:  # questions measured with the same statistics are named together
        by_stats.setdefault(_level_prose(question) + _statistic_list(overall, question), []).append(
            report_render.VALUE_LABELS.get(question, question).lower()
        )
    by_question = "; ".join(f"{', '.join(qs)}: {stats}" for stats, qs in by_stats.items())
    section = ReportSection(
        "Inter-rater agreement",
        tables={"agreement_overall": overall, "agreement_by_model": by_model, "agreement_by_specialty": by_specialty},
        figures={"agreement": FigureSpec("forest", overall, 7.0, 0.3 * max(len(overall), 4) + 1.0)},
        captions={"agreement": f"Inter-rater agreement, all raters ({_pct(config.confidence_level)} bootstrap CIs)"},
        notes=[icc_note],
        methods=[
            "Inter-rater agreement on normal items was estimated per question with the statistics of its level of "
            f"measurement ({by_question}), overall, by model "
            f"and by rater specialty, with {_pct(config.confidence_level)} {config.method} bootstrap confidence "
            f"intervals from {config.n_resamples} resamples of items (raters fixed; seed {config.seed})."
        ],
    )
    if icc_table is not None:
        section.tables["icc"] = icc_table
    return section


def _turing_section(frame: pd.DataFrame, config: ReportConfig) -> ReportSection:
    turing = turing_test(
        frame, exclude_flagged_raters=config.exclude_flagged_raters, max_failure_rate=config.max_failure_rate
    )
    flagged = turing.attention.loc[turing.attention["flagged"], "rater"].astype(str).tolist()
    excluded = (
        f"excluded from the Turing test: {', '.join(turing.excluded_raters) or 'none'}."
        if config.exclude_flagged_raters
        else "not excluded."
    )
    notes = [
        "accuracy_generated_right / _left: accuracy when the generated image was on the right / left. These "
        "tables are descriptive: their exact binomial tests treat answers as independent (p_holm: Holm across "
        "rows); the headline section has the inference.",
        f"Raters flagged by attention checks: {', '.join(flagged) if flagged else 'none'}; {excluded}",
    ]
    n_raters = int(turing.per_rater["rater"].nunique()) if len(turing.per_rater) else 0
    return ReportSection(
        "Visual Turing test",
        tables=turing.tables(),
        figures={
            "accuracy_by_rater": FigureSpec("rater_accuracy", turing.per_rater, 6.0, 0.25 * max(n_raters, 6) + 1.0),
            "confusion": FigureSpec("confusion", turing.confusion, 3.6, 3.0),
            "position_bias": FigureSpec("position_bias", turing.position_bias_per_rater, 7.0, 3.0),
        },
        captions={
            "accuracy_by_rater": "Accuracy of each rater at identifying the generated image (exact 95% CIs)",
            "confusion": "Turing test answers by the side of the generated image",
            "position_bias": "Share of 'right' answers per rater against the share of generated images on the right",
        },
        notes=notes,
        methods=[
            f"Per rater and subgroup ({n_raters} raters), accuracy at identifying the generated image is described "
            "with exact binomial tests and Clopper-Pearson intervals, Holm-adjusted across rows; accuracy when the "
            "generated image was on the right and on the left, d′ and criterion c (log-linear correction) describe "
            "position bias. Attention-check items (a deliberately broken generated image; 'cannot assess' is not a "
            f"failure) flag raters with a failure rate above {config.max_failure_rate:g} and at least two misses."
        ],
    )


def _scores_section(frame: pd.DataFrame, config: ReportConfig) -> ReportSection:
    comparisons = model_comparisons(frame)
    tests = [report_render.VALUE_LABELS.get(str(t), str(t)) for t in comparisons["test"].dropna().unique()]
    effects = [
        report_render.VALUE_LABELS.get(str(e), str(e)) for e in comparisons["effect_size_kind"].dropna().unique()
    ]
    friedman = friedman_table(frame)
    scales = ", ".join(dict.fromkeys(_answer_values(ANALYSED_QUESTIONS[f"{q}_generated"]) for q in SCORE_QUESTIONS))
    return ReportSection(
        "Realism and accuracy by model",
        tables={
            "model_scores": model_scores(frame, n_resamples=config.n_resamples, seed=config.seed),
            "model_differences": model_differences(frame, n_resamples=config.n_resamples, seed=config.seed),
            "model_comparisons": comparisons,
            "friedman": friedman,
        },
        figures={"score_distributions": FigureSpec("likert", _likert_data(frame), 7.0, 2.6)},
        captions={
            "score_distributions": f"Distribution of {scales} ratings of {' and '.join(SCORE_QUESTIONS)}, by model and "
            "for real images"
        },
        notes=["The real images are the ceiling each model is compared with."],
        methods=[
            f"Mean {' and '.join(SCORE_QUESTIONS)} ({scales}) per model have item-bootstrap percentile CIs "
            f"({config.n_resamples} resamples, seed {config.seed}). Models were compared pairwise with "
            f"{', '.join(tests) or 'no test'} "
            f"tests on per-item or per-case means (effect sizes: {', '.join(effects) or 'none'}), Holm-corrected "
            "within each question and family; model differences in Turing accuracy (MRMC Obuchowski-Rockette on the "
            "2AFC answers) and in mean scores (raters x cases bootstrap) treat raters and cases as random"
            + ("; all models together with the Friedman test and Kendall's W." if len(friedman) else ".")
        ],
    )


def _analysis_sections(frame: pd.DataFrame, config: ReportConfig, step: Callable[[str], None]) -> list[ReportSection]:
    """The built-in sections in report order (a headline section can be inserted at the front)."""
    step("headline Turing result")
    first = _headline_section(frame, config)
    agreement = _agreement_section(frame, config, step)
    step("intra-rater reliability")
    intra = ReportSection(
        "Intra-rater reliability (repeated items)",
        tables={"intra_rater": intra_rater_reliability(frame)},
        methods=[
            "Repeated items were compared with the same rater's first answer (the Turing answer as correct/wrong)."
        ],
    )
    step("visual Turing test")
    turing = _turing_section(frame, config)
    step("per-model scores")
    scores = _scores_section(frame, config)
    return [first, agreement, intra, turing, scores]


def _summary(ratings: pd.DataFrame) -> str:
    kinds = ratings.drop_duplicates("item")["item_kind"].astype(str).value_counts()
    models = sorted(map(str, ratings["model"].dropna().unique()))
    specialties = ratings.drop_duplicates("rater")["specialty"].astype(str).value_counts()
    spec_text = ", ".join(f"{n} {s}" for s, n in specialties.items())
    return (
        f"{ratings['rater'].nunique()} raters ({spec_text}) gave {len(ratings)} ratings of "
        f"{ratings['item'].nunique()} blinded pairs of a real and a generated image ({int(kinds.get('normal', 0))} "
        f"normal, {int(kinds.get('attention', 0))} attention-check and {int(kinds.get('repeat', 0))} repeated items) "
        f"from {len(models)} model{'s' if len(models) != 1 else ''}: {', '.join(models)}."
    )


# --------------------------------------------------------------------------------------------
# Compute, render
# --------------------------------------------------------------------------------------------


def compute_report(
    ratings: pd.DataFrame,
    *,
    title: str,
    stamp: Mapping[str, Any],
    extra_sections: Sequence[ReportSection] = (),
    config: ReportConfig | None = None,
    step: Callable[[str], None] = lambda name: None,
    adaptive_draws: pd.DataFrame | None = None,
) -> ReportContent:
    """Run every analysis and return the report's content; writes nothing (see :func:`render_report`).
    ``adaptive_draws``: the draw log of an adaptive head-to-head study (noted in its preference sections)."""
    config = config or ReportConfig()
    missing = sorted(set(_COLUMNS) - set(ratings.columns))
    if missing:
        raise InputError(f"ratings table lacks columns {missing}; see docs/ratings-table.md")
    if "practice" in ratings:  # an exported table: practice ratings (flagged) are never analysed
        ratings = ratings[~ratings["practice"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    if ratings.empty:
        raise InputError("ratings table is empty; nothing to report")
    frame = _analysis_frame(ratings)
    sections = _analysis_sections(frame, config, step)
    step("MRMC")
    if config.include_mrmc:
        sections.append(_mrmc_section(ratings, config.confidence_level))
    from analysis.preference import head_to_head_report_parts  # head-to-head studies (issue 18)

    for title, parts in head_to_head_report_parts(ratings, config.n_resamples, config.seed, config.confidence_level,
                                                  adaptive_draws):  # fmt: skip
        sections.append(ReportSection(title, parts["tables"], parts["figures"], parts["notes"]))
    sections.extend(extra_sections)
    labels = rater_label_map(ratings, config.rater_labels)
    for section in sections:
        _relabel(section, labels, drop_names=config.rater_labels == "codes")
    hashes = sorted(map(str, ratings["study_config_sha256"].dropna().unique()))
    full_stamp = {
        **stamp,
        "study_config_sha256": hashes[0] if len(hashes) == 1 else hashes,
        "n_ratings": len(ratings),
        "n_raters": int(ratings["rater"].nunique()),
        "n_items": int(ratings["item"].nunique()),
        "bootstrap": {
            "n_resamples": config.n_resamples,
            "seed": config.seed,
            "method": config.method,
            "confidence_level": config.confidence_level,
        },
        "rater_labels": config.rater_labels,
        "versions": _versions(),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    methods = [_summary(ratings), *(sentence for section in sections for sentence in section.methods)]
    return ReportContent(title, _summary(ratings), methods, sections, full_stamp, config.confidence_level)


def render_report(
    content: ReportContent, out_dir: Path, step: Callable[[str], None] = lambda name: None
) -> ReportResult:
    """Write ``report.html``, ``report.md`` (a manuscript draft), ``tables/``, ``figures/`` and ``report-files.zip``."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    tables_dir, figures_dir = out_dir / "tables", out_dir / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    step("writing tables")
    taken: set[str] = set()
    files: dict[str, dict[str, Path]] = {}
    manifest: list[dict[str, Any]] = []
    for index, section in enumerate(content.sections):
        for name, table in section.tables.items():
            plain = report_render.plain_frame(table)
            file_name = report_render.safe_name(name, taken)
            table_stamp = {**content.stamp, "section": section.title, "table": name, "n_rows": len(plain)}
            paths = report_render.write_table(plain, tables_dir, file_name, table_stamp)
            files[f"{index}:{name}"] = paths
            manifest.append({"files": {k: p.name for k, p in paths.items()}, "stamp": table_stamp})
    manifest_path = tables_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, default=str, indent=1), encoding="utf-8")
    step("drawing figures")
    pngs: dict[str, bytes] = {}
    svg_files: dict[str, Path] = {}
    written: list[Path] = []
    taken_figures: set[str] = set()
    for index, section in enumerate(content.sections):
        for name, figure in report_render.section_figures(section).items():
            paths = report_render.save_figure(figure, figures_dir, report_render.safe_name(name, taken_figures))
            pngs[f"{index}:{name}"] = paths["png"].read_bytes()
            svg_files[f"{index}:{name}"] = paths.get("svg", paths["png"]).relative_to(out_dir)
            written.extend(paths.values())
    step("writing HTML")
    html_path = out_dir / "report.html"
    html_path.write_text(report_render.render_html(content, files, pngs), encoding="utf-8")
    markdown_path = out_dir / "report.md"
    markdown_path.write_text(report_render.render_markdown(content, svg_files, content.level), encoding="utf-8")
    table_files = [p for paths in files.values() for p in paths.values()]
    zip_path = report_render.zip_outputs(out_dir, [html_path, markdown_path, *written, *table_files, manifest_path])
    return ReportResult(
        html_path=html_path,
        tables_dir=tables_dir,
        manifest_path=manifest_path,
        tables={paths["csv"].stem: paths for paths in files.values()},
        sections=tuple(section.title for section in content.sections),
        seconds=time.perf_counter() - started,
        figures_dir=figures_dir,
        zip_path=zip_path,
    )


STEPS = ("agreement", "agreement by model and specialty", "intra-rater reliability", "visual Turing test",
         "per-model scores", "MRMC", "writing tables", "drawing figures", "writing HTML")  # fmt: skip


def progress_steps(
    progress: Progress | None, total: int = len(STEPS)
) -> tuple[Callable[[str], None], Callable[[], None]]:
    """A ``step(name)`` callback over ``progress`` (or a tqdm bar when None) and a ``done()`` to close it."""
    bar = None
    if progress is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="report", unit="step")
    done = 0

    def step(name: str) -> None:
        nonlocal done
        logger.info("report: %s", name)
        if progress is not None:
            progress(min(done / total, 0.99), desc=name)
        elif bar is not None:
            bar.set_description(name)
            if done:
                bar.update(1)
        done += 1

    def finish() -> None:
        if progress is not None:
            progress(1.0, desc="done")
        if bar is not None:
            bar.update(1)
            bar.close()

    return step, finish


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
    """Analyse a tidy ratings table and write the report (:func:`compute_report` then :func:`render_report`).

    Parameters
    ----------
    ratings : pandas.DataFrame
        The tidy ratings table (docs/ratings-table.md).
    out_dir : Path
        Created if missing; ``report.html``, ``tables/``, ``figures/`` and ``report-files.zip`` are (over)written.
    title : str
        Page title (escaped).
    stamp : dict
        How the data were made (e.g. study name, export time); merged into every table's stamp.
    extra_sections : sequence of ReportSection
        Sections from other parts (automated metrics, ...), after the built-in ones.
    progress : callable, optional
        Called as ``progress(fraction, desc=step)``; ``None`` shows a tqdm bar.
    config : ReportConfig, optional
    """
    started = time.perf_counter()
    step, finish = progress_steps(progress)
    content = compute_report(ratings, title=title, stamp=stamp, extra_sections=extra_sections, config=config, step=step)
    result = render_report(content, Path(out_dir), step)
    finish()
    return dataclasses.replace(result, seconds=time.perf_counter() - started)
