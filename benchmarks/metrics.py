"""Benchmark the automated metrics at N=2,000, d=2048 (not a test: prints figures).

Prints the time of ``frechet_distance`` (eigenvalue route) against the textbook ``scipy.linalg.sqrtm``
formula on the same statistics, their ratio (target >= 4x) and relative difference, and the times of KID
(100 subsets of 1,000) and CMMD. Usage: ``python benchmarks/metrics.py [--n 2000] [--dim 2048] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads for both routes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy/torch load their BLAS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np
    import torch

    from analysis.metrics import _compute_fd, _compute_fd_sqrtm, cmmd, feature_stats, frechet_distance, kid

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    n, d = args.n, args.dim
    mixing = rng.normal(scale=1.0 / np.sqrt(d), size=(d, d))
    a = np.abs(rng.normal(size=(n, d)) @ mixing)  # non-negative, correlated, like pooled CNN features
    b = np.abs(rng.normal(loc=0.1, size=(n, d)) @ mixing * 1.1)
    print(f"N={n}, d={d}, threads={args.threads}, numpy {np.__version__}, torch {torch.__version__}")

    stats, t_stats = _timed(lambda: (*feature_stats(a), *feature_stats(b)))
    fd_eig, t_eig = _timed(lambda: _compute_fd(*stats))
    fd_sqrtm, t_sqrtm = _timed(lambda: _compute_fd_sqrtm(*stats))
    fd_feats, t_feats = _timed(lambda: frechet_distance(a, b))
    print(f"feature statistics (mean, cov x2):   {t_stats:8.2f} s")
    print(f"FD eigen route (from statistics):    {t_eig:8.2f} s   FD={fd_eig:.6f}")
    print(f"FD scipy.linalg.sqrtm formula:       {t_sqrtm:8.2f} s   FD={fd_sqrtm:.6f}")
    print(f"speed-up sqrtm / eigen:              {t_sqrtm / t_eig:8.1f} x   (target >= 4x)")
    print(f"relative difference:                 {abs(fd_eig - fd_sqrtm) / abs(fd_sqrtm):8.1e}")
    print(f"frechet_distance(features) end to end: {t_feats:6.2f} s   FD={fd_feats:.6f}")
    kid_result, t_kid = _timed(lambda: kid(a, b, n_subsets=100, subset_size=1000, seed=args.seed))
    print(f"KID (100 subsets of 1000):           {t_kid:8.2f} s   KID={kid_result.mean:.6f} ± {kid_result.std:.6f}")
    unit_a = a / np.linalg.norm(a, axis=1, keepdims=True)
    unit_b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cmmd_value, t_cmmd = _timed(lambda: cmmd(unit_a, unit_b))
    print(f"CMMD (unit-norm embeddings):         {t_cmmd:8.2f} s   CMMD={cmmd_value:.6f}")


if __name__ == "__main__":
    main()
