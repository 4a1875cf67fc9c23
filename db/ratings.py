"""The rater's loop at the database level: next pair, progress, and idempotent submission.

A rating is acknowledged only after its transaction commits. The client submission id is unique, so a
double click or a retry after a network error returns the stored rating instead of writing a second one;
one rating per assignment is enforced by the schema too, so two tabs cannot rate the same item twice: the
second tab's submission is answered ``ALREADY_RATED``, recorded as a :class:`RatingConflict` (counted in
exports) and shown the stored answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.adaptive import adaptive_total, draw_if_adaptive
from db.errors import AccessDenied, InputError
from db.models import Assignment, ItemKind, Rater, Rating, RatingConflict, Side, Study, StudyItem, utcnow
from db.questions import DEFAULT_QUESTIONS, QuestionSet
from db.session import Database

MAX_SUBMISSION_ID = 64


class SubmitStatus(enum.StrEnum):
    """Outcome of a submission."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # the same submission id was stored before: nothing new written
    ALREADY_RATED = "already_rated"  # another submission rated this assignment first


@dataclass(frozen=True)
class PairView:
    """What a rater's screen needs for one pair: no model, no side truth, no hashes."""

    item_public_id: str
    prompt: str
    position: int
    total: int
    done: int
    left_sha256: str
    right_sha256: str
    domain: str = ""
    kind: str = "real-vs-generated"  #: the study's kind ("head-to-head": both images generated, by two models)
    reference: bool = False  #: head-to-head with ``reference = true``: the real image is shown above the pair
    #: a practice pair (db.practice): its number and the rater's practice total; ``done``/``total`` never
    #: count practice pairs
    practice_number: int = 0
    practice_total: int = 0
    rated_any: bool = False  #: the rater has submitted anything (practice included): no start screen then

    @property
    def practice(self) -> bool:
        return self.practice_number > 0


@dataclass(frozen=True)
class SubmitResult:
    """A submission's outcome."""

    status: SubmitStatus
    rating_id: int


def progress(session: Session, rater_id: int) -> tuple[int, int]:
    """(rated, total) real pairs for a rater (practice pairs, db.practice, are not study progress)."""
    total = session.scalar(
        select(func.count())
        .select_from(Assignment)
        .join(StudyItem, Assignment.item_id == StudyItem.id)
        .where(Assignment.rater_id == rater_id, StudyItem.kind != ItemKind.PRACTICE)
    )
    done = session.scalar(
        select(func.count())
        .select_from(Rating)
        .join(StudyItem, Rating.item_id == StudyItem.id)
        .where(Rating.rater_id == rater_id, StudyItem.kind != ItemKind.PRACTICE)
    )
    rater = session.get(Rater, rater_id)
    planned = adaptive_total(session, rater) if rater is not None else None
    return int(done or 0), int(total or 0) if planned is None else max(planned, int(total or 0))


def next_pair(session: Session, rater: Rater) -> PairView | None:
    """The rater's next unrated pair (marking when it was first shown), or None when all are rated."""

    draw_if_adaptive(session, rater)
    row = session.execute(
        select(Assignment, StudyItem)
        .join(StudyItem, Assignment.item_id == StudyItem.id)
        .outerjoin(Rating, Rating.assignment_id == Assignment.id)
        .where(Assignment.rater_id == rater.id, Rating.id.is_(None))
        .order_by(Assignment.position)
        .limit(1)
    ).first()
    if row is None:
        return None
    assignment, item = row
    if assignment.first_shown_at is None:
        assignment.first_shown_at = utcnow()
    done, total = progress(session, rater.id)
    config = rater.study.config or {}
    head_to_head = item.second_model_id is not None
    practice_number = practice_total = 0
    rated_any = done > 0
    if item.kind == ItemKind.PRACTICE or done == 0:
        from db.practice import practice_progress

        practice_done, practice_total = practice_progress(session, rater.id)
        rated_any = rated_any or practice_done > 0
        if item.kind == ItemKind.PRACTICE:  # practice positions are -practice_total .. -1
            practice_number = assignment.position + practice_total + 1
    return PairView(
        item_public_id=item.public_id,
        prompt=item.case.prompt,
        position=assignment.position,
        total=total,
        done=done,
        left_sha256=item.sha256_on(Side.LEFT),
        right_sha256=item.sha256_on(Side.RIGHT),
        domain=item.domain.value,
        kind=str(config.get("kind") or "real-vs-generated"),
        reference=head_to_head and bool(config.get("reference")),
        practice_number=practice_number,
        practice_total=practice_total,
        rated_any=rated_any,
    )


def study_kind(session: Session, rater_id: int) -> str:
    """The kind of the rater's study ("real-vs-generated" or "head-to-head"); it decides the questions."""
    config = session.scalar(select(Study.config).join(Rater, Rater.study_id == Study.id).where(Rater.id == rater_id))
    return str((config or {}).get("kind") or "real-vs-generated")


def questions_for_rater(session: Session, rater_id: int) -> QuestionSet:
    """The question set the rater's study asks (:func:`db.head_to_head.questions_for` its kind)."""
    from db.head_to_head import questions_for

    return questions_for(study_kind(session, rater_id))


def _existing(session: Session, submission_id: str) -> Rating | None:
    return session.scalar(select(Rating).where(Rating.submission_id == submission_id))


def _check_question_set(session: Session, item_id: int, questions: QuestionSet) -> None:
    """Refuse answers to the other kind of study's questions (a head-to-head item answered with the
    real-vs-generated set, or the reverse), so no rating is stored under the wrong questions."""
    from db.head_to_head import HEAD_TO_HEAD_QUESTIONS

    head_to_head = session.scalar(select(StudyItem.second_model_id).where(StudyItem.id == item_id)) is not None
    if head_to_head != (questions.keys() == HEAD_TO_HEAD_QUESTIONS.keys()):
        kind = "head-to-head" if head_to_head else "real-vs-generated"
        raise InputError(f"this pair belongs to a {kind} study and needs that study's questions")


def submit_rating(
    database: Database,
    rater_id: int,
    item_public_id: str,
    submission_id: str,
    answers: dict[str, Any],
    *,
    response_ms_client: float | None = None,
    client_submitted_at: str | None = None,
    questions: QuestionSet = DEFAULT_QUESTIONS,
    shown_at: datetime | None = None,
) -> SubmitResult:
    """Store a rating once. Raises :class:`AccessDenied` for an item not assigned to this rater.

    ``shown_at`` (UTC, naive) is when the server displayed the pair that was answered; without it the
    server response time runs from the assignment's first display.
    """
    if not submission_id or len(submission_id) > MAX_SUBMISSION_ID or not submission_id.isprintable():
        raise InputError("a submission id of 1-64 printable characters is required")
    if client_submitted_at is not None and len(client_submitted_at) > 40:
        raise InputError("client timestamp too long")
    if response_ms_client is not None and not 0 <= response_ms_client < 1e9:
        response_ms_client = None
    clean = questions.validate(answers)
    try:
        with database.session() as session:
            prior = _existing(session, submission_id)
            if prior is not None:
                if prior.rater_id != rater_id:
                    raise AccessDenied("that submission id belongs to another rater")
                return SubmitResult(SubmitStatus.DUPLICATE, prior.id)
            assignment = session.scalar(
                select(Assignment)
                .join(StudyItem, Assignment.item_id == StudyItem.id)
                .where(Assignment.rater_id == rater_id, StudyItem.public_id == item_public_id)
            )
            if assignment is None:
                raise AccessDenied("this pair is not assigned to you")
            _check_question_set(session, assignment.item_id, questions)
            rated = session.scalar(select(Rating).where(Rating.assignment_id == assignment.id))
            if rated is not None:
                return SubmitResult(SubmitStatus.ALREADY_RATED, rated.id)
            now = utcnow()
            shown: datetime | None = shown_at or assignment.first_shown_at
            server_ms = (now - shown).total_seconds() * 1000 if shown else None
            rating = Rating(
                assignment_id=assignment.id,
                rater_id=rater_id,
                item_id=assignment.item_id,
                submission_id=submission_id,
                answers=clean,
                response_ms_server=server_ms,
                response_ms_client=response_ms_client,
                client_submitted_at=client_submitted_at,
                server_received_at=now,
            )
            session.add(rating)
            session.flush()
            rating_id = rating.id
        return SubmitResult(SubmitStatus.STORED, rating_id)
    except IntegrityError:
        pass
    # A concurrent request stored the same submission id or rated the assignment first.
    with database.session() as session:
        prior = _existing(session, submission_id)
        if prior is not None:
            return SubmitResult(SubmitStatus.DUPLICATE, prior.id)
        rated = session.scalar(
            select(Rating)
            .join(Assignment)
            .where(Assignment.rater_id == rater_id)
            .join(StudyItem, Assignment.item_id == StudyItem.id)
            .where(StudyItem.public_id == item_public_id)
        )
        if rated is None:
            raise InputError("the rating could not be stored; please submit again")
        return SubmitResult(SubmitStatus.ALREADY_RATED, rated.id)


def assigned_item_public_id(session: Session, rater_id: int, position: int) -> str | None:
    """The public id of the item at ``position`` in the rater's list, or None."""
    found = session.scalar(
        select(StudyItem.public_id)
        .join(Assignment, Assignment.item_id == StudyItem.id)
        .where(Assignment.rater_id == rater_id, Assignment.position == position)
    )
    return None if found is None else str(found)


def has_assignments(session: Session, rater_id: int) -> bool:
    """Whether the rater has any pair at all (a study can add raters before it has items for them)."""
    return session.scalar(select(Assignment.id).where(Assignment.rater_id == rater_id).limit(1)) is not None


def stored_answers(database: Database, rating_id: int) -> dict[str, Any]:
    """The answers of a stored rating (shown to a second tab that tried to rate the same pair)."""
    with database.session() as session:
        rating = session.get(Rating, rating_id)
        return dict(rating.answers) if rating is not None else {}


def record_conflict(
    database: Database, rating_id: int, rater_id: int, submission_id: str, answers: dict[str, Any]
) -> None:
    """Record a submission turned away because its pair was already rated (once per submission id)."""
    try:
        with database.session() as session:
            if session.scalar(select(RatingConflict.id).where(RatingConflict.submission_id == submission_id)):
                return
            session.add(
                RatingConflict(rating_id=rating_id, rater_id=rater_id, submission_id=submission_id, answers=answers)
            )
    except IntegrityError:  # the same submission recorded concurrently: once is enough
        return


def conflict_count(session: Session, study_id: int) -> int:
    """How many submissions of a study were turned away as already rated in another tab or window."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(RatingConflict)
            .join(Rater, RatingConflict.rater_id == Rater.id)
            .where(Rater.study_id == study_id)
        )
        or 0
    )


def upcoming_position(session: Session, rater_id: int, after_position: int) -> int | None:
    """The position of the rater's next unrated pair after ``after_position`` (what to prefetch), or None."""
    found = session.scalar(
        select(Assignment.position)
        .outerjoin(Rating, Rating.assignment_id == Assignment.id)
        .where(Assignment.rater_id == rater_id, Assignment.position > after_position, Rating.id.is_(None))
        .order_by(Assignment.position)
        .limit(1)
    )
    return None if found is None else int(found)
