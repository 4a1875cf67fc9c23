"""Tidy tables of a study (ratings, items, raters, models, config) for pandas, R and Excel.

``ratings_frame`` is the contract described in ``docs/ratings-table.md``; analysis reads it, exports
write it. Every table carries the study name and the sha256 of its config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import InputError
from db.models import Assignment, Case, Dataset, Model, Rater, Rating, Study, StudyItem
from db.questions import DEFAULT_QUESTIONS
from db.ratings import conflict_count
from db.studies import get_study

ExportFormat = Literal["csv", "parquet", "json"]
SCALE_KEYS = ("realism_left", "realism_right", "accuracy_left", "accuracy_right", "confidence")

RATING_COLUMNS = [
    "study", "study_config_sha256", "item", "item_kind", "repeat_of", "case", "domain", "prompt", "rater",
    "rater_name", "specialty", "years", "model", "generated_side", "real_image", "generated_image", "position",
    "realism_left", "realism_right", "accuracy_left", "accuracy_right", "realism_generated", "realism_real",
    "accuracy_generated", "accuracy_real", "which_generated", "confidence", "correct", "cannot_assess",
    "cannot_assess_reason", "comment", "response_ms_server", "response_ms_client", "client_submitted_at",
    "server_received_at",
]  # fmt: skip


def _iso(value: object) -> str | None:
    return value.isoformat() + "Z" if value is not None and hasattr(value, "isoformat") else None


def ratings_frame(session: Session, study_name: str) -> pd.DataFrame:
    """One row per rating of the study, in the column order of ``docs/ratings-table.md``."""
    study = get_study(session, study_name)
    rows = session.execute(
        select(Rating, Assignment, StudyItem, Rater, Case, Model)
        .join(Assignment, Rating.assignment_id == Assignment.id)
        .join(StudyItem, Rating.item_id == StudyItem.id)
        .join(Rater, Rating.rater_id == Rater.id)
        .join(Case, StudyItem.case_id == Case.id)
        .join(Model, StudyItem.model_id == Model.id)
        .where(StudyItem.study_id == study.id)
        .order_by(Rating.id)
    ).all()
    repeat_ids = {
        i.id: i.public_id
        for i in session.scalars(select(StudyItem).where(StudyItem.study_id == study.id, StudyItem.kind == "normal"))
    }
    records = []
    for rating, assignment, item, rater, case, model in rows:
        a = rating.answers
        gen_side = item.generated_side.value
        real_side = "right" if gen_side == "left" else "left"
        which = a.get("which_generated")
        records.append(
            {
                "study": study.name,
                "study_config_sha256": study.config_sha256,
                "item": item.public_id,
                "item_kind": item.kind.value,
                "repeat_of": repeat_ids.get(item.repeat_of_id) if item.repeat_of_id else None,
                "case": case.key,
                "domain": item.domain.value,
                "prompt": case.prompt,
                "rater": rater.public_id,
                "rater_name": rater.name,
                "specialty": rater.specialty.value,
                "years": rater.years,
                "model": model.name,
                "generated_side": gen_side,
                "real_image": item.real_sha256,
                "generated_image": item.generated_sha256,
                "position": assignment.position,
                "realism_left": a.get("realism_left"),
                "realism_right": a.get("realism_right"),
                "accuracy_left": a.get("accuracy_left"),
                "accuracy_right": a.get("accuracy_right"),
                "realism_generated": a.get(f"realism_{gen_side}"),
                "realism_real": a.get(f"realism_{real_side}"),
                "accuracy_generated": a.get(f"accuracy_{gen_side}"),
                "accuracy_real": a.get(f"accuracy_{real_side}"),
                "which_generated": which,
                "confidence": a.get("confidence"),
                "correct": None if which is None else which == gen_side,
                "cannot_assess": bool(a.get("cannot_assess")),
                "cannot_assess_reason": a.get("cannot_assess_reason"),
                "comment": a.get("comment"),
                "response_ms_server": rating.response_ms_server,
                "response_ms_client": rating.response_ms_client,
                "client_submitted_at": rating.client_submitted_at,
                "server_received_at": _iso(rating.server_received_at),
            }
        )
    frame = pd.DataFrame.from_records(records, columns=RATING_COLUMNS)
    for col in (*SCALE_KEYS, "realism_generated", "realism_real", "accuracy_generated", "accuracy_real"):
        frame[col] = frame[col].astype("Int64")
    frame["position"] = frame["position"].astype("int64")
    frame["correct"] = frame["correct"].astype("boolean")
    frame["cannot_assess"] = frame["cannot_assess"].astype(bool)
    for col in ("years", "response_ms_server", "response_ms_client"):
        frame[col] = frame[col].astype("float64")
    return frame


def items_frame(session: Session, study: Study) -> pd.DataFrame:
    """One row per study item (coordinator view: includes the model and the true side)."""
    rows = session.execute(
        select(StudyItem, Case, Model, Dataset)
        .join(Case, StudyItem.case_id == Case.id)
        .join(Model, StudyItem.model_id == Model.id)
        .join(Dataset, Case.dataset_id == Dataset.id)
        .where(StudyItem.study_id == study.id)
        .order_by(StudyItem.id)
    ).all()
    ids = {item.id: item.public_id for item, *_ in rows}
    return pd.DataFrame.from_records(
        [
            {
                "study": study.name,
                "study_config_sha256": study.config_sha256,
                "item": item.public_id,
                "item_kind": item.kind.value,
                "repeat_of": ids.get(item.repeat_of_id) if item.repeat_of_id else None,
                "dataset": ds.name,
                "case": case.key,
                "domain": item.domain.value,
                "prompt": case.prompt,
                "model": model.name,
                "generated_side": item.generated_side.value,
                "real_image": item.real_sha256,
                "generated_image": item.generated_sha256,
            }
            for item, case, model, ds in rows
        ],
        columns=[
            "study", "study_config_sha256", "item", "item_kind", "repeat_of", "dataset", "case", "domain",
            "prompt", "model", "generated_side", "real_image", "generated_image",
        ],
    )  # fmt: skip


def raters_frame(session: Session, study: Study) -> pd.DataFrame:
    """One row per rater with progress (never the token)."""
    records = []
    for rater in session.scalars(select(Rater).where(Rater.study_id == study.id).order_by(Rater.id)):
        total = len(rater.assignments)
        done = sum(1 for a in rater.assignments if a.rating is not None)
        records.append({
            "study": study.name, "rater": rater.public_id, "rater_name": rater.name,
            "specialty": rater.specialty.value, "years": rater.years, "assigned": total, "rated": done,
            "revoked": rater.revoked_at is not None, "created_at": _iso(rater.created_at),
        })  # fmt: skip
    columns = ["study", "rater", "rater_name", "specialty", "years", "assigned", "rated", "revoked", "created_at"]
    return pd.DataFrame.from_records(records, columns=columns)


def models_frame(session: Session, study: Study) -> pd.DataFrame:
    """The models of the study with their kind, source and parameters (as JSON text)."""
    names = study.config.get("models", [])
    models = session.scalars(select(Model).where(Model.name.in_(names)).order_by(Model.name))
    return pd.DataFrame.from_records(
        [
            {"study": study.name, "model": m.name, "kind": m.kind.value, "source": m.source,
             "parameters": json.dumps(m.parameters, sort_keys=True)}
            for m in models
        ],
        columns=["study", "model", "kind", "source", "parameters"],
    )  # fmt: skip


@dataclass(frozen=True)
class ExportResult:
    """Files written by :func:`export_study`."""

    files: list[Path]
    ratings: int

    def describe(self) -> str:
        return f"wrote {len(self.files)} files ({self.ratings} ratings): " + ", ".join(p.name for p in self.files)


def write_table(frame: pd.DataFrame, path_stem: Path, fmt: ExportFormat) -> Path:
    """Write ``frame`` as ``path_stem.{csv,parquet,json}`` (JSON: records, ISO dates)."""
    path = path_stem.with_suffix(f".{fmt}")
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", date_format="iso", indent=1, force_ascii=False)
    return path


def export_study(session: Session, study_name: str, out_dir: Path, fmt: str = "csv") -> ExportResult:
    """Write ratings, items, raters, models and the study config into ``out_dir``."""
    if fmt not in ("csv", "parquet", "json"):
        raise InputError(f"unknown export format {fmt!r}; choose csv, parquet or json")
    study = get_study(session, study_name)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the export folder: {exc.strerror}", path=out_dir) from None
    ratings = ratings_frame(session, study_name)
    tables = {
        "ratings": ratings,
        "items": items_frame(session, study),
        "raters": raters_frame(session, study),
        "models": models_frame(session, study),
    }
    files = [write_table(frame, out_dir / name, fmt) for name, frame in tables.items()]  # type: ignore[arg-type]
    config_path = out_dir / "study_config.toml"
    config_path.write_text(study.config_text, encoding="utf-8")
    meta = out_dir / "study.json"
    meta.write_text(
        json.dumps(
            {
                "study": study.name,
                "config_sha256": study.config_sha256,
                "seed": study.seed,
                "questions": DEFAULT_QUESTIONS.keys(),
                "ratings": len(ratings),
                # submissions turned away because the pair was already rated in another tab or window
                "rating_conflicts": conflict_count(session, study.id),
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    return ExportResult(files=[*files, config_path, meta], ratings=len(ratings))
