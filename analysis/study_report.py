"""The report of one study: the one entry the CLI (``python app.py report``) and the coordinator console call.

:func:`write_study_report` reads the study's tidy ratings through ``db/``, runs the human analyses, and when
metrics are asked for, measures each model's images with one feature extractor
(:func:`analysis.features.load_extractor`; the default ``handcrafted`` is committed and works offline) and
compares those metrics with the experts (:func:`analysis.metrics.human_metric_comparison`). It then renders
the report (HTML, tables, figures, zip) through :mod:`analysis.report`.

Metrics (``--metrics``, comma-separated):

- per model: ``fd`` (Fréchet distance), ``kid``, ``cmmd`` (unbiased), ``diversity`` (mean pairwise feature
  distance), ``ms-ssim`` (mean pairwise MS-SSIM of a model's images: lower = more diverse);
- per image: ``nn`` (feature distance to the nearest real image), ``alignment`` (image-prompt cosine; needs a
  dual encoder: ``--extractor clip:...`` or ``tiny-clip``).

The MEDVQA-GI 2025 scores need paraphrase pairs and 10 images per prompt, which a rating study does not have:
call :func:`analysis.metrics.medvqa_gi_2025` on a challenge submission instead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from analysis.features.base import FeatureExtractor, load_images
from analysis.features.registry import DEFAULT_EXTRACTOR, load_extractor, parse_extractor_spec
from analysis.report import (
    FigureSpec,
    ReportConfig,
    ReportContent,
    ReportResult,
    ReportSection,
    compute_report,
    progress_steps,
    render_report,
)
from db.adaptive import draws_frame, is_adaptive
from db.errors import InputError

if TYPE_CHECKING:
    from analysis.metrics import MetricStamp

__all__ = ["IMAGE_METRICS", "METRIC_NAMES", "MODEL_METRICS", "StudyImages", "compute_study_report",
           "write_study_report"]  # fmt: skip

logger = logging.getLogger(__name__)

MODEL_METRICS = ("fd", "kid", "cmmd", "diversity", "ms-ssim")
IMAGE_METRICS = ("nn", "alignment")
METRIC_NAMES = MODEL_METRICS + IMAGE_METRICS
LOWER_IS_BETTER = {"FD": True, "KID": True, "CMMD": True, "diversity": False, "MS-SSIM": True, "nn": True,
                   "alignment": False}  # fmt: skip
"""For ranking models against the experts: the direction in which a metric calls a model better."""


class _Store(Protocol):
    def path(self, sha256: str) -> Path: ...


class _Workspace(Protocol):
    @property
    def store(self) -> _Store: ...

    @property
    def database(self) -> Any: ...


@dataclass(frozen=True)
class StudyImages:
    """The study's normal items as images: one row per generated image (model, case, prompt, paths)."""

    images: pd.DataFrame
    """Columns ``generated_image, real_image, model, case, prompt, generated_path, real_path``."""

    @property
    def real_paths(self) -> list[Path]:
        """Distinct real images."""
        return list(dict.fromkeys(self.images["real_path"]))

    def generated_paths(self, model: str) -> list[Path]:
        """Distinct generated images of one model."""
        return list(self.images.loc[self.images["model"] == model, "generated_path"])


def study_images(ratings: pd.DataFrame, store: _Store) -> StudyImages:
    """The distinct generated images of the normal items in a ratings table, with their media-store paths."""
    normal = ratings[ratings["item_kind"].astype(str) == "normal"]
    rows = normal.drop_duplicates("generated_image")[["generated_image", "real_image", "model", "case", "prompt"]]
    rows = rows.astype(str).sort_values(["model", "case", "generated_image"]).reset_index(drop=True)
    rows["generated_path"] = [store.path(sha) for sha in rows["generated_image"]]
    rows["real_path"] = [store.path(sha) for sha in rows["real_image"]]
    return StudyImages(rows)


def parse_metrics(metrics: Sequence[str]) -> list[str]:
    """Lower-cased metric names, checked (one InputError naming the unknown ones and the choices)."""
    names = [m.strip().lower() for m in metrics if m.strip()]
    unknown = sorted(set(names) - set(METRIC_NAMES))
    if unknown:
        extra = (
            " (medvqa-gi-2025 needs paraphrase pairs: see analysis.metrics.medvqa_gi_2025)"
            if any("medvqa" in u for u in unknown)
            else ""
        )
        raise InputError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}{extra}")
    return list(dict.fromkeys(names))


def _model_metric_results(
    names: Sequence[str],
    extractor: FeatureExtractor,
    feats_real: np.ndarray,
    feats: dict[str, np.ndarray],
    images: StudyImages,
    seed: int,
) -> pd.DataFrame:
    from analysis.metrics import compare_models, mean_pairwise_distance, ms_ssim_diversity

    distribution = [m.upper() for m in names if m in ("fd", "kid", "cmmd")]
    table = (
        compare_models(extractor, feats_real, feats, seed=seed, metrics=distribution)  # type: ignore[arg-type]
        if distribution
        else pd.DataFrame()
    )
    rows = []
    if "diversity" in names:
        for model, f in feats.items():
            rows.append({"model": model, "metric": f"diversity_{extractor.name}", "value": mean_pairwise_distance(f),
                         "n_a": len(f), "extractor": extractor.name})  # fmt: skip
    if "ms-ssim" in names:
        for model in feats:
            paths = images.generated_paths(model)
            value, n_pairs = ms_ssim_diversity(load_images(paths), data_range=255)
            rows.append({"model": model, "metric": "MS-SSIM", "value": value, "n_a": len(paths), "n_pairs": n_pairs,
                         "extractor": "pixels (256 px, RGB)"})  # fmt: skip
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if rows else table


def _image_metric_rows(
    names: Sequence[str], extractor: FeatureExtractor, feats_real: np.ndarray, feats: dict[str, np.ndarray],
    images: StudyImages,
) -> pd.DataFrame:  # fmt: skip
    from analysis.metrics import nearest_real_distance, text_image_alignment

    parts = []
    for model, f in feats.items():
        rows = images.images[images.images["model"] == model]
        if "nn" in names:
            distance = nearest_real_distance(f, feats_real)
            parts.append(pd.DataFrame({"generated_image": rows["generated_image"], "model": model,
                                       "metric": f"nn_{extractor.name}", "value": distance}))  # fmt: skip
        if "alignment" in names:
            embed_texts = getattr(extractor, "embed_texts", None)
            if embed_texts is None:
                raise InputError(
                    f"the alignment metric needs a dual image-text encoder; {extractor.name} has no text side: "
                    "use --extractor clip:HUB_ID_OR_FOLDER (or tiny-clip for a smoke run)"
                )
            cos = text_image_alignment(f, embed_texts(list(rows["prompt"])))
            parts.append(pd.DataFrame({"generated_image": rows["generated_image"], "model": model,
                                       "metric": f"alignment_{extractor.name}", "value": cos}))  # fmt: skip
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _direction(metric: str) -> bool:
    return LOWER_IS_BETTER.get(metric.split("_")[0], True)


def metrics_sections(
    ratings: pd.DataFrame,
    images: StudyImages,
    metrics: Sequence[str],
    extractor: FeatureExtractor,
    *,
    config: ReportConfig,
    random_weights: bool = False,
) -> list[ReportSection]:
    """The automated-metrics section and the expert-vs-metric section of a study."""
    from analysis.metrics import MetricStamp, human_metric_comparison

    names = parse_metrics(metrics)
    feats_real = extractor(load_images(images.real_paths))
    models = sorted(images.images["model"].unique())
    feats = {model: extractor(load_images(images.generated_paths(model))) for model in models}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model_table = _model_metric_results(names, extractor, feats_real, feats, images, config.seed)
        image_rows = _image_metric_rows(names, extractor, feats_real, feats, images)
    notes = [
        f"Each model's {len(images.images) // max(len(models), 1)} images are compared with the study's "
        f"{len(images.real_paths)} real images at the same N, with the extractor {extractor.name!r}.",
        *sorted({str(w.message).split(";")[0] for w in caught}),
    ]
    if random_weights:
        notes.append("The extractor has random weights: a smoke run, not numbers to report.")
    if extractor.name.startswith("handcrafted"):
        notes.append(
            "handcrafted-v1 features are committed image statistics (intensity, texture, layout), not a learned "
            "embedding: its FD is not FID. For FID pass --extractor inception:/path/to/weights.pth."
        )
    if {"ci_low", "ci_high"} <= set(model_table.columns):
        outside = model_table[
            (model_table["value"] < model_table["ci_low"]) | (model_table["value"] > model_table["ci_high"])
        ]
        if len(outside):
            notes.append(
                f"The bootstrap CI of {', '.join(sorted(set(outside['metric'])))} does not contain the estimate for "
                f"{', '.join(sorted(set(outside['model'])))}: resampling images with replacement duplicates them, "
                "which biases FD-type replicates upwards at small N; read these CIs as a spread, not as coverage."
            )
    metric_section = ReportSection(f"Automated image metrics ({extractor.name})", notes=notes)
    if not model_table.empty:
        metric_section.tables["metrics"] = model_table
    if not image_rows.empty:
        summary = image_rows.groupby(["model", "metric"], sort=True)["value"].agg(["mean", "std", "count"])
        metric_section.tables["per_image_metrics_summary"] = summary.rename(columns={"count": "n"}).reset_index()
    stamp = MetricStamp.for_extractor(extractor, len(feats_real))
    metric_section.methods.append(
        metrics_methods_from_table(model_table, image_rows, extractor.name, stamp, config.seed)
    )

    model_metrics = (
        model_table[["model", "metric", "value"]].assign(lower_is_better=[_direction(m) for m in model_table["metric"]])
        if not model_table.empty
        else None
    )
    image_metrics = (
        image_rows.assign(lower_is_better=[_direction(m) for m in image_rows["metric"]])
        if not image_rows.empty
        else None
    )
    comparison = human_metric_comparison(
        ratings, model_metrics, image_metrics, n_boot=config.n_resamples, seed=config.seed,
        level=config.confidence_level,
    )  # fmt: skip
    human = ReportSection("Expert ratings against automated metrics")
    human.tables["human_vs_metric_ranking"] = comparison.ranking
    if comparison.per_model["spearman_rho"].notna().any():
        human.tables["human_vs_metric_per_model"] = comparison.per_model
    if len(comparison.per_case):
        human.tables["human_vs_metric_per_case"] = comparison.per_case
    if len(models) < 3:
        human.notes.append(
            f"With {len(models)} models a correlation across models is undefined; the ranking table says whether "
            "the metrics order the models as the experts do."
        )
    for metric, part in comparison.scatter.groupby("metric", sort=True) if len(comparison.scatter) else []:
        level = str(part["level"].iloc[0])
        key = f"scatter_{metric}"
        human.figures[key] = FigureSpec(
            "scatter",
            part,
            7.0,
            2.8,
            {"level": level, "xlabel": f"{metric} ({'per image' if level == 'image' else 'per model'})"},
        )
        unit = "per generated image" if level == "image" else "per model"
        human.captions[key] = f"Mean expert realism and accuracy against {metric}, {unit}"
    pct = round(config.confidence_level * 100)
    human.methods.append(
        "Expert scores were compared with each automated metric by Spearman's ρ and Kendall's τ-b between the mean "
        "expert realism or accuracy of each generated image (mean over raters) and the image's metric, pooled and "
        f"per model, and across models between model means and model-level metrics; {pct}% percentile CIs from "
        f"{comparison.n_boot} bootstrap resamples of cases (seed {comparison.seed}). The ranking table compares "
        "the order of the models by the experts' mean score with their order by each metric."
    )
    return [metric_section, human]


def metrics_methods_from_table(
    model_table: pd.DataFrame, image_rows: pd.DataFrame, extractor_name: str, stamp: MetricStamp, seed: int
) -> str:
    """One methods sentence from the metric rows and the extractor's stamp (name, weights, preprocessing, N)."""
    names = list(
        dict.fromkeys(
            [*model_table.get("metric", pd.Series(dtype=str)), *image_rows.get("metric", pd.Series(dtype=str))]
        )
    )
    n_gen = sorted(set(model_table["n_a"].dropna().astype(int))) if "n_a" in model_table else []
    weights, preprocess = stamp.weights_sha256[:12], stamp.preprocess
    estimator = (
        f" CMMD used the {model_table['estimator'].dropna().iloc[0]} estimator."
        if "estimator" in model_table and model_table["estimator"].notna().any()
        else ""
    )
    return (
        f"Automated metrics ({', '.join(names)}) used the {extractor_name} feature extractor (weights sha256 "
        f"{weights}...; {preprocess}); models were compared with the real images at equal N"
        f"{' (N = ' + ', '.join(map(str, n_gen)) + ' per model)' if n_gen else ''}, with percentile bootstrap CIs "
        f"where shown (seed {seed}).{estimator}"
    )


def compute_study_report(
    workspace: _Workspace,
    study_name: str,
    *,
    metrics: Sequence[str] = (),
    extractor: str | FeatureExtractor = DEFAULT_EXTRACTOR,
    config: ReportConfig | None = None,
    step: Callable[[str], None] = lambda name: None,
) -> ReportContent:
    """Everything the study's report shows, computed (nothing written); ``extractor`` a spec or a loaded one."""
    from db.export import ratings_frame
    from db.studies import get_study

    config = config or ReportConfig()
    names = parse_metrics(metrics)
    feature_extractor = (load_extractor(extractor) if isinstance(extractor, str) else extractor) if names else None
    with workspace.database.session() as session:
        ratings: pd.DataFrame = ratings_frame(session, study_name)
        study = get_study(session, study_name)
        stamp = {"study": study.name, "study_config_sha256": study.config_sha256, "study_seed": study.seed}
        draws = draws_frame(session, study) if is_adaptive(study) else None
    if ratings.empty:
        raise InputError(f"study {study_name!r} has no ratings yet; nothing to analyse")
    sections: list[ReportSection] = []
    if feature_extractor is not None:
        step("automated metrics")
        images = study_images(ratings, workspace.store)
        sections = metrics_sections(ratings, images, names, feature_extractor, config=config,
                                    random_weights=feature_extractor.name.endswith("random"))  # fmt: skip
        stamp["extractor"] = {"name": feature_extractor.name, "weights_sha256": feature_extractor.weights_sha256}
    from analysis.memorization import study_memorization_section  # next to FD/KID (issue 20)

    sections.extend(study_memorization_section(workspace, study_name))
    return compute_report(ratings, title=f"MedSynth study report: {study.name}", stamp=stamp,
                          extra_sections=sections, config=config, step=step, adaptive_draws=draws)  # fmt: skip


def write_study_report(
    workspace: _Workspace,
    study_name: str,
    out_dir: Path,
    *,
    metrics: Sequence[str] = (),
    extractor: str = DEFAULT_EXTRACTOR,
    config: ReportConfig | None = None,
    progress: Callable[..., object] | None = None,
) -> ReportResult:
    """Analyse a study and write ``out_dir/report.html``, ``tables/``, ``figures/`` and ``report-files.zip``.

    The one report entry for the CLI and the coordinator console; ``progress(fraction, desc=step)`` is
    called as the work goes (``None``: a tqdm bar).
    """
    names = parse_metrics(metrics)
    spec = parse_extractor_spec(extractor)
    # Load the extractor before anything else: a missing download fails at once, in one line.
    loaded = load_extractor(extractor) if names else None
    started = time.perf_counter()
    step, finish = progress_steps(progress, total=11 if names else 10)
    content = compute_study_report(workspace, study_name, metrics=names, extractor=loaded or extractor,
                                   config=config, step=step)  # fmt: skip
    if spec.random_weights:
        logger.warning("report %s used a random-weight extractor (%s): not numbers to report", study_name, extractor)
    result = render_report(content, Path(out_dir), step)
    finish()
    return dataclasses.replace(result, seconds=time.perf_counter() - started)
