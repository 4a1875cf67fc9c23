"""Benchmark the memorization audit's nearest-neighbour search (not a test: prints figures).

Exact cosine top-k of 2,000 query features over 100,000 training features with
:func:`analysis.memorization.top_k_search` (blocked float32 matrix products, running top-k), target under
60 s on 2 cores. ``--tta`` also times the audit's real layout (:func:`analysis.memorization.nearest_by_owner`
over 7 views per training image and 3 per query: 21 times the work). Usage:
``python benchmarks/memorization_search.py [--n 100000] [--queries 2000] [--dim 576] [--k 5] [--threads 2] [--tta]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="training features")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=576, help="576 = the default pixels descriptor; 768 = DINOv2-base")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="also time the audit's layout (7 index views per image)")
    parser.add_argument("--query-views", type=int, default=3, help="views per query with --tta")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy loads its BLAS

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np

    from analysis.memorization import _unit, nearest_by_owner, top_k_search

    rng = np.random.default_rng(args.seed)
    index = _unit(rng.standard_normal((args.n, args.dim), dtype=np.float32)).astype(np.float32)
    planted = rng.choice(args.n, args.queries, replace=False)
    noise = 0.5 / args.dim**0.5 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries = _unit(index[planted] + noise).astype(np.float32)  # each query has a known nearest neighbour

    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 5 or done == total:
            last[0] = time.perf_counter()
            print(f"  {stage}: {done:,}/{total:,}", flush=True)

    wall, cpu = time.perf_counter(), time.process_time()
    _sims, idx = top_k_search(queries, index, args.k, progress=progress)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    recall = float(np.mean(idx[:, 0] == planted))
    print(f"top-{args.k} of {args.queries:,} queries over {args.n:,} x {args.dim} float32 features, "
          f"{args.threads} threads: {wall:.1f} s wall, {cpu:.1f} s CPU; "
          f"planted neighbour found first: {recall:.3f}")  # fmt: skip
    exact = queries[:50] @ index.T
    agree = float(np.mean(np.argmax(exact, axis=1) == idx[:50, 0]))
    print(f"agreement with a brute-force argmax on 50 queries: {agree:.3f} (target 1.000)")
    if args.tta:
        views, q_views = 7, args.query_views
        i_feats = np.repeat(index, views, axis=0)
        i_feats += 0.2 / args.dim**0.5 * rng.standard_normal(i_feats.shape, dtype=np.float32)
        i_owner = np.repeat(np.arange(args.n), views)
        q_feats = np.repeat(queries, q_views, axis=0)
        q_owner = np.repeat(np.arange(args.queries), q_views)
        wall = time.perf_counter()
        found = nearest_by_owner(q_feats, q_owner, i_feats, i_owner, args.queries, args.k, progress=progress)
        wall = time.perf_counter() - wall
        recall = float(np.mean([f[0][0] == p for f, p in zip(found, planted, strict=True)]))
        print(f"with test-time augmentation ({views} x {args.n:,} index rows, "
              f"{q_views} x {args.queries:,} query rows): "
              f"{wall:.1f} s wall; planted neighbour found first: {recall:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
