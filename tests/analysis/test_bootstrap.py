"""Cluster bootstrap of means: against the exact binomial on independent answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.bootstrap import bootstrap_group_means


def _independent(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """400 raters x 5 answers each, 400 items x 5 raters each: many clusters, so the bootstrap SE
    itself varies little from data set to data set (about 3.5 %)."""
    rng = np.random.default_rng(seed)
    raters = np.repeat(np.arange(400), 5)
    items = (raters + np.tile(np.arange(5) * 37, 400)) % 400  # each item read by 5 different raters
    return raters, items, (rng.random(2000) < 0.55).astype(float)


@pytest.mark.parametrize("resample", ["raters", "items"])
def test_one_way_cluster_bootstrap_agrees_with_the_exact_binomial_on_independent_answers(resample: str) -> None:
    raters, items, y = _independent()
    boot = bootstrap_group_means(raters, items, y, resample=resample, n_resamples=2000, seed=1)
    estimate, se, low, high = boot.interval([1.0])
    exact = stats.binomtest(int(y.sum()), len(y)).proportion_ci(0.95, method="exact")
    binomial_se = np.sqrt(estimate * (1 - estimate) / len(y))
    # SE: 3.5 % data-to-data + 1.6 % Monte Carlo (2000 resamples); endpoints: about 0.001
    assert se == pytest.approx(binomial_se, rel=0.12)
    assert (low, high) == pytest.approx((exact.low, exact.high), abs=0.005)


def test_two_way_bootstrap_is_conservative_by_at_most_the_documented_factor() -> None:
    raters, items, y = _independent()
    boot = bootstrap_group_means(raters, items, y, resample="two-way", n_resamples=2000, seed=1)
    _, se, _, _ = boot.interval([1.0])
    binomial_se = np.sqrt(y.mean() * (1 - y.mean()) / len(y))
    assert binomial_se < se < np.sqrt(3.3) * binomial_se


def test_group_contrasts_and_seeding() -> None:
    raters, items, y = _independent()
    groups = np.where(items < 200, "a", "b")
    boot = bootstrap_group_means(raters, items, y, groups, n_resamples=300, seed=5)
    estimate, _, low, high = boot.interval([1.0, -1.0])
    assert estimate == pytest.approx(y[groups == "a"].mean() - y[groups == "b"].mean())
    assert low < estimate < high and boot.groups == ("a", "b")
    again = bootstrap_group_means(raters, items, y, groups, n_resamples=300, seed=5)
    np.testing.assert_array_equal(boot.distribution, again.distribution)
    with pytest.raises(ValueError, match="resample"):
        bootstrap_group_means(raters, items, y, resample="cells")  # type: ignore[arg-type]
