"""Per-model score statistics against statsmodels, pingouin and scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from analysis.scores import (
    cliffs_delta,
    friedman_table,
    holm,
    item_means,
    model_comparisons,
    model_scores,
    rank_biserial_paired,
)
from analysis.synthetic import synthetic_ratings


def test_holm_equals_statsmodels() -> None:
    p = np.random.default_rng(0).random(12) ** 3
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    assert np.isnan(holm([0.01, np.nan])[1])


def test_effect_sizes_equal_brute_force_and_pingouin() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.integers(1, 6, 30).astype(float), rng.integers(1, 6, 25).astype(float)
    brute = (np.sign(a[:, None] - b[None, :])).mean()
    assert cliffs_delta(a, b) == pytest.approx(brute, abs=1e-12)
    assert cliffs_delta(a, b) == pytest.approx(pingouin.mwu(a, b)["RBC"].item(), abs=1e-12)
    x, y = rng.normal(size=40), rng.normal(0.3, size=40)
    assert rank_biserial_paired(x, y) == pytest.approx(pingouin.wilcoxon(x, y)["RBC"].item(), abs=1e-12)


def test_model_scores_means_and_ceiling() -> None:
    frame = synthetic_ratings(n_raters=5, n_items=90, seed=4)
    table = model_scores(frame, n_resamples=200, seed=0)
    normal = frame[frame["item_kind"] == "normal"]
    for model, part in normal.groupby("model"):
        row = table[(table["question"] == "realism") & (table["model"] == model)]
        assert row["mean"].item() == pytest.approx(part["realism_generated"].astype(float).mean())
        assert row["ci_low"].item() < row["mean"].item() < row["ci_high"].item()
    ceiling = table[(table["question"] == "accuracy") & (table["model"] == "real (ceiling)")]
    assert ceiling["mean"].item() == pytest.approx(normal["accuracy_real"].astype(float).mean())
    pd.testing.assert_frame_equal(table, model_scores(frame, n_resamples=200, seed=0))


def test_paired_comparisons_and_friedman_equal_scipy_on_case_means() -> None:
    frame = synthetic_ratings(n_raters=5, n_items=90, seed=4)
    comparisons = model_comparisons(frame)
    between = comparisons[(comparisons["question"] == "realism") & (comparisons["family"] == "between_models")]
    assert set(between["test"]) == {"wilcoxon"}  # every case has every model: paired
    normal = frame[frame["item_kind"] == "normal"]
    cases = normal.assign(score=normal["realism_generated"].astype(float)).pivot_table(
        index="case", columns="model", values="score", aggfunc="mean"
    )
    per_item = item_means(frame, "realism")
    case_means = per_item.pivot_table(index="case", columns="model", values="generated", aggfunc="mean")
    row = between[(between["first"] == "model-a") & (between["second"] == "model-b")]
    expected = stats.wilcoxon(case_means["model-a"], case_means["model-b"])
    assert row["p_value"].item() == pytest.approx(expected.pvalue, rel=1e-10)
    np.testing.assert_allclose(between["p_holm"], multipletests(between["p_value"], method="holm")[1], rtol=1e-12)
    friedman = friedman_table(frame).set_index("question")
    complete = case_means.dropna()
    expected = stats.friedmanchisquare(*(complete[c] for c in complete.columns))
    assert friedman.loc["realism", "p_value"] == pytest.approx(expected.pvalue, rel=1e-10)
    assert friedman.loc["realism", "n_blocks"] == len(complete) and len(cases) >= len(complete)


def test_unpaired_design_uses_mann_whitney_and_friedman_needs_three_models() -> None:
    frame = synthetic_ratings(n_raters=4, n_items=60, seed=5, models=("m1", "m2"))
    first_case = frame.loc[frame["model"] == "m1", "case"].iloc[0]
    frame = frame[~((frame["model"] == "m1") & (frame["case"] == first_case))]  # m1 lacks one case
    comparisons = model_comparisons(frame)
    row = comparisons[(comparisons["question"] == "accuracy") & (comparisons["family"] == "between_models")]
    assert row["test"].item() == "mann_whitney"
    per_item = item_means(frame, "accuracy")
    a = per_item.loc[per_item["model"] == "m1", "generated"]
    b = per_item.loc[per_item["model"] == "m2", "generated"]
    assert row["p_value"].item() == pytest.approx(stats.mannwhitneyu(a, b).pvalue, rel=1e-10)
    assert row["effect_size"].item() == pytest.approx(cliffs_delta(a, b))
    assert friedman_table(frame)["note"].str.contains("3 models").all()


def test_model_differences_use_the_or_analysis_and_holm() -> None:
    from analysis.mrmc import mrmc_from_ratings
    from analysis.scores import holm, model_differences

    frame = synthetic_ratings(n_raters=6, n_items=90, seed=1)
    table = model_differences(frame, n_resamples=300, seed=2)
    turing = table[table["question"] == "turing_accuracy"].reset_index(drop=True)
    reference = mrmc_from_ratings(frame, score="2afc").rrrc.differences
    np.testing.assert_allclose(turing["difference"], reference["estimate"], rtol=1e-12)
    np.testing.assert_allclose(turing["p_value"], reference["p_value"], rtol=1e-12)
    np.testing.assert_allclose(turing["p_holm"], holm(reference["p_value"]), rtol=1e-12)
    realism = table[table["question"] == "realism"].set_index(["first", "second"])
    normal = frame[frame["item_kind"] == "normal"]
    means = normal.groupby("model")["realism_generated"].mean()
    for (first, second), row in realism.iterrows():
        assert row["difference"] == pytest.approx(means[first] - means[second])
        assert row["ci_low"] < row["difference"] < row["ci_high"] and "two-way" in row["method"]
    assert (realism["p_holm"] >= realism["p_value"]).all()


def test_model_scores_two_way_interval_is_named_and_wider() -> None:
    frame = synthetic_ratings(n_raters=6, n_items=90, seed=1)
    items = model_scores(frame, n_resamples=300, seed=1)
    both = model_scores(frame, n_resamples=300, seed=1, resample="two-way")
    assert set(items["ci_resample"]) == {"items"} and set(both["ci_resample"]) == {"two-way"}
    np.testing.assert_allclose(items["mean"], both["mean"])
    assert ((both["ci_high"] - both["ci_low"]) > (items["ci_high"] - items["ci_low"])).all()  # raters vary
    assert ((both["ci_low"] < both["mean"]) & (both["mean"] < both["ci_high"])).all()
