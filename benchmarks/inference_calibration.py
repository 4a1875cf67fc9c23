"""Benchmark: does the headline Turing test hold its level? And do the power plans come true?

Simulates 2AFC studies where raters cannot tell real from generated (population accuracy exactly
0.5): 8 raters x 100 answers, in three scenarios (independent answers; rater SD 0.5 on the logit;
item SD 1 on the logit) and two designs (crossed: every rater answers the same 100 pairs; K-of-N:
each rater answers 100 of 200 pairs). For each study it runs the old tests (pooled exact binomial,
rater-level t, MRMC 2AFC through ``analysis.mrmc`` with the image as the case) and the new headline
test (``analysis.turing.crossed_mean``: raters and items random, moments + Satterthwaite) and prints
the false-positive rate at alpha 0.05 with its Monte Carlo SE. Then it simulates the designs of a few
Turing equivalence plans (``analysis.power``) and prints planned vs achieved power.

    python benchmarks/inference_calibration.py            # 1000 studies per cell (MC SE 0.007 at 0.05)
    python benchmarks/inference_calibration.py --quick    # the same, but the slow MRMC column on 150 of them

The MRMC column costs about 0.1 s per study (an OR analysis); the others milliseconds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from scipy import stats

from analysis.mrmc import or_analysis
from analysis.power import components_from_logit_sds, simulate_2afc, turing_equivalence_power
from analysis.turing import binomial_test_half, chance_tests, crossed_mean

SCENARIOS = {
    "independent answers": (0.0, 0.0),
    "rater SD 0.5 (logit)": (0.5, 0.0),
    "item SD 1 (logit)": (0.0, 1.0),
}
DESIGNS = {"crossed 8 x 100": (100, 100), "K-of-N 8 x 100 of 200": (100, 200)}
METHODS = ("pooled binomial", "rater-level t", "MRMC 2AFC (image = case)", "new: raters+items random")


def p_values(rater: np.ndarray, item: np.ndarray, correct: np.ndarray, with_mrmc: bool = True) -> list[float]:
    """p-values of H0 accuracy = 0.5 by the old methods and the new one, in METHODS order."""
    k, n = int(correct.sum()), len(correct)
    p_pooled = float(binomial_test_half(k, n))
    per_rater = np.bincount(rater, weights=correct) / np.bincount(rater)
    p_rater = float(stats.ttest_1samp(per_rater, 0.5).pvalue)
    p_mrmc = math.nan
    if with_mrmc:
        score = np.where(correct > 0, 1.0, -1.0)
        roc = pd.DataFrame(
            {
                "reader": np.concatenate([rater, rater]),
                "test": "m",
                "case": np.concatenate([[f"g{i}" for i in item], [f"r{i}" for i in item]]),
                "truth": np.repeat([1, 0], n),
                "score": np.concatenate([score, -score]),
            }
        )
        ci = or_analysis(roc).rrrc.test_cis.iloc[0]
        if ci["std_err"] > 0:
            p_mrmc = float(2.0 * stats.t.sf(abs(ci["estimate"] - 0.5) / ci["std_err"], ci["df"]))
    fit = crossed_mean(rater, item, correct)
    p_new = chance_tests(fit.estimate, fit.std_err, fit.df, 0.1, 0.95)[2]
    return [p_pooled, p_rater, p_mrmc, p_new]


def calibration(n_studies: int, seed: int, mrmc_studies: int) -> pd.DataFrame:
    rows = []
    for d_index, (design, (answers, n_items)) in enumerate(DESIGNS.items()):
        for s_index, (scenario, (sd_rater, sd_item)) in enumerate(SCENARIOS.items()):
            rng = np.random.default_rng([seed, d_index, s_index])
            draw = {"n_raters": 8, "answers_per_rater": answers, "n_items": n_items}
            p = np.array(
                [
                    p_values(
                        *simulate_2afc(rng, **draw, sd_rater=sd_rater, sd_item=sd_item), with_mrmc=k < mrmc_studies
                    )
                    for k in range(n_studies)
                ]
            )
            # MRMC p-values exist for the first mrmc_studies studies only (about 0.1 s per study)
            rates = {
                m: float(np.mean(p[: (mrmc_studies if j == 2 else n_studies), j] < 0.05)) for j, m in enumerate(METHODS)
            }
            rows.append({"design": design, "scenario": scenario, **rates})
    return pd.DataFrame(rows)


PLANS = (
    # sd_rater, sd_item (logit), raters, pairs, answers per rater
    (0.5, 1.0, 8, 100, 100),
    (0.5, 1.0, 15, 200, 100),
    (0.3, 0.5, 10, 100, 100),
    (0.0, 0.0, 4, 60, 60),
)


def plan_validation(n_studies: int, seed: int, margin: float = 0.1) -> pd.DataFrame:
    rows = []
    for index, (sd_rater, sd_item, raters, items, answers) in enumerate(PLANS):
        components = components_from_logit_sds(sd_rater, sd_item)
        planned = turing_equivalence_power(raters, items, components, margin=margin, answers_per_rater=answers)
        rng = np.random.default_rng([seed, 99, index])
        shown = 0
        for _ in range(n_studies):
            rater, item, correct = simulate_2afc(
                rng, n_raters=raters, answers_per_rater=answers, n_items=items, sd_rater=sd_rater, sd_item=sd_item
            )
            fit = crossed_mean(rater, item, correct)
            shown += chance_tests(fit.estimate, fit.std_err, fit.df, margin, 0.95)[3] < 0.05
        rows.append(
            {
                "logit SDs (rater, item)": f"{sd_rater}, {sd_item}",
                "design": f"{raters} raters x {answers} of {items} pairs",
                "planned power": planned,
                "achieved power": shown / n_studies,
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MRMC column on 150 studies per cell, not all")
    parser.add_argument("--studies", type=int, default=1000, help="studies per cell (default 1000)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    n = args.studies
    n_mrmc = min(n, 150) if args.quick else n
    start = time.perf_counter()
    table = calibration(n, args.seed, n_mrmc)
    se, se_mrmc = math.sqrt(0.05 * 0.95 / n), math.sqrt(0.05 * 0.95 / n_mrmc)
    print(
        f"False-positive rate at alpha 0.05, population accuracy 0.5; {n} studies per row (MC SE {se:.3f}), "
        f"MRMC column on {n_mrmc} of them (MC SE {se_mrmc:.3f}):"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    plans = plan_validation(n, args.seed)
    print(f"\nTuring equivalence plans (margin 0.1, alpha 0.05), {n} simulated studies each:")
    print(plans.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\ninference_calibration: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
