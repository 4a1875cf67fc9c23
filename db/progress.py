"""Progress of a study, per rater and per model (and, through :func:`db.jobs.list_jobs`, background jobs).

Practice pairs (``practice_pairs``, db.practice) are not study progress: every count here leaves them out;
the assignment list shows them, as kind ``practice`` at negative positions.

These functions know nothing of Gradio; the coordinator console turns their rows into tables. Counts are
aggregated in SQL so a refresh stays cheap while raters are submitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.jobs import list_jobs  # noqa: F401 - the console reads jobs and progress from one module
from db.models import Assignment, ItemKind, Model, Rater, Rating, Study, StudyItem
from db.studies import get_study

#: the study's own items: practice pairs (db.practice) are not study progress
REAL = StudyItem.kind != ItemKind.PRACTICE


@dataclass(frozen=True)
class RaterProgress:
    """How far one rater is through their list."""

    rater: str
    name: str
    specialty: str
    assigned: int
    rated: int
    revoked: bool
    last_rating_at: datetime | None

    @property
    def fraction(self) -> float:
        """Rated / assigned (0 when nothing is assigned)."""
        return self.rated / self.assigned if self.assigned else 0.0


@dataclass(frozen=True)
class ModelProgress:
    """How many of one model's assignments in a study have been rated."""

    model: str
    items: int
    assigned: int
    rated: int

    @property
    def fraction(self) -> float:
        """Rated / assigned (0 when nothing is assigned)."""
        return self.rated / self.assigned if self.assigned else 0.0


@dataclass(frozen=True)
class StudyRow:
    """One study in the coordinator's list."""

    name: str
    status: str
    items: int
    raters: int
    ratings: int
    created_at: datetime
    config_sha256: str = ""


def _count(session: Session, query: Any) -> int:
    return int(session.scalar(query) or 0)


def list_studies(session: Session) -> list[StudyRow]:
    """Every study, newest first, with its item, rater and rating counts."""
    rows = []
    for study in session.scalars(select(Study).order_by(Study.created_at.desc(), Study.id.desc())):
        items = _count(session, select(func.count()).select_from(StudyItem).where(StudyItem.study_id == study.id, REAL))
        raters = _count(session, select(func.count()).select_from(Rater).where(Rater.study_id == study.id))
        ratings = _count(
            session,
            select(func.count())
            .select_from(Rating)
            .join(StudyItem, Rating.item_id == StudyItem.id)
            .where(StudyItem.study_id == study.id, REAL),
        )
        rows.append(
            StudyRow(study.name, study.status.value, items, raters, ratings, study.created_at, study.config_sha256)
        )
    return rows


def rater_progress(session: Session, study_name: str) -> list[RaterProgress]:
    """Per rater of ``study_name``: assigned, rated, revoked and the time of the last rating (in id order)."""
    study = get_study(session, study_name)
    assigned = (
        select(Assignment.rater_id, func.count().label("n"))
        .join(StudyItem, Assignment.item_id == StudyItem.id)
        .where(REAL)
        .group_by(Assignment.rater_id)
        .subquery("assigned")
    )
    rated = (
        select(Rating.rater_id, func.count().label("n"), func.max(Rating.server_received_at).label("last"))
        .join(StudyItem, Rating.item_id == StudyItem.id)
        .where(REAL)
        .group_by(Rating.rater_id)
        .subquery("rated")
    )
    rows = session.execute(
        select(Rater, assigned.c.n, rated.c.n, rated.c.last)
        .outerjoin(assigned, assigned.c.rater_id == Rater.id)
        .outerjoin(rated, rated.c.rater_id == Rater.id)
        .where(Rater.study_id == study.id)
        .order_by(Rater.id)
    ).all()
    return [
        RaterProgress(
            rater=r.public_id,
            name=r.name,
            specialty=r.specialty.value,
            assigned=int(n_assigned or 0),
            rated=int(n_rated or 0),
            revoked=r.revoked_at is not None,
            last_rating_at=last,
        )
        for r, n_assigned, n_rated, last in rows
    ]


def model_progress(session: Session, study_name: str) -> list[ModelProgress]:
    """Per model of ``study_name`` (in config order): its items, their assignments and the ratings so far."""
    study = get_study(session, study_name)
    per_model: dict[str, list[int]] = {name: [0, 0, 0] for name in study.config.get("models", [])}
    item_counts = session.execute(
        select(Model.name, func.count(StudyItem.id))
        .join(StudyItem, StudyItem.model_id == Model.id)
        .where(StudyItem.study_id == study.id, REAL)
        .group_by(Model.name)
    ).all()
    assigned_counts = session.execute(
        select(Model.name, func.count(Assignment.id), func.count(Rating.id))
        .join(StudyItem, StudyItem.model_id == Model.id)
        .join(Assignment, Assignment.item_id == StudyItem.id)
        .outerjoin(Rating, Rating.assignment_id == Assignment.id)
        .where(StudyItem.study_id == study.id, REAL)
        .group_by(Model.name)
    ).all()
    for name, n in item_counts:
        per_model.setdefault(name, [0, 0, 0])[0] = int(n)
    for name, n_assigned, n_rated in assigned_counts:
        entry = per_model.setdefault(name, [0, 0, 0])
        entry[1], entry[2] = int(n_assigned), int(n_rated)
    return [ModelProgress(name, *counts) for name, counts in per_model.items()]


@dataclass(frozen=True)
class AssignmentRow:
    """One entry of one rater's list (coordinator view: shows the model and whether it is rated)."""

    rater_name: str
    position: int
    item: str
    item_kind: str
    model: str
    domain: str
    rated: bool


def assignment_rows(session: Session, study_name: str, *, limit: int = 2000) -> list[AssignmentRow]:
    """The study's assignments by rater and position (at most ``limit`` rows)."""
    study = get_study(session, study_name)
    rows = session.execute(
        select(Rater.name, Assignment.position, StudyItem.public_id, StudyItem.kind, Model.name, StudyItem.domain,
               Rating.id)
        .join(Assignment, Assignment.rater_id == Rater.id)
        .join(StudyItem, Assignment.item_id == StudyItem.id)
        .join(Model, StudyItem.model_id == Model.id)
        .outerjoin(Rating, Rating.assignment_id == Assignment.id)
        .where(Rater.study_id == study.id)
        .order_by(Rater.id, Assignment.position)
        .limit(limit)
    ).all()  # fmt: skip
    return [
        AssignmentRow(name, position, item, kind.value, model, domain.value, rating_id is not None)
        for name, position, item, kind, model, domain, rating_id in rows
    ]
