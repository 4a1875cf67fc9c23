"""Benchmark: full OR MRMC analysis, jackknife covariance, 40 readers x 2,000 cases x 4 models.

Target (issue 8): <= 5 s on 2 cores. Prints the wall time of ``or_analysis`` (median of a few runs)
for each covariance method, plus the time to build the ROC data frame, which is not counted.

    python benchmarks/mrmc.py [--readers 40] [--cases 2000] [--tests 4] [--repeats 3] [--all-methods]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from analysis.mrmc import or_analysis


def simulate(n_readers: int, n_cases: int, n_tests: int, seed: int = 0) -> pd.DataFrame:
    """Factorial study with correlated 5-point ratings (half the cases positive)."""
    rng = np.random.default_rng(seed)
    truth = (np.arange(n_cases) < n_cases // 2).astype(int)
    case_effect = rng.normal(size=n_cases) + 1.0 * truth
    reader_shift = rng.normal(scale=0.3, size=(1, n_readers, 1))
    test_shift = 0.03 * np.arange(n_tests)[:, None, None] * truth
    latent = case_effect + reader_shift + test_shift + rng.normal(scale=0.8, size=(n_tests, n_readers, n_cases))
    rating = np.digitize(latent, [-0.5, 0.3, 1.0, 1.8]) + 1
    t, r, k = np.meshgrid(np.arange(n_tests), np.arange(n_readers), np.arange(n_cases), indexing="ij")
    return pd.DataFrame(
        {
            "reader": r.ravel(),
            "test": t.ravel(),
            "case": k.ravel(),
            "truth": truth[k.ravel()],
            "score": rating.ravel().astype(float),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=40)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--tests", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-methods", action="store_true", help="also time DeLong and unbiased")
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = simulate(args.readers, args.cases, args.tests)
    build = time.perf_counter() - t0
    print(
        f"{args.readers} readers x {args.cases} cases x {args.tests} models = {len(data):,} readings "
        f"(simulated in {build:.2f} s); cpu count {os.cpu_count()}"
    )
    methods = ["jackknife", "delong", "unbiased"] if args.all_methods else ["jackknife"]
    for method in methods:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = or_analysis(data, cov_method=method)
            times.append(time.perf_counter() - t0)
        print(
            f"or_analysis(cov_method={method!r}): median {statistics.median(times):.2f} s, "
            f"min {min(times):.2f} s over {args.repeats} runs (target <= 5 s for jackknife); "
            f"RRRC F = {res.rrrc.statistic:.3f}, df2 = {res.rrrc.df2:.1f}, p = {res.rrrc.p_value:.3g}"
        )


if __name__ == "__main__":
    main()
