"""Memorization audits in the database: what an audit reads, what it stores, and the copy flags studies use.

An audit (``python app.py memorization``, :mod:`analysis.memorization`) stores one
:class:`~db.models.MemorizationRun` per (model, training dataset) and one
:class:`~db.models.MemorizationMatch` per generated image. The **latest** run of each (model, dataset) is the
one that counts: a generated image is a flagged copy when that run marks it so (for any training dataset).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import InputError, NotFoundError
from db.models import Case, Dataset, GeneratedImage, MemorizationMatch, MemorizationRun, Model


@dataclass(frozen=True)
class ImageRef:
    """An image an audit reads: its row id (case or generated image), case key and media hash."""

    id: int
    key: str
    sha256: str


@dataclass(frozen=True)
class AuditInputs:
    """The images of one audit."""

    model_id: int
    dataset_id: int
    train: list[ImageRef]
    heldout: list[ImageRef]
    """Cases of the dataset in another split than the training split (empty when no split is given)."""
    generated: list[ImageRef]


@dataclass(frozen=True)
class MatchRow:
    """What is stored for one generated image."""

    generated_image_id: int
    nearest_case_id: int | None
    feature_similarity: float
    pixel_score: float
    is_copy: bool
    alignment: dict[str, Any]


def audit_inputs(session: Session, model: str, dataset: str, split: str | None = None) -> AuditInputs:
    """Training images (the dataset, or its ``split``), held-out images (other splits) and the model's images."""
    m = session.scalar(select(Model).where(Model.name == model))
    if m is None:
        raise NotFoundError(f"no model called {model!r} (python app.py models list)")
    ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
    if ds is None:
        raise NotFoundError(f"no dataset called {dataset!r} (python app.py datasets)")
    cases = list(session.scalars(select(Case).where(Case.dataset_id == ds.id).order_by(Case.id)))
    train = [ImageRef(c.id, c.key, c.image_sha256) for c in cases if split is None or c.split == split]
    heldout = [ImageRef(c.id, c.key, c.image_sha256) for c in cases
               if split is not None and c.split is not None and c.split != split]  # fmt: skip
    if not train:
        where = f" in split {split!r}" if split else ""
        raise InputError(f"dataset {dataset!r} has no cases{where} to compare with")
    rows = session.execute(
        select(GeneratedImage.id, Case.key, GeneratedImage.image_sha256)
        .join(Case, GeneratedImage.case_id == Case.id)
        .where(GeneratedImage.model_id == m.id)
        .order_by(GeneratedImage.id)
    ).all()
    if not rows:
        raise InputError(f"model {model!r} has no generated images yet (python app.py generate / import generated)")
    generated = [ImageRef(i, k, sha) for i, k, sha in rows]
    return AuditInputs(m.id, ds.id, train, heldout, generated)


def save_run(
    session: Session,
    inputs: AuditInputs,
    *,
    split: str | None,
    extractor: str,
    threshold: float,
    summary: dict[str, Any],
    matches: Sequence[MatchRow],
) -> int:
    """Store an audit and its per-image matches; returns the run id."""
    run = MemorizationRun(model_id=inputs.model_id, dataset_id=inputs.dataset_id, split=split, extractor=extractor,
                          threshold=threshold, summary=summary)  # fmt: skip
    session.add(run)
    session.flush()
    session.add_all(
        MemorizationMatch(
            run_id=run.id,
            generated_image_id=m.generated_image_id,
            nearest_case_id=m.nearest_case_id,
            feature_similarity=m.feature_similarity,
            pixel_score=m.pixel_score,
            is_copy=m.is_copy,
            alignment=m.alignment,
        )
        for m in matches
    )
    session.flush()
    return run.id


def _latest_run_ids(session: Session, model_ids: Iterable[int]) -> list[int]:
    latest = (
        select(func.max(MemorizationRun.id))
        .where(MemorizationRun.model_id.in_(list(model_ids)))
        .group_by(MemorizationRun.model_id, MemorizationRun.dataset_id)
    )
    return list(session.scalars(latest))


def audited_model_ids(session: Session, model_ids: Iterable[int]) -> set[int]:
    """The models among ``model_ids`` that have at least one memorization audit."""
    ids = list(model_ids)
    return set(session.scalars(select(MemorizationRun.model_id).where(MemorizationRun.model_id.in_(ids)).distinct()))


def flagged_generated_image_ids(session: Session, model_ids: Iterable[int]) -> set[int]:
    """Generated images flagged as copies by the latest audit of their model (against any training dataset)."""
    runs = _latest_run_ids(session, model_ids)
    if not runs:
        return set()
    query = select(MemorizationMatch.generated_image_id).where(
        MemorizationMatch.run_id.in_(runs), MemorizationMatch.is_copy.is_(True)
    )
    return set(session.scalars(query))


def latest_summaries(session: Session, model_names: Iterable[str]) -> list[dict[str, Any]]:
    """The stored summary of the latest audit of each (model, training dataset), models in the given order."""
    names = list(model_names)
    models = {m.id: m.name for m in session.scalars(select(Model).where(Model.name.in_(names)))}
    runs = _latest_run_ids(session, models)
    rows = session.execute(
        select(MemorizationRun, Dataset.name)
        .join(Dataset, MemorizationRun.dataset_id == Dataset.id)
        .where(MemorizationRun.id.in_(runs))
    ).all()
    out = [dict(run.summary, model=models[run.model_id], dataset=ds, run_id=run.id,
                created_at=run.created_at.isoformat(timespec="seconds")) for run, ds in rows]  # fmt: skip
    order = {n: i for i, n in enumerate(names)}
    return sorted(out, key=lambda r: (order.get(r["model"], len(order)), r["dataset"]))


COPY_MODES = ("exclude", "keep")


@dataclass
class CopyFilter:
    """What ``create_study`` does with generated images a memorization audit flagged as copies.

    ``exclude`` (default) drops them from the pool a study draws from; ``keep`` leaves them in and the study
    records (marks) the flagged ones it drew in ``Study.config["memorization"]``.
    """

    mode: str
    flagged: set[int]
    unaudited: list[str]
    excluded: dict[str, int]
    kept: dict[str, int]

    def apply(self, model: str, rows: Sequence[Any]) -> list[Any]:
        """Filter ``(GeneratedImage, Case)`` rows of ``model``; counts what was excluded or kept."""
        hits = sum(1 for gen, _case in rows if gen.id in self.flagged)
        if self.mode == "exclude":
            self.excluded[model] = hits
            return [(gen, case) for gen, case in rows if gen.id not in self.flagged]
        self.kept[model] = hits
        return list(rows)

    def record(self, drawn_generated_ids: Iterable[int]) -> dict[str, Any]:
        """What the study stores: the mode, the counts and the flagged generated images it shows (``keep``)."""
        marked = sorted(i for i in drawn_generated_ids if i in self.flagged)
        return {"mode": self.mode, "excluded": dict(self.excluded), "flagged_in_pool": dict(self.kept),
                "flagged_drawn_generated_image_ids": marked, "unaudited_models": list(self.unaudited)}  # fmt: skip

    def describe(self) -> str:
        """One sentence for the study summary."""
        counts = self.excluded if self.mode == "exclude" else self.kept
        audited = {m: n for m, n in counts.items() if m not in self.unaudited}
        parts = []
        if audited:
            listed = ", ".join(f"{m}: {n}" for m, n in audited.items())
            verb = "excluded" if self.mode == "exclude" else "kept and marked (copies = 'keep')"
            parts.append(f"memorization: {verb} {sum(audited.values())} generated images flagged as copies ({listed})")
        if self.unaudited:
            parts.append(f"no memorization audit for {', '.join(self.unaudited)} (python app.py memorization)")
        return "; ".join(parts)


def copy_filter(session: Session, models: Sequence[Model], mode: str = "exclude") -> CopyFilter:
    """The copy filter of a study over ``models`` (see :class:`CopyFilter`)."""
    if mode not in COPY_MODES:
        raise InputError(f"'copies' must be one of {', '.join(COPY_MODES)}, got {mode!r}")
    ids = [m.id for m in models]
    audited = audited_model_ids(session, ids)
    unaudited = [m.name for m in models if m.id not in audited]
    return CopyFilter(mode, flagged_generated_image_ids(session, ids), unaudited, {}, {})
