"""Visual Turing test statistics against scipy and hand-computed 2AFC definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.synthetic import synthetic_ratings
from analysis.turing import binomial_test_half, position_bias, turing_test, two_afc_summary


def test_two_afc_summary_definitions() -> None:
    rng = np.random.default_rng(0)
    generated_right = rng.random(200) < 0.5
    answered_right = np.where(rng.random(200) < 0.7, generated_right, ~generated_right)
    out = two_afc_summary(generated_right, answered_right)
    hits = (generated_right & answered_right).sum()
    false_alarms = (~generated_right & answered_right).sum()
    n_signal, n_noise = generated_right.sum(), (~generated_right).sum()
    correct = int((generated_right == answered_right).sum())
    assert out["n_correct"] == correct
    assert out["sensitivity"] == pytest.approx(hits / n_signal)
    assert out["specificity"] == pytest.approx(1 - false_alarms / n_noise)
    z_h = stats.norm.ppf((hits + 0.5) / (n_signal + 1))
    z_f = stats.norm.ppf((false_alarms + 0.5) / (n_noise + 1))
    assert out["d_prime"] == pytest.approx((z_h - z_f) / np.sqrt(2))
    assert out["criterion_c"] == pytest.approx(-(z_h + z_f) / 2)
    test = stats.binomtest(correct, 200, 0.5)
    assert out["p_value"] == pytest.approx(test.pvalue, rel=1e-10)
    ci = test.proportion_ci(0.95, method="exact")
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-8)


def test_d_prime_is_finite_for_perfect_and_zero_rates() -> None:
    perfect = two_afc_summary([True, True, False, False], [True, True, False, False])
    assert np.isfinite(perfect["d_prime"]) and perfect["d_prime"] > 0 and perfect["accuracy"] == 1.0
    inverted = two_afc_summary([True, False], [False, True])
    assert np.isfinite(inverted["d_prime"]) and inverted["d_prime"] < 0


def test_binomial_test_half_equals_scipy() -> None:
    for n in (1, 2, 7, 20, 101):
        for k in range(n + 1):
            assert binomial_test_half(k, n) == pytest.approx(stats.binomtest(k, n, 0.5).pvalue, rel=1e-9)


def test_turing_test_on_synthetic_frame() -> None:
    frame = synthetic_ratings(n_raters=6, n_items=90, seed=1, careless_raters=1)
    result = turing_test(frame)
    normal = frame[(frame["item_kind"] == "normal") & frame["which_generated"].notna()]
    assert result.pooled["n"].item() == len(normal)
    accuracy = normal.groupby("rater")["correct"].mean().astype(float)
    per_rater = result.per_rater.set_index("rater")["accuracy"]
    pd.testing.assert_series_equal(per_rater.sort_index(), accuracy.sort_index(), check_names=False)
    by_model = normal.groupby("model")["correct"].mean().astype(float)
    np.testing.assert_allclose(result.by_model.set_index("model")["accuracy"].loc[by_model.index], by_model)
    assert result.confusion.to_numpy().sum() == len(normal)
    assert set(result.by_experience["experience"]) <= {"[0, 5)", "[5, 10)", "[10, 20)", "[20, inf)", "unknown"}
    assert result.excluded_raters == ()
    assert result.attention["flagged"].any()  # the careless rater fails attention items


def test_flagged_raters_can_be_excluded_and_are_always_reported() -> None:
    frame = synthetic_ratings(n_raters=6, n_items=90, seed=1, careless_raters=1)
    result = turing_test(frame, exclude_flagged_raters=True)
    flagged = set(result.attention.loc[result.attention["flagged"], "rater"])
    assert flagged and set(result.excluded_raters) == flagged
    assert flagged.isdisjoint(result.per_rater["rater"])
    assert len(result.attention) == frame["rater"].nunique()


def test_position_bias_detects_a_right_leaning_rater() -> None:
    rng = np.random.default_rng(2)
    n = 400
    side = np.where(rng.random(n) < 0.5, "right", "left")
    answers = pd.DataFrame(
        {
            "rater": np.repeat(["fair", "biased"], n // 2),
            "generated_right": side == "right",
            "answered_right": np.concatenate([side[: n // 2] == "right", rng.random(n // 2) < 0.9]),
        }
    )
    table = position_bias(answers, by="rater").set_index("rater")
    biased = answers[answers["rater"] == "biased"]
    correct = biased["generated_right"] == biased["answered_right"]
    contingency = [
        [int((correct & ~biased["generated_right"]).sum()), int((~correct & ~biased["generated_right"]).sum())],
        [int((correct & biased["generated_right"]).sum()), int((~correct & biased["generated_right"]).sum())],
    ]
    assert table.loc["biased", "p_fisher_side"] == pytest.approx(stats.fisher_exact(contingency).pvalue)
    assert table.loc["biased", "p_binomial_right"] < 1e-6 and table.loc["biased", "criterion_c"] < 0
    assert table.loc["fair", "p_fisher_side"] == 1.0
