"""Reader designs: which rater slot reads which study item, and in which order (pure; no database).

A study's normal items are (case, model) pairs. A design deals them to ``slots`` rater slots:

``balanced`` (default)
    A balanced incomplete block design: every item is read by exactly ``K`` slots; every slot reads every
    model equally often (difference at most 1) and about as many items as any other slot; pairs of slots
    share as even a number of items as the greedy dealing allows (agreement needs overlap).
``crossed``
    Every slot reads every item (``K`` = slots): the fully crossed readers x cases layout MRMC needs.
``split-plot``
    ``slots / K`` reader groups of ``K`` slots; each group reads its own block of cases, crossed within
    the group (the Obuchowski / iMRMC split-plot layout).

Blinding rule: a slot never reads the same real image (case) in two normal pairs. When a case's models
cannot go to different slots (fewer slots than ``models x K``, or a crossed design with several models),
each model gets its own cases (:func:`needs_own_cases`). Attention and repeat items follow a normal item
(its "base"): they go to the base's slots and are placed after it, so a recurring real image is only ever
seen after the rater has judged its pair.

Within a slot, items are ordered by a jittered stratified interleave of the (model, side) classes, so
models and sides are spread along the order without a predictable pattern.
"""

from __future__ import annotations

import enum
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from db.errors import InputError

#: stored in ``Study.config["design_version"]``; studies without it were dealt by the old round-robin
DESIGN_VERSION = 2


class DesignKind(enum.StrEnum):
    """How items are dealt to rater slots."""

    BALANCED = "balanced"
    CROSSED = "crossed"
    SPLIT_PLOT = "split-plot"


def seeded_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from ``parts`` (stable across runs and platforms)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class Unit:
    """A normal item as a design sees it."""

    key: int  #: the item's id (or any stable key)
    case: str  #: the real image (sha256): read at most once per slot among normal items
    model: str
    rank: int  #: rank of the item's case among its model's items (0, 1, ...)


def effective_k(kind: DesignKind, k: int, slots: int) -> int:
    """Raters per item under ``kind`` (crossed: every slot)."""
    return slots if kind == DesignKind.CROSSED else k


def needs_own_cases(kind: DesignKind, n_models: int, k: int, slots: int) -> bool:
    """True when a case's models cannot go to different slots, so each model must get its own cases."""
    if n_models <= 1:
        return False
    if kind == DesignKind.CROSSED:
        return True
    if kind == DesignKind.SPLIT_PLOT:
        return slots // k < n_models
    return slots < n_models * k


def check_design_numbers(kind: DesignKind, k: int, slots: int, *, source: str) -> None:
    """Refuse numbers no design of ``kind`` can use, naming what to change."""
    if kind == DesignKind.SPLIT_PLOT and slots % k:
        lower, upper = (slots // k) * k, (slots // k + 1) * k
        options = f"{lower} or {upper}" if lower >= k else f"{upper}"
        raise InputError(
            f"a split-plot design needs rater_slots to be a multiple of raters_per_item (the group size): "
            f"rater_slots = {slots}, raters_per_item = {k}; set rater_slots to {options}",
            path=source,
        )


def assign_slots(
    units: Sequence[Unit], *, kind: DesignKind, k: int, slots: int, models: Sequence[str], seed: object
) -> dict[int, tuple[int, ...]]:
    """The slots reading each unit (by ``Unit.key``); raises :class:`InputError` when impossible."""
    if not units:
        return {}
    if kind == DesignKind.CROSSED:
        every = tuple(range(slots))
        result = {u.key: every for u in units}
    elif kind == DesignKind.SPLIT_PLOT:
        result = _split_plot(units, k, slots, models, seeded_rng(seed, "split-plot"))
    else:
        result = _balanced(units, k, slots, models, seeded_rng(seed, "balanced"))
    by_case: dict[str, list[int]] = defaultdict(list)
    for u in units:
        by_case[u.case].extend(result[u.key])
    for case, taken in by_case.items():
        if len(taken) != len(set(taken)):
            raise InputError(
                f"the design would show one real image ({case[:12]}...) twice to one rater; raise rater_slots "
                f"to at least models x raters_per_item = {len(models)} x {k} = {len(models) * k}"
            )
    return result


def _split_plot(
    units: Sequence[Unit], k: int, slots: int, models: Sequence[str], rng: random.Random
) -> dict[int, tuple[int, ...]]:
    """A balanced design over ``slots / k`` reader groups with one group per item, expanded to its slots."""
    groups = _balanced(units, 1, max(slots // k, 1), models, rng)
    return {key: tuple(range(g[0] * k, g[0] * k + k)) for key, g in groups.items()}


def _balanced(
    units: Sequence[Unit], k: int, slots: int, models: Sequence[str], rng: random.Random
) -> dict[int, tuple[int, ...]]:
    """Deal case by case: the case's ``len(models) x k`` seats go to the least loaded slots (fewest shared
    items with each other as tie-break), then an optimal assignment gives each model the seats where
    that model is least read; a repair pass moves or swaps seats until every count is within 1."""
    from scipy.optimize import linear_sum_assignment  # imported here: 0.5 s that a server start need not pay

    mi = {m: i for i, m in enumerate(models)}
    n = [[0] * len(models) for _ in range(slots)]
    tot = [0] * slots
    pair = [[0] * slots for _ in range(slots)]
    by_case: dict[str, list[Unit]] = defaultdict(list)
    for u in units:
        by_case[u.case].append(u)
    chosen_of: dict[int, list[int]] = {}
    for members in by_case.values():
        need = len(members) * k
        if need > slots:
            raise InputError(
                f"cannot deal a case's {len(members)} model(s) to different raters: raise rater_slots to at "
                f"least {need} or lower raters_per_item"
            )
        noise = [rng.random() for _ in range(slots)]
        seats: list[int] = []
        for _ in range(need):
            best = min(
                (s for s in range(slots) if s not in seats),
                key=lambda s: (tot[s], sum(pair[s][t] for t in seats), noise[s]),
            )
            seats.append(best)
        cost = np.array([[n[s][mi[u.model]] * len(seats) + noise[s] for u in members for _ in range(k)] for s in seats])
        rows, cols = linear_sum_assignment(cost)
        owned: dict[int, list[int]] = defaultdict(list)
        for r, c in zip(rows, cols, strict=True):
            owned[c // k].append(seats[r])
        for j, u in enumerate(members):
            chosen_of[u.key] = owned[j]
            for s in owned[j]:
                n[s][mi[u.model]] += 1
                tot[s] += 1
            for a, b in combinations(owned[j], 2):
                pair[a][b] += 1
                pair[b][a] += 1
    _repair(units, chosen_of, n, tot, pair, mi, slots)
    return {key: tuple(sorted(where)) for key, where in chosen_of.items()}


def _repair(
    units: Sequence[Unit],
    chosen_of: dict[int, list[int]],
    n: list[list[int]],
    tot: list[int],
    pair: list[list[int]],
    mi: dict[str, int],
    slots: int,
) -> None:
    """Move a seat from the most to the least loaded slot (or swap it with another model's seat of the same
    case) until per-model and total counts are within 1, or no move helps."""
    by_key = {u.key: u for u in units}
    case_slots: dict[str, set[int]] = defaultdict(set)
    for key, where in chosen_of.items():
        case_slots[by_key[key].case].update(where)
    case_units: dict[str, list[int]] = defaultdict(list)
    for u in units:
        case_units[u.case].append(u.key)

    def shift(key: int, hi: int, lo: int) -> None:
        u = by_key[key]
        for t in chosen_of[key]:
            if t != hi:
                pair[hi][t] -= 1
                pair[t][hi] -= 1
                pair[lo][t] += 1
                pair[t][lo] += 1
        chosen_of[key] = [lo if s == hi else s for s in chosen_of[key]]
        n[hi][mi[u.model]] -= 1
        n[lo][mi[u.model]] += 1
        tot[hi] -= 1
        tot[lo] += 1

    def fix_model(m: int, hi: int, lo: int) -> bool:
        for key, where in chosen_of.items():
            u = by_key[key]
            if mi[u.model] != m or hi not in where or lo in where:
                continue
            if lo not in case_slots[u.case]:
                shift(key, hi, lo)
                case_slots[u.case].discard(hi)
                case_slots[u.case].add(lo)
                return True
            for other in case_units[u.case]:  # lo is read by another model of this case: swap the two seats
                b = mi[by_key[other].model]
                if lo in chosen_of[other] and hi not in chosen_of[other] and n[hi][b] < n[lo][b]:
                    shift(key, hi, lo)
                    shift(other, lo, hi)
                    return True
        return False

    def fix_total(hi: int, lo: int) -> bool:
        for key, where in chosen_of.items():
            u = by_key[key]
            m = mi[u.model]
            if hi in where and lo not in case_slots[u.case] and n[hi][m] > n[lo][m]:
                shift(key, hi, lo)
                case_slots[u.case].discard(hi)
                case_slots[u.case].add(lo)
                return True
        return False

    for _ in range(4 * len(units) * max(len(mi), 1) + 10):
        changed = False
        for m in range(len(mi)):
            low, high = min(n[s][m] for s in range(slots)), max(n[s][m] for s in range(slots))
            if high - low > 1:
                changed |= any(
                    fix_model(m, hi, lo)
                    for hi in range(slots)
                    if n[hi][m] == high
                    for lo in range(slots)
                    if n[lo][m] == low
                )
        order = sorted(range(slots), key=lambda s: tot[s])
        if tot[order[-1]] - tot[order[0]] > 1:
            changed |= fix_total(order[-1], order[0])
        if not changed:
            break


def choose_sides(units: Sequence[Unit], memberships: dict[int, list[tuple[str, int]]], seed: object) -> dict[int, bool]:
    """Whether each unit shows the generated image on the left: half of each model's items overall, and
    as close to half as possible within every (slot, model) that reads it."""
    rng = seeded_rng(seed, "sides")
    order = list(units)
    rng.shuffle(order)
    per_model = Counter(u.model for u in units)
    quota = {m: [c // 2 + (c % 2) * rng.randint(0, 1), 0] for m, c in per_model.items()}  # [left quota, used]
    count: dict[tuple[str, int, str], list[int]] = defaultdict(lambda: [0, 0])
    left: dict[int, bool] = {}
    for u in order:
        q = quota[u.model]
        remaining = per_model[u.model]
        per_model[u.model] -= 1
        lefts_left = q[0] - q[1]
        if lefts_left <= 0:
            choice = False
        elif lefts_left >= remaining:
            choice = True
        else:
            imbalance = sum(count[(g, s, u.model)][0] - count[(g, s, u.model)][1] for g, s in memberships[u.key])
            choice = imbalance < 0 or (imbalance == 0 and rng.random() < 0.5)
        left[u.key] = choice
        q[1] += choice
        for g, s in memberships[u.key]:
            count[(g, s, u.model)][0 if choice else 1] += 1

    # repair: swap the sides of a left and a right item of one model while that evens out (slot, model) cells
    def diff(key: int, model: str) -> list[int]:
        return [count[(g, s, model)][0] - count[(g, s, model)][1] for g, s in memberships[key]]

    def flip(key: int, model: str, to_left: bool) -> None:
        left[key] = to_left
        for g, s in memberships[key]:
            count[(g, s, model)][0] += 1 if to_left else -1
            count[(g, s, model)][1] -= 1 if to_left else -1

    def cost(keys: tuple[int, ...], model: str) -> int:
        cells = {(g, s) for key in keys for g, s in memberships[key]}
        return sum((count[(g, s, model)][0] - count[(g, s, model)][1]) ** 2 for g, s in cells)

    for _ in range(len(units)):
        improved = False
        for model in sorted({u.model for u in units}):
            mine = [u.key for u in order if u.model == model]
            lefts = sorted((key for key in mine if left[key]), key=lambda key: -sum(diff(key, model)))[:8]
            rights = sorted((key for key in mine if not left[key]), key=lambda key: sum(diff(key, model)))[:8]
            best_gain, best_pair = 0, None
            for a in lefts:
                for b in rights:
                    before = cost((a, b), model)
                    flip(a, model, False)
                    flip(b, model, True)
                    gain = before - cost((a, b), model)
                    flip(a, model, True)
                    flip(b, model, False)
                    if gain > best_gain:
                        best_gain, best_pair = gain, (a, b)
            if best_pair is not None:
                flip(best_pair[0], model, False)
                flip(best_pair[1], model, True)
                improved = True
        if not improved:
            break
    return left


def pick_bases(units: Sequence[Unit], memberships: dict[int, list[tuple[str, int]]], n: int, seed: object) -> list[int]:
    """``n`` distinct unit keys whose slots are spread as evenly as possible (for attention / repeats)."""
    rng = seeded_rng(seed)
    pool = list(units)
    rng.shuffle(pool)
    load: Counter[tuple[str, int]] = Counter()
    picked: list[int] = []
    chosen: set[int] = set()
    for _ in range(min(n, len(pool))):
        best = min(
            (u for u in pool if u.key not in chosen),
            key=lambda u: (
                max((load[g] for g in memberships[u.key]), default=0),
                sum(load[g] for g in memberships[u.key]),
            ),
        )
        chosen.add(best.key)
        picked.append(best.key)
        load.update(memberships[best.key])
    return picked


@dataclass(frozen=True)
class SlotItem:
    """An item in one slot's list, as ordering and auditing see it."""

    key: int
    kind: str  #: "normal", "attention" or "repeat"
    model: str
    case: str
    generated_left: bool
    base: int | None = None  #: the normal item an attention / repeat item follows


def order_slot(items: Sequence[SlotItem], seed: object) -> list[SlotItem]:
    """A slot's reading order: normal items interleaved by (model, side) with jitter; each attention or
    repeat item at a random place at least a quarter of the list after its base."""
    rng = seeded_rng(seed)
    normal = [it for it in items if it.base is None]
    classes: dict[tuple[str, bool], list[SlotItem]] = defaultdict(list)
    for it in sorted(normal, key=lambda it: it.key):
        classes[(it.model, it.generated_left)].append(it)
    # models: a lightly jittered systematic interleave (no long runs); sides within a model: fully jittered
    by_model: dict[str, list[tuple[float, float, SlotItem]]] = defaultdict(list)
    for (model, _), members in sorted(classes.items()):
        rng.shuffle(members)
        keyed_side = [((r + rng.random()) / len(members), rng.random(), it) for r, it in enumerate(members)]
        by_model[model].extend(keyed_side)
    keyed: list[tuple[float, float, SlotItem]] = []
    for members_keyed in by_model.values():
        members_keyed.sort(key=lambda t: (t[0], t[1]))
        size = len(members_keyed)
        keyed.extend(
            ((r + 0.2 + 0.6 * rng.random()) / size, rng.random(), it) for r, (_, _, it) in enumerate(members_keyed)
        )
    ordered = [it for _, _, it in sorted(keyed, key=lambda t: (t[0], t[1]))]
    position = {it.key: p for p, it in enumerate(ordered)}
    gap = max(len(ordered) // 4, 1)
    for it in sorted((it for it in items if it.base is not None), key=lambda it: it.key):
        after = next(p for p, o in enumerate(ordered) if o.key == it.base) if it.base in position else -1
        at = rng.randint(min(after + gap, len(ordered)), len(ordered))
        ordered.insert(at, it)
    return ordered


@dataclass
class DesignAudit:
    """What a design does for one group of raters: balance, overlap, blinding, supported analyses."""

    kind: str
    k: int
    label: str
    models: list[str]
    per_slot_model: list[dict[str, int]]
    per_slot_sides: list[dict[str, tuple[int, int]]]
    reads: Counter[int]
    overlap: tuple[int, int]
    recurrences: int
    max_model_run: int
    problems: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return not self.problems

    def supports(self) -> dict[str, str]:
        """Which analyses the design supports, each with why."""
        mrmc = {
            DesignKind.CROSSED.value: "yes (fully crossed readers x cases)",
            DesignKind.SPLIT_PLOT.value: "yes (split-plot: reader groups x case blocks)",
        }.get(self.kind, 'no: needs design = "crossed" or "split-plot"')
        if self.k >= 2 and self.overlap[1] > 0:
            icc = f"yes (K = {self.k} raters per item; rater pairs share {self.overlap[0]}-{self.overlap[1]} items)"
        else:
            icc = "no: every item has one reader (raise raters_per_item to 2 or more)"
        return {"MRMC": mrmc, "ICC / agreement": icc}

    def describe(self) -> str:
        """A plain-text summary, one fact a line."""
        lines = [f"design {self.kind} ({self.label}): {len(self.per_slot_model)} rater slot(s), K = {self.k}"]
        for s, counts in enumerate(self.per_slot_model):
            sides = self.per_slot_sides[s]
            parts = [f"{m} {counts.get(m, 0)} (gen. left {sides.get(m, (0, 0))[0]})" for m in self.models]
            lines.append(f"  slot {s + 1}: {sum(counts.values())} items: " + ", ".join(parts))
        reads = sorted(set(self.reads.values())) or [0]
        lines.append(f"  readers per normal item: {reads[0]}-{reads[-1]}")
        lines.append(f"  rater-pair overlap (shared items): min {self.overlap[0]}, max {self.overlap[1]}")
        lines.append(f"  real-image recurrences (same real image in two normal pairs, or before its pair): "
                     f"{self.recurrences}")  # fmt: skip
        lines.append(f"  longest run of one model in a rater's order: {self.max_model_run}")
        for name, verdict in self.supports().items():
            lines.append(f"  {name}: {verdict}")
        lines.append("  balanced: yes" if self.balanced else "  NOT BALANCED: " + "; ".join(self.problems))
        return "\n".join(lines)


def audit_slots(
    slot_lists: Sequence[Sequence[SlotItem]],
    *,
    kind: str,
    k: int,
    models: Sequence[str],
    label: str = "all raters",
    all_normal: Sequence[int] | None = None,
    check_reads: bool = True,
) -> DesignAudit:
    """Audit the ordered item lists of a group's slots (planned or as stored for real raters). With
    ``check_reads`` every normal item must be read exactly ``k`` times (off while slots are still empty)."""
    per_model: list[dict[str, int]] = []
    per_sides: list[dict[str, tuple[int, int]]] = []
    reads: Counter[int] = Counter({key: 0 for key in all_normal or ()})
    members: list[set[int]] = []
    recurrences = 0
    longest = 0
    problems: list[str] = []
    for items in slot_lists:
        normal = [it for it in items if it.kind == "normal"]
        counts = Counter(it.model for it in normal)
        per_model.append({m: counts.get(m, 0) for m in models})
        sides: dict[str, tuple[int, int]] = {}
        for m in models:
            mine = [it for it in normal if it.model == m]
            sides[m] = (sum(it.generated_left for it in mine), sum(not it.generated_left for it in mine))
        per_sides.append(sides)
        reads.update(it.key for it in normal)
        members.append({it.key for it in normal})
        seen_cases = Counter(it.case for it in normal)
        recurrences += sum(c - 1 for c in seen_cases.values() if c > 1)
        shown: set[int] = set()
        for it in items:
            if it.kind != "normal" and it.base is not None and it.base not in shown and it.base in members[-1]:
                recurrences += 1
            shown.add(it.key)
        run = 0
        previous = None
        for it in normal:
            run = run + 1 if it.model == previous else 1
            previous = it.model
            longest = max(longest, run)
    overlaps = [len(a & b) for a, b in combinations(members, 2)]
    overlap = (min(overlaps), max(overlaps)) if overlaps else (0, 0)
    for s, slot_counts in enumerate(per_model):
        values = [slot_counts[m] for m in models]
        if values and max(values) - min(values) > 1:
            problems.append(f"slot {s + 1} reads the models {values} times (more than 1 apart)")
    for m in models:
        values = [slot_counts[m] for slot_counts in per_model]
        if values and max(values) - min(values) > 1:
            problems.append(f"model {m} is read {min(values)}-{max(values)} times per slot (more than 1 apart)")
    if check_reads and reads and (set(reads.values()) != {k}):
        values = sorted(set(reads.values()))
        problems.append(f"normal items are read by {values[0]}-{values[-1]} slots, not exactly K = {k}")
    if recurrences:
        problems.append(f"{recurrences} real-image recurrence(s)")
    return DesignAudit(
        kind, k, label, list(models), per_model, per_sides, reads, overlap, recurrences, longest, problems
    )
