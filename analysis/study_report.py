"""The report of one study: ratings and images read through ``db/``, analysed, written as HTML + tables.

``python app.py report --study NAME --out DIR [--metrics fd,kid,cmmd --extractor SPEC]`` calls
:func:`write_study_report`. Human analyses (agreement, Turing test, per-model scores, MRMC) always run;
automated metrics run when asked, with one named feature extractor (never mixed in one table).

Extractor specs: ``inception`` (standard FID weights, downloaded once when online), ``inception:PATH``
(a local ``pt_inception-2015-12-05`` file), ``dinov2:HUB_ID_OR_FOLDER``, ``clip:HUB_ID_OR_FOLDER``, and
``tiny-clip`` / ``tiny-dinov2`` (random weights: offline smoke runs only, never for reported numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.report import ReportConfig, ReportResult, ReportSection, write_report

METRIC_NAMES = ("fd", "kid", "cmmd")


@dataclass(frozen=True)
class StudyImages:
    """Paths of the real images and of each model's generated images shown in a study (normal items)."""

    real: list[Path]
    generated: dict[str, list[Path]]


def make_extractor(spec: str) -> Any:
    """Build a feature extractor from a spec string (see the module docstring)."""
    from analysis.features import CLIPExtractor, DINOv2Extractor, InceptionFeatureExtractor

    kind, _, arg = spec.partition(":")
    if kind == "inception":
        return InceptionFeatureExtractor.from_pretrained(arg or None)
    if kind == "dinov2" and arg:
        return DINOv2Extractor.from_pretrained(arg)
    if kind == "clip" and arg:
        return CLIPExtractor.from_pretrained(arg)
    if kind in ("tiny-clip", "tiny-dinov2"):
        from analysis.features.tiny import tiny_clip, tiny_dinov2

        return tiny_clip() if kind == "tiny-clip" else tiny_dinov2()
    raise ValueError(
        f"unknown extractor {spec!r}; use inception, inception:PATH, dinov2:HUB_ID, clip:HUB_ID, "
        "tiny-clip or tiny-dinov2"
    )


def study_images(workspace: Any, study_name: str) -> StudyImages:
    """The distinct real and generated images of a study's normal items, as media-store paths."""
    from sqlalchemy import select

    from db.models import ItemKind, Model, StudyItem
    from db.studies import get_study

    with workspace.database.session() as session:
        study = get_study(session, study_name)
        rows = session.execute(
            select(StudyItem.real_sha256, StudyItem.generated_sha256, Model.name)
            .join(Model, StudyItem.model_id == Model.id)
            .where(StudyItem.study_id == study.id, StudyItem.kind == ItemKind.NORMAL)
            .order_by(StudyItem.id)
        ).all()
    real = list(dict.fromkeys(r for r, _, _ in rows))
    generated: dict[str, list[str]] = {}
    for _, g, model in rows:
        if g not in generated.setdefault(model, []):
            generated[model].append(g)
    store = workspace.store
    return StudyImages(
        real=[store.path(sha) for sha in real],
        generated={m: [store.path(sha) for sha in shas] for m, shas in generated.items()},
    )


def metrics_section(images: StudyImages, metrics: Sequence[str], extractor_spec: str, seed: int = 0) -> ReportSection:
    """Automated metrics of each model's images against the study's real images, with one extractor."""
    from analysis.features import load_images
    from analysis.metrics import compare_models

    unknown = sorted(set(metrics) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    extractor = make_extractor(extractor_spec)
    feats_real = extractor(load_images(images.real))
    feats = {model: extractor(load_images(paths)) for model, paths in images.generated.items()}
    table = compare_models(extractor, feats_real, feats, seed=seed, metrics=[m.upper() for m in metrics])
    notes = [
        f"Every model is compared with the study's {len(images.real)} real images at the same N, with the "
        f"extractor {extractor.name!r} (weights sha256 {extractor.weights_sha256[:12]}...).",
    ]
    if extractor_spec.startswith("tiny"):
        notes.append("The extractor has random weights: a smoke run, not numbers to report.")
    return ReportSection(title=f"Automated image metrics ({extractor.name})", tables={"metrics": table}, notes=notes)


def write_study_report(
    workspace: Any,
    study_name: str,
    out_dir: Path,
    *,
    metrics: Sequence[str] = (),
    extractor: str = "inception",
    config: ReportConfig | None = None,
    progress: Callable[..., object] | None = None,
) -> ReportResult:
    """Analyse a study's ratings (and, if asked, its images) and write ``out_dir/report.html`` + tables."""
    from db.export import ratings_frame
    from db.studies import get_study

    with workspace.database.session() as session:
        ratings: pd.DataFrame = ratings_frame(session, study_name)
        study = get_study(session, study_name)
        stamp = {"study": study.name, "study_config_sha256": study.config_sha256, "study_seed": study.seed}
    if ratings.empty:
        raise ValueError(f"study {study_name!r} has no ratings yet; nothing to analyse")
    sections: list[ReportSection] = []
    if metrics:
        sections.append(metrics_section(study_images(workspace, study_name), metrics, extractor,
                                        seed=(config or ReportConfig()).seed))  # fmt: skip
    from analysis.memorization import study_memorization_section  # issue 20: next to FD/KID

    sections.extend(study_memorization_section(workspace, study_name))
    return write_report(ratings, Path(out_dir), title=f"MedSynth study report: {study_name}", stamp=stamp,
                        extra_sections=sections, progress=progress, config=config)  # fmt: skip
