"""Study power plans: Hillis-Obuchowski-Berbaum against RJafroc's published values, Turing plans by simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.mrmc import or_analysis
from analysis.power import (
    ORComponents,
    components_from_logit_sds,
    or_power,
    plan_mrmc,
    plan_turing,
    simulate_2afc,
    turing_equivalence_power,
)
from analysis.turing import chance_tests, crossed_mean


@pytest.fixture(scope="module")
def van_dyke_components(shared_data: Path) -> tuple[ORComponents, float]:
    data = pd.read_csv(shared_data / "mrmc" / "VanDyke.csv")
    result = or_analysis(data, test="treatment", score="rating")
    return ORComponents.from_result(result), float(result.rrrc.differences["estimate"].iloc[0])


def test_or_power_reproduces_rjafroc_on_the_van_dyke_pilot(van_dyke_components: tuple[ORComponents, float]) -> None:
    """RJafroc tests/testthat (SsPowerGivenJK, dataset02, ORH, RRRC, J=6, K=111): power 0.5526116;
    RJafrocBook ch. 'ROC-DBMH sample size' (J=6, K=112): power 0.5555789, ncp 4.8, ddf 23.1, F 4.28."""
    components, effect = van_dyke_components
    assert components.n_cases == 114
    assert or_power(6, 111, effect, components)["power"] == pytest.approx(0.5526116, abs=5e-8)
    out = or_power(6, 112, effect, components)
    assert out["power"] == pytest.approx(0.5555789, abs=5e-8)
    assert (round(out["ncp"], 1), round(out["ddf"], 1), round(out["f_crit"], 2)) == (4.8, 23.1, 4.28)
    table = plan_mrmc(components, effect, readers=(6,), cases=(111, 800))
    assert table.iloc[0, 0] == pytest.approx(0.5526116, abs=5e-8) and table.iloc[0, 1] > 0.9


def test_turing_plan_comes_true_in_simulation() -> None:
    """Seeded: 300 simulated studies of a planned design; achieved power within 5 points of the plan."""
    components = components_from_logit_sds(0.3, 0.5)
    planned = turing_equivalence_power(10, 100, components, margin=0.1)
    rng = np.random.default_rng(11)
    shown = []
    for _ in range(300):
        rater, item, y = simulate_2afc(rng, n_raters=10, answers_per_rater=100, n_items=100, sd_rater=0.3, sd_item=0.5)
        fit = crossed_mean(rater, item, y)
        shown.append(chance_tests(fit.estimate, fit.std_err, fit.df, 0.1, 0.95)[3] < 0.05)
    assert 0.5 < planned < 0.95
    assert abs(np.mean(shown) - planned) <= 0.05


def test_turing_plan_table_grows_with_raters_and_items() -> None:
    table = plan_turing(components_from_logit_sds(0.5, 1.0), raters=(6, 8, 16), items=(50, 200), answers_per_rater=50)
    values = table.to_numpy()
    assert (np.diff(values, axis=0) > 0).all() and (np.diff(values, axis=1) > 0).all()
    assert table.attrs["target"] == 0.8
    with pytest.raises(ValueError, match="margin"):
        turing_equivalence_power(8, 100, components_from_logit_sds(0, 0), margin=0.6)


def test_study_plan_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_data: Path) -> None:
    from app import main

    assert main(["study", "plan", "turing", "--answers-per-rater", "100", "--sd-rater", "0.3", "--sd-item", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "10" in out and "0.89*" in out and "100 pairs per rater" in out
    roc = pd.read_csv(shared_data / "mrmc" / "VanDyke.csv").rename(columns={"treatment": "test", "rating": "score"})
    roc.to_csv(tmp_path / "pilot.csv", index=False)
    assert main(["study", "plan", "mrmc", "--roc", str(tmp_path / "pilot.csv"), "--effect", "0.05"]) == 0
    assert "pilot of 114 cases" in capsys.readouterr().out
    assert main(["study", "plan", "mrmc"]) == 2
    assert "--roc" in capsys.readouterr().err
