"""The visual Turing test: can raters tell which image of a pair is generated?

Design: two-alternative forced choice (2AFC). Each pair shows one real and one generated image,
the generated one on the ``left`` or ``right``; the rater answers "which image is generated?".

Definitions used throughout (signal detection for 2AFC; Macmillan & Creelman 2005, ch. 7):

* signal: "generated on the right"; noise: "generated on the left".
* hit: answered ``right`` when generated on the right; false alarm: answered ``right`` when
  generated on the left.
* sensitivity = hit rate ``H`` = P(answer right | generated right);
  specificity = ``1 - F`` = P(answer left | generated left), ``F`` the false-alarm rate.
  In a 2AFC test accuracy is their average when the sides are balanced.
* ``d' = (z(H) - z(F)) / sqrt(2)``: the 2AFC sensitivity on the scale of a single-interval task.
  Rates of exactly 0 or 1 would make ``z`` infinite, so ``d'`` and the bias ``c`` use the
  log-linear correction (Hautus 1995), applied to every cell: ``H = (hits + 0.5) / (n_signal + 1)``,
  ``F = (false_alarms + 0.5) / (n_noise + 1)``. Reported ``sensitivity`` / ``specificity`` are
  the raw rates.
* position bias ``c = -(z(H) + z(F)) / 2``: negative means a leaning to answer ``right``.
  It is tested with Fisher's exact test of accuracy by side (no bias: accuracy is the same
  whichever side the generated image is on) and a binomial test of the share of ``right``
  answers against 0.5.

Accuracy is tested against chance (0.5) with an exact two-sided binomial test, with
Clopper-Pearson intervals. A model whose images raters cannot tell from real ones (accuracy near
0.5, ``d'`` near 0) is the goal. Pooled tests treat answers as independent; the per-rater table
and the ``raters_above_chance`` summary do not.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special, stats

__all__ = [
    "TuringResult",
    "attention_failures",
    "binomial_test_half",
    "confusion_matrix",
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
    "sensitivity",
    "specificity",
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
                "sensitivity": hits / np.where(n_signal > 0, n_signal, np.nan),
                "specificity": (n_noise - false_alarms) / np.where(n_noise > 0, n_noise, np.nan),
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
        ``sensitivity, specificity, d_prime, criterion_c`` (see the module docstring).

    Examples
    --------
    >>> out = two_afc_summary([True, True, False, False], [True, False, False, False])
    >>> float(out["accuracy"]), float(out["sensitivity"]), float(out["specificity"])
    (0.75, 0.5, 1.0)
    """
    signal = np.asarray(generated_right, dtype=bool)
    said = np.asarray(answered_right, dtype=bool)
    if signal.shape != said.shape or signal.ndim != 1:
        raise ValueError("generated_right and answered_right must be 1-D and of equal length")
    counts = _counts(signal, said)
    return _summaries(*([c] for c in counts), confidence_level=confidence_level).iloc[0].to_dict()


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
    return pd.concat([sums[keys], summary], axis=1)


def attention_failures(frame: pd.DataFrame, max_failure_rate: float = 0.0) -> pd.DataFrame:
    """Per rater: attention items answered, failed, and whether the rater is flagged.

    An attention item shows a deliberately broken generated image; answering the other image
    (``correct`` is false) or giving no answer is a failure. A rater is flagged when their
    failure rate exceeds ``max_failure_rate`` (default 0: any failure flags).

    Returns
    -------
    pandas.DataFrame
        ``rater, rater_name, n_attention, n_failed, failure_rate, flagged``; raters without
        attention items have ``n_attention = 0`` and are not flagged.
    """
    raters = frame.drop_duplicates("rater")[["rater", "rater_name"]].sort_values("rater")
    attention = frame[frame["item_kind"] == "attention"]
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
    table["flagged"] = (table["failure_rate"] > max_failure_rate).fillna(False).astype(bool)
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
    max_failure_rate: float = 0.0,
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
        Attention failure rate above which a rater is flagged.
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
