"""Visual Turing test statistics against scipy and hand-computed 2AFC definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.power import simulate_2afc
from analysis.synthetic import synthetic_ratings
from analysis.turing import (
    attention_failures,
    binomial_test_half,
    chance_tests,
    crossed_mean,
    headline,
    position_bias,
    turing_test,
    two_afc_summary,
)


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
    assert out["accuracy_generated_right"] == pytest.approx(hits / n_signal)
    assert out["accuracy_generated_left"] == pytest.approx(1 - false_alarms / n_noise)
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


# ---------------------------------------------------------------------------------------------------
# Headline: raters and items random
# ---------------------------------------------------------------------------------------------------


def test_crossed_mean_equals_two_way_anova_on_a_balanced_table() -> None:
    """Balanced crossed table: variance = (MS_R + MS_C - MS_E) / (R C), MS from statsmodels' ANOVA."""
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    rng = np.random.default_rng(4)
    raters, items = np.repeat(np.arange(6), 30), np.tile(np.arange(30), 6)
    y = (rng.random(180) < 0.5 + 0.1 * (raters % 3 - 1)).astype(float)
    fit = crossed_mean(raters, items, y)
    frame = pd.DataFrame({"y": y, "r": raters.astype(str), "i": items.astype(str)})
    anova = sm.stats.anova_lm(ols("y ~ C(r) + C(i)", data=frame).fit(), typ=2)
    ms = anova["sum_sq"] / anova["df"]
    ms_r, ms_c, ms_e = ms["C(r)"], ms["C(i)"], ms["Residual"]
    assert fit.variance == pytest.approx((ms_r + ms_c - ms_e) / 180, rel=1e-10)
    assert fit.var_rater == pytest.approx((ms_r - ms_e) / 30, rel=1e-10)
    assert fit.var_error == pytest.approx(ms_e, rel=1e-10)
    assert fit.estimate == pytest.approx(y.mean())


def test_headline_columns_exclusions_and_groups() -> None:
    frame = synthetic_ratings(n_raters=6, n_items=90, seed=1, careless_raters=1)
    frame.loc[frame.index[:3], "cannot_assess"] = True
    table = headline(frame, descriptive=True)
    assert list(table.columns) == ["accuracy", "ci_low", "ci_high", "p_value", "p_equivalence", "n_raters",
                                   "n_items", "n_answers", "method"]  # fmt: skip
    used = frame[(frame["item_kind"] == "normal") & frame["which_generated"].notna() & ~frame["cannot_assess"]]
    used = used.drop_duplicates(["rater", "item"])
    main, pooled = table.iloc[0], table.iloc[1]
    assert main["n_answers"] == len(used) and main["n_items"] == used["item"].nunique()
    assert main["accuracy"] == pytest.approx(used["correct"].astype(float).mean())
    assert "random" in main["method"] and "DESCRIPTIVE" in pooled["method"]
    assert pooled["p_value"] == pytest.approx(stats.binomtest(int(used["correct"].sum()), len(used)).pvalue)
    assert main["ci_high"] - main["ci_low"] > pooled["ci_high"] - pooled["ci_low"]  # raters vary in skill
    by_model = headline(frame, by="model")
    assert list(by_model["model"]) == sorted(used["model"].unique())
    assert by_model["n_answers"].sum() == len(used)


def test_headline_with_identical_answers_says_why_tests_are_undefined() -> None:
    frame = synthetic_ratings(n_raters=3, n_items=30, seed=2)
    frame["which_generated"] = frame["generated_side"]
    row = headline(frame).iloc[0]
    assert row["accuracy"] == 1.0 and np.isnan(row["p_value"]) and "all answers identical" in row["method"]


@pytest.mark.parametrize("design", ["crossed", "k_of_n"])
def test_headline_test_holds_its_level_where_the_pooled_binomial_does_not(design: str) -> None:
    """Seeded simulation (400 studies per scenario, MC SE 0.011): population accuracy 0.5."""
    answers, n_items = (60, 60) if design == "crossed" else (60, 120)
    for sd_rater, sd_item in ((0.0, 0.0), (0.5, 0.0), (0.0, 1.0)):
        rng = np.random.default_rng([7, int(10 * sd_rater), int(10 * sd_item)])
        new, pooled = [], []
        for _ in range(400):
            rater, item, y = simulate_2afc(rng, n_raters=8, answers_per_rater=answers, n_items=n_items,
                                           sd_rater=sd_rater, sd_item=sd_item)  # fmt: skip
            fit = crossed_mean(rater, item, y)
            new.append(chance_tests(fit.estimate, fit.std_err, fit.df, 0.1, 0.95)[2] < 0.05)
            pooled.append(binomial_test_half(int(y.sum()), len(y)) < 0.05)
        # within 3.5 Monte Carlo SE of 0.05 (the benchmark's 1000-study runs: 0.045-0.061)
        assert abs(np.mean(new) - 0.05) <= 3.5 * np.sqrt(0.05 * 0.95 / 400), (sd_rater, sd_item, np.mean(new))
        if sd_rater > 0:
            assert np.mean(pooled) > 0.2  # the old headline test fails here


def test_attention_cannot_assess_is_no_failure_and_one_slip_does_not_flag() -> None:
    rows = []
    for rater, outcomes in {"slip": [True] * 9 + [False], "careless": [False, False, True, True],
                            "honest": [True, True, None]}.items():  # fmt: skip
        for k, outcome in enumerate(outcomes):
            rows.append({"rater": rater, "rater_name": rater, "item_kind": "attention", "item": f"a{k}",
                         "correct": outcome, "cannot_assess": outcome is None})  # fmt: skip
    table = attention_failures(pd.DataFrame(rows).astype({"correct": "boolean"})).set_index("rater")
    assert table.loc["honest", "n_attention"] == 2 and table.loc["honest", "n_failed"] == 0
    assert not table.loc["slip", "flagged"]  # one miss in ten
    assert table.loc["careless", "flagged"]  # two of four
    assert not attention_failures(pd.DataFrame(rows).astype({"correct": "boolean"}), 0.0, 3)["flagged"].any()


def test_per_rater_and_subgroup_tables_are_holm_adjusted() -> None:
    from analysis.scores import holm

    result = turing_test(synthetic_ratings(n_raters=6, n_items=90, seed=1))
    for table in (result.per_rater, result.by_model, result.by_specialty, result.by_experience):
        np.testing.assert_allclose(table["p_holm"], holm(table["p_value"].to_numpy()))
    assert {"accuracy_generated_left", "accuracy_generated_right"} <= set(result.per_rater.columns)
