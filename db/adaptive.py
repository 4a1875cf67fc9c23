"""Adaptive assignment of head-to-head pairs (study config ``assignment = "adaptive"``; default ``"balanced"``).

A balanced head-to-head study deals a fixed plan (:mod:`db.head_to_head`). An adaptive one builds and
pre-renders the same items when it is created (every served copy exists before the first rater arrives, so
nothing's arrival time tells anything), but hands each rater their next pair only when they ask for it:

* **estimates**: the study's ``prefer_realism`` answers so far, fitted by a Bradley-Terry maximum a posteriori
  fit (log-strengths with a N(0, 1) prior; a tie counts half a win each way) with its Laplace covariance
  (:func:`fit_map`; the same fit as ``choix.opt_pairwise`` with ``alpha = 1 / (2 * PRIOR_VARIANCE)``);
* **rule** (:func:`choose_next`, pure): the model pair whose order is least certain, ``u = Phi(-|theta_i -
  theta_j| / sd(theta_i - theta_j))`` (the posterior probability that the estimated order of the two is
  wrong; 0.5 before any answer), as arena leaderboards sample where the ranking is least settled; equal
  scores are broken by a RNG seeded by (study seed, rater, step);
* **house rules**, before the rule looks at any estimate: only items with a free seat (fewer than K
  raters), whose case (so whose images) the rater has not seen; the rater's pair counts stay within
  ``PAIR_SPREAD`` (= 2) of each other over the pairs that still have items (so every rater reads every model
  pair roughly evenly and adaptivity cannot confound model with rater: it only decides which of the rater's
  least-read pairs comes next); within the pair the side is the one that rater has seen less (sides
  balanced per rater and pair), then the item with the most raters so far (items fill up to K, for
  agreement), then the seeded RNG;
* **record**: every draw is a row of ``adaptive_draws`` (step, seat, rater, item, position, time, pair,
  score, the estimates), exported with the study and summarised by the preference analysis.

Concurrency: a draw inserts its :class:`~db.models.Assignment` (unique per rater and position, and per rater
and item) and its :class:`~db.models.AdaptiveDraw` (unique per item and seat ``0 .. K-1``, and per study
and step) inside a SAVEPOINT; a racing request that loses any of these unique constraints rolls back to the
savepoint and draws again from fresh counts. So two raters can never exceed K on an item, and a double
request or a refresh finds the rater's unrated assignment and gets that same item back. Unique constraints
work the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.designs import seeded_rng
from db.errors import InputError
from db.models import AdaptiveDraw, Assignment, Model, Rater, Rating, Side, Study, StudyItem, utcnow

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

ASSIGNMENTS = ("balanced", "adaptive")
ADAPTIVE = "adaptive"
#: a rater's counts over the model pairs (that still have items for them) differ by at most this much
PAIR_SPREAD = 2
#: prior variance of each log-strength in the MAP fit that drives the draws
PRIOR_VARIANCE = 1.0
#: attempts at a draw before giving up (each lost race re-reads the counts)
MAX_ATTEMPTS = 50
#: the answer that drives the estimates
DRIVING_QUESTION = "prefer_realism"

FloatArray = NDArray[np.float64]


def check_assignment_keys(raw: Mapping[str, Any], kind: str, source: str) -> tuple[str, int]:
    """The config's ``assignment`` and ``items_per_rater``, checked (InputError naming the key)."""
    assignment = raw.get("assignment", "balanced")
    if assignment not in ASSIGNMENTS:
        raise InputError(f"'assignment' must be one of {', '.join(ASSIGNMENTS)}, got {assignment!r}", path=source)
    if assignment == ADAPTIVE and kind != "head-to-head":
        raise InputError(f"'assignment' = \"adaptive\" needs kind = \"head-to-head\" (this study is {kind}); "
                         "real-vs-generated studies keep their fixed reader design", path=source)  # fmt: skip
    per_rater = raw.get("items_per_rater", 0)
    if not isinstance(per_rater, int) or isinstance(per_rater, bool) or not 0 <= per_rater <= 100_000:
        raise InputError("'items_per_rater' must be a whole number 0-100000 (0: as a balanced slot)", path=source)
    if per_rater and assignment != ADAPTIVE:
        raise InputError("'items_per_rater' applies only to assignment = \"adaptive\"", path=source)
    return str(assignment), per_rater


# --------------------------------------------------------------------------------------------
# Pure: estimates and the selection rule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimates:
    """MAP log-strengths (centred) and their Laplace covariance."""

    models: tuple[str, ...]
    theta: FloatArray
    cov: FloatArray
    n_comparisons: int

    def pair_sd(self, i: int, j: int) -> float:
        return math.sqrt(max(self.cov[i, i] + self.cov[j, j] - 2 * self.cov[i, j], 0.0))

    def order_uncertainty(self, i: int, j: int) -> float:
        """P(the estimated order of models i and j is wrong) under the Laplace posterior."""
        sd = self.pair_sd(i, j)
        if sd == 0:
            return 0.0
        return 0.5 * math.erfc(abs(self.theta[i] - self.theta[j]) / sd / math.sqrt(2))


def fit_map(
    wins: FloatArray, prior_variance: float = PRIOR_VARIANCE, iterations: int = 100
) -> tuple[FloatArray, FloatArray]:
    """MAP Bradley-Terry log-strengths for ``wins[i, j]`` (i preferred to j, may be fractional) under a
    N(0, ``prior_variance``) prior on each, by Newton's method; returns (theta, covariance = inverse of
    the negative Hessian at the mode)."""
    n = wins.shape[0]
    total = wins + wins.T
    theta = np.zeros(n)
    precision = np.eye(n) / prior_variance
    for _ in range(iterations):
        p = 1 / (1 + np.exp(theta[None, :] - theta[:, None]))  # p[i, j] = P(i beats j)
        grad = wins.sum(axis=1) - (total * p).sum(axis=1) - theta / prior_variance
        w = total * p * p.T
        hess = np.diag(w.sum(axis=1)) - w + precision  # negative Hessian
        step = np.linalg.solve(hess, grad)
        theta = theta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = 1 / (1 + np.exp(theta[None, :] - theta[:, None]))
    w = total * p * p.T
    cov: FloatArray = np.linalg.inv(np.diag(w.sum(axis=1)) - w + precision).astype(np.float64)
    return theta, cov


def estimates_from_outcomes(models: Sequence[str], outcomes: Sequence[tuple[str, str, str]]) -> Estimates:
    """Estimates from (model shown left, model shown right, choice left/right/tie) outcomes."""
    index = {m: k for k, m in enumerate(models)}
    wins = np.zeros((len(models), len(models)))
    n = 0
    for left, right, choice in outcomes:
        if left not in index or right not in index or choice not in ("left", "right", "tie"):
            continue
        a, b = index[left], index[right]
        if choice == "left":
            wins[a, b] += 1
        elif choice == "right":
            wins[b, a] += 1
        else:
            wins[a, b] += 0.5
            wins[b, a] += 0.5
        n += 1
    theta, cov = fit_map(wins)
    return Estimates(tuple(models), theta - theta.mean(), cov, n)


@dataclass(frozen=True)
class Candidate:
    """An item the rater may be given: its key, its model pair (first < second) and which is on the left."""

    key: int
    first: str
    second: str
    first_left: bool
    seats_taken: int = 0

    @property
    def pair(self) -> str:
        return f"{self.first}|{self.second}"


@dataclass(frozen=True)
class Choice:
    """The rule's pick and what it was chosen on."""

    candidate: Candidate
    score: float
    scores: dict[str, float]
    allowed: tuple[str, ...]
    sides_first_left: tuple[int, int] = (0, 0)
    notes: dict[str, Any] = field(default_factory=dict)


def choose_next(
    estimates: Estimates,
    candidates: Sequence[Candidate],
    rater_pairs: Mapping[str, int],
    rater_sides: Mapping[str, tuple[int, int]],
    rng: random.Random,
) -> Choice | None:
    """The next item for one rater (None when no candidate is left).

    ``candidates``: items with a free seat whose case the rater has not seen; ``rater_pairs``: how many items
    of each pair (``"a|b"``) the rater has had; ``rater_sides``: per pair, (first model left, first model
    right) counts of the rater. See the module docstring for the rule."""
    if not candidates:
        return None
    index = {m: k for k, m in enumerate(estimates.models)}
    pairs = sorted({c.pair for c in candidates})
    floor = min(rater_pairs.get(p, 0) for p in pairs)
    allowed = [p for p in pairs if rater_pairs.get(p, 0) < floor + PAIR_SPREAD]
    scores = {}
    for p in pairs:
        first, second = p.split("|")
        scores[p] = estimates.order_uncertainty(index[first], index[second])
    best = max(scores[p] for p in allowed)
    pair = rng.choice(sorted(p for p in allowed if scores[p] >= best - 1e-12))
    in_pair = [c for c in candidates if c.pair == pair]
    left, right = rater_sides.get(pair, (0, 0))
    want_first_left = left <= right if left != right else None
    if want_first_left is not None and any(c.first_left == want_first_left for c in in_pair):
        in_pair = [c for c in in_pair if c.first_left == want_first_left]
    fullest = max(c.seats_taken for c in in_pair)
    pick = rng.choice(sorted((c for c in in_pair if c.seats_taken == fullest), key=lambda c: c.key))
    return Choice(pick, scores[pair], scores, tuple(allowed), (left, right))


# --------------------------------------------------------------------------------------------
# Database: quota, estimates, the draw, the log
# --------------------------------------------------------------------------------------------


def is_adaptive(study: Study) -> bool:
    """Whether ``study`` hands out its pairs adaptively (from the stored config, no query)."""
    config = study.config or {}
    return config.get("kind") == "head-to-head" and config.get("assignment") == ADAPTIVE


def planned_quota(config: Mapping[str, Any], n_items: int) -> int:
    """How many pairs each rater of an adaptive study reads: ``items_per_rater``, or as many as a slot of
    the balanced plan (items x K / slots, rounded up); never more than the study has items."""
    per_rater = int(config.get("items_per_rater") or 0)
    if not per_rater:
        k = int(config.get("raters_per_item") or 1)
        slots = int(config.get("rater_slots") or 0) or k
        per_rater = -(-n_items * k // slots)
    return min(per_rater, n_items)


def _study_items(session: Session, study_id: int) -> list[Any]:
    return list(session.execute(
        select(StudyItem.id, StudyItem.case_id, StudyItem.model_id, StudyItem.second_model_id,
               StudyItem.generated_side)
        .where(StudyItem.study_id == study_id, StudyItem.second_model_id.is_not(None))
        .order_by(StudyItem.id)
    ).all())  # fmt: skip


def adaptive_total(session: Session, rater: Rater) -> int | None:
    """The rater's planned number of pairs in an adaptive study (None for any other study)."""

    if not is_adaptive(rater.study):
        return None
    n_items = session.scalar(select(func.count()).select_from(StudyItem).where(StudyItem.study_id == rater.study_id))
    return planned_quota(rater.study.config, int(n_items or 0))


def study_estimates(session: Session, study: Study, names: Mapping[int, str]) -> Estimates:
    """The MAP estimates from the study's answers to :data:`DRIVING_QUESTION` so far."""

    rows = session.execute(
        select(Rating.answers, StudyItem.model_id, StudyItem.second_model_id, StudyItem.generated_side)
        .join(StudyItem, Rating.item_id == StudyItem.id)
        .where(StudyItem.study_id == study.id, StudyItem.second_model_id.is_not(None))
    ).all()
    outcomes = []
    for answers, first, second, side in rows:
        choice = (answers or {}).get(DRIVING_QUESTION)
        if choice is None or (answers or {}).get("cannot_assess"):
            continue
        left, right = (first, second) if side == Side.LEFT else (second, first)
        outcomes.append((names[left], names[right], str(choice)))
    models = sorted(str(m) for m in (study.config or {}).get("models", []))
    return estimates_from_outcomes(models, outcomes)


@dataclass(frozen=True)
class _State:
    candidates: list[Candidate]
    rater_pairs: Counter[str]
    rater_sides: dict[str, tuple[int, int]]
    free_seat: dict[int, int]
    drawn: int
    next_position: int
    next_step: int


def _state(session: Session, study: Study, rater: Rater, names: Mapping[int, str], k: int) -> _State:

    items = _study_items(session, study.id)
    seats: dict[int, set[int]] = {}
    for item_id, seat in session.execute(
        select(AdaptiveDraw.item_id, AdaptiveDraw.seat).where(AdaptiveDraw.study_id == study.id)
    ).tuples():
        seats.setdefault(item_id, set()).add(seat)
    mine = set(session.scalars(select(Assignment.item_id).where(Assignment.rater_id == rater.id)))
    by_id = {row[0]: row for row in items}
    seen_cases = {by_id[i][1] for i in mine if i in by_id}
    pairs: Counter[str] = Counter()
    sides: dict[str, list[int]] = {}
    candidates: list[Candidate] = []
    free_seat: dict[int, int] = {}
    for item_id, case_id, first_id, second_id, side in items:
        first, second = names[first_id], names[second_id]
        first_left = side == Side.LEFT
        if first > second:  # pairs are named smaller|larger
            first, second, first_left = second, first, not first_left
        pair = f"{first}|{second}"
        if item_id in mine:
            pairs[pair] += 1
            sides.setdefault(pair, [0, 0])[0 if first_left else 1] += 1
            continue
        taken = seats.get(item_id, set())
        free = [s for s in range(k) if s not in taken]
        if not free or case_id in seen_cases:
            continue
        free_seat[item_id] = free[0]
        candidates.append(Candidate(item_id, first, second, first_left, len(taken)))
    position = session.scalar(select(func.max(Assignment.position)).where(Assignment.rater_id == rater.id))
    step = session.scalar(select(func.max(AdaptiveDraw.step)).where(AdaptiveDraw.study_id == study.id))
    return _State(candidates, pairs, {p: (v[0], v[1]) for p, v in sides.items()}, free_seat, len(mine),
                  0 if position is None else int(position) + 1, 0 if step is None else int(step) + 1)  # fmt: skip


def _has_unrated(session: Session, rater: Rater) -> bool:

    return (
        session.scalar(
            select(Assignment.id)
            .outerjoin(Rating, Rating.assignment_id == Assignment.id)
            .where(Assignment.rater_id == rater.id, Rating.id.is_(None))
            .limit(1)
        )
        is not None
    )


def draw_if_adaptive(session: Session, rater: Rater) -> bool:
    """In an adaptive study, make sure the rater has an unrated pair: when they have none and have not read
    their quota, draw one (see the module docstring). Returns whether a draw was made; does nothing (no
    query) for any other study."""

    study = rater.study
    if not is_adaptive(study):
        return False
    names = dict(session.execute(select(Model.id, Model.name)).tuples().all())
    k = int(study.config.get("raters_per_item") or 1)
    for attempt in range(MAX_ATTEMPTS):
        if _has_unrated(session, rater):
            return False
        state = _state(session, study, rater, names, k)
        quota = planned_quota(study.config, len(_study_items(session, study.id)))
        if state.drawn >= quota:
            return False
        estimates = study_estimates(session, study, names)
        rng = seeded_rng(study.seed, "adaptive", rater.id, state.next_step, attempt)
        choice = choose_next(estimates, state.candidates, state.rater_pairs, state.rater_sides, rng)
        if choice is None:
            logger.info("adaptive study %s: no item left for rater %s", study.name, rater.public_id)
            return False
        index = {m: n for n, m in enumerate(estimates.models)}
        record = {
            "theta": {m: round(float(t), 6) for m, t in zip(estimates.models, estimates.theta, strict=True)},
            "sd": {p: round(estimates.pair_sd(index[p.split("|")[0]], index[p.split("|")[1]]), 6)
                   for p in choice.scores},
            "uncertainty": {p: round(s, 6) for p, s in choice.scores.items()},
            "allowed": list(choice.allowed),
            "rater_pair_counts": dict(state.rater_pairs),
            "candidates": len(state.candidates),
        }  # fmt: skip
        try:
            with session.begin_nested():
                assignment = Assignment(rater_id=rater.id, item_id=choice.candidate.key, position=state.next_position)
                session.add(assignment)
                session.flush()
                session.add(AdaptiveDraw(
                    study_id=study.id, rater_id=rater.id, item_id=choice.candidate.key, assignment_id=assignment.id,
                    step=state.next_step, seat=state.free_seat[choice.candidate.key], position=state.next_position,
                    pair=choice.candidate.pair, score=choice.score, n_comparisons=estimates.n_comparisons,
                    estimates=record, drawn_at=utcnow(),
                ))  # fmt: skip
                session.flush()
        except IntegrityError:  # a concurrent draw took the seat, the step or this rater's position: again
            logger.debug("adaptive draw for rater %s lost a race (attempt %d)", rater.public_id, attempt + 1)
            continue
        return True
    raise RuntimeError(f"adaptive draw for rater {rater.public_id} lost {MAX_ATTEMPTS} races in a row")


def draws_frame(session: Session, study: Study) -> pd.DataFrame:
    """The draw log of an adaptive study, one row per draw in step order (empty for other studies)."""
    import json

    import pandas as pd

    rows = session.execute(
        select(AdaptiveDraw, Rater.public_id, StudyItem.public_id)
        .join(Rater, AdaptiveDraw.rater_id == Rater.id)
        .join(StudyItem, AdaptiveDraw.item_id == StudyItem.id)
        .where(AdaptiveDraw.study_id == study.id)
        .order_by(AdaptiveDraw.step)
    ).all()
    columns = ["study", "step", "drawn_at", "rater", "item", "position", "seat", "pair", "score", "n_comparisons",
               "estimates"]  # fmt: skip
    return pd.DataFrame(
        [
            {
                "study": study.name,
                "step": d.step,
                "drawn_at": d.drawn_at.isoformat() + "Z",
                "rater": rater,
                "item": item,
                "position": d.position,
                "seat": d.seat,
                "pair": d.pair,
                "score": d.score,
                "n_comparisons": d.n_comparisons,
                "estimates": json.dumps(d.estimates, sort_keys=True),
            }
            for d, rater, item in rows
        ],
        columns=columns,
    )


def describe_adaptive(session: Session, study: Study) -> str:
    """``study check`` lines for an adaptive study: the rule, the quota, and the draws so far."""

    config = study.config or {}
    n_items = len(_study_items(session, study.id))
    k = int(config.get("raters_per_item") or 1)
    n, last = session.execute(
        select(func.count(), func.max(AdaptiveDraw.drawn_at)).where(AdaptiveDraw.study_id == study.id)
    ).one()
    fullest = session.scalar(
        select(func.count()).select_from(AdaptiveDraw).where(AdaptiveDraw.study_id == study.id)
        .group_by(AdaptiveDraw.item_id).order_by(func.count().desc()).limit(1)
    )  # fmt: skip
    per_pair = dict(session.execute(
        select(AdaptiveDraw.pair, func.count()).where(AdaptiveDraw.study_id == study.id)
        .group_by(AdaptiveDraw.pair).order_by(AdaptiveDraw.pair)
    ).tuples().all())  # fmt: skip
    lines = [
        f"assignment: adaptive (pairs drawn at request time where the Bradley-Terry order is least certain; "
        f"each rater reads {planned_quota(config, n_items)} pairs, model pairs within {PAIR_SPREAD} of each other "
        f"per rater; at most K = {k} raters per item; {n_items} items pre-rendered)",
        f"  draws so far: {n}"
        + (" (" + ", ".join(f"{p} {c}" for p, c in per_pair.items()) + ")" if per_pair else "")
        + (f", last at {last.isoformat()}Z" if last else "")
        + f"; most raters on one item: {fullest or 0} (K = {k})",
    ]  # fmt: skip
    return "\n".join(lines)
