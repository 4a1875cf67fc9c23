"""Tests of analysis.mrmc: the published Van Dyke (1993) OR/Hillis results, independent O(n^2) and
brute-force re-computations of the covariances, split-plot designs and the MedSynth ratings adapter."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.mrmc import (
    ORResult,
    empirical_auc,
    mrmc_from_ratings,
    mrmc_report_section,
    or_analysis,
    placement_values,
    roc_curve_points,
    roc_curves,
    roc_data_from_ratings,
)

# ---------------------------------------------------------------------------------------------------
# Van Dyke (1993): published MRMCaov / OR-DBM MRMC 2.5 output (shared/data/mrmc/EXPECTED.md)
# ---------------------------------------------------------------------------------------------------


def assert_printed(actual: float, printed: str, what: str) -> None:
    """``actual`` rounds to the printed value: within half a unit of its last printed digit."""
    tol = 0.5 * 10.0 ** Decimal(printed).as_tuple().exponent
    assert abs(actual - float(printed)) <= tol * (1 + 1e-9), f"{what}: {actual!r} vs printed {printed}"


@pytest.fixture(scope="module")
def van_dyke(shared_data: Path) -> pd.DataFrame:
    data = pd.read_csv(shared_data / "mrmc" / "VanDyke.csv")
    assert data.shape == (1140, 5)
    return data


def vd_analysis(data: pd.DataFrame, cov_method: str = "jackknife", case: str = "case") -> ORResult:
    return or_analysis(data, test="treatment", score="rating", case=case, cov_method=cov_method)


def summary(res: ORResult) -> dict[str, float]:
    """Flatten the quantities MRMCaov and OR-DBM print, keyed like EXPECTED below."""
    vc = res.variance_components()["estimate"]
    corr = res.variance_components()["correlation"]
    out = {
        "ms_t": res.ms_t,
        "ms_r": res.ms_r,
        "ms_tr": res.ms_tr,
        "var_r": vc["reader"],
        "var_tr": vc["test:reader"],
        "var_error": res.var_error,
        "cov1": res.cov1,
        "cov2": res.cov2,
        "cov3": res.cov3,
        "corr1": corr["cov1"],
        "corr2": corr["cov2"],
        "corr3": corr["cov3"],
    }
    for name, t in (("rrrc", res.rrrc), ("frrc", res.frrc), ("rrfc", res.rrfc)):
        d = t.differences.iloc[0]
        out |= {
            f"{name}.stat": t.statistic,
            f"{name}.df1": t.df1,
            f"{name}.df2": t.df2,
            f"{name}.p": t.p_value,
            f"{name}.den": t.denominator,
            f"{name}.diff": d["estimate"],
            f"{name}.se": d["std_err"],
            f"{name}.t": d["statistic"],
            f"{name}.diff_p": d["p_value"],
            f"{name}.lo": d["ci_lower"],
            f"{name}.hi": d["ci_upper"],
        }
        for i, row in t.test_cis.iterrows():
            out |= {f"{name}.{k}[{i + 1}]": row[k] for k in t.test_cis.columns if k != "test"}
    return out


# Every number below is printed in EXPECTED.md (sources [A], [B], [C]); keys follow summary().
COMMON = {  # the same under every covariance method
    "ms_t": "0.004796171",
    "ms_r": "0.00383620",
    "ms_tr": "0.0005510306",
    "rrfc.stat": "8.704",
    "rrfc.df1": "1",
    "rrfc.df2": "4",
    "rrfc.p": "0.04195875",
    "rrfc.se": "0.01484629",
    "rrfc.t": "-2.950254",
    "rrfc.lo": "-0.08502022",
    "rrfc.hi": "-0.00258042",
    "rrfc.ms_r[1]": "0.003082629",
    "rrfc.ms_r[2]": "0.001304602",
    "rrfc.std_err[1]": "0.02482994",
    "rrfc.std_err[2]": "0.01615303",
    "rrfc.df[1]": "4",
    "rrfc.ci_lower[1]": "0.8280981",
    "rrfc.ci_upper[1]": "0.9659760",
    "rrfc.ci_lower[2]": "0.8959894",
    "rrfc.ci_upper[2]": "0.9856854",
    "rrrc.diff": "-0.04380032",
    "rrrc.df1": "1",
    "rrrc.estimate[1]": "0.89703704",
    "rrrc.estimate[2]": "0.94083736",
}
EXPECTED: dict[str, dict[str, str]] = {
    "jackknife": {
        "var_error": "0.0008022883",
        "cov1": "0.0003466137",
        "cov2": "0.0003440748",
        "cov3": "0.0002390284",
        "corr1": "0.4320314",
        "corr2": "0.4288668",
        "corr3": "0.2979333",
        "var_r": "0.0015349993",
        "var_tr": "0.0002004025",
        "rrrc.den": "0.001076263",
        "rrrc.stat": "4.456319",
        "rrrc.df2": "15.25967",
        "rrrc.p": "0.05166569",
        "rrrc.se": "0.02074862",
        "rrrc.t": "-2.110999",
        "rrrc.diff_p": "0.05166569",
        "rrrc.lo": "-0.0879594986",
        "rrrc.hi": "0.0003588544",
        "rrrc.cov2[1]": "0.0004839618",
        "rrrc.cov2[2]": "0.0002041879",
        "rrrc.std_err[1]": "0.03317360",
        "rrrc.std_err[2]": "0.02156637",
        "rrrc.df[1]": "12.74465",
        "rrrc.df[2]": "12.71019",
        "rrrc.ci_lower[1]": "0.82522360",  # [B], 8 dp
        "rrrc.ci_upper[1]": "0.96885048",
        "rrrc.ci_lower[2]": "0.89413783",
        "rrrc.ci_upper[2]": "0.98753689",
        "frrc.stat": "5.475953",
        "frrc.df1": "1",
        "frrc.p": "0.01927984",
        "frrc.den": "0.0008758604",
        "frrc.se": "0.01871748",
        "frrc.t": "-2.340075",
        "frrc.lo": "-0.08048591",
        "frrc.hi": "-0.00711473",
        "frrc.var_error[1]": "0.0010141028",
        "frrc.var_error[2]": "0.0005904738",
        "frrc.std_err[1]": "0.02428971",
        "frrc.std_err[2]": "0.01677632",
        "frrc.ci_lower[1]": "0.8494301",
        "frrc.ci_upper[1]": "0.9446440",
        "frrc.ci_lower[2]": "0.9079564",
        "frrc.ci_upper[2]": "0.9737183",
    },
    "delong": {
        "var_error": "0.0007921325",
        "cov1": "0.0003420090",
        "cov2": "0.0003395265",
        "cov3": "0.0002358497",
        "corr1": "0.4317573",
        "corr2": "0.4286234",
        "corr3": "0.2977402",
        "var_r": "0.0015364254",
        "var_tr": "0.0002045840",
        "rrrc.den": "0.001069415",
        "rrrc.stat": "4.484854",
        "rrrc.df2": "15.06611",
        "rrrc.p": "0.05123303",
        "rrrc.se": "0.0206825",
        "rrrc.t": "-2.117747",
        "rrrc.lo": "-0.0878671960",
        "rrrc.hi": "0.0002665519",
        "rrrc.cov2[1]": "0.0004775239",
        "rrrc.cov2[2]": "0.0002015292",
        "rrrc.std_err[1]": "0.03307642",
        "rrrc.std_err[2]": "0.02150464",
        "rrrc.df[1]": "12.59597",
        "rrrc.df[2]": "12.56530",
        "rrrc.ci_lower[1]": "0.8253461",
        "rrrc.ci_upper[1]": "0.9687280",
        "rrrc.ci_lower[2]": "0.8942155",
        "rrrc.ci_upper[2]": "0.9874592",
    },
    "unbiased": {
        "var_error": "0.0007883925",
        "cov1": "0.0003416706",
        "cov2": "0.0003390650",
        "cov3": "0.0002356148",
        "corr1": "0.4333762",
        "corr2": "0.4300713",
        "corr3": "0.2988547",
        "var_r": "0.0015365290",
        "var_tr": "0.0002077588",
        "rrrc.den": "0.001068281",
        "rrrc.stat": "4.489614",
        "rrrc.df2": "15.03418",
        "rrrc.p": "0.0511618",
        "rrrc.se": "0.02067154",
        "rrrc.t": "-2.118871",
        "rrrc.lo": "-0.0878519409",
        "rrrc.hi": "0.0002512968",
        "rrrc.cov2[1]": "0.0004771788",
        "rrrc.cov2[2]": "0.0002009512",
        "rrrc.std_err[1]": "0.0330712",
        "rrrc.std_err[2]": "0.0214912",
        "rrrc.df[1]": "12.58802",
        "rrrc.df[2]": "12.53391",
        "rrrc.ci_lower[1]": "0.8253526",
        "rrrc.ci_upper[1]": "0.9687214",
        "rrrc.ci_lower[2]": "0.8942323",
        "rrrc.ci_upper[2]": "0.9874424",
    },
    # cases nested within readers / within tests ([C], jackknife)
    "case2": {
        "var_r": "1.293517e-03",
        "var_tr": "9.213005e-05",
        "var_error": "8.079682e-04",
        "cov1": "3.490676e-04",
        "cov2": "0",
        "cov3": "0",
        "corr1": "0.4320314",
        "rrrc.den": "0.0005510306",
        "rrrc.stat": "8.704",
        "rrrc.df2": "4",
        "rrrc.p": "0.04195875",
        "rrrc.se": "0.01484629",
        "rrrc.lo": "-0.08502022",
        "rrrc.hi": "-0.00258042",
        "rrrc.std_err[1]": "0.02482994",
        "rrrc.std_err[2]": "0.01615303",
        "rrrc.df[1]": "4",
        "rrrc.ci_lower[1]": "0.8280981",
        "rrrc.ci_upper[1]": "0.9659760",
        "rrrc.ci_lower[2]": "0.8959894",
        "rrrc.ci_upper[2]": "0.9856854",
    },
    "case3": {
        "var_r": "1.642585e-03",
        "var_tr": "9.078969e-05",
        "var_error": "8.058382e-04",
        "cov1": "0",
        "cov2": "3.455973e-04",
        "cov3": "0",
        "corr2": "0.4288668",
        "rrrc.den": "0.002279017",
        "rrrc.stat": "2.104491",
        "rrrc.df2": "68.42325",
        "rrrc.p": "0.1514363",
        "rrrc.se": "0.03019283",
        "rrrc.t": "-1.450686",
        "rrrc.lo": "-0.10404242",
        "rrrc.hi": "0.01644178",
        "rrrc.cov2[1]": "0.0004861032",
        "rrrc.cov2[2]": "0.0002050913",
        "rrrc.std_err[1]": "0.03320586",
        "rrrc.std_err[2]": "0.02158730",
        "rrrc.df[1]": "12.79430",
        "rrrc.df[2]": "12.75962",
        "rrrc.ci_lower[1]": "0.8251827",
        "rrrc.ci_upper[1]": "0.9688914",
        "rrrc.ci_lower[2]": "0.8941114",
        "rrrc.ci_upper[2]": "0.9875634",
    },
}
AUC_TRT = {
    1: ["0.91964573", "0.85877617", "0.90386473", "0.97310789", "0.82979066"],
    2: ["0.94782609", "0.90531401", "0.92173913", "0.99935588", "0.92995169"],
}


def _check(res: ORResult, expected: dict[str, str]) -> None:
    got = summary(res)
    for key, printed in expected.items():
        assert_printed(float(got[key]), printed, key)


@pytest.mark.parametrize("cov_method", ["jackknife", "delong", "unbiased"])
def test_van_dyke_factorial(van_dyke: pd.DataFrame, cov_method: str) -> None:
    res = vd_analysis(van_dyke, cov_method)
    assert res.design == "factorial" and res.tests == (1, 2) and res.readers == (1, 2, 3, 4, 5)
    for trt, printed in AUC_TRT.items():
        aucs = res.auc[res.auc["test"] == trt].sort_values("reader")["auc"].to_numpy()
        for reader, (a, p) in enumerate(zip(aucs, printed, strict=True), start=1):
            assert_printed(a, p, f"AUC reader {reader} treatment {trt}")
    assert set(res.auc["n_pos"]) == {45} and set(res.auc["n_neg"]) == {69}
    _check(res, COMMON | EXPECTED[cov_method])


def test_van_dyke_fixed_readers_per_reader(van_dyke: pd.DataFrame) -> None:
    """FRRC reader-specific differences and single reader CIs ([B] and [C])."""
    res = vd_analysis(van_dyke)
    rd = res.frrc.reader_differences.sort_values("reader")
    printed = {
        "estimate": ["-0.02818035", "-0.04653784", "-0.01787440", "-0.02624799", "-0.10016103"],
        "std_err": ["0.02551213", "0.02630183", "0.03120965", "0.01729129", "0.04405746"],
        "ci_lower": ["-0.078183215", "-0.098088476", "-0.079044180", "-0.060138290", "-0.186512066"],
        "ci_upper": ["0.021822507", "0.005012792", "0.043295388", "0.007642316", "-0.013809995"],
        "statistic": ["-1.1045864", "-1.7693768", "-0.5727202", "-1.5179891", "-2.2734182"],
        "p_value": ["0.26933885", "0.07683102", "0.56683414", "0.12901715", "0.02300099"],
        "var_error": ["0.00069890", "0.00110605", "0.00084234", "0.00015058", "0.00121357"],
        "cov1": ["0.00037347", "0.00076016", "0.00035532", "0.00000108", "0.00024304"],
    }
    for col, values in printed.items():
        for got, p in zip(rd[col], values, strict=True):
            assert_printed(got, p, f"reader difference {col}")
    rc = res.frrc.reader_cis
    single = {  # rows: treatment 1 readers 1-5, then treatment 2
        "std_err": [
            *("0.0301255164", "0.0363753335", "0.0282594118", "0.0173388332", "0.0417201720"),
            *("0.0221416887", "0.0298151099", "0.0297673065", "0.0007213348", "0.0262023046"),
        ],
        "ci_lower": [
            *("0.8606008", "0.7874818", "0.8484773", "0.9391244", "0.7480206"),
            *("0.9044292", "0.8468775", "0.8633963", "0.9979421", "0.8785961"),
        ],
        "ci_upper": [
            *("0.9786907", "0.9300705", "0.9592522", "1.0000000", "0.9115607"),
            *("0.9912230", "0.9637506", "0.9800820", "1.0000000", "0.9813073"),
        ],
    }
    for col, values in single.items():
        for got, p in zip(rc.sort_values(["test", "reader"])[col], values, strict=True):
            assert_printed(got, p, f"single reader {col}")


@pytest.mark.parametrize("design", ["case2", "case3"])
def test_van_dyke_nested_designs(van_dyke: pd.DataFrame, design: str) -> None:
    """Cases nested within readers (case2) or within tests (case3), as in MRMCaov's JSS paper."""
    data = van_dyke.copy()
    outer = "reader" if design == "case2" else "treatment"
    data[design] = data[outer].astype(str) + "." + data["case"].astype(str)
    res = vd_analysis(data, case=design)
    assert res.design == ("cases nested within readers" if design == "case2" else "cases nested within tests")
    _check(res, COMMON | EXPECTED[design])


def test_van_dyke_pooled_auc_and_reference_auc(van_dyke: pd.DataFrame) -> None:
    pos = van_dyke.loc[van_dyke["truth"] == 1, "rating"]
    neg = van_dyke.loc[van_dyke["truth"] == 0, "rating"]
    assert_printed(empirical_auc(pos, neg), "0.9229791", "pooled AUC")
    metrics = pytest.importorskip("sklearn.metrics")
    assert empirical_auc(pos, neg) == pytest.approx(metrics.roc_auc_score(van_dyke["truth"], van_dyke["rating"]))


# ---------------------------------------------------------------------------------------------------
# AUC, placement values, ROC points
# ---------------------------------------------------------------------------------------------------


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The O(n^2) kernel matrix: 1 if pos > neg, 1/2 if tied, 0 otherwise."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def test_auc_placement_values_and_roc_points_match_references() -> None:
    rng = np.random.default_rng(0)
    metrics = pytest.importorskip("sklearn.metrics")
    for _ in range(20):
        pos = rng.integers(1, 6, rng.integers(1, 40)).astype(float) + rng.integers(0, 2)
        neg = rng.integers(1, 6, rng.integers(1, 40)).astype(float)
        psi = _psi(pos, neg)
        v10, v01 = placement_values(pos, neg)
        np.testing.assert_allclose(v10, psi.mean(axis=1))
        np.testing.assert_allclose(v01, psi.mean(axis=0))
        auc = empirical_auc(pos, neg)
        assert auc == pytest.approx(psi.mean())
        truth = np.r_[np.ones(pos.size), np.zeros(neg.size)]
        scores = np.r_[pos, neg]
        assert auc == pytest.approx(metrics.roc_auc_score(truth, scores))
        pts = roc_curve_points(pos, neg)
        assert np.trapezoid(pts["tpr"], pts["fpr"]) == pytest.approx(auc)
        fpr, tpr, _ = metrics.roc_curve(truth, scores, drop_intermediate=False)
        np.testing.assert_allclose(pts["fpr"], fpr)
        np.testing.assert_allclose(pts["tpr"], tpr)
    with pytest.raises(ValueError, match="scores_neg is empty"):
        empirical_auc([1.0], [])
    with pytest.raises(ValueError, match="NaN"):
        empirical_auc([1.0, np.nan], [0.0])


def test_2afc_proportion_correct_equals_auc() -> None:
    """Each pair gives its chosen image +1 and the other -1: the empirical AUC is the proportion correct."""
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 50):
        correct = rng.random(n) < 0.7
        gen = np.where(correct, 1.0, -1.0)  # the generated image is the chosen one iff correct
        assert empirical_auc(gen, -gen) == pytest.approx(correct.mean())
    # worked example: 3 of 4 correct -> AUC 0.75
    assert empirical_auc([1, 1, 1, -1], [-1, -1, -1, 1]) == 0.75


# ---------------------------------------------------------------------------------------------------
# Covariances against independent straightforward implementations
# ---------------------------------------------------------------------------------------------------


def random_roc_data(rng: np.random.Generator, n_readers: int, n_tests: int, n_pos: int, n_neg: int) -> pd.DataFrame:
    """Correlated 5-point ratings (many ties) for a factorial design."""
    case_effect = rng.normal(size=n_pos + n_neg) + np.r_[np.full(n_pos, 1.2), np.zeros(n_neg)]
    rows = []
    for r, t in itertools.product(range(n_readers), range(n_tests)):
        latent = case_effect + 0.3 * t + rng.normal(scale=0.8, size=case_effect.size)
        rating = np.digitize(latent, [-0.5, 0.3, 1.0, 1.8]) + 1
        for k in range(case_effect.size):
            rows.append((f"r{r}", f"t{t}", f"c{k:03d}", int(k < n_pos), float(rating[k])))
    return pd.DataFrame(rows, columns=["reader", "test", "case", "truth", "score"])


def _cells(data: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """(test, reader) cells in the order of ORResult.covariance."""
    return [(key, cell) for key, cell in data.groupby(["test", "reader"], sort=True)]


def _cell_arrays(data: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per cell: positive case ids, their scores, negative case ids, their scores."""
    out = []
    for _, cell in _cells(data):
        pos, neg = cell[cell["truth"] == 1], cell[cell["truth"] == 0]
        out.append((pos["case"].to_numpy(), pos["score"].to_numpy(), neg["case"].to_numpy(), neg["score"].to_numpy()))
    return out


def naive_delong(data: pd.DataFrame) -> np.ndarray:
    """DeLong et al. (1988) from explicit kernel matrices, generalised to partly shared cases."""
    comps = []
    for pos_ids, pos, neg_ids, neg in _cell_arrays(data):
        psi = _psi(pos, neg)
        auc = psi.mean()
        comps.append(((pos_ids, psi.mean(axis=1) - auc), (neg_ids, psi.mean(axis=0) - auc)))
    cov = np.zeros((len(comps), len(comps)))
    for a, b in itertools.product(range(len(comps)), repeat=2):
        for part in (0, 1):
            (ids_a, xa), (ids_b, xb) = comps[a][part], comps[b][part]
            shared, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
            if len(shared) == 0:
                continue
            s = sum(xa[i] * xb[j] for i, j in zip(ia, ib, strict=True)) / max(len(shared) - 1, 1)
            cov[a, b] += s * len(shared) / (len(xa) * len(xb))
    return cov


def brute_force_jackknife(data: pd.DataFrame) -> np.ndarray:
    """Leave each case out, recompute every cell AUC from scratch (MRMCaov's algorithm)."""
    cases = np.unique(data["case"])
    cells = _cell_arrays(data)
    pseudo = np.array(
        [[empirical_auc(pos[pos_ids != c], neg[neg_ids != c]) for pos_ids, pos, neg_ids, neg in cells] for c in cases]
    )
    dev = pseudo - pseudo.mean(axis=0)
    return (len(cases) - 1) / len(cases) * dev.T @ dev


def naive_unbiased(data: pd.DataFrame) -> np.ndarray:
    """Gallas et al. (2007) unbiased covariance, one cell pair at a time with explicit kernel matrices."""
    cells = [(p_ids, n_ids, _psi(pos, neg)) for p_ids, pos, n_ids, neg in _cell_arrays(data)]
    cov = np.zeros((len(cells), len(cells)))
    for a, b in itertools.product(range(len(cells)), repeat=2):
        (pa, na, ka), (pb, nb, kb) = cells[a], cells[b]
        sp, pa_i, pb_i = np.intersect1d(pa, pb, return_indices=True)
        sn, na_i, nb_i = np.intersect1d(na, nb, return_indices=True)
        nxny = ka.size * kb.size
        delta = nxny / (
            nxny - ka.shape[0] * len(sn) * kb.shape[0] - ka.shape[1] * len(sp) * kb.shape[1] + len(sp) * len(sn)
        )
        same_pos = (ka.sum(axis=1)[pa_i] * kb.sum(axis=1)[pb_i]).sum()
        same_neg = (ka.sum(axis=0)[na_i] * kb.sum(axis=0)[nb_i]).sum()
        same_both = (ka[np.ix_(pa_i, na_i)] * kb[np.ix_(pb_i, nb_i)]).sum()
        cov[a, b] = ((1 - delta) * ka.sum() * kb.sum() + delta * (same_pos + same_neg - same_both)) / nxny
    return cov


def split_plot(data: pd.DataFrame, n_blocks: int) -> pd.DataFrame:
    """Readers in blocks; each block reads its own share of the cases (all tests)."""
    readers = sorted(data["reader"].unique())
    cases = sorted(data["case"].unique())
    block_of_reader = {r: i % n_blocks for i, r in enumerate(readers)}
    block_of_case = {c: i % n_blocks for i, c in enumerate(cases)}
    keep = data["reader"].map(block_of_reader) == data["case"].map(block_of_case)
    return data[keep].reset_index(drop=True)


@pytest.mark.parametrize("design", ["factorial", "split-plot", "ragged"])
def test_covariances_match_straightforward_implementations(design: str) -> None:
    rng = np.random.default_rng({"factorial": 2, "split-plot": 3, "ragged": 4}[design])
    data = random_roc_data(rng, n_readers=4, n_tests=3, n_pos=14, n_neg=17)
    if design == "split-plot":
        data = split_plot(data, 2)
    elif design == "ragged":  # every reader misses a random 20% of the readings
        data = data[rng.random(len(data)) > 0.2].reset_index(drop=True)
    for method, reference in (
        ("delong", naive_delong),
        ("jackknife", brute_force_jackknife),
        ("unbiased", naive_unbiased),
    ):
        res = or_analysis(data, cov_method=method)
        ref = reference(data)
        if method == "jackknife":  # cells that share no case are independent: exact zeros
            read = pd.crosstab([data["test"], data["reader"]], data["case"]).to_numpy() > 0
            ref = np.where(read.astype(float) @ read.T > 0, ref, 0.0)
        np.testing.assert_allclose(res.covariance.to_numpy(), ref, rtol=1e-10, atol=1e-15, err_msg=method)
    # per-reader AUCs are over what each reader read
    for (t, r), cell in _cells(data):
        got = res.auc.set_index(["test", "reader"]).loc[(t, r), "auc"]
        assert got == pytest.approx(
            empirical_auc(cell.loc[cell.truth == 1, "score"], cell.loc[cell.truth == 0, "score"])
        )


def test_delong_variance_matches_classic_formula_on_random_data() -> None:
    """Balanced data: DeLong's S10/m + S01/n with sample covariances (np.cov) of the placement values."""
    rng = np.random.default_rng(5)
    data = random_roc_data(rng, n_readers=3, n_tests=2, n_pos=25, n_neg=31)
    res = or_analysis(data, cov_method="delong")
    v10, v01 = [], []
    for _, cell in _cells(data):
        psi = _psi(cell.loc[cell.truth == 1, "score"].to_numpy(), cell.loc[cell.truth == 0, "score"].to_numpy())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    expected = np.cov(np.array(v10)) / 25 + np.cov(np.array(v01)) / 31
    np.testing.assert_allclose(res.covariance.to_numpy(), expected, rtol=1e-12)


def test_split_plot_design() -> None:
    rng = np.random.default_rng(6)
    full = random_roc_data(rng, n_readers=6, n_tests=2, n_pos=30, n_neg=30)
    data = split_plot(full, 2)
    res = or_analysis(data, cov_method="delong")
    assert res.design == "incomplete (split-plot or partially paired)"
    cov = res.covariance
    blocks = {r: int(r[1:]) % 2 for r in res.readers}
    for (t1, r1), (t2, r2) in itertools.product(cov.index, repeat=2):
        if blocks[r1] != blocks[r2]:
            assert cov.loc[(t1, r1), (t2, r2)] == 0.0
    # DeLong and unbiased use only the cases two cells share: a block analysed alone gives the same block
    for method in ("delong", "unbiased"):
        res = or_analysis(data, cov_method=method)
        block0 = data[data["reader"].map(blocks) == 0]
        alone = or_analysis(block0, cov_method=method).covariance
        np.testing.assert_allclose(res.covariance.loc[alone.index, alone.columns].to_numpy(), alone.to_numpy())
    # readers are averaged over all blocks: the test means use every reader
    assert res.test_means.to_numpy() == pytest.approx(res.auc_table().mean(axis=0).to_numpy())
    for t in (res.rrrc, res.frrc, res.rrfc):
        assert np.isfinite(t.statistic) and 0 <= t.p_value <= 1


def test_incomplete_reader_by_test_design_is_named_or_dropped() -> None:
    rng = np.random.default_rng(7)
    data = random_roc_data(rng, n_readers=4, n_tests=2, n_pos=10, n_neg=10)
    data = data[~((data["reader"] == "r2") & (data["test"] == "t1"))]
    with pytest.raises(ValueError, match=r"reader 'r2' / test 't1': 0 positive, 0 negative"):
        or_analysis(data)
    res = or_analysis(data, drop_incomplete_readers=True)
    assert res.dropped_readers == ("r2",) and res.readers == ("r0", "r1", "r3")
    kept = data[data["reader"] != "r2"]
    np.testing.assert_allclose(or_analysis(kept).covariance, res.covariance)


def test_input_validation() -> None:
    rng = np.random.default_rng(8)
    data = random_roc_data(rng, n_readers=2, n_tests=2, n_pos=5, n_neg=5)
    with pytest.raises(ValueError, match="cov_method"):
        or_analysis(data, cov_method="bootstrap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than once"):
        or_analysis(pd.concat([data, data.iloc[:1]]))
    bad = data.copy()
    bad.loc[(bad["case"] == "c000") & (bad["reader"] == "r1"), "truth"] = 0
    with pytest.raises(ValueError, match="both truth 0 and 1"):
        or_analysis(bad)
    with pytest.raises(ValueError, match="at least 2 readers"):
        or_analysis(data[data["reader"] == "r0"])
    with pytest.raises(ValueError, match="lack the column"):
        or_analysis(data.drop(columns="score"))


def test_single_test_study_gives_cis_without_a_test() -> None:
    rng = np.random.default_rng(9)
    data = random_roc_data(rng, n_readers=3, n_tests=1, n_pos=12, n_neg=12)
    res = or_analysis(data)
    assert np.isnan(res.rrrc.statistic) and res.rrrc.differences.empty
    ci = res.rrrc.test_cis.iloc[0]
    assert ci["ci_lower"] < res.test_means.iloc[0] < ci["ci_upper"]


# ---------------------------------------------------------------------------------------------------
# MedSynth ratings adapter
# ---------------------------------------------------------------------------------------------------


def synthetic_ratings(seed: int = 10) -> pd.DataFrame:
    """3 raters x 2 models x 6 cases of normal items, plus attention, repeat and cannot-assess rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for rater in ("ann", "bob", "cy"):
        position = 0
        for model, case in itertools.product(("A", "B"), range(6)):
            side = "left" if rng.random() < 0.5 else "right"
            which = side if rng.random() < 0.7 else ("right" if side == "left" else "left")
            rows.append(
                {
                    "item": f"{model}{case}",
                    "item_kind": "normal",
                    "repeat_of": pd.NA,
                    "case": f"case{case}",
                    "rater": rater,
                    "model": model,
                    "generated_side": side,
                    "real_image": f"R{case}",
                    "generated_image": f"G{model}{case}",
                    "position": position,
                    "realism_generated": int(rng.integers(1, 6)),
                    "realism_real": int(rng.integers(1, 6)),
                    "which_generated": which,
                    "confidence": int(rng.integers(1, 6)),
                    "correct": which == side,
                    "cannot_assess": False,
                }
            )
            position += 1
        # an attention item: a broken generated image, confidently spotted
        rows.append(
            rows[-1] | {"item": "att", "item_kind": "attention", "generated_image": "BROKEN", "position": position}
        )
        # a repeat of the rater's first item, read later with different answers
        first = rows[-13]
        rows.append(
            first
            | {
                "item": "rep",
                "item_kind": "repeat",
                "repeat_of": first["item"],
                "position": position + 1,
                "realism_generated": 6 - first["realism_generated"],
                "which_generated": "left" if first["which_generated"] == "right" else "right",
                "correct": not first["correct"],
            }
        )
    frame = pd.DataFrame(rows).astype({"correct": "boolean"})
    # bob could not assess one pair (no answers), cy skipped the forced choice on another
    frame.loc[(frame.rater == "bob") & (frame.item == "B1"), ["cannot_assess"]] = True
    frame.loc[(frame.rater == "bob") & (frame.item == "B1"), ["realism_generated", "realism_real"]] = pd.NA
    frame.loc[(frame.rater == "cy") & (frame.item == "A2"), ["which_generated", "correct", "confidence"]] = pd.NA
    for col in ("realism_generated", "realism_real", "confidence", "position"):
        frame[col] = frame[col].astype("Int64")
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # row order must not matter


def test_realism_roc_data_from_ratings() -> None:
    ratings = synthetic_ratings()
    roc = roc_data_from_ratings(ratings, "realism")
    assert list(roc.columns) == ["reader", "test", "case", "truth", "score"]
    assert not roc["case"].str.contains("BROKEN").any()  # attention items are excluded
    normal = ratings[(ratings.item_kind == "normal") & ~ratings.cannot_assess]
    assert len(roc) == 2 * len(normal)  # one generated and one real image per first reading
    merged = normal.assign(reader=normal.rater, test=normal.model, case="gen:" + normal.generated_image)
    got = roc.merge(merged, on=["reader", "test", "case"], validate="one_to_one")
    np.testing.assert_array_equal(got["score"], 6 - got["realism_generated"].astype(float))  # first reading
    assert set(got["truth"]) == {1}
    real = roc[roc.truth == 0]
    # real images are shared by the models: the same case is read under both tests
    assert real.groupby(["reader", "case"])["test"].nunique().eq(2).sum() >= 15


def test_2afc_from_ratings_is_proportion_correct() -> None:
    ratings = synthetic_ratings()
    res = mrmc_from_ratings(ratings, score="2afc", cov_method="jackknife")
    used = ratings[(ratings.item_kind == "normal") & ~ratings.cannot_assess & ratings.which_generated.notna()]
    pc = used.groupby(["model", "rater"])["correct"].mean()
    auc = res.auc.set_index(["test", "reader"])["auc"]
    pd.testing.assert_series_equal(
        auc.sort_index(), pc.rename_axis(["test", "reader"]).sort_index().rename("auc").astype(float)
    )
    conf = roc_data_from_ratings(ratings, "2afc_confidence")
    assert set(np.abs(conf["score"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_repeated_real_image_within_a_model_uses_first_reading() -> None:
    """A second pair of model B shows ann the real image R0 again (with another generated image)."""
    ratings = synthetic_ratings()
    original = ratings[(ratings.rater == "ann") & (ratings.item == "B0")]
    first_realism = int(original["realism_real"].iloc[0])
    second = original.assign(item="B0b", generated_image="GB0b", position=99, realism_real=6 - first_realism)
    roc = roc_data_from_ratings(pd.concat([second, ratings], ignore_index=True), "realism")
    r0 = roc[(roc.reader == "ann") & (roc.test == "B") & (roc.case == "real:R0")]
    assert r0["score"].tolist() == [6 - first_realism]  # the first reading, not the one at position 99
    assert ((roc.reader == "ann") & (roc.case == "gen:GB0b")).sum() == 1  # its generated image still counts


def test_report_section() -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    ratings = synthetic_ratings()
    section = mrmc_report_section(ratings, scores=("realism", "2afc"))
    assert set(section["results"]) == {"realism", "2afc"}
    assert isinstance(section["figures"]["realism/roc"], Figure)
    table = section["tables"]["realism/auc_by_test"]
    assert list(table["test"]) == ["A", "B"] and table["ci_lower"].le(table["estimate"]).all()
    assert {"realism/global_tests", "realism/differences", "realism/auc_by_reader"} <= set(section["tables"])
    assert any("excluded 3 attention items, 3 repeated readings" in n for n in section["notes"])
    curves = roc_curves(roc_data_from_ratings(ratings, "realism"))
    assert set(curves["reader"]) == {"ann", "bob", "cy"} and curves["tpr"].between(0, 1).all()
    # a rater who read only model A is dropped from the analysis and named in the notes
    partial = pd.concat([ratings, ratings[(ratings.rater == "ann") & (ratings.model == "A")].assign(rater="dee")])
    section = mrmc_report_section(partial, scores=("realism",), figures=False)
    assert section["results"]["realism"].dropped_readers == ("dee",)
    assert any("dee" in n for n in section["notes"])


# ---------------------------------------------------------------------------------------------------
# Degenerate inputs: the test is undefined and says why, instead of a number made of rounding noise
# ---------------------------------------------------------------------------------------------------


def test_identical_modalities_give_no_f_from_rounding(van_dyke: pd.DataFrame) -> None:
    van_dyke = van_dyke.rename(columns={"treatment": "test", "rating": "score"})
    one = van_dyke[van_dyke["test"] == van_dyke["test"].min()]
    res = or_analysis(pd.concat([one, one.assign(test="copy")]))
    assert res.ms_t == 0.0 and res.ms_tr == 0.0  # were 1.5e-31 and 3e-32: F = 5.0, p = 0.076
    for analysis in (res.rrrc, res.frrc, res.rrfc):
        assert np.isnan(analysis.statistic) and np.isnan(analysis.p_value)
        assert analysis.note == "modalities identical"
    assert (res.global_tests()["note"] == "modalities identical").all()


def test_identical_readers_give_no_astronomical_ddf(van_dyke: pd.DataFrame) -> None:
    van_dyke = van_dyke.rename(columns={"treatment": "test", "rating": "score"})
    first = van_dyke[van_dyke["reader"] == van_dyke["reader"].min()]
    res = or_analysis(pd.concat([first, first.assign(reader="twin")]))
    assert res.ms_tr == 0.0 and res.rrrc.note == "readers identical" and np.isnan(res.rrrc.p_value)
    assert not (np.isfinite(res.rrrc.df2) and res.rrrc.df2 > 1e6)  # was 7e56


def test_all_ratings_tied_and_perfect_separation_are_named(van_dyke: pd.DataFrame) -> None:
    van_dyke = van_dyke.rename(columns={"treatment": "test", "rating": "score"})
    tied = or_analysis(van_dyke.assign(score=3))
    assert tied.rrrc.note == "all ratings tied" and np.isnan(tied.rrrc.statistic)
    separated = van_dyke.assign(score=van_dyke["truth"] * 4 + 1 + (van_dyke["test"] == van_dyke["test"].max()))
    res = or_analysis(separated)
    assert res.rrrc.note == "perfect separation" and np.isnan(res.rrrc.p_value)
    assert (res.auc["auc"] == 1.0).all() and res.var_error == 0.0


def test_ordinary_data_have_no_note(van_dyke: pd.DataFrame) -> None:
    van_dyke = van_dyke.rename(columns={"treatment": "test", "rating": "score"})
    res = or_analysis(van_dyke)
    assert res.rrrc.note == "" and res.rrrc.p_value == pytest.approx(0.05166569, abs=1e-8)
