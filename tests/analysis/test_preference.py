"""Bradley-Terry / Davidson preferences: against choix, a direct likelihood, krippendorff, and simulation."""

from __future__ import annotations

import choix
import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from analysis.preference import (
    bootstrap_bradley_terry,
    by_specialty,
    fit_bradley_terry,
    pair_counts,
    preference_agreement,
    preference_report_section,
    win_rate_matrix,
)
from db.errors import InputError

MODELS = ("flux", "kandinsky", "msdm", "sdxl")


def simulate(
    theta: np.ndarray,
    *,
    raters: int,
    cases: int,
    nu: float,
    rater_sd: float,
    seed: int,
    per_rater_cases: int | None = None,
) -> pd.DataFrame:
    """Davidson preferences; each rater judges every model pair on their own cases, with sides at random and
    rater-specific strengths (true + N(0, rater_sd)) so answers cluster by rater."""
    rng = np.random.default_rng(seed)
    rows = []
    n = len(theta)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for r in range(raters):
        mine = theta + rng.normal(0, rater_sd, n)
        chosen = rng.choice(cases, size=per_rater_cases or len(pairs), replace=False)
        for c, (i, j) in zip(chosen, pairs * len(chosen), strict=False):
            pi, pj = np.exp(mine[i]), np.exp(mine[j])
            tie = nu * np.sqrt(pi * pj)
            outcome = rng.choice(3, p=np.array([pi, pj, tie]) / (pi + pj + tie))
            left, right = (i, j) if rng.random() < 0.5 else (j, i)
            choice = "tie" if outcome == 2 else ("left" if (i if outcome == 0 else j) == left else "right")
            rows.append({"rater": f"r{r}", "case": f"c{c}", "model_left": MODELS[left], "model_right": MODELS[right],
                         "choice": choice, "specialty": "radiology" if r % 2 else "gastroenterology"})  # fmt: skip
    return pd.DataFrame(rows)


def test_bt_without_ties_equals_choix_maximum_likelihood() -> None:
    records = simulate(np.array([-0.8, -0.1, 0.3, 0.6]), raters=6, cases=60, nu=0.0, rater_sd=0.0, seed=1,
                       per_rater_cases=30)  # fmt: skip
    fit = fit_bradley_terry(records)
    assert fit.nu is None
    index = {m: i for i, m in enumerate(MODELS)}
    winner = np.where(records["choice"] == "left", records["model_left"], records["model_right"])
    loser = np.where(records["choice"] == "left", records["model_right"], records["model_left"])
    data = [(index[w], index[lo]) for w, lo in zip(winner, loser, strict=True)]
    reference = choix.opt_pairwise(len(MODELS), data, alpha=0.0, method="BFGS", tol=1e-10)
    np.testing.assert_allclose(fit.theta, reference - reference.mean(), atol=1e-5)


def _direct_davidson_nll(params: np.ndarray, left: np.ndarray, right: np.ndarray, choice: np.ndarray) -> float:
    """The Davidson likelihood summed record by record (independent of the module's count-matrix form)."""
    theta = params[:-1] - params[:-1].mean()
    pl, pr = np.exp(theta[left]), np.exp(theta[right])
    tie = np.exp(params[-1]) * np.sqrt(pl * pr)
    chosen = np.where(choice == "left", pl, np.where(choice == "right", pr, tie))
    return -float(np.sum(np.log(chosen / (pl + pr + tie))))


def test_davidson_fit_maximises_the_direct_likelihood() -> None:
    records = simulate(np.array([-0.5, 0.0, 0.2, 0.4]), raters=4, cases=24, nu=0.6, rater_sd=0.0, seed=2,
                       per_rater_cases=18)  # fmt: skip
    assert (records["choice"] == "tie").any()
    fit = fit_bradley_terry(records)
    assert fit.nu is not None
    index = {m: i for i, m in enumerate(MODELS)}
    args = (records["model_left"].map(index).to_numpy(), records["model_right"].map(index).to_numpy(),
            records["choice"].to_numpy())  # fmt: skip
    options = {"xatol": 1e-7, "fatol": 1e-10, "maxiter": 20000, "maxfev": 20000}
    reference = optimize.minimize(_direct_davidson_nll, np.zeros(5), args=args, method="Nelder-Mead", options=options)
    theta = reference.x[:-1] - reference.x[:-1].mean()
    np.testing.assert_allclose(fit.theta, theta, atol=2e-3)
    assert fit.nu == pytest.approx(np.exp(reference.x[-1]), rel=5e-3)
    assert -fit.log_likelihood == pytest.approx(reference.fun, abs=1e-6)


@pytest.mark.slow
def test_bootstrap_recovers_ranking_and_covers_true_strengths() -> None:
    """Seeded simulation with rater-specific strengths: the crossed bootstrap's CIs cover the true
    strengths at about the nominal rate and its SEs match the spread of the estimates over replicates."""
    truth = np.array([-0.6, -0.2, 0.2, 0.6])
    covered = total = 0
    estimates, ses = [], []
    for rep in range(16):
        records = simulate(truth, raters=12, cases=80, nu=0.4, rater_sd=0.25, seed=100 + rep, per_rater_cases=18)
        boot = bootstrap_bradley_terry(records, n_resamples=60, seed=rep)
        table = boot.table().set_index("model").loc[list(MODELS)]
        covered += int(((table["ci_low"] <= truth) & (truth <= table["ci_high"])).sum())
        total += len(truth)
        estimates.append(table["theta"].to_numpy())
        ses.append(table["se_boot"].to_numpy())
        if rep == 0:
            assert list(boot.table()["model"]) == list(MODELS[::-1])  # best first
            assert boot.table()["p_best"].iloc[0] > 0.8
            assert boot.table()["p_best"].sum() == pytest.approx(1.0)
    coverage = covered / total
    ratio = float(np.mean(ses) / np.mean(np.std(estimates, axis=0, ddof=1)))
    print(f"coverage {coverage:.3f}, SE ratio {ratio:.2f}")
    assert coverage >= 0.85, coverage
    assert 0.7 <= ratio <= 1.45, ratio  # Owen's product bootstrap gives ~1.6-2 on this layout


def test_win_rates_are_complementary_and_match_counts() -> None:
    records = pd.DataFrame({
        "rater": ["a", "a", "b", "b", "c"], "case": ["1", "2", "1", "2", "3"],
        "model_left": ["x", "y", "y", "x", "x"], "model_right": ["y", "x", "x", "y", "y"],
        "choice": ["left", "left", "tie", "right", "left"],
    })  # fmt: skip
    rates = win_rate_matrix(records)
    # x vs y: x wins rows 0 and 4, y wins rows 1 and 3, one tie -> x: (2 + 0.5) / 5
    assert rates.loc["x", "y"] == pytest.approx(0.5)
    assert rates.loc["x", "y"] + rates.loc["y", "x"] == pytest.approx(1.0)
    counts = pair_counts(records)
    assert counts.wins.sum() == 4 and counts.ties.sum() == 2  # the tie sits in both halves


def test_agreement_codes_by_model_not_side() -> None:
    # two raters on three (case, pair) units; rater b saw the sides swapped on case 2 and still agrees
    records = pd.DataFrame({
        "rater": ["a", "a", "a", "b", "b", "b"], "case": ["1", "2", "3", "1", "2", "3"],
        "model_left": ["x", "x", "y", "x", "y", "y"], "model_right": ["y", "y", "x", "y", "x", "x"],
        "choice": ["left", "right", "tie", "left", "left", "right"],
    })  # fmt: skip
    # model codes (x preferred = 0, tie = 1, y preferred = 2): a = [0, 2, 1], b = [0, 2, 0]
    expected = krippendorff.alpha(np.array([[0, 2, 1], [0, 2, 0]], float), level_of_measurement="nominal")
    assert preference_agreement(records)["alpha"] == pytest.approx(expected)


def test_specialty_strata_and_report_section() -> None:
    records = simulate(np.array([-0.6, -0.2, 0.2, 0.6]), raters=8, cases=60, nu=0.3, rater_sd=0.1, seed=5,
                       per_rater_cases=18)  # fmt: skip
    table = by_specialty(records, n_resamples=40)
    assert set(table["specialty"]) == {"all", "gastroenterology", "radiology"}
    assert (table.groupby("specialty")["model"].nunique() == 4).all()
    section = preference_report_section(records, n_resamples=40)
    assert set(section["tables"]) == {"bradley_terry", "win_rates", "by_specialty"}
    assert "bradley_terry_forest" in section["figures"]


def test_bad_records_name_the_problem() -> None:
    records = pd.DataFrame({"rater": ["a"], "case": ["1"], "model_left": ["x"], "model_right": ["y"],
                            "choice": ["maybe"]})  # fmt: skip
    with pytest.raises(InputError, match="maybe"):
        fit_bradley_terry(records)
    with pytest.raises(InputError, match="missing column"):
        fit_bradley_terry(records.drop(columns="case"))
    records["choice"] = "left"  # x never loses: no maximum-likelihood fit
    with pytest.raises(InputError, match="not estimable"):
        fit_bradley_terry(records)


def test_report_parts_from_an_exported_ratings_table() -> None:
    from analysis.preference import head_to_head_report_parts

    records = simulate(np.array([-0.6, -0.2, 0.2, 0.6]), raters=8, cases=60, nu=0.3, rater_sd=0.1, seed=7,
                       per_rater_cases=18)  # fmt: skip
    exported = records.rename(columns={"choice": "prefer_realism"})
    exported["prefer_prompt"] = exported["prefer_realism"]
    exported["cannot_assess"] = False
    normal = pd.DataFrame({"rater": ["r0"], "case": ["c999"], "model_left": [None], "model_right": [None],
                           "prefer_realism": [None], "prefer_prompt": [None], "cannot_assess": [False]})  # fmt: skip
    parts = head_to_head_report_parts(pd.concat([exported, normal], ignore_index=True), n_resamples=30)
    assert [title for title, _ in parts] == [
        "Head-to-head: which image is more realistic? (Bradley-Terry)",
        "Head-to-head: which image is a better match to the prompt? (Bradley-Terry)",
    ]
    tables = parts[0][1]["tables"]
    assert list(tables["prefer_realism/bradley_terry"]["model"]) == list(MODELS[::-1])
    assert head_to_head_report_parts(normal.drop(columns="model_left")) == []


def test_ranking_next_to_metrics_uses_each_metrics_direction() -> None:
    from scipy import stats

    from analysis.preference import ranking_vs_metrics

    bt = pd.DataFrame({"model": ["a", "b", "c"], "theta": [0.5, 0.0, -0.5]})
    metrics = pd.DataFrame({"model": ["c", "b", "a"], "fd": [30.0, 20.0, 10.0], "clip": [0.2, 0.4, 0.3]})
    table = ranking_vs_metrics(bt, metrics, {"fd": False, "clip": True})
    assert list(table["model"]) == ["a", "b", "c"]
    assert list(table["rank_fd"]) == [1, 2, 3]  # lower FD is better: same order as BT
    assert list(table["rank_clip"]) == [2, 1, 3]
    assert table.attrs["kendall_tau"]["fd"] == pytest.approx(1.0)
    expected = stats.kendalltau([1, 2, 3], [2, 1, 3]).statistic
    assert table.attrs["kendall_tau"]["clip"] == pytest.approx(expected)
    with pytest.raises(InputError, match="missing column"):
        ranking_vs_metrics(bt, metrics.drop(columns="fd"), {"fd": False})


def test_adaptive_assignment_is_noted_and_its_draw_log_summarised() -> None:
    from analysis.preference import adaptive_draw_summary, head_to_head_report_parts

    records = simulate(np.array([-0.6, -0.2, 0.2, 0.6]), raters=6, cases=40, nu=0.3, rater_sd=0.1, seed=3,
                       per_rater_cases=12)  # fmt: skip
    exported = records.rename(columns={"choice": "prefer_realism"})
    low = np.minimum(records["model_left"], records["model_right"])
    high = np.maximum(records["model_left"], records["model_right"])
    draws = pd.DataFrame({"step": np.arange(len(records)), "rater": records["rater"], "pair": low + "|" + high,
                          "score": np.linspace(0.5, 0.1, len(records))})  # fmt: skip
    summary = adaptive_draw_summary(draws).set_index("pair")
    expected = (low + "|" + high).value_counts()
    assert summary["draws"].to_dict() == expected.to_dict() and summary["share"].sum() == pytest.approx(1)
    assert summary.loc["flux|kandinsky", "first_step"] == draws.loc[draws["pair"] == "flux|kandinsky", "step"].min()
    (_, part), *_ = head_to_head_report_parts(exported, n_resamples=20, draws=draws)
    notes = " ".join(part["notes"])
    assert "assigned adaptively" in notes and "likelihood principle" in notes and "approximate" in notes
    assert "prefer_realism/adaptive_draws" in part["tables"]
    (_, fixed), *_ = head_to_head_report_parts(exported, n_resamples=20)
    assert "adaptively" not in " ".join(fixed["notes"]) and "prefer_realism/adaptive_draws" not in fixed["tables"]
    with pytest.raises(InputError, match="score"):
        adaptive_draw_summary(draws.drop(columns="score"))
