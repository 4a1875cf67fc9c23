"""Head-to-head reader design: each item shows one case's images from two different models (pure; no database).

A head-to-head study (study config ``kind = "head-to-head"``) compares models directly: the rater sees the
SAME case (prompt) made by two models, side by side, and says which is more realistic / matches the prompt
better (left, right, no difference); with ``reference = true`` the real image is shown above them.

Layout (:func:`plan_head_to_head`), for ``M`` models (``P = M (M - 1) / 2`` pairs), ``c`` cases per pair
(the config's ``cases_per_model``), ``K`` raters per item and ``S`` rater slots:

* every model pair gets exactly ``c`` items, each on its own case: a case appears in one item only, so no
  rater can see a case (or any image) twice, and the study needs ``P c`` cases that every model has made;
* items are dealt round-robin (item ``n`` of the pair-grouped sequence to slots ``n K + q mod S``, ``q <
  K``): every item is read by exactly ``K`` different slots, every slot reads every pair ``c K / S`` times
  (within 1) and the same total (within 1);
* sides: which model of the pair is on the left is balanced per pair overall (half, within 1) and within
  every (slot, pair) as far as possible (:func:`db.designs.choose_sides`), so side never confounds model;
* each slot's order interleaves the pairs and sides with jitter (:func:`db.designs.order_slot`).

Model and rater are never confounded: every slot reads every pair in balance.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from db.designs import SlotItem, Unit, choose_sides, order_slot, seeded_rng
from db.errors import InputError
from db.questions import REALISM_ANCHORS, Question, QuestionKind, QuestionSet

KIND = "head-to-head"
DEFAULT_KIND = "real-vs-generated"
KINDS = (DEFAULT_KIND, KIND)
#: a preference answer: the left image, the right one, or no difference ("tie" in the analysis)
PREFERENCE_CHOICES = ("left", "right", "tie")

#: what a rater answers for a head-to-head pair (exports: ``prefer_realism``, ``prefer_prompt``, and the
#: optional per-image realism ``realism_left`` / ``realism_right``)
HEAD_TO_HEAD_QUESTIONS = QuestionSet(
    (
        Question("prefer_realism", "Which image is more realistic?", QuestionKind.CHOICE,
                 choices=PREFERENCE_CHOICES),
        Question("prefer_prompt", "Which image matches the prompt better?", QuestionKind.CHOICE,
                 choices=PREFERENCE_CHOICES),
        Question("realism_left", "Realism of the left image (optional)", QuestionKind.SCALE, required=False,
                 anchors=REALISM_ANCHORS, side="left"),
        Question("realism_right", "Realism of the right image (optional)", QuestionKind.SCALE, required=False,
                 anchors=REALISM_ANCHORS, side="right"),
        Question("comment", "Comment (optional)", QuestionKind.TEXT, required=False),
        Question("cannot_assess", "Cannot assess this pair", QuestionKind.FLAG, required=False),
        Question("cannot_assess_reason", "Why can this pair not be assessed?", QuestionKind.TEXT, required=False),
    )
)  # fmt: skip


def questions_for(kind: str) -> QuestionSet:
    """The question set of a study of ``kind`` (the config's ``kind``)."""
    from db.questions import DEFAULT_QUESTIONS

    return HEAD_TO_HEAD_QUESTIONS if kind == KIND else DEFAULT_QUESTIONS


@dataclass(frozen=True)
class PairItem:
    """One head-to-head item: ``case`` made by ``first`` and ``second`` (``first`` < ``second``)."""

    key: int
    case: str
    first: str
    second: str
    first_left: bool = True

    @property
    def pair(self) -> str:
        return f"{self.first}|{self.second}"

    @property
    def left(self) -> str:
        return self.first if self.first_left else self.second

    @property
    def right(self) -> str:
        return self.second if self.first_left else self.first


@dataclass
class HeadToHeadPlan:
    """Items with their sides, the slots reading each item, and each slot's ordered item keys."""

    items: list[PairItem]
    slots_of: dict[int, tuple[int, ...]]
    order: list[list[int]]
    k: int
    problems: list[str] = field(default_factory=list)


def model_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of distinct models, each as (smaller, larger)."""
    if len(set(models)) != len(models) or len(models) < 2:
        raise InputError("a head-to-head study needs at least two distinct models")
    return [tuple(sorted(p)) for p in combinations(models, 2)]  # type: ignore[misc]


def allot_cases(
    available: Mapping[tuple[str, str], Sequence[str]], per_pair: int, seed: object
) -> dict[tuple[str, str], list[str]]:
    """``per_pair`` distinct cases for every pair, no case used twice; ``available[pair]`` lists the cases
    both models of the pair have made. Pairs with the fewest candidates choose first."""
    rng = seeded_rng(seed, "h2h-cases")
    used: set[str] = set()
    chosen: dict[tuple[str, str], list[str]] = {}
    for pair in sorted(available, key=lambda p: (len(available[p]), p)):
        pool = sorted(set(available[pair]) - used)
        if len(pool) < per_pair:
            raise InputError(
                f"models {pair[0]} and {pair[1]} have images for {len(pool)} cases not used by another pair, fewer "
                f"than the {per_pair} per model pair asked (cases_per_model); each head-to-head item needs its "
                "own case, so generate more or lower cases_per_model"
            )
        chosen[pair] = rng.sample(pool, per_pair)
        used.update(chosen[pair])
    return chosen


def plan_head_to_head(items: Sequence[PairItem], *, k: int, slots: int, seed: object) -> HeadToHeadPlan:
    """Deal ``items`` (keys stable, e.g. database ids) to ``slots`` slots, ``k`` per item; choose sides and
    order. Deterministic in (items, k, slots, seed); see the module docstring."""
    if not 1 <= k <= slots:
        raise InputError(f"raters_per_item = {k} must be between 1 and rater_slots = {slots}")
    ordered = sorted(items, key=lambda it: (it.pair, it.key))
    slots_of = {it.key: tuple(sorted((n * k + q) % slots for q in range(k))) for n, it in enumerate(ordered)}
    units = [Unit(it.key, it.case, it.pair, n) for n, it in enumerate(ordered)]
    memberships = {key: [("all", s) for s in where] for key, where in slots_of.items()}
    first_left = choose_sides(units, memberships, (seed, "h2h-sides"))
    sided = [PairItem(it.key, it.case, it.first, it.second, first_left[it.key]) for it in ordered]
    per_slot: list[list[SlotItem]] = [[] for _ in range(slots)]
    for it in sided:
        for s in slots_of[it.key]:
            per_slot[s].append(SlotItem(it.key, "normal", it.pair, it.case, it.first_left))
    order = [[x.key for x in order_slot(lst, (seed, "h2h-order", s))] for s, lst in enumerate(per_slot)]
    plan = HeadToHeadPlan(sided, slots_of, order, k)
    plan.problems = audit_head_to_head(plan)
    return plan


def audit_head_to_head(plan: HeadToHeadPlan) -> list[str]:
    """What is unbalanced or unblinded in ``plan`` (empty when nothing)."""
    by_key = {it.key: it for it in plan.items}
    pairs = sorted({it.pair for it in plan.items})
    problems: list[str] = []
    per_pair = Counter(it.pair for it in plan.items)
    if len(set(per_pair.values())) > 1:
        problems.append(f"model pairs have {min(per_pair.values())}-{max(per_pair.values())} items")
    cases = Counter(it.case for it in plan.items)
    if any(n > 1 for n in cases.values()):
        problems.append("a case is used by two items")
    reads = Counter(s for where in plan.slots_of.values() for s in set(where))
    if any(len(set(where)) != plan.k for where in plan.slots_of.values()):
        problems.append(f"an item is not read by exactly K = {plan.k} slots")
    totals = [len(keys) for keys in plan.order]
    if max(totals) - min(totals) > 1:
        problems.append(f"slots read {min(totals)}-{max(totals)} items")
    for pair in pairs:
        counts = [sum(by_key[key].pair == pair for key in keys) for keys in plan.order]
        if max(counts) - min(counts) > 1:
            problems.append(f"pair {pair} is read {min(counts)}-{max(counts)} times per slot")
        lefts = sum(by_key[key].first_left for key in plan.slots_of if by_key[key].pair == pair)
        if abs(2 * lefts - per_pair[pair]) > 1:
            problems.append(f"pair {pair}: first model on the left {lefts} of {per_pair[pair]} times")
    for s, keys in enumerate(plan.order):
        seen = Counter(by_key[key].case for key in keys)
        if any(n > 1 for n in seen.values()):
            problems.append(f"slot {s + 1} sees a case twice")
        if len(keys) != reads.get(s, 0):
            problems.append(f"slot {s + 1} order and dealing disagree")
    return problems


def side_balance(plan: HeadToHeadPlan) -> dict[tuple[int, str], tuple[int, int]]:
    """(slot, pair) -> (first model left, first model right) counts."""
    by_key = {it.key: it for it in plan.items}
    out: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    for s, keys in enumerate(plan.order):
        for key in keys:
            out[(s, by_key[key].pair)][0 if by_key[key].first_left else 1] += 1
    return {key: (v[0], v[1]) for key, v in out.items()}


def describe_lists(lists: Sequence[Sequence[PairItem]], *, k: int, label: str, spread: int = 1) -> str:
    """A plain-text audit of head-to-head item lists (planned slots or stored raters), one fact a line; a list
    whose pair counts differ by more than ``spread`` reads the pairs unevenly."""
    pairs = sorted({it.pair for items in lists for it in items})
    lines = [f"head-to-head design ({label}): {len(lists)} list(s), K = {k}, model pairs: {', '.join(pairs)}"]
    problems: list[str] = []
    for n, items in enumerate(lists):
        counts = Counter(it.pair for it in items)
        parts = [f"{p} {counts.get(p, 0)} (first left {sum(it.first_left for it in items if it.pair == p)})"
                 for p in pairs]  # fmt: skip
        lines.append(f"  list {n + 1}: {len(items)} items: " + ", ".join(parts))
        repeats = sum(c - 1 for c in Counter(it.case for it in items).values() if c > 1)
        if repeats:
            problems.append(f"list {n + 1} sees {repeats} case(s) twice")
        if counts and max(counts.get(p, 0) for p in pairs) - min(counts.get(p, 0) for p in pairs) > spread:
            problems.append(f"list {n + 1} reads the pairs unevenly")
    lines.append("  balanced: yes" if not problems else "  NOT BALANCED: " + "; ".join(problems))
    return "\n".join(lines)
