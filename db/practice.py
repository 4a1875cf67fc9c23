"""The practice block: ``practice_pairs = N`` pairs shown to each rater before their first real pair.

Practice pairs come from OUTSIDE the study: cases of the study's datasets that no study item uses (neither
the case, nor its real image, nor the generated image), each with a generated image of one of the study's
models (never one a memorization audit flagged as a copy). They are stored as study items of kind
``practice`` (so they are blinded, fitted, pre-rendered at ``study create`` and served through the same
per-display, no-store ``/m/<token>`` route as real pairs) and sit at negative positions ``-N .. -1`` of every
rater's list, so the rater's next unrated pair is a practice pair until the practice is done (a refresh
resumes it), and the real pairs keep their positions ``0 ..``.

After each practice answer the rater is told which side was generated (:func:`practice_feedback`); real
pairs never get feedback. Practice ratings are stored in ``ratings`` like any other (nothing acknowledged is
lost), flagged through their item's kind: :func:`db.export.ratings_frame` leaves them out of what analysis
reads and exports carry them with ``practice = true``; progress counts leave them out.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import InputError
from db.models import (
    Assignment,
    Case,
    Domain,
    GeneratedImage,
    ItemKind,
    Model,
    Rating,
    Side,
    Study,
    StudyItem,
)

logger = logging.getLogger(__name__)


def outside_candidates(
    session: Session,
    study: Study,
    models: Sequence[Model],
    dataset_ids: Sequence[int],
    flagged: set[int],
) -> dict[int, list[tuple[Case, GeneratedImage]]]:
    """Per case outside the study (case, real image and generated image unused by its items): the study
    models' generated images of it, in model config order (flagged copies left out)."""
    items = list(session.scalars(select(StudyItem).where(StudyItem.study_id == study.id)))
    used_cases = {i.case_id for i in items}
    used_images = {i.real_sha256 for i in items} | {i.generated_sha256 for i in items}
    order = {m.id: n for n, m in enumerate(models)}
    rows = session.execute(
        select(GeneratedImage, Case)
        .join(Case, GeneratedImage.case_id == Case.id)
        .where(GeneratedImage.model_id.in_(list(order)), Case.dataset_id.in_(list(dataset_ids)))
        .order_by(Case.id, GeneratedImage.seed, GeneratedImage.id)
    ).all()
    by_case: dict[int, list[tuple[Case, GeneratedImage]]] = {}
    for gen, case in rows:
        if (
            case.id in used_cases
            or case.image_sha256 in used_images
            or gen.image_sha256 in used_images
            or gen.id in flagged
            or gen.image_sha256 == case.image_sha256
        ):
            continue
        options = by_case.setdefault(case.id, [])
        if all(g.model_id != gen.model_id for _c, g in options):  # one image per model: its first seed
            options.append((case, gen))
    for options in by_case.values():
        options.sort(key=lambda cg: order[cg[1].model_id])
    return by_case


def draw_practice(
    session: Session,
    study: Study,
    *,
    n: int,
    seed: int,
    models: Sequence[Model],
    dataset_ids: Sequence[int],
    domains: dict[int, Domain],
    flagged: set[int],
    public_id: Callable[[], str],
    source: str = "study config",
) -> list[StudyItem]:
    """Add ``n`` practice items to ``study`` (after its real items exist): distinct outside cases drawn with
    the seed, the models taken in turn, generated sides half left and half right (shuffled).

    Raises :class:`InputError` naming ``practice_pairs`` and the numbers when fewer outside cases exist.
    """
    if n <= 0:
        return []
    candidates = outside_candidates(session, study, models, dataset_ids, flagged)
    if len(candidates) < n:
        raise InputError(
            f"'practice_pairs' = {n}, but only {len(candidates)} case(s) of {len(dataset_ids)} dataset(s) outside "
            f"the study's items have a generated image of its models; practice pairs must not show the study's "
            f"images: lower practice_pairs to at most {len(candidates)}, or generate images for more cases",
            path=source,
        )
    rng = random.Random(f"{seed}:practice")
    chosen = rng.sample(sorted(candidates), n)
    sides = [Side.LEFT if j % 2 == 0 else Side.RIGHT for j in range(n)]
    rng.shuffle(sides)
    items = []
    for j, case_id in enumerate(chosen):
        options = candidates[case_id]
        wanted = models[j % len(models)].id
        case, gen = next((cg for cg in options if cg[1].model_id == wanted), options[0])
        items.append(
            StudyItem(
                study_id=study.id,
                public_id=public_id(),
                kind=ItemKind.PRACTICE,
                case_id=case.id,
                model_id=gen.model_id,
                generated_image_id=gen.id,
                real_sha256=case.image_sha256,
                generated_sha256=gen.image_sha256,
                generated_side=sides[j],
                domain=domains[case.dataset_id],
            )
        )
    session.add_all(items)
    session.flush()
    logger.info("study %s: %d practice pairs drawn from outside its items", study.name, len(items))
    return items


def practice_items_for(session: Session, study: Study, routing_key: str) -> list[StudyItem]:
    """The practice items a rater reads, in order: all of them, or with specialty routing (``routing_key``
    ``gi`` / ``radiology``) those of the rater's domain."""
    items = list(
        session.scalars(
            select(StudyItem)
            .where(StudyItem.study_id == study.id, StudyItem.kind == ItemKind.PRACTICE)
            .order_by(StudyItem.id)
        )
    )
    if routing_key != "all":
        items = [i for i in items if i.domain.value == routing_key]
    return items


def practice_assignments(rater_id: int, items: Sequence[StudyItem]) -> list[Assignment]:
    """The rater's practice assignments at positions ``-len(items) .. -1`` (before every real pair)."""
    return [Assignment(rater_id=rater_id, item_id=it.id, position=n - len(items)) for n, it in enumerate(items)]


@dataclass(frozen=True)
class PracticeFeedback:
    """What a rater is told after answering a practice pair (never after a real one)."""

    number: int  #: 1-based number of this practice pair
    total: int  #: practice pairs of this rater
    generated_side: str  #: "left" / "right"
    answered: str | None  #: the rater's "which image is generated?" answer (None: cannot assess)

    @property
    def correct(self) -> bool | None:
        return None if self.answered is None else self.answered == self.generated_side

    @property
    def last(self) -> bool:
        return self.number >= self.total


def practice_feedback(session: Session, rater_id: int, position: int) -> PracticeFeedback | None:
    """The feedback for the rated practice pair at ``position`` of the rater's list; None when that pair is
    not a practice pair (or not rated)."""
    row = session.execute(
        select(StudyItem.generated_side, Rating.answers)
        .select_from(Assignment)
        .join(StudyItem, Assignment.item_id == StudyItem.id)
        .join(Rating, Rating.assignment_id == Assignment.id)
        .where(
            Assignment.rater_id == rater_id,
            Assignment.position == position,
            StudyItem.kind == ItemKind.PRACTICE,
        )
    ).first()
    if row is None:
        return None
    side, answers = row
    total = _practice_count(session, rater_id)
    number = position + total + 1
    which = answers.get("which_generated")
    return PracticeFeedback(number, total, side.value, None if which is None else str(which))


def _practice_count(session: Session, rater_id: int) -> int:
    return len(
        session.scalars(
            select(Assignment.id)
            .join(StudyItem, Assignment.item_id == StudyItem.id)
            .where(Assignment.rater_id == rater_id, StudyItem.kind == ItemKind.PRACTICE)
        ).all()
    )


def practice_progress(session: Session, rater_id: int) -> tuple[int, int]:
    """(practice pairs rated, practice pairs) of a rater."""
    rows = session.execute(
        select(Assignment.id, Rating.id)
        .join(StudyItem, Assignment.item_id == StudyItem.id)
        .outerjoin(Rating, Rating.assignment_id == Assignment.id)
        .where(Assignment.rater_id == rater_id, StudyItem.kind == ItemKind.PRACTICE)
    ).all()
    return sum(1 for _a, r in rows if r is not None), len(rows)
