"""Reader designs over a grid of configs: balanced, no model/rater confounding, no recurring real image."""

from __future__ import annotations

from collections import defaultdict

import pytest

from db.designs import (
    DesignKind,
    SlotItem,
    Unit,
    assign_slots,
    audit_slots,
    check_design_numbers,
    choose_sides,
    effective_k,
    needs_own_cases,
    order_slot,
)
from db.errors import InputError

GRID = [
    (kind, n_models, k, slots)
    for kind in DesignKind
    for n_models in range(2, 6)
    for k in range(1, 5)
    for slots in range(k, 13)
    if not (kind == DesignKind.SPLIT_PLOT and slots % k)
]


def make_units(n_models: int, per_model: int, own: bool, domains: int) -> tuple[list[str], list[Unit], dict[int, int]]:
    """Units as the study builder makes them: rank r of every model has the same domain; shared cases
    unless ``own``. Returns models, units and each unit's domain."""
    models = [f"model-{i}" for i in range(n_models)]
    units, domain_of = [], {}
    for r in range(per_model):
        for j, m in enumerate(models):
            key = len(units)
            units.append(Unit(key, f"case-{r}-{j}" if own else f"case-{r}", m, r))
            domain_of[key] = r % domains
    return models, units, domain_of


def build(kind: DesignKind, n_models: int, k: int, slots: int, per_model: int, routed: bool, seed: int = 3):
    """Every rater group's ordered slot lists and audit, as db/studies.py builds them."""
    kk = effective_k(kind, k, slots)
    own = needs_own_cases(kind, n_models, kk, slots)
    models, units, domain_of = make_units(n_models, per_model, own, 2 if routed else 1)
    groups = {"all": units}
    if routed:
        for d in range(2):
            members = [u for u in units if domain_of[u.key] == d]
            ranks: dict[str, int] = defaultdict(int)
            regrouped = []
            for u in members:
                regrouped.append(Unit(u.key, u.case, u.model, ranks[u.model]))
                ranks[u.model] += 1
            groups[f"domain-{d}"] = regrouped
    plans = {
        g: assign_slots(us, kind=kind, k=kk, slots=slots, models=models, seed=(seed, g)) for g, us in groups.items()
    }
    memberships: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for g, plan in plans.items():
        for key, where in plan.items():
            memberships[key].extend((g, s) for s in where)
    left = choose_sides(units, memberships, seed)
    audits = {}
    lists_of = {}
    for g, plan in plans.items():
        lists = []
        for s in range(slots):
            mine = [SlotItem(u.key, "normal", u.model, u.case, left[u.key]) for u in groups[g] if s in plan[u.key]]
            lists.append(order_slot(mine, (seed, g, s)))
        lists_of[g] = lists
        audits[g] = audit_slots(lists, kind=kind.value, k=kk, models=models, all_normal=[u.key for u in groups[g]])
    return units, left, lists_of, audits


def check(kind: DesignKind, n_models: int, k: int, slots: int, per_model: int, routed: bool) -> None:
    units, left, lists_of, audits = build(kind, n_models, k, slots, per_model, routed)
    for g, audit in audits.items():
        assert audit.balanced, (g, audit.problems)
        assert audit.recurrences == 0
        kk = effective_k(kind, k, slots)
        assert set(audit.reads.values()) == {kk}  # every normal item read by exactly K slots
        totals = [sum(c.values()) for c in audit.per_slot_model]
        assert max(totals) - min(totals) <= (1 if kind != DesignKind.SPLIT_PLOT or g == "all" else 2), totals
        for counts in audit.per_slot_model:  # every slot reads every model equally often (within 1)
            assert max(counts.values()) - min(counts.values()) <= 1
        for sides in audit.per_slot_sides:  # the generated side is on the left about half the time
            for n_left, n_right in sides.values():
                assert abs(n_left - n_right) <= max(3, (n_left + n_right) // 4), sides
        for lst in lists_of[g]:  # no real image twice in one slot
            cases = [it.case for it in lst]
            assert len(cases) == len(set(cases))
        assert audit.max_model_run <= 3
    per_model_left = defaultdict(list)
    for u in units:
        per_model_left[u.model].append(left[u.key])
    for flags in per_model_left.values():  # sides balanced per model overall
        assert abs(2 * sum(flags) - len(flags)) <= 1


@pytest.mark.parametrize(("kind", "n_models", "k", "slots"), GRID)
def test_grid_is_balanced_without_recurring_real_images(kind: DesignKind, n_models: int, k: int, slots: int) -> None:
    for per_model in (3, 12):
        check(kind, n_models, k, slots, per_model, routed=False)


@pytest.mark.parametrize(("kind", "n_models", "k", "slots"), GRID[::3])
def test_grid_with_specialty_routing(kind: DesignKind, n_models: int, k: int, slots: int) -> None:
    check(kind, n_models, k, slots, 8, routed=True)


def test_the_old_round_robin_confounds_model_with_rater() -> None:
    """The layout ``study check`` must flag: 2 models interleaved, K = 2, 4 slots (the README's config)."""
    models, units, _ = make_units(2, 20, own=False, domains=1)
    lists = [[] for _ in range(4)]
    for n, u in enumerate(units):
        for s in range(4):
            if (s - n * 2) % 4 < 2:
                lists[s].append(SlotItem(u.key, "normal", u.model, u.case, n % 2 == 0))
    audit = audit_slots(lists, kind="legacy", k=2, models=models)
    assert not audit.balanced
    assert any("reads the models [20, 0]" in p for p in audit.problems)


def test_same_seed_same_design_and_another_seed_differs() -> None:
    first = build(DesignKind.BALANCED, 3, 2, 7, 12, routed=False, seed=5)[2]
    again = build(DesignKind.BALANCED, 3, 2, 7, 12, routed=False, seed=5)[2]
    other = build(DesignKind.BALANCED, 3, 2, 7, 12, routed=False, seed=6)[2]
    keys = [[it.key for it in lst] for lst in first["all"]]
    assert keys == [[it.key for it in lst] for lst in again["all"]]
    assert keys != [[it.key for it in lst] for lst in other["all"]]


def test_followers_come_after_their_base() -> None:
    items = [SlotItem(i, "normal", f"m{i % 2}", f"c{i}", i % 3 == 0) for i in range(20)]
    items += [SlotItem(100 + i, "repeat", f"m{i % 2}", f"c{i}", i % 3 == 0, base=i) for i in (0, 7, 19)]
    items += [SlotItem(200, "attention", "m1", "c5", False, base=5)]
    ordered = [it.key for it in order_slot(items, 1)]
    for follower, base in ((100, 0), (107, 7), (119, 19), (200, 5)):
        assert ordered.index(follower) > ordered.index(base)
    audit = audit_slots([order_slot(items, 1)], kind="balanced", k=1, models=["m0", "m1"])
    assert audit.recurrences == 0
    early = [SlotItem(100, "repeat", "m0", "c0", True, base=0), *items[:20]]  # a repeat shown before its base
    assert audit_slots([early], kind="balanced", k=1, models=["m0", "m1"]).recurrences == 1


def test_split_plot_refuses_slots_that_are_not_a_multiple_of_the_group() -> None:
    with pytest.raises(InputError, match="set rater_slots to 6 or 9"):
        check_design_numbers(DesignKind.SPLIT_PLOT, 3, 7, source="t")


def test_too_few_slots_for_shared_cases_is_refused_by_the_dealer() -> None:
    models, units, _ = make_units(3, 4, own=False, domains=1)  # shared cases, but only 2 slots for 3 models
    with pytest.raises(InputError, match="raise rater_slots to at least 3"):
        assign_slots(units, kind=DesignKind.BALANCED, k=1, slots=2, models=models, seed=1)
