"""Tidy tables of a study (ratings, items, raters, models, config) for pandas, R and Excel.

``ratings_frame`` is the contract described in ``docs/ratings-table.md``; analysis reads it, exports
write it. Every table carries the study name and the sha256 of its config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.adaptive import draws_frame, is_adaptive
from db.errors import InputError
from db.models import Assignment, Case, Dataset, ItemKind, Model, Rater, Rating, Study, StudyItem
from db.questions import DEFAULT_QUESTIONS
from db.ratings import conflict_count
from db.studies import get_study

ExportFormat = Literal["csv", "parquet", "json"]
#: A spreadsheet reads a cell starting with one of these as a formula (CSV injection): ``=HYPERLINK(...)``.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
SCALE_KEYS = ("realism_left", "realism_right", "accuracy_left", "accuracy_right", "confidence")

RATING_COLUMNS = [
    "study", "study_config_sha256", "item", "item_kind", "practice", "repeat_of", "case", "domain", "prompt", "rater",
    "rater_name", "specialty", "years", "model", "generated_side", "real_image", "generated_image", "position",
    "realism_left", "realism_right", "accuracy_left", "accuracy_right", "realism_generated", "realism_real",
    "accuracy_generated", "accuracy_real", "which_generated", "confidence", "correct", "cannot_assess",
    "cannot_assess_reason", "comment", "response_ms_server", "response_ms_client", "client_submitted_at",
    "server_received_at",
    # head-to-head items only (db.head_to_head): both models by side, the second image, the chosen sides
    "model_left", "model_right", "second_model", "second_image", "prefer_realism", "prefer_prompt",
]  # fmt: skip


def _iso(value: object) -> str | None:
    return value.isoformat() + "Z" if value is not None and hasattr(value, "isoformat") else None


def ratings_frame(session: Session, study_name: str, *, practice: bool = False) -> pd.DataFrame:
    """One row per rating of the study, in the column order of ``docs/ratings-table.md``.

    This is what every analysis reads: practice ratings (db.practice) are left out unless ``practice`` is
    true (exports), and then flagged in the ``practice`` column.
    """
    study = get_study(session, study_name)
    query = (
        select(Rating, Assignment, StudyItem, Rater, Case, Model)
        .join(Assignment, Rating.assignment_id == Assignment.id)
        .join(StudyItem, Rating.item_id == StudyItem.id)
        .join(Rater, Rating.rater_id == Rater.id)
        .join(Case, StudyItem.case_id == Case.id)
        .join(Model, StudyItem.model_id == Model.id)
        .where(StudyItem.study_id == study.id)
        .order_by(Rating.id)
    )
    if not practice:
        query = query.where(StudyItem.kind != ItemKind.PRACTICE)
    rows = session.execute(query).all()
    repeat_ids = {
        i.id: i.public_id
        for i in session.scalars(select(StudyItem).where(StudyItem.study_id == study.id, StudyItem.kind == "normal"))
    }
    model_names = dict(session.execute(select(Model.id, Model.name)).tuples().all())
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
                "practice": item.kind == ItemKind.PRACTICE,
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
                **_head_to_head_columns(item, model.name, model_names, a),
            }
        )
    frame = pd.DataFrame.from_records(records, columns=RATING_COLUMNS)
    for col in (*SCALE_KEYS, "realism_generated", "realism_real", "accuracy_generated", "accuracy_real"):
        frame[col] = frame[col].astype("Int64")
    frame["position"] = frame["position"].astype("int64")
    frame["correct"] = frame["correct"].astype("boolean")
    frame["cannot_assess"] = frame["cannot_assess"].astype(bool)
    frame["practice"] = frame["practice"].astype(bool)
    for col in ("years", "response_ms_server", "response_ms_client"):
        frame[col] = frame[col].astype("float64")
    return frame


def _head_to_head_columns(
    item: StudyItem, model: str, names: dict[int, str], answers: dict[str, object]
) -> dict[str, object]:
    """The head-to-head columns of a rating (None for real-vs-generated items)."""
    if item.second_model_id is None:
        return {}
    second = names[item.second_model_id]
    first_left = item.generated_side.value == "left"
    return {
        "model_left": model if first_left else second,
        "model_right": second if first_left else model,
        "second_model": second,
        "second_image": item.second_sha256,
        "prefer_realism": answers.get("prefer_realism"),
        "prefer_prompt": answers.get("prefer_prompt"),
    }


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
                "license": (case.labels or {}).get("license"),
                "attribution": (case.labels or {}).get("attribution"),
            }
            for item, case, model, ds in rows
        ],
        columns=[
            "study", "study_config_sha256", "item", "item_kind", "repeat_of", "dataset", "case", "domain",
            "prompt", "model", "generated_side", "real_image", "generated_image", "license", "attribution",
        ],
    )  # fmt: skip


def raters_frame(session: Session, study: Study) -> pd.DataFrame:
    """One row per rater with progress (never the token; practice pairs are not progress)."""
    records = []
    for rater in session.scalars(select(Rater).where(Rater.study_id == study.id).order_by(Rater.id)):
        real = [a for a in rater.assignments if a.item.kind != ItemKind.PRACTICE]
        total = len(real)
        done = sum(1 for a in real if a.rating is not None)
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


def neutralise_cell(value: object) -> object:
    r"""A text cell that a spreadsheet would run as a formula, prefixed with ``'`` (shown as text); else as is.

    >>> neutralise_cell('=HYPERLINK("http://x")'), neutralise_cell("-1 mm"), neutralise_cell("fine"), neutralise_cell(3)
    ('\'=HYPERLINK("http://x")', "'-1 mm", 'fine', 3)
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot start a spreadsheet formula (see :func:`neutralise_cell`).

    Only text columns change; numbers (a negative score is a number, not text) are left alone.
    """
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            out[col] = out[col].map(neutralise_cell, na_action="ignore")
    return out


def write_table(frame: pd.DataFrame, path_stem: Path, fmt: ExportFormat, *, bom: bool = True) -> Path:
    """Write ``frame`` as ``path_stem.{csv,parquet,json}`` (JSON: records, ISO dates).

    CSV is what spreadsheets open, so its text cells are neutralised (:func:`neutralise_formulas`), and it is
    UTF-8 with a byte-order mark by default, so Excel shows names such as "Dr Åsa" right (pandas and readr
    skip it). Parquet and JSON keep the exact text (programs read them, not Excel).
    """
    path = path_stem.with_suffix(f".{fmt}")
    if fmt == "csv":
        # CRLF rows (RFC 4180): a field holding a bare CR is then quoted instead of splitting its row.
        neutralise_formulas(frame).to_csv(
            path, index=False, lineterminator="\r\n", encoding="utf-8-sig" if bom else "utf-8"
        )
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", date_format="iso", indent=1, force_ascii=False)
    return path


def medsynth_version() -> dict[str, str | None]:
    """The MedSynth version (installed package or pyproject.toml) and git commit, where known."""
    import subprocess
    import tomllib
    from importlib import metadata

    root = Path(__file__).resolve().parent.parent
    try:
        version: str | None = metadata.version("medsynth")
    except metadata.PackageNotFoundError:
        try:
            version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            version = None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"version": version, "commit": commit}


def export_study(
    session: Session, study_name: str, out_dir: Path, fmt: str = "csv", *, bom: bool = True
) -> ExportResult:
    """Write ratings, items, raters, models and the study config into ``out_dir`` (CSV with a UTF-8 BOM for
    Excel unless ``bom=False``); ``study.json`` records the MedSynth version/commit and the export time."""
    if fmt not in ("csv", "parquet", "json"):
        raise InputError(f"unknown export format {fmt!r}; choose csv, parquet or json")
    study = get_study(session, study_name)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the export folder: {exc.strerror}", path=out_dir) from None
    ratings = ratings_frame(session, study_name, practice=True)  # practice rows flagged (``practice``)
    tables = {
        "ratings": ratings,
        "items": items_frame(session, study),
        "raters": raters_frame(session, study),
        "models": models_frame(session, study),
    }
    if is_adaptive(study):
        tables["adaptive_draws"] = draws_frame(session, study)
    files = [write_table(frame, out_dir / name, fmt, bom=bom) for name, frame in tables.items()]  # type: ignore[arg-type]
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
                "ratings": int((~ratings["practice"]).sum()),
                "practice_ratings": int(ratings["practice"].sum()),
                "medsynth": medsynth_version(),
                "exported_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                # submissions turned away because the pair was already rated in another tab or window
                "rating_conflicts": conflict_count(session, study.id),
                # how pairs reached raters: "balanced" (a fixed plan) or "adaptive" (drawn; see adaptive_draws)
                "assignment": (study.config or {}).get("assignment", "balanced"),
            },
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    return ExportResult(files=[*files, config_path, meta], ratings=int((~ratings["practice"]).sum()))
