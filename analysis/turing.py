"""The visual Turing test: can raters tell which image of a pair is generated?

Design: two-alternative forced choice (2AFC). Each pair shows one real and one generated image,
the generated one on the ``left`` or ``right``; the rater answers "which image is generated?".

Definitions used throughout (signal detection for 2AFC; Macmillan & Creelman 2005, ch. 7):

* signal: "generated on the right"; noise: "generated on the left".
* hit: answered ``right`` when generated on the right; false alarm: answered ``right`` when
  generated on the left.
* ``accuracy_generated_right`` = hit rate ``H`` = P(answer right | generated right) and
  ``accuracy_generated_left`` = ``1 - F`` = P(answer left | generated left), ``F`` the false-alarm
  rate: "accuracy when the generated image was on the right / left". (Signal-detection texts call
  them sensitivity and specificity; the tables avoid those words, which clinicians read as
  disease-detection terms.) Accuracy is their average when the sides are balanced.
* ``d' = (z(H) - z(F)) / sqrt(2)``: the 2AFC sensitivity on the scale of a single-interval task.
  Rates of exactly 0 or 1 would make ``z`` infinite, so ``d'`` and the bias ``c`` use the
  log-linear correction (Hautus 1995), applied to every cell: ``H = (hits + 0.5) / (n_signal + 1)``,
  ``F = (false_alarms + 0.5) / (n_noise + 1)``. The reported accuracies by side are the raw rates.
* position bias ``c = -(z(H) + z(F)) / 2``: negative means a leaning to answer ``right``.
  It is tested with Fisher's exact test of accuracy by side (no bias: accuracy is the same
  whichever side the generated image is on) and a binomial test of the share of ``right``
  answers against 0.5.

The headline (:func:`headline`) tests accuracy against chance (0.5) with raters and pairs random,
and equivalence (TOST) within a margin; it is the result to report. The tables of
:func:`turing_test` are descriptive: their exact binomial tests and Clopper-Pearson intervals treat
a group's answers as independent, which holds within one rater only approximately and across raters
not at all (a quarter to almost half of null studies "reject"; ``benchmarks/inference_calibration.py``).
Per-rater and subgroup tables carry Holm-adjusted p-values (``p_holm``) across their rows.
A model whose images raters cannot tell from real ones (accuracy near 0.5, ``d'`` near 0) is the goal.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special, stats

from analysis.scores import holm
from db.errors import InputError

__all__ = [
    "CrossedMean",
    "TuringResult",
    "attention_failures",
    "binomial_test_half",
    "chance_tests",
    "confusion_matrix",
    "crossed_mean",
    "headline",
    "position_bias",
    "turing_test",
    "two_afc_summary",
]

YEARS_BINS: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, float("inf"))


_SUMMARY_COLUMNS: tuple[str, ...] = (
    "n",
    "n_correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "p_value",
    "accuracy_generated_right",
    "accuracy_generated_left",
    "d_prime",
    "criterion_c",
)


def _summaries(
    n_signal: np.ndarray, n_noise: np.ndarray, hits: np.ndarray, false_alarms: np.ndarray, confidence_level: float
) -> pd.DataFrame:
    """Vectorised 2AFC summaries from per-group counts (see the module docstring)."""
    n_signal, n_noise = np.asarray(n_signal, dtype=np.int64), np.asarray(n_noise, dtype=np.int64)
    hits, false_alarms = np.asarray(hits, dtype=np.int64), np.asarray(false_alarms, dtype=np.int64)
    n = n_signal + n_noise
    correct = hits + n_noise - false_alarms
    alpha = 1.0 - confidence_level
    with np.errstate(divide="ignore", invalid="ignore"):
        # Clopper-Pearson, as scipy's binomtest(...).proportion_ci(method="exact").
        low = np.where(correct > 0, stats.beta.ppf(alpha / 2, correct, n - correct + 1), 0.0)
        high = np.where(correct < n, stats.beta.isf(alpha / 2, correct + 1, n - correct), 1.0)
        z_hit = special.ndtri((hits + 0.5) / (n_signal + 1))
        z_false_alarm = special.ndtri((false_alarms + 0.5) / (n_noise + 1))
        table = pd.DataFrame(
            {
                "n": n,
                "n_correct": correct,
                "accuracy": correct / n,
                "ci_low": np.where(n > 0, low, np.nan),
                "ci_high": np.where(n > 0, high, np.nan),
                "p_value": [
                    stats.binomtest(int(k), int(m), 0.5).pvalue if m else np.nan
                    for k, m in zip(correct, n, strict=True)
                ],
                "accuracy_generated_right": hits / np.where(n_signal > 0, n_signal, np.nan),
                "accuracy_generated_left": (n_noise - false_alarms) / np.where(n_noise > 0, n_noise, np.nan),
                "d_prime": (z_hit - z_false_alarm) / np.sqrt(2.0),
                "criterion_c": -(z_hit + z_false_alarm) / 2.0,
            }
        )
    table.loc[table["n"] == 0, ["d_prime", "criterion_c"]] = np.nan
    return table


def binomial_test_half(k: ArrayLike, n: ArrayLike) -> np.ndarray:
    """Two-sided exact binomial test of ``k`` successes in ``n`` against p = 0.5, vectorised.

    The null distribution is symmetric, so the p-value is ``min(1, 2 * P(X <= min(k, n - k)))``,
    which is what ``scipy.stats.binomtest(k, n, 0.5).pvalue`` computes; NaN where ``n`` is 0.

    Examples
    --------
    >>> float(binomial_test_half(7, 10))
    0.34375
    """
    successes = np.asarray(k, dtype=np.int64)
    trials = np.asarray(n, dtype=np.int64)
    p_value = np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(successes, trials - successes), trials, 0.5))
    return np.where(trials > 0, p_value, np.nan)


def _counts(signal: np.ndarray, said: np.ndarray) -> tuple[int, int, int, int]:
    return int(signal.sum()), int((~signal).sum()), int((signal & said).sum()), int((~signal & said).sum())


def two_afc_summary(
    generated_right: ArrayLike, answered_right: ArrayLike, confidence_level: float = 0.95
) -> dict[str, float]:
    """Accuracy, binomial test, sensitivity, specificity, d' and bias of 2AFC answers.

    Parameters
    ----------
    generated_right : array_like of bool
        Whether the generated image was on the right, per answer.
    answered_right : array_like of bool
        Whether the rater answered ``right``.
    confidence_level : float
        Of the Clopper-Pearson interval of accuracy.

    Returns
    -------
    dict
        ``n, n_correct, accuracy, ci_low, ci_high, p_value`` (exact binomial vs 0.5, two-sided),
        ``accuracy_generated_right, accuracy_generated_left, d_prime, criterion_c`` (see the module
        docstring).

    Examples
    --------
    >>> out = two_afc_summary([True, True, False, False], [True, False, False, False])
    >>> float(out["accuracy"]), float(out["accuracy_generated_right"]), float(out["accuracy_generated_left"])
    (0.75, 0.5, 1.0)
    """
    signal = np.asarray(generated_right, dtype=bool)
    said = np.asarray(answered_right, dtype=bool)
    if signal.shape != said.shape or signal.ndim != 1:
        raise ValueError("generated_right and answered_right must be 1-D and of equal length")
    counts = _counts(signal, said)
    n_signal, n_noise, hits, false_alarms = (np.array([c]) for c in counts)
    return _summaries(n_signal, n_noise, hits, false_alarms, confidence_level).iloc[0].to_dict()


def _answers(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with a left/right answer, with boolean ``generated_right`` and ``answered_right``."""
    answer = frame["which_generated"].to_numpy(dtype=object, na_value=None)
    keep = (answer == "left") | (answer == "right")
    columns = [c for c in ("rater", "rater_name", "specialty", "years", "model") if c in frame]
    part = frame.loc[keep, columns]
    return part.assign(
        generated_right=frame["generated_side"].to_numpy(dtype=object)[keep] == "right",
        answered_right=answer[keep] == "right",
    )


def _grouped(answers: pd.DataFrame, by: str | Sequence[str], confidence_level: float) -> pd.DataFrame:
    keys = [by] if isinstance(by, str) else list(by)
    signal = answers["generated_right"].to_numpy(dtype=bool)
    said = answers["answered_right"].to_numpy(dtype=bool)
    flags = answers[keys].assign(signal=signal, noise=~signal, hit=signal & said, fa=~signal & said)
    sums = flags.groupby(keys, sort=True, observed=True, dropna=False).sum().reset_index()
    summary = _summaries(sums["signal"], sums["noise"], sums["hit"], sums["fa"], confidence_level)
    summary.insert(summary.columns.get_loc("p_value") + 1, "p_holm", holm(summary["p_value"].to_numpy()))
    return pd.concat([sums[keys], summary], axis=1)


DEFAULT_MAX_FAILURE_RATE = 0.2
DEFAULT_MIN_FAILURES = 2


def attention_failures(
    frame: pd.DataFrame,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    min_failures: int = DEFAULT_MIN_FAILURES,
) -> pd.DataFrame:
    """Per rater: attention items answered, failed, and whether the rater is flagged.

    An attention item shows a deliberately broken generated image; answering the other image
    (``correct`` is false) or giving no answer is a failure. Marking the pair "cannot assess" is
    not a failure (a broken image may well be unassessable) and the pair is not counted. A rater
    is flagged when more than ``max_failure_rate`` (default 20 %) of their counted attention pairs
    are failures *and* at least ``min_failures`` (default 2) are: one slip is not carelessness.

    Returns
    -------
    pandas.DataFrame
        ``rater, rater_name, n_attention, n_failed, failure_rate, flagged``; raters without
        attention items have ``n_attention = 0`` and are not flagged.
    """
    raters = frame.drop_duplicates("rater")[["rater", "rater_name"]].sort_values("rater")
    attention = frame[frame["item_kind"] == "attention"]
    if "cannot_assess" in attention:
        attention = attention[~attention["cannot_assess"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    failed = ~attention["correct"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    counts = (
        pd.DataFrame({"rater": attention["rater"].to_numpy(), "failed": failed})
        .groupby("rater")["failed"]
        .agg(n_attention="size", n_failed="sum")
    )
    table = raters.merge(counts, left_on="rater", right_index=True, how="left")
    table[["n_attention", "n_failed"]] = table[["n_attention", "n_failed"]].fillna(0).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["failure_rate"] = table["n_failed"] / table["n_attention"].where(table["n_attention"] > 0)
    table["flagged"] = ((table["failure_rate"] > max_failure_rate) & (table["n_failed"] >= min_failures)).fillna(False)
    table["flagged"] = table["flagged"].astype(bool)
    return table.reset_index(drop=True)


def position_bias(answers: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Left/right bias per group (or pooled): share of ``right`` answers and tests.

    Columns: ``n, share_answered_right, share_generated_right, p_binomial_right`` (binomial test of
    the share of ``right`` answers vs 0.5), ``accuracy_generated_left, accuracy_generated_right,
    p_fisher_side`` (Fisher's exact test of accuracy by side; no bias means equal accuracy),
    ``criterion_c``.
    """
    answers = answers if "answered_right" in answers else _answers(answers)
    key = by or "group"
    signal = answers["generated_right"].to_numpy(dtype=bool)
    said = answers["answered_right"].to_numpy(dtype=bool)
    flags = (answers[[by]] if by else pd.DataFrame({key: np.zeros(len(answers), dtype=np.int8)})).assign(
        n_signal=signal, n_noise=~signal, hits=signal & said, false_alarms=~signal & said
    )
    sums = flags.groupby(key, sort=True, observed=True).sum().reset_index()
    rows = []
    for row in sums.itertuples(index=False):
        n_signal, n_noise, hits, false_alarms = (
            int(row.n_signal),
            int(row.n_noise),
            int(row.hits),
            int(row.false_alarms),
        )
        n = n_signal + n_noise
        answered_right = hits + false_alarms
        side_table = [[n_noise - false_alarms, false_alarms], [hits, n_signal - hits]]  # rows: generated left/right
        rows.append(
            {
                key: getattr(row, key) if by else "all",
                "n": n,
                "share_answered_right": answered_right / n,
                "share_generated_right": n_signal / n,
                "p_binomial_right": float(binomial_test_half(answered_right, n)),
                "accuracy_generated_left": (n_noise - false_alarms) / n_noise if n_noise else np.nan,
                "accuracy_generated_right": hits / n_signal if n_signal else np.nan,
                "p_fisher_side": stats.fisher_exact(side_table).pvalue,
            }
        )
    table = pd.DataFrame(rows, columns=[key, "n", "share_answered_right", "share_generated_right",
                                        "p_binomial_right", "accuracy_generated_left", "accuracy_generated_right",
                                        "p_fisher_side"])  # fmt: skip
    table["criterion_c"] = _summaries(sums["n_signal"], sums["n_noise"], sums["hits"], sums["false_alarms"], 0.95)[
        "criterion_c"
    ].to_numpy()
    return table


def confusion_matrix(answers: pd.DataFrame) -> pd.DataFrame:
    """Counts of (generated side, answer): rows ``generated_left/right``, columns ``answered_left/right``."""
    answers = answers if "answered_right" in answers else _answers(answers)
    signal = answers["generated_right"].to_numpy(dtype=bool)
    said = answers["answered_right"].to_numpy(dtype=bool)
    counts = [[int((~signal & ~said).sum()), int((~signal & said).sum())],
              [int((signal & ~said).sum()), int((signal & said).sum())]]  # fmt: skip
    return pd.DataFrame(
        counts, index=["generated_left", "generated_right"], columns=["answered_left", "answered_right"]
    )


def _experience_labels(years: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Left-closed bins ``[a, b)`` of years of experience as labels; ``unknown`` for NaN or outside."""
    bins = np.asarray(edges, dtype=float)
    if bins.ndim != 1 or len(bins) < 2 or np.any(np.diff(bins) <= 0):
        raise ValueError(f"years_bins must be increasing edges, got {list(edges)}")
    names = np.array([f"[{lo:g}, {hi:g})" for lo, hi in itertools.pairwise(bins)] + ["unknown"])
    index = np.searchsorted(bins, years, side="right") - 1
    index[(index < 0) | (index >= len(bins) - 1) | np.isnan(years)] = len(bins) - 1
    return names[index]


@dataclass
class TuringResult:
    """Tables of the visual Turing test; ``attention`` and ``excluded_raters`` are always filled."""

    pooled: pd.DataFrame
    per_rater: pd.DataFrame
    by_specialty: pd.DataFrame
    by_experience: pd.DataFrame
    by_model: pd.DataFrame
    position_bias: pd.DataFrame
    position_bias_per_rater: pd.DataFrame
    confusion: pd.DataFrame
    attention: pd.DataFrame
    excluded_raters: tuple[str, ...] = field(default_factory=tuple)

    def tables(self) -> dict[str, pd.DataFrame]:
        """All tables by name."""
        return {
            "turing_pooled": self.pooled,
            "turing_per_rater": self.per_rater,
            "turing_by_specialty": self.by_specialty,
            "turing_by_experience": self.by_experience,
            "turing_by_model": self.by_model,
            "turing_position_bias": self.position_bias,
            "turing_position_bias_per_rater": self.position_bias_per_rater,
            "turing_confusion": self.confusion.rename_axis("generated_side").reset_index(),
            "attention_checks": self.attention,
        }


def turing_test(
    frame: pd.DataFrame,
    *,
    exclude_flagged_raters: bool = False,
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    years_bins: Sequence[float] = YEARS_BINS,
    item_kinds: Sequence[str] = ("normal",),
    confidence_level: float = 0.95,
) -> TuringResult:
    """Analyse the "which image is generated?" answers of a tidy ratings table.

    Parameters
    ----------
    frame : pandas.DataFrame
        The tidy ratings table (docs/ratings-table.md).
    exclude_flagged_raters : bool
        Leave out raters flagged by :func:`attention_failures`; the attention table and the
        excluded raters are reported either way.
    max_failure_rate : float
        Attention failure rate above which a rater (with 2+ failures) is flagged; default 0.2.
    years_bins : sequence of float
        Edges of the experience bins (left-closed), e.g. ``[0, 5)``, ``[5, 10)``, ...
    item_kinds : sequence of str
        Items analysed (default ``normal``; attention items are checks, repeats double-count).
    confidence_level : float

    Returns
    -------
    TuringResult
    """
    attention = attention_failures(frame, max_failure_rate)
    excluded = tuple(attention.loc[attention["flagged"], "rater"]) if exclude_flagged_raters else ()
    data = frame[frame["item_kind"].isin(item_kinds) & ~frame["rater"].isin(excluded)]
    answers = _answers(data)
    pooled = _grouped(answers.assign(group="all"), "group", confidence_level)
    per_rater = _grouped(answers, ["rater", "rater_name", "specialty"], confidence_level)
    above = per_rater["p_value"].lt(0.05) & per_rater["accuracy"].gt(0.5)
    pooled["n_raters"] = len(per_rater)
    pooled["raters_above_chance"] = int(above.sum())
    # Rater-level test: is mean rater accuracy different from 0.5 (raters as the unit)?
    accuracies = per_rater["accuracy"].dropna()
    pooled["p_rater_level_t"] = stats.ttest_1samp(accuracies, 0.5).pvalue if len(accuracies) > 1 else np.nan
    answers = answers.assign(experience=_experience_labels(answers["years"].to_numpy(dtype=float), years_bins))
    return TuringResult(
        pooled=pooled,
        per_rater=per_rater,
        by_specialty=_grouped(answers, "specialty", confidence_level),
        by_experience=_grouped(answers, "experience", confidence_level),
        by_model=_grouped(answers, "model", confidence_level),
        position_bias=position_bias(answers),
        position_bias_per_rater=position_bias(answers, by="rater"),
        confusion=confusion_matrix(answers),
        attention=attention,
        excluded_raters=excluded,
    )


# ---------------------------------------------------------------------------------------------------
# Headline: raters and cases random
# ---------------------------------------------------------------------------------------------------

HEADLINE_COLUMNS: tuple[str, ...] = (
    "accuracy",
    "ci_low",
    "ci_high",
    "p_value",
    "p_equivalence",
    "n_raters",
    "n_items",
    "n_answers",
    "method",
)
METHOD_MOMENTS = "random raters + random items: method-of-moments variance, Satterthwaite df (t)"
METHOD_POOLED = "pooled binomial, DESCRIPTIVE ONLY (treats answers as independent; exact Clopper-Pearson)"


@dataclass(frozen=True)
class CrossedMean:
    """The mean of a (possibly sparse) rater x item table with raters and items random.

    Model: ``y_ri = mu + a_r + b_i + e_ri`` with independent ``a_r ~ (0, var_rater)``,
    ``b_i ~ (0, var_item)``, ``e_ri ~ (0, var_error)``; at most one observation per cell.
    ``estimate`` is the mean of all observations; ``variance`` its variance under the model,
    ``var_rater * sum(n_r^2)/n^2 + var_item * sum(n_i^2)/n^2 + var_error / n``, with the components
    estimated by U-statistics (mean squared differences of pairs of observations sharing the rater,
    sharing the item, or sharing neither; Gao & Owen 2017). The component estimates are unbiased
    and kept as they are (possibly negative; the total variance is floored at 0): clipping them
    at 0 inflates the variance and the test falls to a 0.01 level on independent answers. ``df`` is
    Satterthwaite's for the sum of the rater, item and error terms (R - 1, C - 1 and n - R - C + 1
    df), computed from the components clipped at 0. In a balanced crossed table ``variance`` is the
    classic ``(MS_R + MS_C - MS_E) / (R C)``. Chosen by simulation over plain clipping and the raw
    Satterthwaite df: it alone held 0.04-0.06 in all scenarios (``benchmarks/inference_calibration.py``).
    """

    estimate: float
    variance: float
    df: float
    var_rater: float
    var_item: float
    var_error: float
    n_raters: int
    n_items: int
    n: int

    @property
    def std_err(self) -> float:
        return math.sqrt(self.variance) if self.variance > 0 else 0.0


def _pair_msd(codes: np.ndarray, y: np.ndarray, size: int) -> tuple[float, float]:
    """Sum of squared differences over unordered pairs within groups, and the number of pairs."""
    n_g = np.bincount(codes, minlength=size).astype(float)
    s1 = np.bincount(codes, weights=y, minlength=size)
    s2 = np.bincount(codes, weights=y * y, minlength=size)
    return float((n_g * s2 - s1 * s1).sum()), float((n_g * (n_g - 1.0) / 2.0).sum())


def crossed_mean(raters: ArrayLike, items: ArrayLike, values: ArrayLike) -> CrossedMean:
    """Mean of ``values`` with its variance when raters and items are both random (see :class:`CrossedMean`).

    Examples
    --------
    >>> y = np.array([1.0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0])
    >>> out = crossed_mean(np.repeat([0, 1, 2], 4), np.tile([0, 1, 2, 3], 3), y)
    >>> round(out.estimate, 4), out.n_raters, out.n_items
    (0.5833, 3, 4)
    """
    y = np.asarray(values, dtype=float)
    r_code = pd.factorize(np.asarray(raters))[0]
    i_code = pd.factorize(np.asarray(items))[0]
    if not (len(y) == len(r_code) == len(i_code)):
        raise ValueError("raters, items and values must have equal length")
    if len(y) == 0 or not np.isfinite(y).all():
        raise ValueError("values must be finite and non-empty")
    n_r, n_i, n = int(r_code.max()) + 1, int(i_code.max()) + 1, len(y)
    if len(np.unique(r_code.astype(np.int64) * n_i + i_code)) != n:
        raise ValueError("at most one observation per rater x item cell")
    y_c = y - y.mean()  # numerically safer
    ss_r, p_r = _pair_msd(r_code, y_c, n_r)
    ss_i, p_i = _pair_msd(i_code, y_c, n_i)
    ss_all, p_all = _pair_msd(np.zeros(n, dtype=np.int64), y_c, 1)
    ss_x, p_x = ss_all - ss_r - ss_i, p_all - p_r - p_i
    scale = float(np.var(y)) if n > 1 else 0.0
    eps = 1e-12 * max(scale, 1e-300)

    def msd(ss: float, pairs: float) -> float:
        return ss / pairs if pairs > 0 else math.nan

    m_r, m_i, m_x = msd(ss_r, p_r), msd(ss_i, p_i), msd(ss_x, p_x)
    if not math.isfinite(m_x):  # one rater or one item: no pair crosses both
        m_x = max(v for v in (m_r, m_i, 0.0) if math.isfinite(v))
    if not math.isfinite(m_r):
        m_r = m_x  # one item per rater: rater and error not separable, lump into items + error
    if not math.isfinite(m_i):
        m_i = m_x
    var_rater = (m_x - m_r) / 2.0
    var_item = (m_x - m_i) / 2.0
    var_error = max((m_r + m_i - m_x) / 2.0, 0.0)
    var_rater, var_item, var_error = (v if abs(v) > eps else 0.0 for v in (var_rater, var_item, var_error))
    w_r = float((np.bincount(r_code) ** 2).sum()) / n**2
    w_i = float((np.bincount(i_code) ** 2).sum()) / n**2
    w_e = 1.0 / n
    # unbiased: negative component estimates are kept (clipping them at 0 makes the test conservative);
    # only the total is kept at least at the error term's share
    variance = max(w_r * var_rater + w_i * var_item + w_e * var_error, 0.0)
    # df from the components clipped at 0: with the raw (possibly negative) estimates a small
    # variance gets a small df and the test turns conservative (0.03 on independent answers).
    clip_r, clip_i = max(var_rater, 0.0), max(var_item, 0.0)
    terms = np.array([w_r * clip_r + w_e * var_error, w_i * clip_i + w_e * var_error, -w_e * var_error])
    dfs = np.array([max(n_r - 1, 1), max(n_i - 1, 1), max(n - n_r - n_i + 1, 1)], dtype=float)
    denominator = float((terms**2 / dfs).sum())
    df = float(terms.sum()) ** 2 / denominator if denominator > 0 else math.inf
    return CrossedMean(
        estimate=float(y.mean()),
        variance=float(variance),
        df=float(max(df, 1.0)),
        var_rater=var_rater,
        var_item=var_item,
        var_error=var_error,
        n_raters=n_r,
        n_items=n_i,
        n=n,
    )


def chance_tests(
    estimate: float, std_err: float, df: float, margin: float, confidence_level: float
) -> tuple[float, float, float, float]:
    """``(ci_low, ci_high, p_value, p_equivalence)`` of a t-based estimate of a proportion vs 0.5.

    ``p_value``: two-sided test of accuracy = 0.5. ``p_equivalence``: two one-sided tests (TOST,
    Schuirmann 1987) of ``|accuracy - 0.5| < margin``, the larger of the two one-sided p-values.
    With a zero standard error the tests are undefined (NaN) and the interval is the point.

    Examples
    --------
    >>> [round(v, 4) for v in chance_tests(0.52, 0.02, 30.0, 0.1, 0.95)]
    [0.4792, 0.5608, 0.3253, 0.0002]
    """
    if not 0.0 < margin < 0.5:
        raise ValueError(f"margin must lie in (0, 0.5), got {margin}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie in (0, 1), got {confidence_level}")
    if not std_err > 0:
        return estimate, estimate, math.nan, math.nan
    t = stats.t(df)
    q = float(t.ppf(0.5 + confidence_level / 2.0))
    p_value = float(2.0 * t.sf(abs(estimate - 0.5) / std_err))
    p_lower = float(t.sf((estimate - (0.5 - margin)) / std_err))
    p_upper = float(t.cdf((estimate - (0.5 + margin)) / std_err))
    low, high = max(estimate - q * std_err, 0.0), min(estimate + q * std_err, 1.0)
    return low, high, p_value, max(p_lower, p_upper)


def _headline_answers(ratings: pd.DataFrame) -> pd.DataFrame:
    """Normal items with a left/right answer, first reading per rater and item, not cannot-assess."""
    missing = [c for c in ("rater", "item", "which_generated", "generated_side") if c not in ratings]
    if missing:
        raise InputError(f"ratings lack the column(s) {missing} (see docs/ratings-table.md)")
    rows = ratings
    if "item_kind" in rows:
        rows = rows[rows["item_kind"].eq("normal").fillna(False).to_numpy(dtype=bool)]
    if "cannot_assess" in rows:
        rows = rows[~rows["cannot_assess"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    answer = rows["which_generated"].to_numpy(dtype=object, na_value=None)
    rows = rows[(answer == "left") | (answer == "right")]
    if "position" in rows:
        rows = rows.sort_values(["rater", "position"], kind="stable")
    rows = rows.drop_duplicates(["rater", "item"], keep="first")
    correct = rows["which_generated"].to_numpy(dtype=object) == rows["generated_side"].to_numpy(dtype=object)
    return rows.assign(_correct=correct.astype(float))


def headline(
    ratings: pd.DataFrame,
    by: str | None = None,
    margin: float = 0.1,
    confidence_level: float = 0.95,
    *,
    descriptive: bool = False,
) -> pd.DataFrame:
    """The headline Turing result: accuracy with raters AND cases random, test vs chance, equivalence.

    Uses the answers to "which image is generated?" on normal items (attention and repeat items and
    pairs marked cannot-assess are left out; a rater's first reading of an item counts). The
    accuracy is the share of correct answers; its variance treats raters and items (pairs) as random
    (:func:`crossed_mean`: crossed, nested or K-of-N designs), with a t reference on Satterthwaite
    df. This holds its level where the pooled binomial does not (``benchmarks/inference_calibration.py``).

    Parameters
    ----------
    ratings : pandas.DataFrame
        The tidy ratings table (docs/ratings-table.md).
    by : str, optional
        A column to group by (``model``, ``specialty``...): one row per group.
    margin : float
        Equivalence margin: ``p_equivalence`` tests ``|accuracy - 0.5| < margin`` (TOST).
    confidence_level : float
    descriptive : bool
        Also add, per group, the pooled exact binomial row, labelled descriptive in ``method``.

    Returns
    -------
    pandas.DataFrame
        ``[by,] accuracy, ci_low, ci_high, p_value, p_equivalence, n_raters, n_items, n_answers,
        method``. Tests are NaN (and ``method`` says why) where the variance is zero.
    """
    answers = _headline_answers(ratings)
    if by is not None and by not in answers:
        raise InputError(f"ratings have no column {by!r} to group the headline by")
    groups = [("all", answers)] if by is None else list(answers.groupby(by, sort=True, observed=True))
    rows: list[dict[str, object]] = []
    for key, part in groups:
        label = {by: key} if by is not None else {}
        if len(part) == 0:
            continue
        y = part["_correct"].to_numpy(dtype=float)
        counts = {
            "n_raters": int(part["rater"].nunique()),
            "n_items": int(part["item"].nunique()),
            "n_answers": len(part),
        }
        fit = crossed_mean(part["rater"].to_numpy(), part["item"].to_numpy(), y)
        low, high, p_value, p_equivalence = chance_tests(fit.estimate, fit.std_err, fit.df, margin, confidence_level)
        method = METHOD_MOMENTS + f", df = {fit.df:.1f}"
        if not fit.std_err > 0:
            method += "; tests undefined: " + (
                "all answers identical" if np.all(y == y[0]) else "zero estimated variance"
            )
        rows.append({**label, "accuracy": fit.estimate, "ci_low": low, "ci_high": high, "p_value": p_value,
                     "p_equivalence": p_equivalence, **counts, "method": method})  # fmt: skip
        if descriptive:
            k, n = int(y.sum()), len(y)
            ci = stats.binomtest(k, n, 0.5).proportion_ci(confidence_level, method="exact")
            rows.append({**label, "accuracy": k / n, "ci_low": ci.low, "ci_high": ci.high,
                         "p_value": float(binomial_test_half(k, n)), "p_equivalence": math.nan, **counts,
                         "method": METHOD_POOLED})  # fmt: skip
    return pd.DataFrame(rows, columns=([by] if by is not None else []) + list(HEADLINE_COLUMNS))
