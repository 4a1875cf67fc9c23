"""Cluster bootstrap of means over a rater x item (or rater x case) table.

Which units are resampled is named in every result:

``"items"``
    items (cases) with all their ratings, raters fixed: the CI generalises to new items read by
    *these* raters (what :func:`analysis.agreement.bootstrap_ci` does for agreement statistics);
``"raters"``
    raters with all their ratings, items fixed;
``"two-way"``
    raters and items resampled independently, an observation weighted by the product of its
    rater's and its item's multiplicities (Owen's 2007 "pigeonhole" bootstrap, Ann Appl Stat
    1:246-276): the CI generalises to new raters *and* new items. It is conservative: for a mean
    its variance is about ``var_rater / R + var_item / C + 3 var_error / (R C)`` (the error term
    counted three times), so on independent answers its SE is up to sqrt(3) times the binomial
    one. Prefer :func:`analysis.turing.crossed_mean` for a single mean; use this for contrasts
    (model differences) and statistics without a closed form.

Percentile intervals; p-values of contrasts are normal-theory, ``2 Phi(-|d| / se_boot)``.

This module is the home of MedSynth's bootstrap of ratings: the item bootstrap of agreement statistics
(:func:`bootstrap_ci`, :func:`bootstrap_cis`, :class:`ItemResampler`, implemented beside the statistics'
item terms in :mod:`analysis.agreement`) is re-exported here. (``analysis.metrics.bootstrap_ci`` is a
different thing: a bootstrap over image feature sets, owned by the metrics code.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from analysis.agreement import BootstrapCI, ItemResampler, bootstrap_ci, bootstrap_cis

logger = logging.getLogger(__name__)

Resample = Literal["items", "raters", "two-way"]

__all__ = [
    "BootstrapCI",
    "GroupMeansBootstrap",
    "ItemResampler",
    "Resample",
    "bootstrap_ci",
    "bootstrap_cis",
    "bootstrap_group_means",
]


@dataclass(frozen=True)
class GroupMeansBootstrap:
    """Group means and their joint bootstrap distribution (one column per group)."""

    groups: tuple[object, ...]
    estimates: NDArray[np.float64]
    distribution: NDArray[np.float64] = field(repr=False)  # (n_resamples, n_groups)
    resample: Resample
    n_resamples: int
    seed: int

    def interval(self, weights: ArrayLike, confidence_level: float = 0.95) -> tuple[float, float, float, float]:
        """``(estimate, se, ci_low, ci_high)`` of the contrast ``sum(weights * means)``."""
        w = np.asarray(weights, dtype=float)
        values = self.distribution @ w
        values = values[np.isfinite(values)]
        alpha = (1.0 - confidence_level) / 2.0
        low, high = np.quantile(values, [alpha, 1.0 - alpha]) if len(values) > 1 else (np.nan, np.nan)
        se = float(values.std(ddof=1)) if len(values) > 1 else np.nan
        return float(self.estimates @ w), se, float(low), float(high)


def bootstrap_group_means(
    raters: ArrayLike,
    items: ArrayLike,
    values: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    resample: Resample = "two-way",
    n_resamples: int = 1000,
    seed: int = 0,
    chunk: int = 200,
) -> GroupMeansBootstrap:
    """Bootstrap the mean of ``values`` per group, resampling raters, items or both (see the module docstring).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r, i = np.repeat(np.arange(10), 50), np.tile(np.arange(50), 10)
    >>> out = bootstrap_group_means(r, i, rng.random(500) < 0.5, resample="raters", n_resamples=200)
    >>> est, se, low, high = out.interval([1.0])
    >>> bool(low < est < high), out.resample
    (True, 'raters')
    """
    if resample not in get_args(Resample):
        raise ValueError(f"resample must be one of {get_args(Resample)}, got {resample!r}")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
    y = np.asarray(values, dtype=float)
    r_code, _ = pd.factorize(np.asarray(raters, dtype=object))
    i_code, _ = pd.factorize(np.asarray(items, dtype=object))
    labels = np.asarray(groups if groups is not None else np.zeros(len(y)), dtype=object)
    g_code, g_levels = pd.factorize(labels, sort=True)
    keep = np.isfinite(y)
    y, r_code, i_code, g_code = y[keep], r_code[keep], i_code[keep], g_code[keep]
    n_r, n_i, n_g = int(r_code.max()) + 1, int(i_code.max()) + 1, len(g_levels)
    rng = np.random.default_rng(seed)
    sums = np.bincount(g_code, weights=y, minlength=n_g)
    counts = np.bincount(g_code, minlength=n_g).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimates = sums / counts
    # Per group, the sums and counts of each (rater, item) cell: a resample's weight of a rating is
    # w_rater * w_item, so its weighted sum is w_r @ cells @ w_i, never a (resamples x ratings) matrix.
    from scipy import sparse

    shape = (n_r, n_i)
    cell_sums = [sparse.csr_matrix((y[g_code == g], (r_code[g_code == g], i_code[g_code == g])), shape=shape)
                 for g in range(n_g)]  # fmt: skip
    cell_counts = [sparse.csr_matrix((np.ones(int((g_code == g).sum())), (r_code[g_code == g], i_code[g_code == g])),
                                     shape=shape) for g in range(n_g)]  # fmt: skip
    parts = []
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        w_r = np.ones((b, n_r))
        w_i = np.ones((b, n_i))
        if resample in ("raters", "two-way"):
            w_r = np.stack([np.bincount(rng.integers(0, n_r, n_r), minlength=n_r) for _ in range(b)]).astype(float)
        if resample in ("items", "two-way"):
            w_i = np.stack([np.bincount(rng.integers(0, n_i, n_i), minlength=n_i) for _ in range(b)]).astype(float)
        num = np.column_stack([((m.T @ w_r.T).T * w_i).sum(axis=1) for m in cell_sums])
        den = np.column_stack([((m.T @ w_r.T).T * w_i).sum(axis=1) for m in cell_counts])
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append(num / den)
    return GroupMeansBootstrap(
        groups=tuple(g_levels),
        estimates=estimates,
        distribution=np.concatenate(parts),
        resample=resample,
        n_resamples=n_resamples,
        seed=seed,
    )
