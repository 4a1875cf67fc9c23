"""Adaptive head-to-head assignment, the pure part: the MAP fit, the selection rule, and a seeded simulation."""

from __future__ import annotations

import random
from itertools import combinations

import choix
import numpy as np
import pytest
from scipy import stats

from db.adaptive import (
    PAIR_SPREAD,
    Candidate,
    Estimates,
    check_assignment_keys,
    choose_next,
    estimates_from_outcomes,
    fit_map,
)
from db.errors import InputError
from db.studies import parse_study_config

MODELS = ("a", "b", "c")


def _outcomes(wins: dict[tuple[str, str], int]) -> list[tuple[str, str, str]]:
    return [(w, l, "left") for (w, l), n in wins.items() for _ in range(n)]


def test_map_fit_equals_choix_penalised_fit_and_its_hessian() -> None:
    data = [(0, 1)] * 6 + [(1, 0)] * 4 + [(0, 2)] * 30 + [(2, 0)] * 10 + [(1, 2)] * 25 + [(2, 1)] * 15
    wins = np.zeros((3, 3))
    for w, l in data:
        wins[w, l] += 1
    theta, cov = fit_map(wins, prior_variance=1.0)
    ref = choix.opt_pairwise(3, data, alpha=0.5, tol=1e-12)  # penalty alpha |theta|^2 = N(0, 1/(2 alpha)) prior
    np.testing.assert_allclose(theta, ref, atol=1e-6)
    hessian = choix.opt.PairwiseFcts(data, 0.5).hessian(ref)
    np.testing.assert_allclose(cov, np.linalg.inv(hessian), rtol=1e-5)


def test_rule_picks_the_pair_whose_order_is_least_certain() -> None:
    # a vs b: 6-4 in 10 (close, few); a vs c: 30-10; b vs c: 25-15 -> the order of a and b is least settled
    outcomes = _outcomes({("a", "b"): 6, ("b", "a"): 4, ("a", "c"): 30, ("c", "a"): 10, ("b", "c"): 25, ("c", "b"): 15})
    est = estimates_from_outcomes(MODELS, outcomes)
    candidates = [Candidate(n, f, s, True) for n, (f, s) in enumerate(combinations(MODELS, 2))]
    choice = choose_next(est, candidates, {}, {}, random.Random(0))
    assert choice is not None and choice.candidate.pair == "a|b"
    # the score is P(order wrong) = Phi(-|d| / sd) from the reference fit (choix) and its Hessian
    data = [(MODELS.index(w), MODELS.index(l)) for w, l, _ in outcomes]
    ref = choix.opt_pairwise(3, data, alpha=0.5, tol=1e-12)
    cov = np.linalg.inv(choix.opt.PairwiseFcts(data, 0.5).hessian(ref))
    for (i, j), pair in zip(combinations(range(3), 2), ("a|b", "a|c", "b|c"), strict=True):
        sd = np.sqrt(cov[i, i] + cov[j, j] - 2 * cov[i, j])
        assert choice.scores[pair] == pytest.approx(stats.norm.cdf(-abs(ref[i] - ref[j]) / sd), abs=1e-6)
    assert choice.score == max(choice.scores.values())


def test_rater_balance_comes_before_the_estimates_and_sides_balance_per_rater() -> None:
    outcomes = _outcomes({("a", "b"): 6, ("b", "a"): 4, ("a", "c"): 30, ("c", "a"): 10, ("b", "c"): 25, ("c", "b"): 15})
    est = estimates_from_outcomes(MODELS, outcomes)
    candidates = [Candidate(n, f, s, n % 2 == 0) for n, (f, s) in enumerate(list(combinations(MODELS, 2)) * 2)]
    # this rater has read a|b PAIR_SPREAD times more than the others: the least certain pair is not allowed
    choice = choose_next(est, candidates, {"a|b": PAIR_SPREAD}, {}, random.Random(0))
    assert choice is not None and choice.candidate.pair != "a|b" and "a|b" not in choice.allowed
    # a pair the rater has seen with its first model on the left gets the other side next
    for sides, want in (((1, 0), False), ((0, 1), True)):
        choice = choose_next(est, candidates, {}, {"a|b": sides}, random.Random(0))
        assert choice is not None and choice.candidate.pair == "a|b" and choice.candidate.first_left is want
    # items fill up to K: the one with more raters already is preferred
    fuller = [Candidate(1, "a", "b", True, 0), Candidate(2, "a", "b", True, 1)]
    choice = choose_next(est, fuller, {}, {}, random.Random(0))
    assert choice is not None and choice.candidate.key == 2


def test_equal_scores_are_broken_by_the_seeded_rng() -> None:
    flat = estimates_from_outcomes(MODELS, [])
    candidates = [Candidate(n, f, s, True) for n, (f, s) in enumerate(combinations(MODELS, 2))]
    picks = [choose_next(flat, candidates, {}, {}, random.Random(seed)) for seed in range(30)]
    assert all(p is not None and p.score == pytest.approx(0.5) for p in picks)
    assert len({p.candidate.pair for p in picks if p is not None}) == 3  # not always the first pair
    again = [choose_next(flat, candidates, {}, {}, random.Random(seed)) for seed in range(30)]
    assert [p.candidate.key for p in picks if p] == [p.candidate.key for p in again if p]
    assert choose_next(flat, [], {}, {}, random.Random(0)) is None


def test_config_keys_are_checked() -> None:
    base = 'name = "x"\nseed = 1\ndatasets = ["gi"]\nmodels = ["a", "b"]\ncases_per_model = 4\n'
    cfg = parse_study_config(base + 'kind = "head-to-head"\nassignment = "adaptive"\nitems_per_rater = 5\n')
    assert (cfg.assignment, cfg.items_per_rater) == ("adaptive", 5)
    assert parse_study_config(base + 'kind = "head-to-head"\n').assignment == "balanced"
    with pytest.raises(InputError, match="'assignment'.*head-to-head"):
        parse_study_config(base + 'assignment = "adaptive"\n')  # a real-vs-generated study
    with pytest.raises(InputError, match="'assignment'"):
        parse_study_config(base + 'kind = "head-to-head"\nassignment = "bandit"\n')
    with pytest.raises(InputError, match="'items_per_rater'"):
        parse_study_config(base + 'kind = "head-to-head"\nitems_per_rater = 5\n')
    with pytest.raises(InputError, match="'items_per_rater'"):
        check_assignment_keys({"assignment": "adaptive", "items_per_rater": -1}, "head-to-head", "cfg")


# --------------------------------------------------------------------------------------------
# Seeded simulation: adaptive vs uniform (balanced) allocation of comparisons
# --------------------------------------------------------------------------------------------

TRUE_THETA = np.array([0.0, 0.3, 0.6, 1.4, 2.4])  # five models; the close neighbours decide the ranking
SIM_MODELS = tuple("mnopq")


def _simulate(adaptive: bool, seed: int, raters: int, per_rater: int, batch: int) -> list[int]:
    """Comparisons arrive ``batch`` at a time (raters answering in parallel); returns, after every batch,
    whether the estimated ranking equals the true one (1/0)."""
    rng = np.random.default_rng(seed)
    tie_rng = random.Random(seed)
    pairs = list(combinations(SIM_MODELS, 2))
    counts = [dict.fromkeys((f"{a}|{b}" for a, b in pairs), 0) for _ in range(raters)]
    sides = [dict[str, tuple[int, int]]() for _ in range(raters)]
    outcomes: list[tuple[str, str, str]] = []
    flat = Estimates(SIM_MODELS, np.zeros(5), np.eye(5), 0)
    correct: list[int] = []
    order = [r for _ in range(per_rater) for r in range(raters)]
    for start in range(0, len(order), batch):
        est = estimates_from_outcomes(SIM_MODELS, outcomes) if adaptive else flat
        for r in order[start : start + batch]:
            flip = bool(tie_rng.getrandbits(1))
            candidates = [Candidate(n, a, b, flip ^ (n % 2 == 0)) for n, (a, b) in enumerate(pairs)]
            choice = choose_next(est, candidates, counts[r], sides[r], tie_rng)
            assert choice is not None
            a, b = choice.candidate.first, choice.candidate.second
            counts[r][choice.candidate.pair] += 1
            i, j = SIM_MODELS.index(a), SIM_MODELS.index(b)
            a_wins = rng.random() < 1 / (1 + np.exp(TRUE_THETA[j] - TRUE_THETA[i]))
            outcomes.append((a, b, "left" if a_wins else "right"))
        theta = estimates_from_outcomes(SIM_MODELS, outcomes).theta
        correct.append(int(np.array_equal(np.argsort(theta), np.argsort(TRUE_THETA))))
    for r in range(raters):  # the guard against confounding held for every simulated rater
        assert max(counts[r].values()) - min(counts[r].values()) <= PAIR_SPREAD
    return correct


def test_adaptive_assignment_recovers_the_ranking_with_fewer_comparisons() -> None:
    raters, per_rater, batch, seeds = 40, 10, 20, 30
    curves = {
        name: np.mean([_simulate(name == "adaptive", seed, raters, per_rater, batch) for seed in range(seeds)], axis=0)
        for name in ("uniform", "adaptive")
    }
    n = batch * np.arange(1, len(curves["uniform"]) + 1)
    for name, curve in curves.items():
        print(f"{name:>8}: P(correct ranking) at " + ", ".join(f"{k}: {p:.2f}" for k, p in zip(n, curve, strict=True)))

    def needed(curve: np.ndarray, level: float) -> int:
        hit = np.flatnonzero(curve >= level)
        return int(n[hit[0]]) if len(hit) else int(n[-1]) + batch

    for level in (0.5, 0.7, 0.8):
        print(f"comparisons until P(correct) >= {level}: uniform {needed(curves['uniform'], level)}, "
              f"adaptive {needed(curves['adaptive'], level)}")  # fmt: skip
    assert needed(curves["adaptive"], 0.5) < needed(curves["uniform"], 0.5)
    assert curves["adaptive"][len(n) // 2 :].mean() > curves["uniform"][len(n) // 2 :].mean()
