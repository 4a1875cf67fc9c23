"""Speed of the human-rating analysis: a full report (no image metrics) and Krippendorff's alpha.

Run: ``python benchmarks/analysis.py [--raters 40 --items 5000 --resamples 1000]``. Prints figures;
the targets (report <= 10 s on 2 cores; alpha at least as fast as the ``krippendorff`` package;
Frechet distance vs the sqrtm formula) are read off, never asserted.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# This file is named like the ``analysis`` package; run as a script its folder would shadow the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]


def _median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_report(raters: int, items: int, resamples: int) -> None:
    from analysis.report import ReportConfig, write_report
    from analysis.synthetic import synthetic_ratings

    frame = synthetic_ratings(n_raters=raters, n_items=items, seed=0)
    config = ReportConfig(n_resamples=resamples, seed=0, include_mrmc=False)
    with tempfile.TemporaryDirectory() as directory:
        write_report(
            frame.head(2000),
            Path(directory) / "warm",
            title="warm-up",
            stamp={},
            config=config,
            progress=lambda *a, **k: None,
        )  # fmt: skip  (imports, font cache)
        start = time.perf_counter()
        write_report(frame, Path(directory), title="benchmark", stamp={}, config=config, progress=lambda *a, **k: None)
        seconds = time.perf_counter() - start
    print(f"full report, {raters} raters x {items} items ({len(frame)} ratings), {resamples} resamples, "
          f"no MRMC / image metrics: {seconds:.2f} s (target <= 10 s on 2 cores)")  # fmt: skip


def bench_alpha(raters: int, items: int, repeats: int) -> None:
    import krippendorff

    from analysis.agreement import krippendorff_alpha

    rng = np.random.default_rng(0)
    data = np.clip(rng.integers(1, 6, items) + rng.integers(-1, 2, (raters, items)), 1, 5).astype(float)
    data[rng.random(data.shape) < 0.2] = np.nan
    for level in ("nominal", "ordinal", "interval"):
        # Interleave the two so machine load hits both alike.
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(_median_seconds(lambda lv=level: krippendorff_alpha(data, lv), 1))
            theirs.append(_median_seconds(lambda lv=level: krippendorff.alpha(data, level_of_measurement=lv), 1))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"krippendorff_alpha {level:8s} {raters}x{items}: ours {a * 1e3:.1f} ms, package {b * 1e3:.1f} ms, "
              f"speed ratio (package / ours) {b / a:.2f}")  # fmt: skip


def bench_frechet(repeats: int) -> None:
    try:
        metrics = importlib.import_module("analysis.metrics")
    except ImportError as error:
        print(f"frechet_distance: skipped (analysis.metrics not importable: {error})")
        return
    if not hasattr(metrics, "frechet_distance"):
        print("frechet_distance: skipped (analysis.metrics has no frechet_distance)")
        return
    from scipy import linalg

    rng = np.random.default_rng(0)
    dim = 2048
    a = rng.normal(size=(4096, dim))
    b = rng.normal(0.1, 1.1, size=(4096, dim))

    def reference() -> float:
        mu_a, mu_b = a.mean(0), b.mean(0)
        s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        covmean = linalg.sqrtm(s_a @ s_b).real
        return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))

    ours = _median_seconds(lambda: metrics.frechet_distance(a, b), repeats)
    theirs = _median_seconds(reference, repeats)
    print(f"frechet_distance {dim}-d: ours {ours:.2f} s, sqrtm formula {theirs:.2f} s, speed ratio {theirs / ours:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raters", type=int, default=40)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-frechet", action="store_true")
    args = parser.parse_args()
    bench_report(args.raters, args.items, args.resamples)
    bench_alpha(args.raters, args.items, args.repeats)
    if args.skip_frechet:
        print("frechet_distance: skipped (--skip-frechet)")
    else:
        bench_frechet(max(1, args.repeats // 3))


if __name__ == "__main__":
    main()
