"""Agreement statistics against their reference implementations and published examples."""

from __future__ import annotations

import functools

import krippendorff
import numpy as np
import pandas as pd
import pingouin
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from analysis.agreement import (
    ItemResampler,
    agreement_bootstrap_ci,
    agreement_bootstrap_cis,
    agreement_table,
    cohen_kappa,
    fleiss_kappa,
    gwet_ac1,
    icc,
    icc_coefficient,
    intra_rater_reliability,
    krippendorff_alpha,
    pairwise_cohen_kappa,
    ratings_matrix,
)
from analysis.synthetic import synthetic_ratings

NAN = np.nan
# Gwet (2014), Handbook of Inter-Rater Reliability, 4th ed., p. 120: 4 raters x 12 subjects, categories 1-5
# (a-e), also irrCAC's `raw_4raters` / `cac.raw4raters`. Published: AC1 0.775, Fleiss 0.761, alpha 0.743.
GWET_4RATERS = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, NAN],
        [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, 3],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
    ]
)
# Gwet (2014) p. 125 (irrCAC `raw_5observers`): 5 observers x 15 units, scores 0-3. Published AC1 0.497.
GWET_5OBSERVERS = np.array(
    [
        [1, 1, 2, NAN, 0, 0, 1, 1, 2, 2, NAN, 0, 1, 3, 1],
        [1, 1, 3, 0, 0, 0, 0, NAN, 2, 1, 1, 0, 2, 3, 1],
        [2, 0, 3, 0, 0, 0, 2, 2, 2, 1, 0, 0, 2, 2, 1],
        [NAN, 1, 3, NAN, NAN, NAN, NAN, 0, NAN, 1, 0, 0, 2, 2, NAN],
        [2, NAN, NAN, 0, 0, 0, 1, NAN, 2, NAN, NAN, NAN, NAN, 3, 1],
    ]
)


def random_ratings(seed: int, raters: int = 6, items: int = 80, missing: float = 0.25, levels: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, levels + 1, items)
    data = np.clip(truth + rng.integers(-1, 2, (raters, items)), 1, levels).astype(float)
    data[rng.random(data.shape) < missing] = np.nan
    return data


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_krippendorff_alpha_equals_package_with_missing_data(level: str, seed: int) -> None:
    data = random_ratings(seed)
    assert krippendorff_alpha(data, level) == pytest.approx(
        krippendorff.alpha(data, level_of_measurement=level), abs=1e-12
    )


def test_krippendorff_alpha_value_domain_and_published_example() -> None:
    assert krippendorff_alpha(GWET_4RATERS, "nominal") == pytest.approx(0.743, abs=5e-4)
    # Krippendorff's ordinal example of the same table: 0.815 (krippendorff package docs).
    assert krippendorff_alpha(GWET_4RATERS, "ordinal") == pytest.approx(0.815, abs=5e-4)
    data = random_ratings(3, levels=4)
    domain = [1, 2, 3, 4, 5, 6]  # unused values change the ordinal metric only through zero marginals
    expected = krippendorff.alpha(data, level_of_measurement="ordinal", value_domain=domain)
    assert krippendorff_alpha(data, "ordinal", value_domain=domain) == pytest.approx(expected, abs=1e-12)


def test_krippendorff_alpha_non_integer_values_take_the_generic_path() -> None:
    data = random_ratings(4) / 3.0
    expected = krippendorff.alpha(data, level_of_measurement="interval")
    assert krippendorff_alpha(data, "interval") == pytest.approx(expected, abs=1e-12)


def test_krippendorff_alpha_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(GWET_4RATERS, "cardinal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D"):
        krippendorff_alpha([1, 2, 3], "nominal")
    with pytest.raises(ValueError, match="two distinct"):
        krippendorff_alpha([[1, 1], [1, 1]], "nominal")
    with pytest.raises(ValueError, match="two or more raters"):
        krippendorff_alpha([[1, NAN], [NAN, 2]], "nominal")
    with pytest.raises(ValueError, match="outside"):
        krippendorff_alpha([[1, 2], [1, 3]], "nominal", value_domain=[1, 2])


@pytest.mark.parametrize("seed", [0, 1])
def test_fleiss_kappa_equals_statsmodels_on_complete_data(seed: int) -> None:
    data = random_ratings(seed, missing=0.0)
    table, _ = aggregate_raters(data.T.astype(int))
    assert fleiss_kappa(data) == pytest.approx(sm_fleiss_kappa(table), abs=1e-12)


def test_fleiss_kappa_missing_rule_matches_gwets_published_value() -> None:
    assert fleiss_kappa(GWET_4RATERS) == pytest.approx(0.761, abs=5e-4)
    assert fleiss_kappa(GWET_5OBSERVERS) == pytest.approx(0.458, abs=5e-4)  # irrCAC's published test value


def test_gwet_ac1_and_ac2_published_examples() -> None:
    categories = [1, 2, 3, 4, 5]
    assert gwet_ac1(GWET_4RATERS, categories) == pytest.approx(0.775, abs=5e-4)
    assert gwet_ac1(GWET_4RATERS, categories, weights="linear") == pytest.approx(0.859, abs=5e-4)
    assert gwet_ac1(GWET_4RATERS, categories, weights="quadratic") == pytest.approx(0.914, abs=5e-4)
    assert gwet_ac1(GWET_5OBSERVERS, [0, 1, 2, 3]) == pytest.approx(0.497, abs=5e-4)
    identity = gwet_ac1(GWET_4RATERS, categories, weights=np.eye(5))
    assert identity == pytest.approx(gwet_ac1(GWET_4RATERS, categories), abs=1e-12)
    with pytest.raises(ValueError, match="5 x 5"):
        gwet_ac1(GWET_4RATERS, categories, weights=np.eye(4))


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_gwet_matches_irrcac_on_random_data_with_missing_cells(weights: str | None) -> None:
    raw = pytest.importorskip("irrCAC.raw", reason="irrCAC needs pandas<3; install it with --no-deps to run this")
    data = random_ratings(5)
    categories = [1.0, 2.0, 3.0, 4.0, 5.0]  # explicit: irrCAC infers NaN as a category under pandas 3
    cac = raw.CAC(pd.DataFrame(data.T), weights=weights or "identity", categories=categories, digits=12)
    assert gwet_ac1(data, categories, weights) == pytest.approx(cac.gwet()["est"]["coefficient_value"], abs=1e-9)
    if weights is None:
        assert fleiss_kappa(data) == pytest.approx(cac.fleiss()["est"]["coefficient_value"], abs=1e-9)


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_equals_sklearn(weights: str | None) -> None:
    data = random_ratings(6, raters=2)
    both = ~np.isnan(data).any(axis=0)
    expected = cohen_kappa_score(data[0, both], data[1, both], weights=weights)
    assert cohen_kappa(data[0], data[1], weights=weights) == pytest.approx(expected, abs=1e-12)
    labels = [5, 4, 3, 2, 1, 0]
    expected = cohen_kappa_score(data[0, both], data[1, both], weights=weights, labels=labels)
    assert cohen_kappa(data[0], data[1], weights, labels) == pytest.approx(expected, abs=1e-12)


def test_pairwise_cohen_kappa_equals_sklearn_per_pair() -> None:
    data = random_ratings(7, raters=4)
    matrix = pairwise_cohen_kappa(data, weights="quadratic")
    for i in range(4):
        for j in range(4):
            both = ~np.isnan(data[i]) & ~np.isnan(data[j])
            expected = cohen_kappa_score(data[i, both], data[j, both], weights="quadratic", labels=[1, 2, 3, 4, 5])
            assert matrix[i, j] == pytest.approx(expected, abs=1e-12)


def _pingouin_icc(data: np.ndarray, nan_policy: str = "raise") -> pd.DataFrame:
    long = pd.DataFrame(
        [(item, rater, data[rater, item]) for rater in range(data.shape[0]) for item in range(data.shape[1])],
        columns=["item", "rater", "score"],
    )
    return pingouin.intraclass_corr(long, "item", "rater", "score", nan_policy=nan_policy)


@pytest.mark.parametrize("missing", [0.0, 0.05])
def test_icc_equals_pingouin(missing: float) -> None:
    data = random_ratings(8, raters=5, items=60, missing=missing)
    mine = icc(data)
    reference = _pingouin_icc(data, "omit")
    assert pingouin.__version__ == "0.5.5"  # CI rounding and column names below are those of 0.5.5
    assert mine["Type"].tolist() == reference["Type"].tolist()
    for column in ("ICC", "F", "df1", "df2", "pval"):
        np.testing.assert_allclose(mine[column].to_numpy(float), reference[column].to_numpy(float), rtol=1e-10)
    ci = np.vstack(reference["CI95%"].to_numpy())
    np.testing.assert_allclose(mine[["ci_low", "ci_high"]].to_numpy().round(2), ci, atol=1e-12)  # pingouin rounds
    for form in mine["Type"]:
        assert icc_coefficient(data, form) == pytest.approx(mine.set_index("Type").loc[form, "ICC"], abs=1e-12)


def test_bootstrap_resamples_items_never_raters() -> None:
    data = random_ratings(9, raters=3, items=30)
    shapes: list[tuple[int, ...]] = []

    def statistic(ratings: np.ndarray) -> float:
        shapes.append(ratings.shape)
        return float(np.nanmean(ratings))

    agreement_bootstrap_ci(statistic, data, 20, seed=0)
    assert set(shapes) == {(3, 30)}


def test_bootstrap_vectorised_path_equals_loop_and_is_seeded() -> None:
    data = random_ratings(10, raters=4, items=50)
    fast = functools.partial(krippendorff_alpha, level="ordinal")
    slow = lambda ratings: krippendorff_alpha(ratings, "ordinal")  # noqa: E731  (no item terms: the loop path)
    for method in ("percentile", "bca"):
        a = agreement_bootstrap_ci(fast, data, 200, seed=3, method=method)
        b = agreement_bootstrap_ci(slow, data, 200, seed=3, method=method)
        np.testing.assert_allclose(a.distribution, b.distribution, rtol=1e-10)
        assert (a.low, a.high) == pytest.approx((b.low, b.high), rel=1e-10)
    again = agreement_bootstrap_ci(fast, data, 200, seed=3)
    other = agreement_bootstrap_ci(fast, data, 200, seed=4)
    np.testing.assert_array_equal(again.distribution, agreement_bootstrap_ci(fast, data, 200, seed=3).distribution)
    assert not np.array_equal(again.distribution, other.distribution)


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_bootstrap_matches_scipy_with_the_same_generator(method: str) -> None:
    data = random_ratings(11, raters=4, items=40)
    statistic = functools.partial(gwet_ac1, categories=[1, 2, 3, 4, 5], weights="quadratic")
    mine = agreement_bootstrap_ci(statistic, data, 500, seed=7, method="bca" if method == "BCa" else "percentile")
    reference = stats.bootstrap(
        (np.arange(data.shape[1]),),
        lambda index: statistic(data[:, index.astype(int)]),
        n_resamples=500,
        method=method,
        vectorized=False,
        rng=np.random.default_rng(7),
    )
    np.testing.assert_allclose(mine.distribution, reference.bootstrap_distribution, rtol=1e-10)
    assert mine.low == pytest.approx(reference.confidence_interval.low, rel=1e-9)
    assert mine.high == pytest.approx(reference.confidence_interval.high, rel=1e-9)


def test_agreement_bootstrap_cis_records_undefined_statistics() -> None:
    data = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    results = agreement_bootstrap_cis(
        {"alpha": (functools.partial(krippendorff_alpha, level="nominal"), data)},
        ItemResampler(3, 10, seed=0),
        on_error="record",
    )
    assert np.isnan(results["alpha"].estimate) and "distinct" in results["alpha"].note


def test_agreement_table_on_synthetic_frame() -> None:
    frame = synthetic_ratings(n_raters=5, n_items=60, seed=2)
    table = agreement_table(frame, n_resamples=100, seed=0)
    assert set(table["question"]) == {
        "realism_generated",
        "realism_real",
        "accuracy_generated",
        "accuracy_real",
        "which_generated",
    }
    values = table.dropna(subset=["estimate"])
    assert ((values["ci_low"] <= values["estimate"] + 1e-12) & (values["estimate"] <= values["ci_high"] + 1e-12)).all()
    normal = frame[frame["item_kind"] == "normal"]
    row = table[(table["question"] == "realism_generated") & (table["statistic"] == "krippendorff_alpha_ordinal")]
    expected = krippendorff.alpha(ratings_matrix(normal, "realism_generated").values, level_of_measurement="ordinal")
    assert row["estimate"].item() == pytest.approx(expected, abs=1e-12)
    by_model = agreement_table(frame, by="model", n_resamples=50, seed=0)
    assert sorted(by_model["group"].unique()) == sorted(frame["model"].unique())
    pd.testing.assert_frame_equal(table, agreement_table(frame, n_resamples=100, seed=0))


def test_intra_rater_reliability_pairs_repeats_with_originals() -> None:
    frame = synthetic_ratings(n_raters=4, n_items=80, seed=3, repeat_fraction=0.1)
    table = intra_rater_reliability(frame)
    pooled = table[(table["rater"] == "all") & (table["question"] == "realism_generated")]
    repeats = frame[frame["item_kind"] == "repeat"]
    merged = repeats.merge(frame, left_on=["rater", "repeat_of"], right_on=["rater", "item"], suffixes=("", "_first"))
    pairs = merged[["realism_generated_first", "realism_generated"]].dropna().to_numpy(dtype=float).T
    assert pooled["n_pairs"].item() == pairs.shape[1]
    expected = krippendorff.alpha(pairs, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5])
    assert pooled["krippendorff_alpha"].item() == pytest.approx(expected, abs=1e-12)


def test_unbalanced_icc_equals_pingouin_on_a_balanced_subset_and_anova_on_sparse_data() -> None:
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    from analysis.agreement import icc_unbalanced

    data = random_ratings(8, raters=5, items=60, missing=0.0)
    mine = icc_unbalanced(data).set_index("Type")
    reference = _pingouin_icc(data).set_index("Type")
    for form in ("ICC1", "ICC1k"):
        assert mine.loc[form, "ICC"] == pytest.approx(reference.loc[form, "ICC"], rel=1e-10)
        assert mine.loc[form, "F"] == pytest.approx(reference.loc[form, "F"], rel=1e-10)
        ci = (round(mine.loc[form, "ci_low"], 2), round(mine.loc[form, "ci_high"], 2))
        assert ci == pytest.approx(tuple(reference.loc[form, "CI95%"]), abs=1e-12)  # pingouin rounds to 2 places
    # K-of-N: each item rated by 2 of 8 raters; icc() has no complete item, this uses every rating
    rng = np.random.default_rng(3)
    sparse = np.full((8, 120), np.nan)
    truth = rng.normal(3, 1, 120)
    for item in range(120):
        raters = rng.choice(8, 2 + item % 2, replace=False)
        sparse[raters, item] = np.round(truth[item] + rng.normal(0, 0.7, len(raters)))
    with pytest.raises(ValueError, match="complete items"):
        icc(sparse)
    table = icc_unbalanced(sparse).set_index("Type")
    rater_idx, item_idx = np.nonzero(~np.isnan(sparse))
    long = pd.DataFrame({"y": sparse[rater_idx, item_idx], "item": item_idx.astype(str)})
    anova = sm.stats.anova_lm(ols("y ~ C(item)", data=long).fit())
    msb, msw = anova["mean_sq"].iloc[0], anova["mean_sq"].iloc[1]
    assert table.loc["ICC1", "F"] == pytest.approx(msb / msw, rel=1e-10)
    assert 0.5 < table.loc["ICC1", "ci_low"] < table.loc["ICC1", "ICC"] < table.loc["ICC1", "ci_high"] < 0.9


def test_raters_plus_items_interval_adds_the_rater_jackknife_from_the_reference_alpha() -> None:
    from analysis.agreement import _rater_jackknife_variance

    data = random_ratings(5, raters=6, items=80, missing=0.1)
    mine = _rater_jackknife_variance(functools.partial(krippendorff_alpha, level="ordinal"), data)
    theta = np.array(
        [
            krippendorff.alpha(reliability_data=np.delete(data, r, axis=0), level_of_measurement="ordinal")
            for r in range(6)
        ]
    )
    assert mine == pytest.approx(5 / 6 * ((theta - theta.mean()) ** 2).sum(), rel=1e-9)
    frame = synthetic_ratings(n_raters=6, n_items=90, seed=1)
    items = agreement_table(frame, questions=["realism_generated"], n_resamples=200)
    both = agreement_table(frame, questions=["realism_generated"], n_resamples=200, resample="raters+items")
    assert set(items["ci_resample"]) == {"items"} and set(both["ci_resample"]) == {"raters+items"}
    assert ((both["ci_high"] - both["ci_low"]) > (items["ci_high"] - items["ci_low"])).all()
