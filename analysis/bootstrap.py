"""MedSynth's bootstrap engine: which units are resampled is named in every function and result.

Items (:func:`item_bootstrap_cis`, :class:`ItemResampler`)
    items (columns) with all their ratings, raters fixed: the CI generalises to new items read by
    *these* raters. Statistics that are functions of per-item sums (:class:`ItemTerms`; the agreement
    coefficients, see :func:`analysis.agreement.agreement_bootstrap_ci`) get all resamples from one
    matrix product; percentile or BCa intervals.
Raters, items or both (:func:`bootstrap_group_means`) over a rater x item (or rater x case) table:
    ``"items"`` as above; ``"raters"``: raters with all their ratings, items fixed; ``"two-way"``:
    raters and items resampled independently, an observation weighted by the product of its
    rater's and its item's multiplicities (Owen's 2007 "pigeonhole" bootstrap, Ann Appl Stat
    1:246-276): the CI generalises to new raters *and* new items. It is conservative: for a mean
    its variance is about ``var_rater / R + var_item / C + 3 var_error / (R C)`` (the error term
    counted three times), so on independent answers its SE is up to sqrt(3) times the binomial
    one. Prefer :func:`analysis.turing.crossed_mean` for a single mean; use this for contrasts
    (model differences) and statistics without a closed form. Percentile intervals; p-values of
    contrasts are normal-theory, ``2 Phi(-|d| / se_boot)``.
Rows of two samples (:func:`two_sample_bootstrap_ci`)
    the rows of each of two sets (e.g. image features of generated and real images) resampled
    independently; percentile interval of a two-sample statistic (FD, KID, CMMD in :mod:`analysis.metrics`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import special

logger = logging.getLogger(__name__)

Resample = Literal["items", "raters", "two-way"]
BootstrapMethod = Literal["percentile", "bca"]
FloatArray = NDArray[np.float64]

__all__ = [
    "BootstrapCI",
    "BootstrapMethod",
    "GroupMeansBootstrap",
    "ItemResampler",
    "ItemTerms",
    "Resample",
    "bootstrap_group_means",
    "item_bootstrap_cis",
    "no_item_terms",
    "percentile_interval",
    "two_sample_bootstrap",
    "two_sample_bootstrap_ci",
    "value_or_nan",
]


# --------------------------------------------------------------------------------------------
# Items resampled, raters fixed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemTerms:
    """Per-item additive terms of a statistic.

    Attributes
    ----------
    terms : numpy.ndarray, shape (n_items, k)
        One row per item; the statistic depends on the data only through their column sums.
    finish : callable
        Maps sums of shape ``(..., k)`` to the statistic, shape ``(...)``; vectorised.
    """

    terms: FloatArray
    finish: Callable[[FloatArray], FloatArray]

    def value(self) -> float:
        """The statistic on the full data."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(self.finish(self.terms.sum(axis=0)))

    def resampled(self, multiplicities: FloatArray) -> FloatArray:
        """The statistic for resamples given as item multiplicities, shape (n_resamples, n_items)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(self.finish(multiplicities @ self.terms), dtype=np.float64)

    def jackknife(self) -> FloatArray:
        """The statistic with each item left out in turn, shape (n_items,)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(self.finish(self.terms.sum(axis=0) - self.terms), dtype=np.float64)


TermsOf = Callable[[Callable[..., float], FloatArray], ItemTerms | None]


def no_item_terms(statistic: Callable[..., float], data: FloatArray) -> ItemTerms | None:
    """No item terms known: the statistic is evaluated once per resample."""
    return None


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a bootstrap confidence interval (items resampled, raters fixed)."""

    estimate: float
    low: float
    high: float
    standard_error: float
    confidence_level: float
    method: BootstrapMethod
    n_resamples: int
    seed: int
    n_items: int
    distribution: FloatArray = field(repr=False, compare=False)
    note: str = ""


class ItemResampler:
    """Seeded bootstrap resamples of item (column) indices, drawn once and shared by many statistics.

    The indices are ``numpy.random.default_rng(seed).integers(0, n_items, (n_resamples, n_items))``,
    the same draw as ``scipy.stats.bootstrap`` makes with that generator, so results are
    reproducible and comparable.
    """

    def __init__(self, n_items: int, n_resamples: int, seed: int, chunk: int = 256) -> None:
        if n_items < 2:
            raise ValueError(f"bootstrap needs at least 2 items, got {n_items}")
        if n_resamples < 2:
            raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
        self.n_items = n_items
        self.n_resamples = n_resamples
        self.seed = seed
        self.indices = np.random.default_rng(seed).integers(0, n_items, (n_resamples, n_items))
        self._chunk = chunk
        self._multiplicities: FloatArray | None = None

    def multiplicity_chunks(self) -> Iterator[FloatArray]:
        """How often each item occurs in each resample, in row chunks of shape (chunk, n_items)."""
        if self._multiplicities is not None and self._multiplicities.size <= 8_000_000:
            yield self._multiplicities
            return
        for start in range(0, self.n_resamples, self._chunk):
            rows = self.indices[start : start + self._chunk]
            offsets = np.arange(len(rows))[:, None] * self.n_items
            counts = np.bincount((rows + offsets).ravel(), minlength=len(rows) * self.n_items)
            yield counts.reshape(len(rows), self.n_items).astype(np.float64)

    def cache(self) -> None:
        """Keep all multiplicities in memory (up to 8 million cells) for reuse across statistics."""
        if self._multiplicities is None and self.n_resamples * self.n_items <= 8_000_000:
            self._multiplicities = np.concatenate(list(self.multiplicity_chunks()))

    def distribution(
        self, statistic: Callable[..., float], data: FloatArray, terms: ItemTerms | None = None
    ) -> tuple[float, FloatArray]:
        """Point estimate and bootstrap distribution of ``statistic`` over item resamples (columns of ``data``).

        With ``terms`` (the statistic's item terms on ``data``) all resamples cost one matrix product.
        """
        if data.shape[1] != self.n_items:
            raise ValueError(f"data have {data.shape[1]} items, the resampler {self.n_items}")
        if terms is not None:
            estimate = terms.value()
            values = np.concatenate([terms.resampled(chunk) for chunk in self.multiplicity_chunks()])
            return estimate, values
        estimate = float(statistic(data))
        values = np.array([value_or_nan(statistic, data[:, rows]) for rows in self.indices])
        return estimate, values


def value_or_nan(statistic: Callable[..., float], data: FloatArray) -> float:
    """A resample where the statistic is undefined (e.g. one category left) counts as NaN."""
    try:
        return float(statistic(data))
    except (ValueError, ZeroDivisionError):
        return float("nan")


def _jackknife(statistic: Callable[..., float], data: FloatArray, terms: ItemTerms | None) -> FloatArray:
    """The statistic with each item (column) left out in turn."""
    if terms is not None:
        return terms.jackknife()
    keep = ~np.eye(data.shape[1], dtype=bool)
    return np.array([value_or_nan(statistic, data[:, row]) for row in keep])


def _interval(
    estimate: float,
    values: FloatArray,
    jackknife: Callable[[], FloatArray],
    method: BootstrapMethod,
    confidence_level: float,
) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if len(finite) < 2 or not np.isfinite(estimate):
        return float("nan"), float("nan")
    alpha = (1 - confidence_level) / 2
    if method == "percentile":
        quantiles = np.array([alpha, 1 - alpha])
    else:
        # Efron & Tibshirani (1993) 14.3, with scipy.stats.bootstrap's conventions.
        below = np.count_nonzero(finite < estimate) + np.count_nonzero(finite <= estimate)
        z0 = special.ndtri(below / (2 * len(finite)))
        theta = jackknife()
        theta = theta[np.isfinite(theta)]
        u = (len(theta) - 1) * (theta.mean() - theta)
        denominator = (u**2).sum() / len(theta) ** 2
        a_hat = (u**3).sum() / len(theta) ** 3 / (6 * denominator**1.5) if denominator > 0 else 0.0
        z = special.ndtri(np.array([alpha, 1 - alpha]))
        quantiles = special.ndtr(z0 + (z0 + z) / (1 - a_hat * (z0 + z)))
        if not np.isfinite(quantiles).all():
            return float("nan"), float("nan")
    low, high = np.quantile(finite, quantiles)
    return float(low), float(high)


def _joint_distributions(terms: Mapping[str, ItemTerms], resampler: ItemResampler) -> dict[str, FloatArray]:
    """Bootstrap distributions of many item-term statistics from one stacked matrix product per chunk."""
    if not terms:
        return {}
    stacked = np.hstack([t.terms for t in terms.values()])
    bounds = np.cumsum([0, *(t.terms.shape[1] for t in terms.values())])
    parts: dict[str, list[FloatArray]] = {name: [] for name in terms}
    for chunk in resampler.multiplicity_chunks():
        product = chunk @ stacked
        with np.errstate(divide="ignore", invalid="ignore"):
            for (name, t), start, stop in zip(terms.items(), bounds[:-1], bounds[1:], strict=True):
                parts[name].append(np.asarray(t.finish(product[:, start:stop]), dtype=np.float64))
    return {name: np.concatenate(values) for name, values in parts.items()}


def item_bootstrap_cis(
    statistics: Mapping[str, tuple[Callable[..., float], ArrayLike]],
    resampler: ItemResampler,
    method: BootstrapMethod = "percentile",
    *,
    terms: TermsOf = no_item_terms,
    confidence_level: float = 0.95,
    on_error: Literal["raise", "record"] = "raise",
) -> dict[str, BootstrapCI]:
    """Item-bootstrap intervals of several statistics of (units x items) data from one set of item resamples.

    Items (columns) are resampled with all their values; the rows (raters) stay fixed. Statistics
    whose item terms ``terms(statistic, data)`` returns share one matrix product (multiplicities x
    all their terms side by side); the others are evaluated resample by resample.

    Parameters
    ----------
    statistics : mapping of name to (statistic, data)
        ``statistic(data) -> float``; every ``data`` is 2-D with the resampler's number of items (columns).
    resampler : ItemResampler
        The item resamples, drawn once.
    method : {"percentile", "bca"}
    terms : callable
        ``terms(statistic, data)``: the statistic's :class:`ItemTerms` on ``data``, or ``None``
        (:func:`analysis.agreement.item_terms` for the agreement coefficients).
    confidence_level : float
    on_error : {"raise", "record"}
        What to do when a statistic is undefined on the full data (``ValueError``): raise, or
        return NaNs with the message in ``BootstrapCI.note``.

    Returns
    -------
    dict of name to BootstrapCI
    """
    if method not in get_args(BootstrapMethod):
        raise ValueError(f"method must be one of {get_args(BootstrapMethod)}, got {method!r}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    resampler.cache()
    prepared: dict[str, tuple[Callable[..., float], FloatArray, ItemTerms | None]] = {}
    errors: dict[str, str] = {}
    for name, (statistic, values) in statistics.items():
        data = np.asarray(values, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != resampler.n_items:
            raise ValueError(f"{name}: data of shape {data.shape}, the resampler has {resampler.n_items} items")
        try:
            prepared[name] = (statistic, data, terms(statistic, data))
        except ValueError as error:
            if on_error == "raise":
                raise
            errors[name] = str(error)
    joint = _joint_distributions({n: t for n, (_, _, t) in prepared.items() if t is not None}, resampler)
    results: dict[str, BootstrapCI] = {}
    for name in statistics:
        common = functools.partial(
            BootstrapCI,
            confidence_level=confidence_level,
            method=method,
            n_resamples=resampler.n_resamples,
            seed=resampler.seed,
            n_items=resampler.n_items,
        )
        if name in errors:
            nan = float("nan")
            results[name] = common(nan, nan, nan, nan, distribution=np.full(0, nan), note=errors[name])
            continue
        statistic, data, item_terms = prepared[name]
        if item_terms is not None:
            estimate, values = item_terms.value(), joint[name]
        else:
            estimate, values = resampler.distribution(statistic, data)
        jackknife = functools.partial(_jackknife, statistic, data, item_terms)
        low, high = _interval(estimate, values, jackknife, method, confidence_level)
        finite = values[np.isfinite(values)]
        results[name] = common(
            estimate=estimate,
            low=low,
            high=high,
            standard_error=float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"),
            distribution=values,
        )
    return results


# --------------------------------------------------------------------------------------------
# Rows of two samples resampled independently
# --------------------------------------------------------------------------------------------


def two_sample_bootstrap(
    statistic: Callable[[NDArray[np.intp], NDArray[np.intp]], float], n_a: int, n_b: int, n_resamples: int, seed: int
) -> FloatArray:
    """Bootstrap distribution of ``statistic(rows_a, rows_b)``, the rows of each sample drawn with replacement.

    Resample ``k`` draws ``n_a`` row indices of the first sample, then ``n_b`` of the second, from
    ``numpy.random.default_rng(seed)``; ``statistic`` receives the index arrays (so it can, e.g., leave
    out pairs of copies of one row).
    """
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for k in range(n_resamples):
        rows_a = np.asarray(rng.integers(0, n_a, size=n_a), dtype=np.intp)
        rows_b = np.asarray(rng.integers(0, n_b, size=n_b), dtype=np.intp)
        values[k] = statistic(rows_a, rows_b)
    return values


def percentile_interval(values: ArrayLike, confidence_level: float = 0.95) -> tuple[float, float]:
    """The central percentile interval of a bootstrap distribution."""
    alpha = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(np.asarray(values, dtype=float), [alpha, 1.0 - alpha])
    return float(low), float(high)


def two_sample_bootstrap_ci(
    statistic: Callable[[FloatArray, FloatArray], float],
    sample_a: ArrayLike,
    sample_b: ArrayLike,
    n_resamples: int = 100,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(a, b)``, resampling the rows of each sample with replacement.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(0.0, 1.0, (200, 1)), rng.normal(0.5, 1.0, (200, 1))
    >>> low, high = two_sample_bootstrap_ci(lambda x, y: float(y.mean() - x.mean()), a, b, 200, seed=1)
    >>> bool(low < 0.5 < high)
    True
    """
    a, b = np.asarray(sample_a, dtype=float), np.asarray(sample_b, dtype=float)
    values = two_sample_bootstrap(lambda ia, ib: statistic(a[ia], b[ib]), len(a), len(b), n_resamples, seed)
    return percentile_interval(values, confidence_level)


# --------------------------------------------------------------------------------------------
# Raters, items or both over a rater x item table
# --------------------------------------------------------------------------------------------



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
