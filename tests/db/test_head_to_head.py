"""Head-to-head design: balanced over model pairs, sides and raters; no rater sees a case twice."""

from __future__ import annotations

from collections import Counter

import pytest

from db.errors import InputError
from db.head_to_head import PairItem, allot_cases, model_pairs, plan_head_to_head, side_balance


def _items(models: list[str], per_pair: int) -> list[PairItem]:
    pairs = model_pairs(models)
    cases = [f"case{i}" for i in range(len(pairs) * per_pair)]
    chosen = allot_cases({p: cases for p in pairs}, per_pair, seed=3)
    key = 0
    items = []
    for (a, b), mine in chosen.items():
        for case in mine:
            key += 1
            items.append(PairItem(key, case, a, b))
    return items


@pytest.mark.parametrize(
    ("models", "per_pair", "k", "slots"),
    [
        (["a", "b"], 12, 2, 4),
        (["a", "b", "c"], 8, 2, 4),
        (["m1", "m2", "m3", "m4"], 6, 3, 6),
        (["x", "y", "z"], 5, 1, 3),
    ],
)
def test_design_is_balanced_over_pairs_sides_and_raters(models: list[str], per_pair: int, k: int, slots: int) -> None:
    items = _items(models, per_pair)
    plan = plan_head_to_head(items, k=k, slots=slots, seed=11)
    assert plan.problems == []
    by_key = {it.key: it for it in plan.items}
    pairs = model_pairs(models)
    # every model pair equally often, each item on its own case, two different models
    assert Counter(tuple(sorted((it.left, it.right))) for it in plan.items) == {p: per_pair for p in pairs}
    assert len({it.case for it in plan.items}) == len(plan.items)
    assert all(it.left != it.right for it in plan.items)
    # K raters per item; no rater sees a case twice
    assert all(len(set(where)) == k for where in plan.slots_of.values())
    for keys in plan.order:
        assert len({by_key[key].case for key in keys}) == len(keys)
    # each rater slot reads every pair in balance (within 1) and about as many items as the others
    per_slot = [Counter(by_key[key].pair for key in keys) for keys in plan.order]
    for pair in {it.pair for it in plan.items}:
        counts = [c[pair] for c in per_slot]
        assert max(counts) - min(counts) <= 1
    # sides: per pair half on each side overall, and within 1 in every (slot, pair)
    for pair in {it.pair for it in plan.items}:
        lefts = sum(it.first_left for it in plan.items if it.pair == pair)
        assert abs(2 * lefts - per_pair) <= 1
    # every model is shown on the left about as often as on the right, overall
    sides = Counter(it.left for it in plan.items)
    assert max(sides.values()) - min(sides.values()) <= len(models)
    worst = max(abs(left - right) for left, right in side_balance(plan).values())
    assert worst <= 1, side_balance(plan)


def test_plan_is_deterministic_and_seed_dependent() -> None:
    items = _items(["a", "b", "c"], 8)
    one = plan_head_to_head(items, k=2, slots=4, seed=1)
    assert one.order == plan_head_to_head(items, k=2, slots=4, seed=1).order
    assert one.order != plan_head_to_head(items, k=2, slots=4, seed=2).order


def test_not_enough_cases_names_the_pair() -> None:
    pairs = model_pairs(["a", "b", "c"])
    with pytest.raises(InputError, match="models a and b"):
        allot_cases({pairs[0]: ["c1"], pairs[1]: ["c2", "c3"], pairs[2]: ["c4", "c5"]}, 2, seed=0)
    with pytest.raises(InputError, match="raters_per_item"):
        plan_head_to_head(_items(["a", "b"], 2), k=3, slots=2, seed=0)
