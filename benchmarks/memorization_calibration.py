"""Calibrate the memorization audit's copy threshold on the real samples (not a test: prints figures).

Builds :func:`analysis.memorization.calibration_fixture` from ``../shared/data`` (GI + radiology; in memory,
nothing written): transformed copies of training images (exact, 80-95 % crops, flips, 2-6 degree rotations,
JPEG re-encodes, colour jitter) are positives, distinct images of the same finding are negatives. Prints the
ROC of the pixel score (and of the retrieval descriptor alone), its AUC, the Youden threshold that
``DEFAULT_COPY_THRESHOLD`` comes from, and the share flagged per transform. Usage:
``python benchmarks/memorization_calibration.py [--data ../shared/data] [--seed 0] [--threads 2]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", default=str(root.parent / "shared" / "data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    sys.path.insert(0, str(root))
    import numpy as np

    from analysis.memorization import DEFAULT_COPY_THRESHOLD, calibrate, calibration_fixture

    start = time.perf_counter()
    fixture = calibration_fixture(args.data, seed=args.seed)
    n_pos = sum(q.label for q in fixture.queries)
    print(f"fixture (seed {args.seed}): {len(fixture.train)} training images, {n_pos} transformed copies, "
          f"{len(fixture.queries) - n_pos} distinct images of the same findings")  # fmt: skip
    result = calibrate(fixture)
    print(f"AUC pixel score (aligned NCC): {result.auc_pixel:.4f}; descriptor cosine alone: {result.auc_feature:.4f}")
    print(f"Youden threshold: {result.threshold:.2f} (TPR {result.tpr:.3f}, FPR {result.fpr:.3f}); "
          f"DEFAULT_COPY_THRESHOLD = {DEFAULT_COPY_THRESHOLD:.2f}")  # fmt: skip
    pixel = np.array([m.pixel_score for m in result.matches])
    labels = np.array(result.labels)
    at_default = pixel >= DEFAULT_COPY_THRESHOLD
    print(f"at DEFAULT_COPY_THRESHOLD: TPR {at_default[labels == 1].mean():.3f}, "
          f"FPR {at_default[labels == 0].mean():.3f}")  # fmt: skip
    fpr, tpr, thr = result.roc
    print("ROC (threshold, FPR, TPR) at 0.05 steps:")
    for t in np.arange(0.40, 1.0, 0.05):
        k = int(np.searchsorted(-thr, -t, side="right")) - 1
        print(f"  {t:.2f}  {fpr[k]:.3f}  {tpr[k]:.3f}")
    print("per transform (n, share flagged at the threshold, min / max score):")
    for kind, row in result.by_kind.items():
        print(f"  {kind:20s} {row['n']:4.0f} {row['flagged']:.3f}  {row['min_score']:.3f} / {row['max_score']:.3f}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
