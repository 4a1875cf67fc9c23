"""Inter- and intra-rater agreement: Krippendorff's alpha, Fleiss' and Cohen's kappa, ICC, Gwet's AC1/AC2.

Input convention everywhere (the ``krippendorff`` package's): ``ratings`` is a 2-D array of
raters x items, ``NaN`` where a rater did not rate an item. Categories are numbers (encode
labels such as ``left`` / ``right`` as codes first; :func:`ratings_matrix` does that for the
tidy ratings table).

Every coefficient except the pairwise ones is a function of per-item sums ("item terms"): the
coefficient is ``finish(terms.sum(axis=0))``. That makes the item bootstrap a matrix product
(resample multiplicities x item terms), so 1,000 resamples cost about as much as one pass.
:func:`agreement_bootstrap_ci` hands those terms to the item bootstrap of :mod:`analysis.bootstrap` for
the statistics of this module (directly or wrapped in :func:`functools.partial`); any other callable
is evaluated once per resample.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from analysis.bootstrap import (
    BootstrapCI,
    BootstrapMethod,
    FloatArray,
    ItemResampler,
    ItemTerms,
    item_bootstrap_cis,
    value_or_nan,
)
from db.questions import ANALYSED_QUESTIONS, CORRECT, Level, Question, QuestionKind

LevelName = Literal["nominal", "ordinal", "interval", "ratio"]
WeightsKind = Literal["linear", "quadratic"]
IccForm = Literal["ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k"]
AgreementResample = Literal["items", "raters+items"]

__all__ = [
    "QUESTIONS",
    "Level",
    "Question",
    "RatingsMatrix",
    "agreement_bootstrap_ci",
    "agreement_bootstrap_cis",
    "agreement_table",
    "as_ratings",
    "cohen_kappa",
    "fleiss_kappa",
    "gwet_ac1",
    "icc",
    "icc_coefficient",
    "icc_unbalanced",
    "intra_rater_reliability",
    "item_terms",
    "krippendorff_alpha",
    "pairwise_cohen_kappa",
    "question_level",
    "ratings_matrix",
]


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def as_ratings(ratings: ArrayLike) -> FloatArray:
    """Validate a raters x items matrix and return it as float64 with ``NaN`` for missing.

    Parameters
    ----------
    ratings : array_like, shape (n_raters, n_items)
        Numeric ratings; ``NaN`` (or ``None``) where a rater did not rate an item.

    Returns
    -------
    numpy.ndarray
        A float64 copy-free view where possible.

    Examples
    --------
    >>> as_ratings([[1, None], [2, 3]])
    array([[ 1., nan],
           [ 2.,  3.]])
    """
    if isinstance(ratings, pd.DataFrame):
        ratings = ratings.to_numpy(dtype=float, na_value=np.nan)
    try:
        array = np.asarray(ratings, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            "ratings must be numeric (raters x items, NaN for missing); encode category labels as "
            f"numbers first: {error}"
        ) from error
    if array.ndim != 2:
        raise ValueError(f"ratings must be a 2-D array of raters x items, got {array.ndim} dimension(s)")
    if np.isinf(array).any():
        raise ValueError("ratings contain infinite values; use NaN for missing ratings")
    return array


def _observed_and_categories(ratings: FloatArray, categories: ArrayLike | None) -> tuple[FloatArray, FloatArray]:
    """Sorted distinct values that occur, and the categories (default: those values), validated."""
    observed = np.unique(ratings, sorted=False)
    observed = np.sort(observed[~np.isnan(observed)])
    if categories is None:
        return observed, observed
    cats = np.asarray(categories, dtype=np.float64)
    if cats.ndim != 1 or len(np.unique(cats)) != len(cats):
        raise ValueError("categories must be a 1-D sequence of distinct numbers")
    unknown = np.setdiff1d(observed, cats)
    if len(unknown):
        raise ValueError(f"ratings contain values outside categories: {unknown.tolist()}")
    return observed, cats


def _small_integers(values: FloatArray) -> bool:
    return len(values) > 0 and np.array_equal(values, np.round(values)) and values[-1] - values[0] <= 100_000


def _offsets(ratings: FloatArray, low: float, missing: int) -> NDArray[np.intp]:
    """Integer ratings as offsets from ``low``; NaN becomes ``missing``."""
    return np.where(np.isnan(ratings), float(missing), ratings - low).astype(np.intp)


def _encode(ratings: FloatArray, categories: ArrayLike | None) -> tuple[NDArray[np.intp], FloatArray]:
    """Map ratings to category codes 0..q-1 in the order of ``categories``; missing is coded ``q``."""
    observed, cats = _observed_and_categories(ratings, categories)
    q = len(cats)
    if _small_integers(observed):
        # A lookup table from offsets to codes (the usual 1-5 scores, 0/1 codes); beats a binary search.
        low, span = observed[0], int(observed[-1] - observed[0])
        table = np.full(span + 2, q, dtype=np.intp)
        position = {value: code for code, value in enumerate(cats.tolist())}
        table[(observed - low).astype(np.intp)] = [position[value] for value in observed.tolist()]
        return table[_offsets(ratings, low, span + 1)], cats
    order = np.argsort(cats, kind="stable")
    # searchsorted puts NaN after every category, so missing lands on code q without masking.
    positions = np.searchsorted(cats[order], ratings)
    return np.append(order, q)[positions], cats


def _category_counts(ratings: FloatArray, categories: ArrayLike | None) -> tuple[FloatArray, FloatArray]:
    """Items x categories counts (numpy bincount) and the categories, in their given order."""
    observed, cats = _observed_and_categories(ratings, categories)
    if not _small_integers(observed):
        codes, cats = _encode(ratings, cats)
        return _value_counts(codes, len(cats)), cats
    low, span = observed[0], int(observed[-1] - observed[0])
    n_items = ratings.shape[1]
    width = span + 2  # offsets 0..span, then missing
    flat = (_offsets(ratings, low, span + 1) + width * np.arange(n_items)).ravel()
    raw = np.bincount(flat, minlength=n_items * width).reshape(n_items, width)
    columns = cats - low
    inside = (columns >= 0) & (columns <= span)
    counts = np.zeros((n_items, len(cats)))
    counts[:, inside] = raw[:, columns[inside].astype(np.intp)]
    return counts, cats


def _value_counts(codes: NDArray[np.intp], n_categories: int) -> FloatArray:
    """Items x categories matrix: how many raters put each item in each category (numpy bincount)."""
    n_items = codes.shape[1]
    width = n_categories + 1  # the last bin collects missing ratings
    flat = (codes + width * np.arange(n_items)).ravel()
    counts = np.bincount(flat, minlength=n_items * width).reshape(n_items, width)
    return counts[:, :n_categories].astype(np.float64)


# --------------------------------------------------------------------------------------------
# Item terms (:class:`analysis.bootstrap.ItemTerms`): statistic = finish(sum over items of terms)
# --------------------------------------------------------------------------------------------


def _check_pairable(counts: FloatArray, statistic: str) -> None:
    if not (counts.sum(axis=1) >= 2).any():
        raise ValueError(f"{statistic} needs at least one item rated by two or more raters")


def _alpha_distances(level: Level | LevelName, values: FloatArray, n_v: FloatArray) -> FloatArray:
    """Distance matrices delta^2(c, k), shape (..., V, V); ordinal depends on the marginals n_v."""
    n_values = len(values)
    if level == "nominal":
        return 1.0 - np.eye(n_values)
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    if level == "ratio":
        total = values[:, None] + values[None, :]
        diff = values[:, None] - values[None, :]
        return np.divide(diff, total, out=np.zeros_like(diff), where=total != 0) ** 2
    # ordinal: (sum_{g=c..k} n_g - (n_c + n_k) / 2) ** 2, from cumulative sums, batched over n_v.
    cumulative = np.concatenate([np.zeros((*n_v.shape[:-1], 1)), np.cumsum(n_v, axis=-1)], axis=-1)
    low = np.minimum.outer(np.arange(n_values), np.arange(n_values))
    high = np.maximum.outer(np.arange(n_values), np.arange(n_values))
    between = cumulative[..., high + 1] - cumulative[..., low]
    return (between - (n_v[..., :, None] + n_v[..., None, :]) / 2.0) ** 2


def _alpha_terms(ratings: ArrayLike, level: Level | LevelName, *, value_domain: ArrayLike | None = None) -> ItemTerms:
    if level not in get_args(LevelName):
        raise ValueError(f"level must be one of {get_args(LevelName)}, got {level!r}")
    data = as_ratings(ratings)
    counts, values = _category_counts(data, value_domain)
    if len(values) < 2:
        raise ValueError("Krippendorff's alpha needs at least two distinct values in the value domain")
    if level != "nominal":
        order = np.argsort(values)
        if not np.array_equal(order, np.arange(len(values))):
            raise ValueError(f"value_domain must be sorted for level {level!r}")
    _check_pairable(counts, "Krippendorff's alpha")
    pairable = counts.sum(axis=1)
    weight = np.where(pairable >= 2, 1.0 / np.maximum(pairable - 1.0, 1.0), 0.0)
    n_values = len(values)
    # Coincidences of item u: (c_u c_u^T - diag(c_u)) / (m_u - 1).
    coincidences = (counts[:, :, None] * counts[:, None, :]).reshape(len(counts), n_values * n_values)
    coincidences[:, :: n_values + 1] -= counts
    coincidences *= weight[:, None]

    def finish(sums: FloatArray) -> FloatArray:
        o = sums.reshape(*sums.shape[:-1], n_values, n_values)
        n_v = o.sum(axis=-1)
        n = n_v.sum(axis=-1)
        d = _alpha_distances(level, values, n_v)
        observed = (o * d).sum(axis=(-2, -1))
        expected = (n_v[..., :, None] * n_v[..., None, :] * d).sum(axis=(-2, -1))
        return 1.0 - (n - 1.0) * observed / expected

    return ItemTerms(coincidences, finish)


def krippendorff_alpha(ratings: ArrayLike, level: Level | LevelName, *, value_domain: ArrayLike | None = None) -> float:
    """Krippendorff's alpha for raters x items with missing data.

    Coincidence-matrix formulation: value counts per item by ``numpy.bincount``, one
    coincidence matrix, the distance matrix of the level. Equals ``krippendorff.alpha``.

    Parameters
    ----------
    ratings : array_like, shape (n_raters, n_items)
        Numeric ratings, ``NaN`` where missing.
    level : Level or {"nominal", "ordinal", "interval", "ratio"}
        Level of measurement (:class:`db.questions.Level`); no default, because it is a choice about the data.
    value_domain : array_like, optional
        All possible values (sorted unless nominal). Defaults to the values that occur; only the
        ordinal level depends on it through values nobody used (they have zero marginals).

    Returns
    -------
    float
        Alpha; 1 is perfect agreement, 0 is chance.

    Raises
    ------
    ValueError
        Fewer than two distinct values, or no item rated by two raters.

    Examples
    --------
    Krippendorff's (2011) example, also in the ``krippendorff`` package docs:

    >>> nan = float("nan")
    >>> data = [[nan, nan, nan, nan, nan, 3, 4, 1, 2, 1, 1, 3, 3, nan, 3],
    ...         [1, nan, 2, 1, 3, 3, 4, 3, nan, nan, nan, nan, nan, nan, nan],
    ...         [nan, nan, 2, 1, 3, 4, 4, nan, 2, 1, 1, 3, 3, nan, 4]]
    >>> round(krippendorff_alpha(data, "nominal"), 6)
    0.691358
    >>> round(krippendorff_alpha(data, "interval"), 6)
    0.810845
    """
    return _alpha_terms(ratings, level, value_domain=value_domain).value()


def _pa_pi_terms(counts: FloatArray, weights: FloatArray) -> FloatArray:
    """Items' terms shared by Fleiss' kappa and Gwet's AC: [pa_u 1{r>=2}, 1{r>=2}, c_uk / r_u, 1{r>=1}]."""
    r = counts.sum(axis=1)
    two_or_more = r >= 2
    weighted = counts @ weights.T
    with np.errstate(divide="ignore", invalid="ignore"):
        pa = np.where(two_or_more, (counts * (weighted - 1.0)).sum(axis=1) / (r * (r - 1.0)), 0.0)
        proportions = np.where(r[:, None] >= 1, counts / r[:, None], 0.0)
    return np.column_stack([pa, two_or_more, proportions, r >= 1]).astype(np.float64)


def _fleiss_terms(ratings: ArrayLike) -> ItemTerms:
    data = as_ratings(ratings)
    counts, categories = _category_counts(data, None)
    _check_pairable(counts, "Fleiss' kappa")
    q = len(categories)

    def finish(sums: FloatArray) -> FloatArray:
        pa = sums[..., 0] / sums[..., 1]
        pi = sums[..., 2 : 2 + q] / sums[..., -1:]
        pe = (pi**2).sum(axis=-1)
        return (pa - pe) / (1.0 - pe)

    return ItemTerms(_pa_pi_terms(counts, np.eye(q)), finish)


def fleiss_kappa(ratings: ArrayLike) -> float:
    """Fleiss' kappa for raters x items; equals ``statsmodels.stats.inter_rater.fleiss_kappa`` on complete data.

    Rule for items with fewer raters (Gwet 2014, section 2.5; the generalisation irrCAC uses):
    observed agreement is the mean over items rated by two or more raters of
    ``sum_k r_ik (r_ik - 1) / (r_i (r_i - 1))``; the category proportions ``pi_k`` are the mean over
    items rated at least once of ``r_ik / r_i``; chance agreement is ``sum_k pi_k**2``. Items rated
    once count for the proportions only; unrated items are ignored.

    Parameters
    ----------
    ratings : array_like, shape (n_raters, n_items)
        Category codes, ``NaN`` where missing.

    Returns
    -------
    float

    Examples
    --------
    Gwet's 4 raters x 12 subjects (Handbook of Inter-Rater Reliability, 4th ed., p. 120):

    >>> nan = float("nan")
    >>> data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    ...         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, nan],
    ...         [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, 3],
    ...         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]
    >>> round(fleiss_kappa(data), 3)
    0.761
    """
    return _fleiss_terms(ratings).value()


def _category_weights(categories: FloatArray, weights: WeightsKind | ArrayLike | None) -> FloatArray:
    """Agreement weights (1 on the diagonal) over the given categories, as in Gwet (2014) / irrCAC."""
    q = len(categories)
    if weights is None:
        return np.eye(q)
    if isinstance(weights, str):
        if weights not in get_args(WeightsKind):
            raise ValueError(f"weights must be None, {get_args(WeightsKind)} or a q x q array, got {weights!r}")
        span = categories.max() - categories.min()
        if span == 0:
            return np.ones((q, q))
        diff = np.abs(categories[:, None] - categories[None, :]) / span
        return 1.0 - diff if weights == "linear" else 1.0 - diff**2
    matrix = np.asarray(weights, dtype=np.float64)
    if matrix.shape != (q, q):
        raise ValueError(f"weights matrix must be {q} x {q} (one row per category), got {matrix.shape}")
    return matrix


def _gwet_terms(ratings: ArrayLike, categories: ArrayLike, weights: WeightsKind | ArrayLike | None = None) -> ItemTerms:
    data = as_ratings(ratings)
    counts, cats = _category_counts(data, categories)
    q = len(cats)
    if q < 2:
        raise ValueError("Gwet's AC needs at least two categories")
    w = _category_weights(cats, weights)
    _check_pairable(counts, "Gwet's AC")
    scale = w.sum() / (q * (q - 1.0))

    def finish(sums: FloatArray) -> FloatArray:
        pa = sums[..., 0] / sums[..., 1]
        pi = sums[..., 2 : 2 + q] / sums[..., -1:]
        pe = scale * (pi * (1.0 - pi)).sum(axis=-1)
        return (pa - pe) / (1.0 - pe)

    return ItemTerms(_pa_pi_terms(counts, w), finish)


def gwet_ac1(ratings: ArrayLike, categories: ArrayLike, weights: WeightsKind | ArrayLike | None = None) -> float:
    """Gwet's AC1 (unweighted) or AC2 (weighted) for raters x items with missing data.

    Observed agreement as in :func:`fleiss_kappa` but with weighted counts
    ``r*_ik = sum_l w_kl r_il``; chance agreement ``pe = T_w / (q (q - 1)) sum_k pi_k (1 - pi_k)``
    with ``T_w`` the sum of the weights and ``q`` the number of categories (Gwet 2014).

    Parameters
    ----------
    ratings : array_like, shape (n_raters, n_items)
        Category values, ``NaN`` where missing.
    categories : array_like
        All possible categories (``q`` enters chance agreement, so unused ones matter).
    weights : {None, "linear", "quadratic"} or array_like, optional
        ``None`` gives AC1. ``"linear"``: ``1 - |k - l| / (max - min)``; ``"quadratic"``:
        ``1 - (k - l)**2 / (max - min)**2`` on the category values; or a q x q matrix.

    Returns
    -------
    float

    Examples
    --------
    Gwet's 4 raters x 12 subjects (Handbook, 4th ed., p. 120): AC1 = 0.775.

    >>> nan = float("nan")
    >>> data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    ...         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, nan],
    ...         [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, 3],
    ...         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]
    >>> round(gwet_ac1(data, categories=[1, 2, 3, 4, 5]), 3)
    0.775
    >>> round(gwet_ac1(data, categories=[1, 2, 3, 4, 5], weights="quadratic"), 3)
    0.914
    """
    return _gwet_terms(ratings, categories, weights).value()


def _kappa_from_confusion(confusion: FloatArray, disagreement: FloatArray) -> FloatArray:
    """Cohen's kappa from confusion matrices (..., q, q) and a disagreement-weight matrix (q, q)."""
    total = confusion.sum(axis=(-2, -1))
    rows = confusion.sum(axis=-1)
    cols = confusion.sum(axis=-2)
    expected = rows[..., :, None] * cols[..., None, :] / total[..., None, None]
    return 1.0 - (confusion * disagreement).sum(axis=(-2, -1)) / (expected * disagreement).sum(axis=(-2, -1))


def _disagreement_weights(q: int, weights: WeightsKind | None) -> FloatArray:
    """scikit-learn's weight matrices, on label positions (not values)."""
    index = np.arange(q)
    if weights is None:
        return 1.0 - np.eye(q)
    if weights == "linear":
        return np.abs(index[:, None] - index[None, :]).astype(np.float64)
    if weights == "quadratic":
        return ((index[:, None] - index[None, :]) ** 2).astype(np.float64)
    raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")


def _cohen_terms(
    a: ArrayLike, b: ArrayLike, weights: WeightsKind | None = None, labels: ArrayLike | None = None
) -> ItemTerms:
    pair = as_ratings(np.vstack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)]))
    codes, cats = _encode(pair, labels)
    q = len(cats)
    disagreement = _disagreement_weights(q, weights)
    both = (codes < q).all(axis=0)
    if not both.any():
        raise ValueError("Cohen's kappa needs at least one item rated by both raters")
    terms = np.zeros((pair.shape[1], q * q))
    cells = codes[0, both] * q + codes[1, both]
    terms[np.flatnonzero(both), cells] = 1.0

    def finish(sums: FloatArray) -> FloatArray:
        return _kappa_from_confusion(sums.reshape(*sums.shape[:-1], q, q), disagreement)

    return ItemTerms(terms, finish)


def cohen_kappa(
    a: ArrayLike, b: ArrayLike, weights: WeightsKind | None = None, labels: ArrayLike | None = None
) -> float:
    """Cohen's kappa between two raters; equals ``sklearn.metrics.cohen_kappa_score``.

    Parameters
    ----------
    a, b : array_like, shape (n_items,)
        The two raters' category values; items where either is ``NaN`` are left out.
    weights : {None, "linear", "quadratic"}
        Disagreement weights on label positions ``|i - j|`` or ``(i - j)**2``, as scikit-learn.
    labels : array_like, optional
        Ordered labels; default the sorted values that occur. A value outside ``labels`` is an
        error here (scikit-learn drops it silently).

    Returns
    -------
    float

    Examples
    --------
    >>> cohen_kappa([1, 2, 3, 3], [1, 2, 3, 2])
    0.6363636363636364
    >>> round(cohen_kappa([1, 2, 3, 3], [1, 2, 3, 2], weights="quadratic"), 4)
    0.8
    """
    return _cohen_terms(a, b, weights, labels).value()


def pairwise_cohen_kappa(
    ratings: ArrayLike, weights: WeightsKind | None = None, labels: ArrayLike | None = None
) -> FloatArray:
    """Rater x rater matrix of Cohen's kappa over the items each pair both rated.

    One-hot codes and a single matrix product give every pair's confusion matrix at once.

    Parameters
    ----------
    ratings : array_like, shape (n_raters, n_items)
    weights, labels
        As in :func:`cohen_kappa`; ``labels`` default to the values that occur anywhere.

    Returns
    -------
    numpy.ndarray, shape (n_raters, n_raters)
        ``NaN`` where two raters share no item or kappa is undefined (0 / 0).

    Examples
    --------
    >>> pairwise_cohen_kappa([[1, 2, 3, 3], [1, 2, 3, 2]]).round(4)
    array([[1.    , 0.6364],
           [0.6364, 1.    ]])
    """
    data = as_ratings(ratings)
    codes, cats = _encode(data, labels)
    n_raters, n_items = data.shape
    q = len(cats)
    onehot = np.zeros((n_raters, q, n_items))
    rater_index, item_index = np.nonzero(codes < q)
    onehot[rater_index, codes[rater_index, item_index], item_index] = 1.0
    flat = onehot.reshape(n_raters * q, n_items)
    confusion = (flat @ flat.T).reshape(n_raters, q, n_raters, q).transpose(0, 2, 1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _kappa_from_confusion(confusion, _disagreement_weights(q, weights))


_ICC_DESCRIPTIONS: dict[str, str] = {
    "ICC1": "Single raters absolute",
    "ICC2": "Single random raters",
    "ICC3": "Single fixed raters",
    "ICC1k": "Average raters absolute",
    "ICC2k": "Average random raters",
    "ICC3k": "Average fixed raters",
}


def _complete_items(ratings: ArrayLike) -> FloatArray:
    data = as_ratings(ratings)
    complete = data[:, ~np.isnan(data).any(axis=0)]
    if complete.shape[0] < 2 or complete.shape[1] < 2:
        raise ValueError(
            f"ICC needs at least 2 raters and 2 items rated by all of them; got {complete.shape[0]} raters "
            f"and {complete.shape[1]} complete items"
        )
    return complete


def _mean_squares(sums: FloatArray, k: int) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Two-way ANOVA mean squares (items, raters, error, within) and n from ICC item terms."""
    square_sum, row_square_sum, column_sums, n = sums[..., 0], sums[..., 1], sums[..., 2:-1], sums[..., -1]
    grand = column_sums.sum(axis=-1)
    correction = grand**2 / (n * k)
    ss_total = square_sum - correction
    ss_items = row_square_sum / k - correction
    ss_raters = (column_sums**2).sum(axis=-1) / n - correction
    ss_error = ss_total - ss_items - ss_raters
    msb = ss_items / (n - 1)
    msj = ss_raters / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    msw = (ss_raters + ss_error) / (n * (k - 1))
    return msb, msj, mse, msw, n


def _icc_values(sums: FloatArray, k: int) -> dict[str, FloatArray]:
    msb, msj, mse, msw, n = _mean_squares(sums, k)
    return {
        "ICC1": (msb - msw) / (msb + (k - 1) * msw),
        "ICC2": (msb - mse) / (msb + (k - 1) * mse + k * (msj - mse) / n),
        "ICC3": (msb - mse) / (msb + (k - 1) * mse),
        "ICC1k": (msb - msw) / msb,
        "ICC2k": (msb - mse) / (msb + (msj - mse) / n),
        "ICC3k": (msb - mse) / msb,
    }


def _icc_terms_matrix(complete: FloatArray) -> FloatArray:
    centred = complete - complete.mean()  # sums of squares are shift-invariant; centring avoids cancellation
    return np.column_stack([(centred**2).sum(axis=0), centred.sum(axis=0) ** 2, centred.T, np.ones(centred.shape[1])])


def _icc_terms(ratings: ArrayLike, form: IccForm = "ICC2") -> ItemTerms:
    if form not in _ICC_DESCRIPTIONS:
        raise ValueError(f"form must be one of {list(_ICC_DESCRIPTIONS)}, got {form!r}")
    data = as_ratings(ratings)
    complete = _complete_items(data)
    k = complete.shape[0]
    terms = np.zeros((data.shape[1], k + 3))
    terms[~np.isnan(data).any(axis=0)] = _icc_terms_matrix(complete)
    return ItemTerms(terms, lambda sums: _icc_values(sums, k)[form])


def icc_coefficient(ratings: ArrayLike, form: IccForm = "ICC2") -> float:
    """One Shrout-Fleiss ICC form on the items every rater rated (see :func:`icc`).

    Examples
    --------
    >>> round(icc_coefficient([[1, 2, 3, 4], [1, 3, 3, 5]], "ICC3"), 4)
    0.9231
    """
    return _icc_terms(ratings, form).value()


def icc(ratings: ArrayLike, confidence_level: float = 0.95) -> pd.DataFrame:
    """All six Shrout-Fleiss intraclass correlations with F tests and confidence intervals.

    Items are the targets, raters the judges. Items not rated by every rater are dropped
    (listwise, as ``pingouin.intraclass_corr(..., nan_policy="omit")``). Values, F, degrees of
    freedom, p-values and intervals equal pingouin 0.5.5 (McGraw & Wong 1996 intervals; ICC2
    uses the Satterthwaite approximation).

    Parameters
    ----------
    ratings : array_like, shape (n_raters, n_items)
    confidence_level : float
        Of the intervals, default 0.95.

    Returns
    -------
    pandas.DataFrame
        Columns ``Type, Description, ICC, F, df1, df2, pval, ci_low, ci_high``; one row per form.

    Examples
    --------
    >>> table = icc([[1, 2, 3, 4, 5], [2, 2, 3, 5, 5], [1, 3, 4, 4, 5]])
    >>> table[["Type", "ICC"]].round(3).to_numpy().tolist()[:3]
    [['ICC1', 0.887], ['ICC2', 0.887], ['ICC3', 0.887]]
    """
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    complete = _complete_items(ratings)
    k, n = complete.shape
    sums = _icc_terms_matrix(complete).sum(axis=0)
    values = _icc_values(sums, k)
    msb, msj, mse, msw, _ = (float(v) for v in _mean_squares(sums, k))
    f1 = msb / msw
    f3 = msb / mse
    df1, df1_within, df_error = n - 1, n * (k - 1), (n - 1) * (k - 1)
    alpha = 1 - confidence_level
    fdist = stats.f
    f1_low = f1 / fdist.ppf(1 - alpha / 2, df1, df1_within)
    f1_high = f1 * fdist.ppf(1 - alpha / 2, df1_within, df1)
    f3_low = f3 / fdist.ppf(1 - alpha / 2, df1, df_error)
    f3_high = f3 * fdist.ppf(1 - alpha / 2, df_error, df1)
    icc2 = float(values["ICC2"])
    fj = msj / mse
    vn = df_error * (k * icc2 * fj + n * (1 + (k - 1) * icc2) - k * icc2) ** 2
    vd = df1 * k**2 * icc2**2 * fj**2 + (n * (1 + (k - 1) * icc2) - k * icc2) ** 2
    v = vn / vd
    f2_high = fdist.ppf(1 - alpha / 2, n - 1, v)
    f2_low = fdist.ppf(1 - alpha / 2, v, n - 1)
    low2 = n * (msb - f2_high * mse) / (f2_high * (k * msj + (k * n - k - n) * mse) + n * msb)
    high2 = n * (f2_low * msb - mse) / (k * msj + (k * n - k - n) * mse + n * f2_low * msb)

    def consistency(f_value: float) -> float:
        return (f_value - 1) / (f_value + k - 1)

    intervals = [
        (consistency(f1_low), consistency(f1_high)),
        (low2, high2),
        (consistency(f3_low), consistency(f3_high)),
        (1 - 1 / f1_low, 1 - 1 / f1_high),
        (low2 * k / (1 + low2 * (k - 1)), high2 * k / (1 + high2 * (k - 1))),
        (1 - 1 / f3_low, 1 - 1 / f3_high),
    ]
    p1 = fdist.sf(f1, df1, df1_within)
    p3 = fdist.sf(f3, df1, df_error)
    return pd.DataFrame(
        {
            "Type": list(_ICC_DESCRIPTIONS),
            "Description": list(_ICC_DESCRIPTIONS.values()),
            "ICC": [float(values[form]) for form in _ICC_DESCRIPTIONS],
            "F": [f1, f3, f3, f1, f3, f3],
            "df1": [df1] * 6,
            "df2": [df1_within, df_error, df_error, df1_within, df_error, df_error],
            "pval": [p1, p3, p3, p1, p3, p3],
            "ci_low": [lo for lo, _ in intervals],
            "ci_high": [hi for _, hi in intervals],
        }
    )


def icc_unbalanced(ratings: ArrayLike, confidence_level: float = 0.95) -> pd.DataFrame:
    """One-way random ICC(1) and ICC(1,k0) for sparse (K-of-N) designs: every rating is used.

    Items are the targets; each item may be rated by a different number and set of raters (raters
    are not identified, as in Shrout & Fleiss's case 1). Unbalanced one-way ANOVA (Searle 1971):
    ``MSB = sum n_i (m_i - m)^2 / (C - 1)``, ``MSW = sum (y - m_i)^2 / (N - C)``,
    ``n0 = (N - sum n_i^2 / N) / (C - 1)``; ``ICC1 = (MSB - MSW) / (MSB + (n0 - 1) MSW)``, ``ICC1k``
    the reliability of the mean of ``n0`` ratings, ``(MSB - MSW) / MSB``. Confidence intervals are the
    F intervals with ``n0`` in place of k (Donner 1986). With every item rated by every rater this is
    pingouin's ``ICC1`` / ``ICC1k`` exactly. Items rated once add to ``C`` and ``N`` but not to MSW.

    Returns
    -------
    pandas.DataFrame
        ``Type, Description, ICC, F, df1, df2, pval, ci_low, ci_high, n_items, n_ratings, n0``.

    Examples
    --------
    >>> table = icc_unbalanced([[1, 2, 3, np.nan], [1, np.nan, 4, 5], [np.nan, 2, 3, 5]])
    >>> round(float(table.loc[0, "ICC"]), 4), float(table.loc[0, "n0"])
    (0.9525, 2.222222222222222)
    """
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    data = as_ratings(ratings)
    counts = (~np.isnan(data)).sum(axis=0).astype(float)
    used = counts > 0
    data, counts = data[:, used], counts[used]
    n_items, n_ratings = len(counts), float(counts.sum())
    if n_items < 2 or n_ratings - n_items < 1:
        raise ValueError(
            f"ICC needs at least 2 items and one item rated twice; got {n_items} items, {int(n_ratings)} ratings"
        )
    centred = data - np.nanmean(data)
    item_means = np.nansum(centred, axis=0) / counts
    grand = np.nansum(centred) / n_ratings
    msb = float((counts * (item_means - grand) ** 2).sum()) / (n_items - 1)
    msw = float(np.nansum((centred - item_means) ** 2)) / (n_ratings - n_items)
    n0 = (n_ratings - float((counts**2).sum()) / n_ratings) / (n_items - 1)
    df1, df2 = n_items - 1, n_ratings - n_items
    f_value = msb / msw if msw > 0 else np.inf
    alpha = 1 - confidence_level
    f_low = f_value / stats.f.ppf(1 - alpha / 2, df1, df2)
    f_high = f_value * stats.f.ppf(1 - alpha / 2, df2, df1)
    rows = [
        ("ICC1", "Single raters absolute (one-way, unbalanced)", (msb - msw) / (msb + (n0 - 1) * msw),
         (f_low - 1) / (f_low + n0 - 1), (f_high - 1) / (f_high + n0 - 1)),
        ("ICC1k", f"Average of n0 = {n0:.2f} raters (one-way, unbalanced)", (msb - msw) / msb,
         1 - 1 / f_low, 1 - 1 / f_high),
    ]  # fmt: skip
    return pd.DataFrame(
        {
            "Type": [r[0] for r in rows],
            "Description": [r[1] for r in rows],
            "ICC": [r[2] for r in rows],
            "F": f_value,
            "df1": df1,
            "df2": df2,
            "pval": float(stats.f.sf(f_value, df1, df2)),
            "ci_low": [r[3] for r in rows],
            "ci_high": [r[4] for r in rows],
            "n_items": n_items,
            "n_ratings": int(n_ratings),
            "n0": n0,
        }
    )


_DECOMPOSABLE: dict[Callable[..., float], Callable[..., ItemTerms]] = {
    krippendorff_alpha: _alpha_terms,
    fleiss_kappa: _fleiss_terms,
    gwet_ac1: _gwet_terms,
    icc_coefficient: _icc_terms,
}


def item_terms(statistic: Callable[..., float], ratings: ArrayLike) -> ItemTerms | None:
    """The item-terms form of ``statistic`` on ``ratings``, or ``None`` if it has none.

    ``statistic`` is one of this module's coefficients (:func:`krippendorff_alpha`,
    :func:`fleiss_kappa`, :func:`gwet_ac1`, :func:`icc_coefficient`), possibly wrapped in
    :func:`functools.partial` with its other arguments.
    """
    args: tuple[object, ...] = ()
    keywords: dict[str, object] = {}
    function = statistic
    while isinstance(function, functools.partial):
        args = (*function.args, *args)
        keywords = {**function.keywords, **keywords}
        function = function.func
    builder = _DECOMPOSABLE.get(function)
    return None if builder is None else builder(ratings, *args, **keywords)


# --------------------------------------------------------------------------------------------
# Bootstrap over items
# --------------------------------------------------------------------------------------------


def agreement_bootstrap_cis(
    statistics: Mapping[str, tuple[Callable[..., float], ArrayLike]],
    resampler: ItemResampler,
    method: BootstrapMethod = "percentile",
    *,
    confidence_level: float = 0.95,
    on_error: Literal["raise", "record"] = "raise",
) -> dict[str, BootstrapCI]:
    """Item-bootstrap intervals of several agreement statistics from one set of item resamples.

    :func:`analysis.bootstrap.item_bootstrap_cis` with this module's item terms (:func:`item_terms`):
    the coefficients of this module share one matrix product, other callables are evaluated
    resample by resample. Every ``ratings`` is a raters x items matrix (:func:`as_ratings`).
    """
    checked = {name: (statistic, as_ratings(ratings)) for name, (statistic, ratings) in statistics.items()}
    return item_bootstrap_cis(
        checked, resampler, method, terms=item_terms, confidence_level=confidence_level, on_error=on_error
    )


def agreement_bootstrap_ci(
    statistic: Callable[..., float],
    ratings: ArrayLike,
    n_resamples: int,
    seed: int,
    method: BootstrapMethod = "percentile",
    *,
    confidence_level: float = 0.95,
) -> BootstrapCI:
    """Bootstrap confidence interval of an agreement statistic, resampling items (never raters).

    Parameters
    ----------
    statistic : callable
        ``statistic(ratings) -> float``. This module's coefficients (also inside
        :func:`functools.partial`) are computed for all resamples at once; any other callable is
        called once per resample (and once per left-out item for BCa). Resamples where it is
        undefined are dropped from the interval.
    ratings : array_like, shape (n_raters, n_items)
    n_resamples : int
    seed : int
        Seeds ``numpy.random.default_rng``; equal seeds give equal intervals.
    method : {"percentile", "bca"}
        BCa follows Efron & Tibshirani (1993) with a leave-one-item-out jackknife, as
        ``scipy.stats.bootstrap``.
    confidence_level : float

    Returns
    -------
    BootstrapCI

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.integers(1, 6, 200)
    >>> data = np.clip(truth + rng.integers(-1, 2, (3, 200)), 1, 5).astype(float)
    >>> result = agreement_bootstrap_ci(functools.partial(krippendorff_alpha, level="ordinal"), data, 1000, seed=1)
    >>> result.low < result.estimate < result.high
    True
    """
    data = as_ratings(ratings)
    resampler = ItemResampler(data.shape[1], n_resamples, seed)
    one = {"statistic": (statistic, data)}
    return agreement_bootstrap_cis(one, resampler, method, confidence_level=confidence_level)["statistic"]


# --------------------------------------------------------------------------------------------
# The tidy ratings table
# --------------------------------------------------------------------------------------------


#: The rated questions of the tidy table and their levels of measurement: :data:`db.questions.ANALYSED_QUESTIONS`.
QUESTIONS: dict[str, Question] = ANALYSED_QUESTIONS


def question_level(question: Question) -> Level:
    """The question's level of measurement (free text has none and cannot be analysed for agreement)."""
    if question.level is None:
        raise ValueError(f"question {question.key!r} ({question.kind}) has no level of measurement")
    return question.level


@dataclass(frozen=True)
class RatingsMatrix:
    """Raters x items ratings of one question, with the rater and item ids of rows and columns."""

    values: FloatArray
    raters: tuple[str, ...]
    items: tuple[str, ...]


def question_values(frame: pd.DataFrame, question: Question) -> FloatArray:
    """The numeric answers of one question, ``NaN`` where missing or not in the question's codes."""
    column = frame[question.key]
    codes = question.codes
    if codes is not None:
        return column.map(codes).to_numpy(dtype=float, na_value=np.nan)
    return column.to_numpy(dtype=float, na_value=np.nan)


def ratings_matrix(frame: pd.DataFrame, question: str | Question) -> RatingsMatrix:
    """Pivot one question of the tidy ratings table to raters x items (``NaN`` where not rated).

    Rows with the same rater and item (which the table contract excludes) keep the last answer.
    """
    spec = QUESTIONS[question] if isinstance(question, str) else question
    rater_codes, raters = pd.factorize(frame["rater"], sort=True)
    item_codes, items = pd.factorize(frame["item"], sort=True)
    values = np.full((len(raters), len(items)), np.nan)
    values[rater_codes, item_codes] = question_values(frame, spec)
    return RatingsMatrix(values, tuple(map(str, raters)), tuple(map(str, items)))


def _agreement_statistics(question: Question) -> dict[str, Callable[..., float]]:
    """The statistics its level of measurement calls for (the report's prose names the same choice)."""
    level = question_level(question)
    statistics: dict[str, Callable[..., float]] = {
        f"krippendorff_alpha_{level}": functools.partial(krippendorff_alpha, level=level),
        "fleiss_kappa": fleiss_kappa,
    }
    if level == Level.NOMINAL:
        statistics["gwet_ac1"] = functools.partial(gwet_ac1, categories=question.categories)
    else:
        statistics["gwet_ac2_quadratic"] = functools.partial(
            gwet_ac1, categories=question.categories, weights="quadratic"
        )
        statistics["icc2_complete_items"] = functools.partial(icc_coefficient, form="ICC2")
    return statistics


def _rows_for_group(
    frame: pd.DataFrame,
    questions: Sequence[str],
    resampler_for: Callable[[int], ItemResampler],
    method: BootstrapMethod,
    confidence_level: float,
    resample: AgreementResample = "items",
) -> list[dict[str, object]]:
    rater_codes, raters = pd.factorize(frame["rater"], sort=True)
    item_codes, items = pd.factorize(frame["item"], sort=True)
    if len(items) < 2:
        return []
    statistics: dict[tuple[str, str], tuple[Callable[..., float], FloatArray]] = {}
    bases: dict[str, dict[str, object]] = {}
    for name in questions:
        question = QUESTIONS[name]
        values = np.full((len(raters), len(items)), np.nan)
        values[rater_codes, item_codes] = question_values(frame, question)
        rated = ~np.isnan(values)
        bases[name] = {
            "question": name,
            "n_raters": int(rated.any(axis=1).sum()),
            "n_items": int((rated.sum(axis=0) >= 2).sum()),
            "n_ratings": int(rated.sum()),
        }
        for statistic_name, statistic in _agreement_statistics(question).items():
            statistics[(name, statistic_name)] = (statistic, values)
    keyed = {f"{q}/{s}": value for (q, s), value in statistics.items()}
    results = agreement_bootstrap_cis(
        keyed, resampler_for(len(items)), method, confidence_level=confidence_level, on_error="record"
    )
    if resample == "raters+items":
        z = float(special.ndtri(0.5 + confidence_level / 2))
        for key, (statistic, values) in keyed.items():
            result = results[key]
            se = math.sqrt(result.standard_error**2 + _rater_jackknife_variance(statistic, values))
            results[key] = dataclasses.replace(result, low=result.estimate - z * se, high=result.estimate + z * se)
    return [
        {
            **bases[question],
            "statistic": statistic_name,
            "estimate": results[f"{question}/{statistic_name}"].estimate,
            "ci_low": results[f"{question}/{statistic_name}"].low,
            "ci_high": results[f"{question}/{statistic_name}"].high,
            "ci_resample": resample,
            "note": results[f"{question}/{statistic_name}"].note,
        }
        for question, statistic_name in statistics
    ]


def _rater_jackknife_variance(statistic: Callable[..., float], values: FloatArray) -> float:
    """Leave-one-rater-out jackknife variance, ``(R - 1) / R * sum (theta_-r - mean)^2``; NaN-safe."""
    n_raters = values.shape[0]
    if n_raters < 3:
        return float("nan")
    keep = ~np.eye(n_raters, dtype=bool)
    theta = np.array([value_or_nan(statistic, values[row]) for row in keep])
    theta = theta[np.isfinite(theta)]
    if len(theta) < 2:
        return float("nan")
    return float((len(theta) - 1) / len(theta) * ((theta - theta.mean()) ** 2).sum())


def agreement_table(
    frame: pd.DataFrame,
    *,
    by: Literal["model", "specialty"] | None = None,
    questions: Sequence[str] = tuple(QUESTIONS),
    n_resamples: int = 1000,
    seed: int = 0,
    method: BootstrapMethod = "percentile",
    confidence_level: float = 0.95,
    item_kinds: Sequence[str] = ("normal",),
    resample: AgreementResample = "items",
) -> pd.DataFrame:
    """Inter-rater agreement per question (optionally per model or per rater specialty) with bootstrap CIs.

    ``resample="items"`` (default): items resampled, raters fixed; the CI speaks for new items
    rated by these raters. ``"raters+items"``: the CI also speaks for new raters: a normal interval
    with ``SE^2 = SE_items^2 (bootstrap) + leave-one-rater-out jackknife variance`` (rater jackknife as
    Gwet 2008 recommends for agreement coefficients; resampling raters with replacement would pair a
    rater with their own copy). Slightly conservative (the error term enters both parts). The
    ``ci_resample`` column names the choice.

    Only ``item_kinds`` items count (default ``normal``: attention items are deliberately broken
    and repeats would count an item twice). Per model keeps that model's items; per specialty
    keeps the raters of that specialty. Ordinal questions get Krippendorff's alpha (ordinal),
    Fleiss' kappa, Gwet's AC2 (quadratic weights) and ICC(2,1) on the items every rater rated;
    ``which_generated`` (left / right) gets alpha (nominal), Fleiss' kappa and AC1. Resample
    indices are drawn once per item set and shared by all its statistics.

    Returns
    -------
    pandas.DataFrame
        Columns ``by, group, question, statistic, estimate, ci_low, ci_high, n_raters, n_items,
        n_ratings, note`` (``n_items`` counts items rated at least twice; ``note`` says why a
        statistic is missing).
    """
    unknown = set(questions) - set(QUESTIONS)
    if unknown:
        raise ValueError(f"unknown questions {sorted(unknown)}; choose from {list(QUESTIONS)}")
    if by not in (None, "model", "specialty"):
        raise ValueError(f"by must be None, 'model' or 'specialty', got {by!r}")
    if resample not in get_args(AgreementResample):
        raise ValueError(f"resample must be one of {get_args(AgreementResample)}, got {resample!r}")
    data = frame[frame["item_kind"].isin(item_kinds)]
    resamplers: dict[int, ItemResampler] = {}

    def resampler_for(n_items: int) -> ItemResampler:
        if n_items not in resamplers:
            resamplers[n_items] = ItemResampler(n_items, n_resamples, seed)
        return resamplers[n_items]

    groups = [("all", data)] if by is None else list(data.groupby(by, sort=True, observed=True))
    rows: list[dict[str, object]] = []
    for group, part in groups:
        for row in _rows_for_group(part, questions, resampler_for, method, confidence_level, resample):
            rows.append({"by": by or "all", "group": str(group), **row})
    columns = ["by", "group", "question", "statistic", "estimate", "ci_low", "ci_high", "ci_resample"]
    columns += ["n_raters", "n_items", "n_ratings", "note"]
    return pd.DataFrame(rows, columns=columns)


_INTRA_QUESTIONS: dict[str, Question] = {
    **{key: q for key, q in QUESTIONS.items() if q.kind == QuestionKind.SCALE},
    # Repeats may swap sides, so the Turing answer is compared as right / wrong, not left / right.
    CORRECT.key: CORRECT,
}


def intra_rater_reliability(frame: pd.DataFrame) -> pd.DataFrame:
    """Test-retest agreement of each rater with themself, from ``repeat`` items.

    Each ``repeat`` row is paired with the same rater's answer to the item it repeats
    (``repeat_of``). Scores are compared by image kind (generated / real), the Turing answer as
    correct / incorrect because a repeat may show the pair the other way round. Per rater and
    question: pairs, exact agreement, quadratic-weighted Cohen's kappa (unweighted for
    ``correct``) and Krippendorff's alpha; the ``all`` rows pool the pairs of all raters (alpha).

    Returns
    -------
    pandas.DataFrame
        Columns ``rater, question, n_pairs, exact_agreement, cohen_kappa, krippendorff_alpha``.
    """
    columns = ["rater", "question", "n_pairs", "exact_agreement", "cohen_kappa", "krippendorff_alpha"]
    repeats = frame[frame["item_kind"] == "repeat"]
    if repeats.empty:
        return pd.DataFrame(columns=columns)
    keys = ["rater", "item", *_INTRA_QUESTIONS]
    originals = frame.loc[frame["item_kind"] != "repeat", keys]
    pairs = repeats[["rater", "repeat_of", *_INTRA_QUESTIONS]].merge(
        originals, left_on=["rater", "repeat_of"], right_on=["rater", "item"], suffixes=("_repeat", "_first")
    )
    rows: list[dict[str, object]] = []
    groups = [*((str(r), part) for r, part in pairs.groupby("rater", sort=True)), ("all", pairs)]
    for rater, part in groups:
        for name, question in _INTRA_QUESTIONS.items():
            first = part[f"{name}_first"].to_numpy(dtype=float, na_value=np.nan)
            again = part[f"{name}_repeat"].to_numpy(dtype=float, na_value=np.nan)
            both = ~np.isnan(first) & ~np.isnan(again)
            level = question_level(question)
            weights: WeightsKind | None = None if level == Level.NOMINAL else "quadratic"
            matrix = np.vstack([first[both], again[both]])
            kappa = alpha = np.nan
            if both.sum() >= 2 and rater != "all":
                kappa = _value_or_nan(cohen_kappa, first[both], again[both], weights, question.categories)
            if both.sum() >= 2:
                alpha = _value_or_nan(krippendorff_alpha, matrix, level, value_domain=question.categories)
            rows.append(
                {
                    "rater": rater,
                    "question": name,
                    "n_pairs": int(both.sum()),
                    "exact_agreement": float((first[both] == again[both]).mean()) if both.any() else np.nan,
                    "cohen_kappa": kappa,
                    "krippendorff_alpha": alpha,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def _value_or_nan(function: Callable[..., float], *args: object, **kwargs: object) -> float:
    """The statistic, or NaN where it is undefined (one category only, 0 / 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            return float(function(*args, **kwargs))
        except ValueError:
            return float("nan")
