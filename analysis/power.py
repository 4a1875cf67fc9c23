"""Study planning: how many raters and cases a reader study needs.

Two questions, both with raters and cases random:

(a) **Turing equivalence** (:func:`turing_equivalence_power`, :func:`plan_turing`): the power of the
    headline TOST of :func:`analysis.turing.headline` to show ``|accuracy - 0.5| < margin`` when the
    true accuracy is ``true_accuracy``, for R raters who each answer K of N pairs (K = N: crossed).
    The variance of the accuracy is ``var_rater / R + var_item / N + var_error / (R K)`` (balanced
    item use), with the Satterthwaite df of :func:`analysis.turing.crossed_mean`; power is
    ``P(T1 > t) + P(T2 < -t) - 1`` with ``T1, T2`` non-central t (Schuirmann's TOST; Phillips 1990).
    The components (probability scale) come from a pilot (:func:`analysis.turing.crossed_mean`) or
    from rater and item SDs on the logit scale (:func:`components_from_logit_sds`).
(b) **MRMC AUC difference** (:func:`or_power`, :func:`plan_mrmc`): Hillis, Obuchowski & Berbaum
    (2011, Acad Radiol 18:129-142) power of the RRRC OR test of two modalities for J readers and K
    cases from OR variance components of a pilot with K* cases (error variance and covariances scale
    with K*/K): non-central F(1, ddf_H, lambda), ``lambda = J d^2 / 2 / den``,
    ``den = var_tr + K*/K (var_error - cov1 + (J - 1) max(cov2 - cov3, 0))``. It reproduces RJafroc's
    ``SsPowerGivenJK`` on the Van Dyke pilot (tests/analysis/test_power.py).

:func:`simulate_2afc` draws 2AFC studies (logit-normal rater and item effects) for checking both the
headline test's level and these plans by simulation (``benchmarks/inference_calibration.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

from analysis.mrmc import ORResult

logger = logging.getLogger(__name__)

__all__ = [
    "ORComponents",
    "TuringComponents",
    "components_from_logit_sds",
    "format_plan",
    "mrmc_plan_text",
    "or_power",
    "plan_mrmc",
    "plan_turing",
    "simulate_2afc",
    "turing_equivalence_power",
    "turing_plan_text",
]


@dataclass(frozen=True)
class TuringComponents:
    """Variance components of a 0/1 correct answer on the probability scale (see the module docstring)."""

    var_rater: float
    var_item: float
    var_error: float


def components_from_logit_sds(
    sd_rater: float, sd_item: float, accuracy: float = 0.5, n_nodes: int = 40
) -> TuringComponents:
    """Probability-scale components of ``P(correct) = expit(mu + a + b)``, normal ``a`` and ``b``.

    ``a ~ N(0, sd_rater^2)`` (raters), ``b ~ N(0, sd_item^2)`` (items), on the logit scale.

    ``mu`` is chosen so that the population accuracy is ``accuracy``. ``var_rater`` is the variance
    over raters of their mean accuracy, ``var_item`` the same over items, ``var_error`` the rest of
    ``accuracy (1 - accuracy)`` (binomial noise and the rater x item interaction). Gauss-Hermite.

    Examples
    --------
    >>> c = components_from_logit_sds(0.0, 0.0)
    >>> (c.var_rater, c.var_item, c.var_error)
    (0.0, 0.0, 0.25)
    """
    if not 0.0 < accuracy < 1.0:
        raise ValueError(f"accuracy must lie in (0, 1), got {accuracy}")
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    weights = weights / weights.sum()
    a, b = sd_rater * nodes, sd_item * nodes

    def grid(mu: float) -> np.ndarray:
        return special.expit(mu + a[:, None] + b[None, :])

    def mean(mu: float) -> float:
        return float(weights @ grid(mu) @ weights)

    low, high = -20.0, 20.0
    for _ in range(100):  # bisection: mean accuracy is increasing in mu
        mid = (low + high) / 2.0
        low, high = (mid, high) if mean(mid) < accuracy else (low, mid)
    p = grid((low + high) / 2.0)
    p_bar = float(weights @ p @ weights)
    by_rater, by_item = p @ weights, weights @ p
    var_rater = float(weights @ (by_rater - p_bar) ** 2)
    var_item = float(weights @ (by_item - p_bar) ** 2)
    var_error = p_bar * (1.0 - p_bar) - var_rater - var_item
    return TuringComponents(round(var_rater, 15), round(var_item, 15), round(var_error, 15))


def _turing_variance(
    components: TuringComponents, n_raters: int, n_items: int, answers_per_rater: int
) -> tuple[float, float]:
    """Variance of the accuracy and its Satterthwaite df for a balanced K-of-N (or crossed) design."""
    n = n_raters * answers_per_rater
    clip_r, clip_i = max(components.var_rater, 0.0), max(components.var_item, 0.0)
    w_e = components.var_error / n
    terms = np.array([clip_r / n_raters + w_e, clip_i / n_items + w_e, -w_e])
    dfs = np.array([max(n_raters - 1, 1), max(n_items - 1, 1), max(n - n_raters - n_items + 1, 1)], dtype=float)
    variance = float(terms.sum())
    return variance, max(variance**2 / float((terms**2 / dfs).sum()), 1.0)


def turing_equivalence_power(
    n_raters: int,
    n_items: int,
    components: TuringComponents,
    *,
    margin: float = 0.1,
    answers_per_rater: int | None = None,
    true_accuracy: float = 0.5,
    alpha: float = 0.05,
) -> float:
    """Power of the headline TOST (``|accuracy - 0.5| < margin`` at level ``alpha``).

    Parameters
    ----------
    n_raters, n_items
        Raters R and distinct pairs N.
    components
        Variance components (probability scale).
    answers_per_rater
        K pairs per rater (K-of-N, items used equally often); ``None``: every rater answers all N.

    Examples
    --------
    >>> c = components_from_logit_sds(0.5, 1.0)
    >>> round(turing_equivalence_power(8, 100, c), 3)
    0.39
    """
    k = n_items if answers_per_rater is None else answers_per_rater
    if not 1 <= k <= n_items or n_raters < 2:
        raise ValueError(f"need 2+ raters and 1 <= answers per rater <= items, got R={n_raters}, K={k}, N={n_items}")
    if not 0.0 < margin < 0.5:
        raise ValueError(f"margin must lie in (0, 0.5), got {margin}")
    variance, df = _turing_variance(components, n_raters, n_items, k)
    se = math.sqrt(variance)
    t_crit = float(stats.t.ppf(1.0 - alpha, df))
    delta = true_accuracy - 0.5
    lower = float(stats.nct.sf(t_crit, df, (delta + margin) / se))
    upper = float(stats.nct.cdf(-t_crit, df, (delta - margin) / se))
    return max(lower + upper - 1.0, 0.0)


def plan_turing(
    components: TuringComponents,
    *,
    margin: float = 0.1,
    power: float = 0.8,
    raters: Sequence[int] = (4, 6, 8, 10, 15, 20),
    items: Sequence[int] = (50, 100, 200, 400),
    answers_per_rater: int | None = None,
    true_accuracy: float = 0.5,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Power of the Turing equivalence claim for each raters x items design (rows: raters).

    With ``answers_per_rater`` = K, designs with N < K, or with fewer answers than raters + pairs
    (most pairs answered once: pair and error variance not separable), are left empty. The attribute
    ``attrs["target"]`` holds ``power``; cells at or above it meet the plan.
    """
    table = pd.DataFrame(index=pd.Index(list(raters), name="raters"), columns=[f"{n} pairs" for n in items])
    for r in raters:
        for n in items:
            k = n if answers_per_rater is None else answers_per_rater
            if k > n or r * k < r + n:  # too few answers to separate pair and error variance
                continue
            table.loc[r, f"{n} pairs"] = turing_equivalence_power(
                r, n, components, margin=margin, answers_per_rater=k, true_accuracy=true_accuracy, alpha=alpha
            )
    table = table.astype(float)
    table.attrs["target"] = power
    return table


# ---------------------------------------------------------------------------------------------------
# MRMC AUC difference (Hillis, Obuchowski & Berbaum 2011)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ORComponents:
    """OR variance components of a pilot with ``n_cases`` cases (see :class:`analysis.mrmc.ORResult`)."""

    var_tr: float
    var_error: float
    cov1: float
    cov2: float
    cov3: float
    n_cases: int

    @classmethod
    def from_result(cls, result: ORResult) -> ORComponents:
        """Components of a pilot OR analysis (cases = all cases read)."""
        n_cases = int(result.auc.groupby("reader")[["n_pos", "n_neg"]].sum().sum(axis=1).max() // len(result.tests))
        return cls(result.var_tr, result.var_error, result.cov1, result.cov2, result.cov3, n_cases)


def or_power(
    n_readers: int, n_cases: int, effect: float, components: ORComponents, *, alpha: float = 0.05
) -> dict[str, float]:
    """Power of the RRRC OR test of two modalities differing in AUC by ``effect`` (Hillis et al. 2011).

    Returns ``power, ncp, ddf, f_crit`` as RJafroc's ``SsPowerGivenJKOrVarComp``.
    """
    if n_readers < 2 or n_cases < 1:
        raise ValueError(f"need 2+ readers and 1+ cases, got {n_readers}, {n_cases}")
    scale = components.n_cases / n_cases
    var_tr = max(components.var_tr, 0.0)
    cov_diff = max(components.cov2 - components.cov3, 0.0)
    den = var_tr + scale * (components.var_error - components.cov1 + (n_readers - 1) * cov_diff)
    ms_tr = var_tr + scale * (components.var_error - components.cov1 - cov_diff)
    ddf = den**2 / (ms_tr**2 / (n_readers - 1))
    ncp = effect**2 * n_readers / 2.0 / den
    f_crit = float(stats.f.ppf(1.0 - alpha, 1, ddf))
    return {"power": float(stats.ncf.sf(f_crit, 1, ddf, ncp)), "ncp": ncp, "ddf": ddf, "f_crit": f_crit}


def plan_mrmc(
    components: ORComponents,
    effect: float,
    *,
    power: float = 0.8,
    readers: Sequence[int] = (4, 6, 8, 10, 15),
    cases: Sequence[int] = (50, 100, 200, 400, 800),
    alpha: float = 0.05,
) -> pd.DataFrame:
    """RRRC power of an AUC difference ``effect`` for each readers x cases design (rows: readers)."""
    table = pd.DataFrame(
        [[or_power(j, k, effect, components, alpha=alpha)["power"] for k in cases] for j in readers],
        index=pd.Index(list(readers), name="readers"),
        columns=[f"{k} cases" for k in cases],
    )
    table.attrs["target"] = power
    return table


# ---------------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------------


def simulate_2afc(
    rng: np.random.Generator,
    *,
    n_raters: int = 8,
    answers_per_rater: int = 100,
    n_items: int = 100,
    sd_rater: float = 0.0,
    sd_item: float = 0.0,
    logit_mean: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One simulated 2AFC study: ``(rater, item, correct)`` arrays.

    ``P(correct) = expit(logit_mean + a_r + b_i)`` with normal rater and item effects on the logit
    scale; every rater answers ``answers_per_rater`` distinct items drawn from ``n_items`` (all of
    them, in a crossed design, when the two are equal). ``logit_mean = 0`` gives a population
    accuracy of exactly 0.5 (symmetry).
    """
    if answers_per_rater > n_items:
        raise ValueError(f"answers_per_rater ({answers_per_rater}) exceeds n_items ({n_items})")
    a = rng.normal(0.0, sd_rater, n_raters)
    b = rng.normal(0.0, sd_item, n_items)
    rater = np.repeat(np.arange(n_raters), answers_per_rater)
    if answers_per_rater == n_items:
        item = np.tile(np.arange(n_items), n_raters)
    else:
        item = np.concatenate([rng.permutation(n_items)[:answers_per_rater] for _ in range(n_raters)])
    correct = rng.random(len(rater)) < special.expit(logit_mean + a[rater] + b[item])
    return rater, item, correct.astype(float)


# ---------------------------------------------------------------------------------------------------
# The `study plan` service
# ---------------------------------------------------------------------------------------------------


def format_plan(table: pd.DataFrame) -> str:
    """A power table as text; cells that reach ``table.attrs["target"]`` are starred."""
    target = float(table.attrs.get("target", 0.8))
    shown = table.map(lambda v: "" if pd.isna(v) else f"{v:.2f}{'*' if v >= target else ' '}")
    return shown.to_string() + f"\n(* = power >= {target:.2f})"


def _read_table(path: str) -> pd.DataFrame:
    from db.errors import InputError

    try:
        return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the pilot table: {err}") from err


def turing_plan_text(
    *,
    margin: float,
    power: float,
    sd_rater: float,
    sd_item: float,
    true_accuracy: float = 0.5,
    answers_per_rater: int | None = None,
    pilot: str | None = None,
    raters: Sequence[int] = (4, 6, 8, 10, 15, 20),
    items: Sequence[int] = (50, 100, 200, 400),
) -> str:
    """``study plan turing``: components from a pilot ratings table or from logit SDs; the power table."""
    from analysis.turing import _headline_answers, crossed_mean

    if pilot:
        answers = _headline_answers(_read_table(pilot))
        fit = crossed_mean(answers["rater"].to_numpy(), answers["item"].to_numpy(), answers["_correct"].to_numpy())
        components = TuringComponents(fit.var_rater, fit.var_item, fit.var_error)
        source = f"pilot {pilot}: {fit.n_raters} raters, {fit.n_items} pairs, accuracy {fit.estimate:.3f}"
    else:
        components = components_from_logit_sds(sd_rater, sd_item, true_accuracy)
        source = f"rater SD {sd_rater:g}, item SD {sd_item:g} (logit scale)"
    table = plan_turing(components, margin=margin, power=power, raters=raters, items=items,
                        answers_per_rater=answers_per_rater, true_accuracy=true_accuracy)  # fmt: skip
    design = "each rater answers all pairs" if answers_per_rater is None else f"{answers_per_rater} pairs per rater"
    return (
        f"Turing equivalence |accuracy - 0.5| < {margin:g} (TOST, alpha 0.05), true accuracy {true_accuracy:g}; "
        f"{design}.\nVariance components ({source}): rater {components.var_rater:.4g}, "
        f"item {components.var_item:.4g}, error {components.var_error:.4g}.\n"
        f"Power by raters (rows) x distinct pairs (columns):\n{format_plan(table)}"
    )


def mrmc_plan_text(
    *,
    effect: float,
    power: float,
    components: ORComponents | None = None,
    roc: str | None = None,
    readers: Sequence[int] = (4, 6, 8, 10, 15),
    cases: Sequence[int] = (50, 100, 200, 400, 800),
) -> str:
    """``study plan mrmc``: OR components from a pilot ROC table (reader, test, case, truth, score) or given."""
    from analysis.mrmc import or_analysis
    from db.errors import InputError

    if roc:
        try:
            result = or_analysis(_read_table(roc))
        except ValueError as err:
            raise InputError(f"{roc}: {err}") from err
        components = ORComponents.from_result(result)
    if components is None:
        raise InputError(
            "give a pilot ROC table (--roc) or all of --var-tr --var-error --cov1 --cov2 --cov3 --pilot-cases"
        )
    table = plan_mrmc(components, effect, power=power, readers=readers, cases=cases)
    return (
        f"MRMC AUC difference {effect:g} between two modalities, RRRC OR test (Hillis, Obuchowski & Berbaum 2011), "
        f"alpha 0.05.\nOR components (pilot of {components.n_cases} cases): var(TR) {components.var_tr:.4g}, "
        f"var(error) {components.var_error:.4g}, cov1 {components.cov1:.4g}, cov2 {components.cov2:.4g}, "
        f"cov3 {components.cov3:.4g}.\nPower by readers (rows) x cases (columns):\n{format_plan(table)}"
    )
