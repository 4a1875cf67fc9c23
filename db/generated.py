"""Recording generated images: what ``generation/`` calls to store what it makes.

Recording is idempotent on (model, case, seed): the image file is written to the media store first
(atomically, content-addressed), then its row in one short transaction, so a crash midway leaves either
nothing or a complete record, and a rerun skips what exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.errors import ConflictError, InputError, NotFoundError
from db.importers import ensure_image_rows
from db.media import MediaStore
from db.models import Case, Dataset, GeneratedImage, Model, ModelKind
from db.session import Database


@dataclass(frozen=True)
class CaseRef:
    """A case to generate for: its id, key and prompt."""

    id: int
    key: str
    prompt: str


def dataset_cases(
    session: Session, dataset: str, *, limit: int | None = None, split: str | None = None
) -> list[CaseRef]:
    """The cases of a dataset in a stable order (by id)."""
    ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
    if ds is None:
        raise NotFoundError(f"no dataset called {dataset!r} (python app.py datasets)")
    query = select(Case).where(Case.dataset_id == ds.id).order_by(Case.id)
    if split is not None:
        query = query.where(Case.split == split)
    if limit is not None:
        query = query.limit(limit)
    return [CaseRef(c.id, c.key, c.prompt) for c in session.scalars(query)]


#: case labels that name the patient or source a case's image came from, in order of preference
GROUP_LABELS = ("patient_id", "patient", "source_id", "study_id")


def case_groups(session: Session, dataset: str) -> dict[int, str]:
    """Each case's leakage group: its patient/source id where a label names one, else its real image.

    Cases that share a group (the ~10 prompts MEDVQA-GI writes for one image; one patient's images) must
    fall on the same side of a train/held-out split, or the held-out images were seen in training.
    """
    ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
    if ds is None:
        raise NotFoundError(f"no dataset called {dataset!r} (python app.py datasets)")
    groups: dict[int, str] = {}
    for case_id, sha, labels in session.execute(
        select(Case.id, Case.image_sha256, Case.labels).where(Case.dataset_id == ds.id)
    ):
        found = next((str(labels[k]) for k in GROUP_LABELS if isinstance(labels, dict) and labels.get(k)), None)
        groups[case_id] = f"label:{found}" if found else f"image:{sha}"
    return groups


def case_image_shas(session: Session, case_ids: Sequence[int]) -> dict[int, str]:
    """The real image (sha256) of each case."""
    rows = session.execute(select(Case.id, Case.image_sha256).where(Case.id.in_(list(case_ids))))
    return {case_id: sha for case_id, sha in rows}


def get_model(session: Session, name: str) -> Model:
    """The registered model called ``name``."""
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFoundError(f"no model called {name!r} (python app.py models list)")
    return model


def register_model(
    session: Session,
    name: str,
    *,
    kind: ModelKind | str,
    source: str,
    parameters: dict[str, Any] | None = None,
    replace: bool = False,
    exist_ok: bool = False,
) -> Model:
    """Register a model; with ``replace`` update one of that name; with ``exist_ok`` return one of that name.

    Raises
    ------
    ConflictError
        If the name is taken (without ``replace`` / ``exist_ok``), or with ``exist_ok`` the model of that
        name is of another kind (images imported as a folder cannot join a generator's images).
    """
    if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise InputError("a model name of 1-200 printable characters is required")
    try:
        kind = ModelKind(kind)
    except ValueError:
        raise InputError(f"unknown model kind {kind!r}; choose msdm, diffusers or folder") from None
    model = find_model(session, name)
    if model is not None and exist_ok and not replace:
        if model.kind != kind:
            raise ConflictError(f"a model called {name!r} is registered as kind {model.kind.value}, not {kind.value}")
        return model
    if model is not None and not replace:
        raise ConflictError(f"a model called {name!r} is already registered")
    if model is None:
        model = Model(name=name, kind=kind, source=source, parameters=parameters or {})
        session.add(model)
    else:
        model.kind, model.source, model.parameters = kind, source, parameters or {}
    session.flush()
    return model


def existing_seeds(session: Session, model_id: int, case_ids: list[int] | None = None) -> set[tuple[int, int]]:
    """(case_id, seed) pairs already recorded for a model (to resume generation)."""
    query = select(GeneratedImage.case_id, GeneratedImage.seed).where(GeneratedImage.model_id == model_id)
    if case_ids is not None:
        query = query.where(GeneratedImage.case_id.in_(case_ids))
    return {(c, s) for c, s in session.execute(query)}


def record_generated_image(
    database: Database,
    store: MediaStore,
    *,
    model_id: int,
    case_id: int,
    image: Image.Image,
    seed: int,
    steps: int | None,
    guidance: float | None,
    parameters: dict[str, Any],
    device: str,
    seconds: float | None,
    peak_memory_bytes: int | None,
) -> int:
    """Store one generated image and its record; returns the row id (the existing one on a rerun)."""
    info = store.put_image(image, source=f"generated image (case {case_id}, seed {seed})")
    try:
        with database.session() as session:
            prior = session.scalar(
                select(GeneratedImage).where(
                    GeneratedImage.model_id == model_id, GeneratedImage.case_id == case_id, GeneratedImage.seed == seed
                )
            )
            if prior is not None:
                return prior.id
            ensure_image_rows(session, [info])
            row = GeneratedImage(
                case_id=case_id,
                model_id=model_id,
                image_sha256=info.sha256,
                seed=seed,
                steps=steps,
                guidance=guidance,
                parameters=parameters,
                device=device,
                seconds=seconds,
                peak_memory_bytes=peak_memory_bytes,
            )
            session.add(row)
            session.flush()
            return row.id
    except IntegrityError:  # a concurrent worker recorded it first
        with database.session() as session:
            prior = session.scalar(
                select(GeneratedImage).where(
                    GeneratedImage.model_id == model_id, GeneratedImage.case_id == case_id, GeneratedImage.seed == seed
                )
            )
            if prior is None:
                raise
            return prior.id


def generatable_model_names(session: Session) -> list[str]:
    """Names of registered models that can make images here (not imported folders), by name."""
    return list(session.scalars(select(Model.name).where(Model.kind != ModelKind.FOLDER).order_by(Model.name)))


def dataset_names(session: Session) -> set[str]:
    """Names of every imported dataset."""
    return set(session.scalars(select(Dataset.name)))


def find_model(session: Session, name: str) -> Model | None:
    """The registered model called ``name``, or None."""
    return session.scalar(select(Model).where(Model.name == name))


def generated_shas(session: Session, model_id: int, case_ids: list[int]) -> list[tuple[int, str]]:
    """(case id, image sha256) of a model's images for these cases, by case then seed."""
    rows = session.execute(
        select(GeneratedImage.case_id, GeneratedImage.image_sha256)
        .where(GeneratedImage.model_id == model_id, GeneratedImage.case_id.in_(case_ids))
        .order_by(GeneratedImage.case_id, GeneratedImage.seed)
    ).all()
    return [(int(case_id), str(sha)) for case_id, sha in rows]


def case_rows(session: Session, case_ids: list[int]) -> list[tuple[int, str, str]]:
    """(case id, real image sha256, prompt) of these cases, by id."""
    rows = session.execute(
        select(Case.id, Case.image_sha256, Case.prompt).where(Case.id.in_(sorted(set(case_ids)))).order_by(Case.id)
    ).all()
    return [(int(i), str(sha), str(prompt)) for i, sha, prompt in rows]


def generation_records(
    session: Session, model_id: int, case_ids: list[int] | None = None
) -> list[tuple[float | None, int | None, dict[str, Any], str]]:
    """(seconds, peak memory bytes, parameters, device) of each of a model's generated images."""
    query = select(GeneratedImage.seconds, GeneratedImage.peak_memory_bytes, GeneratedImage.parameters,
                   GeneratedImage.device).where(GeneratedImage.model_id == model_id)  # fmt: skip
    if case_ids is not None:
        query = query.where(GeneratedImage.case_id.in_(list(case_ids)))
    return [(s, p, dict(params or {}), str(d or "")) for s, p, params, d in session.execute(query).all()]


@dataclass(frozen=True)
class DatasetSummary:
    """A dataset with its case and distinct image counts."""

    name: str
    domain: str
    format: str
    cases: int
    images: int


def dataset_summaries(session: Session) -> list[DatasetSummary]:
    """Every dataset by name, with its case and distinct image counts."""
    from sqlalchemy import func

    rows = session.execute(
        select(Dataset.name, Dataset.domain, Dataset.format, func.count(Case.id),
               func.count(func.distinct(Case.image_sha256)))
        .outerjoin(Case).group_by(Dataset.id).order_by(Dataset.name)
    ).all()  # fmt: skip
    return [DatasetSummary(n, d.value, f, int(c), int(i)) for n, d, f, c, i in rows]


@dataclass(frozen=True)
class ModelSummary:
    """A registered model with its generated image count."""

    name: str
    kind: str
    source: str
    images: int


def model_summaries(session: Session) -> list[ModelSummary]:
    """Every registered model by name, with how many images it has made (or were imported for it)."""
    from sqlalchemy import func

    rows = session.execute(
        select(Model, func.count(GeneratedImage.id)).outerjoin(GeneratedImage).group_by(Model.id).order_by(Model.name)
    ).all()
    return [ModelSummary(m.name, m.kind.value, m.source, int(n)) for m, n in rows]
