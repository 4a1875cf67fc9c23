"""Pairwise preferences between models (head-to-head studies): Bradley-Terry strengths with ties.

Input: one row per answered head-to-head question, columns

``rater``, ``case``
    who answered and which prompt (case) the two images were made for;
``model_left``, ``model_right``
    the models whose images were shown on each side;
``choice``
    ``"left"``, ``"right"`` or ``"tie"`` (no difference);
``specialty`` (optional)
    the rater's specialty, for :func:`by_specialty`.

Model: Bradley-Terry (1952) on log-strengths ``theta`` (centred, mean 0), ``P(i beats j) = pi_i /
(pi_i + pi_j)``. Ties follow Davidson (1970): ``P(tie) = nu sqrt(pi_i pi_j) / (pi_i + pi_j + nu sqrt(pi_i
pi_j))`` with one tie parameter ``nu``. Without ties the fit is ``choix``'s maximum-likelihood
:func:`choix.ilsr_pairwise_dense`; with ties (choix has no tie model) the Davidson likelihood is maximised
jointly over ``theta`` and ``log nu`` by :func:`scipy.optimize.minimize` (L-BFGS-B with the analytic
gradient), started from choix's fit with each tie counted as half a win each way.

Uncertainty: raters and cases are both random (answers by one rater, or on one case, are never treated as
independent). Owen's (2007) product-weight bootstrap of raters x cases counts the answer-level variance
about three times (in simulation its SEs are ~1.6x too wide), so the default ``"crossed"`` bootstrap
combines a rater, a case and a record bootstrap by the moment identity ``V = V_r + V_c - V_e`` (see
:func:`bootstrap_bradley_terry`); Owen's is available as ``resample="two-way"``. Percentile CIs per
strength; the probability that each model is best is the share of resamples in which its strength is the
largest. A resample whose comparison graph is not strongly connected (some model
never loses or never wins against the rest) has no maximum-likelihood fit; it is skipped and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import optimize

from db.errors import InputError

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

CHOICES = ("left", "right", "tie")
REQUIRED = ("rater", "case", "model_left", "model_right", "choice")


@dataclass(frozen=True)
class PairCounts:
    """Weighted outcomes per ordered model pair: ``wins[i, j]`` = i preferred to j, ``ties`` symmetric."""

    models: tuple[str, ...]
    wins: FloatArray
    ties: FloatArray


@dataclass(frozen=True)
class BTFit:
    """A Bradley-Terry (Davidson when ``nu`` is not None) fit: centred log-strengths per model."""

    models: tuple[str, ...]
    theta: FloatArray
    nu: float | None  #: Davidson tie parameter; None when the data have no ties (plain BT)
    log_likelihood: float

    def strengths(self) -> pd.Series:
        return pd.Series(self.theta, index=list(self.models), name="theta")


@dataclass(frozen=True)
class BTBootstrap:
    """A BT fit with its two-way (raters x cases) bootstrap."""

    fit: BTFit
    distribution: FloatArray = field(repr=False)  #: (n_ok, n_models) centred log-strengths
    n_resamples: int
    n_skipped: int
    confidence_level: float
    resample: str = "crossed"

    def table(self) -> pd.DataFrame:
        """One row per model, best first: theta, CI, bootstrap SE, P(best), rank."""
        tail = (1 - self.confidence_level) / 2
        low, high = np.quantile(self.distribution, [tail, 1 - tail], axis=0)
        best = np.bincount(self.distribution.argmax(axis=1), minlength=len(self.fit.models))
        frame = pd.DataFrame(
            {
                "model": list(self.fit.models),
                "theta": self.fit.theta,
                "ci_low": low,
                "ci_high": high,
                "se_boot": self.distribution.std(axis=0, ddof=1),
                "p_best": best / max(len(self.distribution), 1),
            }
        )
        frame = frame.sort_values("theta", ascending=False, ignore_index=True)
        frame.insert(0, "rank", np.arange(1, len(frame) + 1))
        return frame


# --------------------------------------------------------------------------------------------
# Records and counts
# --------------------------------------------------------------------------------------------


def validate(records: pd.DataFrame, *, source: str = "preferences") -> pd.DataFrame:
    """The records with checked columns and choices (lower-case); raise InputError naming the problem."""
    missing = [c for c in REQUIRED if c not in records.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(missing)}")
    frame = records.dropna(subset=["choice"]).copy()
    frame["choice"] = frame["choice"].astype(str).str.strip().str.lower()
    bad = frame.loc[~frame["choice"].isin(CHOICES), "choice"]
    if len(bad):
        raise InputError(f"{source}: choice {bad.iloc[0]!r} (row {bad.index[0]}) is not one of {', '.join(CHOICES)}")
    same = frame["model_left"] == frame["model_right"]
    if same.any():
        row = frame.index[same.to_numpy().argmax()]
        raise InputError(f"{source}: row {row} compares model {frame.at[row, 'model_left']!r} with itself")
    if frame.empty:
        raise InputError(f"{source}: no answered preferences")
    return frame


def _models(frame: pd.DataFrame) -> tuple[str, ...]:
    return tuple(sorted(set(frame["model_left"].astype(str)) | set(frame["model_right"].astype(str))))


def _indices(frame: pd.DataFrame, models: Sequence[str]) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """(winner-or-left index, loser-or-right index, outcome code 0 = first wins, 1 = tie)."""
    index = {m: i for i, m in enumerate(models)}
    left = frame["model_left"].astype(str).map(index).to_numpy(np.intp)
    right = frame["model_right"].astype(str).map(index).to_numpy(np.intp)
    choice = frame["choice"].to_numpy()
    first = np.where(choice == "right", right, left)
    second = np.where(choice == "right", left, right)
    return first, second, (choice == "tie").astype(np.intp)


def preferences_from_ratings(ratings: pd.DataFrame, question: str = "prefer_realism") -> pd.DataFrame:
    """Preference records from the exported ratings table (``db.export.ratings_frame``) of a head-to-head
    study: its head-to-head rows answering ``question`` (``prefer_realism`` or ``prefer_prompt``)."""
    needed = ("rater", "case", "model_left", "model_right", question)
    missing = [c for c in needed if c not in ratings.columns]
    if missing:
        raise InputError(f"ratings table: missing column(s) {', '.join(missing)} (not a head-to-head export?)")
    rows = ratings[ratings["model_left"].notna() & ratings[question].notna()]
    if "cannot_assess" in rows.columns:
        rows = rows[~rows["cannot_assess"].astype(bool)]
    out = rows[["rater", "case", "model_left", "model_right"]].copy()
    out["choice"] = rows[question].astype(str)
    if "specialty" in rows.columns:
        out["specialty"] = rows["specialty"]
    return out.reset_index(drop=True)


def pair_counts(records: pd.DataFrame, weights: ArrayLike | None = None) -> PairCounts:
    """Weighted win and tie counts per model pair (``weights``: one per row of ``records``, default 1)."""
    frame = validate(records)
    models = _models(frame)
    first, second, tie = _indices(frame, models)
    if weights is None:
        w = np.ones(len(frame))
    else:
        w = np.asarray(weights, dtype=float)[records["choice"].notna().to_numpy()]
    return _counts(models, first, second, tie, w)


def _counts(
    models: tuple[str, ...], first: NDArray[np.intp], second: NDArray[np.intp], tie: NDArray[np.intp], w: FloatArray
) -> PairCounts:
    n = len(models)
    wins = np.zeros((n, n))
    ties = np.zeros((n, n))
    np.add.at(wins, (first[tie == 0], second[tie == 0]), w[tie == 0])
    np.add.at(ties, (first[tie == 1], second[tie == 1]), w[tie == 1])
    ties = ties + ties.T
    return PairCounts(models, wins, ties)


def win_rate_matrix(records: pd.DataFrame) -> pd.DataFrame:
    """Row model's win rate against the column model (ties count half); NaN where never compared."""
    counts = pair_counts(records)
    total = counts.wins + counts.wins.T + counts.ties
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(total > 0, (counts.wins + counts.ties / 2) / total, np.nan)
    return pd.DataFrame(rate, index=list(counts.models), columns=list(counts.models))


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def estimable(counts: PairCounts) -> bool:
    """True when the maximum-likelihood fit exists: the graph "i won or tied against j" is strongly connected."""
    n = len(counts.models)
    reach = ((counts.wins + counts.ties) > 0) | np.eye(n, dtype=bool)
    for _ in range(max(n - 1, 1).bit_length()):  # transitive closure by repeated squaring
        reach = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
    return bool(reach.all())


def _davidson_nll(params: FloatArray, wins: FloatArray, ties: FloatArray) -> tuple[float, FloatArray]:
    """Negative Davidson log-likelihood and its gradient; ``params`` = (theta..., log nu)."""
    theta, log_nu = params[:-1], params[-1]
    a = theta[:, None]
    b = theta[None, :]
    tie_term = log_nu + (a + b) / 2
    log_den = np.logaddexp(np.logaddexp(a, b), tie_term)  # log(pi_i + pi_j + nu sqrt(pi_i pi_j))
    upper = np.triu(ties, 1)
    ll = np.sum(wins * (a - log_den)) + np.sum(upper * (tie_term - log_den))
    n = wins + wins.T + ties  # comparisons of i and j (symmetric), ties counted once per pair below
    d_a = np.exp(a - log_den) + 0.5 * np.exp(tie_term - log_den)  # d log_den / d theta_i
    p_tie = np.exp(tie_term - log_den)
    grad_theta = wins.sum(axis=1) + 0.5 * ties.sum(axis=1) - np.sum(n * d_a, axis=1)
    grad_log_nu = upper.sum() - np.sum(np.triu(n, 1) * np.triu(p_tie, 1))
    return -float(ll), -np.append(grad_theta, grad_log_nu)


def log_likelihood(fit: BTFit, counts: PairCounts) -> float:
    """Log-likelihood of ``counts`` under ``fit`` (Davidson, or BT when ``fit.nu`` is None)."""
    if fit.nu is None:
        a, b = fit.theta[:, None], fit.theta[None, :]
        return float(np.sum(counts.wins * (a - np.logaddexp(a, b))))
    nll, _ = _davidson_nll(np.append(fit.theta, np.log(fit.nu)), counts.wins, counts.ties)
    return -nll


def fit_counts(counts: PairCounts, start: BTFit | None = None, *, quick: bool = False) -> BTFit:
    """Maximum-likelihood BT / Davidson fit of weighted counts (see the module docstring); ``start`` (a
    previous fit of the same models, e.g. the point estimate for bootstrap resamples) warm-starts it;
    ``quick`` loosens the tolerances to what a bootstrap draw needs (1e-6 on the gradient)."""
    import choix  # local: a runtime dependency only the preference analysis needs

    if not estimable(counts):
        raise InputError("preferences: the comparison graph is not strongly connected (a model never loses or "
                         "never wins against the others), so Bradley-Terry strengths are not estimable")  # fmt: skip
    has_ties = counts.ties.sum() > 0
    if has_ties and start is not None and start.nu is not None:
        x0 = np.append(start.theta, np.log(start.nu))
    else:
        initial = None if start is None else start.theta
        theta = choix.ilsr_pairwise_dense(counts.wins + counts.ties / 2, alpha=0.0, initial_params=initial,
                                          max_iter=500)  # fmt: skip
        theta = theta - theta.mean()
        if not has_ties:
            return BTFit(counts.models, theta, None, log_likelihood(BTFit(counts.models, theta, None, 0.0), counts))
        n_tie = np.triu(counts.ties, 1).sum()
        n_all = np.triu(counts.wins + counts.wins.T + counts.ties, 1).sum()
        share = min(max(n_tie / n_all, 1e-6), 1 - 1e-6)
        x0 = np.append(theta, np.log(2 * share / (1 - share)))  # nu at equal strengths
    result = optimize.minimize(
        _davidson_nll, x0, args=(counts.wins, counts.ties), jac=True, method="L-BFGS-B",
        options={"maxiter": 1000, "gtol": 1e-6 if quick else 1e-9, "ftol": 1e-10 if quick else 1e-14},
    )  # fmt: skip
    if not result.success and np.max(np.abs(result.jac)) > 1e-4:
        raise RuntimeError(f"Davidson fit did not converge: {result.message}")
    theta = result.x[:-1] - result.x[:-1].mean()
    return BTFit(counts.models, theta, float(np.exp(result.x[-1])), -float(result.fun))


def fit_bradley_terry(records: pd.DataFrame) -> BTFit:
    """BT strengths (Davidson ties) from preference records."""
    return fit_counts(pair_counts(records))


BTResample = Literal["crossed", "two-way", "raters", "cases", "records"]


def _draws(
    models: tuple[str, ...],
    parts: tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]],
    codes: tuple[NDArray[np.intp], NDArray[np.intp]],
    fit: BTFit,
    resample: BTResample,
    n_resamples: int,
    rng: np.random.Generator,
) -> tuple[FloatArray, int]:
    """Bootstrap draws of the centred log-strengths resampling one unit (or raters x cases, Owen's product
    weights); the number of skipped (not estimable) resamples."""
    rater_codes, case_codes = codes
    n_r, n_c, n = int(rater_codes.max()) + 1, int(case_codes.max()) + 1, len(rater_codes)
    draws: list[FloatArray] = []
    skipped = 0
    for _ in range(n_resamples):
        if resample == "records":
            w = rng.multinomial(n, np.full(n, 1 / n)).astype(float)
        else:
            mr = rng.multinomial(n_r, np.full(n_r, 1 / n_r)) if resample != "cases" else np.ones(n_r, np.int64)
            mc = rng.multinomial(n_c, np.full(n_c, 1 / n_c)) if resample != "raters" else np.ones(n_c, np.int64)
            w = (mr[rater_codes] * mc[case_codes]).astype(float)
        counts = _counts(models, *parts, w)
        if not estimable(counts):
            skipped += 1
            continue
        draws.append(fit_counts(counts, start=fit, quick=True).theta)
    return (np.vstack(draws) if draws else np.empty((0, len(models)))), skipped


def bootstrap_bradley_terry(
    records: pd.DataFrame,
    n_resamples: int = 500,
    seed: int = 0,
    confidence_level: float = 0.95,
    resample: BTResample = "crossed",
) -> BTBootstrap:
    """The fit and a bootstrap of it.

    ``resample``:

    ``"crossed"`` (default)
        raters and cases both random, without Owen's over-count: three bootstraps (raters only, cases only,
        records) give per-model variances ``V_r``, ``V_c``, ``V_e`` and the crossed variance is the moment
        estimate ``V_r + V_c - V_e`` (each one-way bootstrap counts the answer-level variance once; it must
        be counted once in total), floored at ``max(V_r, V_c)``. The draws are the rater-bootstrap draws
        rescaled per model about the estimate to that variance (percentile CIs, P(best)).
    ``"two-way"``
        Owen's product-weight bootstrap of raters and cases: conservative (simulation: SEs ~1.6x too wide).
    ``"raters"``, ``"cases"``, ``"records"``
        one unit only (records: answers independent, too narrow when raters differ).
    """
    frame = validate(records)
    models = _models(frame)
    parts = _indices(frame, models)
    fit = fit_counts(_counts(models, *parts, np.ones(len(frame))))
    codes = (pd.factorize(frame["rater"])[0], pd.factorize(frame["case"])[0])
    rng = np.random.default_rng(seed)
    if resample != "crossed":
        draws, skipped = _draws(models, parts, codes, fit, resample, n_resamples, rng)
    else:
        draws, skipped = _draws(models, parts, codes, fit, "raters", n_resamples, rng)
        by_case, skipped_c = _draws(models, parts, codes, fit, "cases", n_resamples, rng)
        by_record, skipped_e = _draws(models, parts, codes, fit, "records", n_resamples, rng)
        skipped += skipped_c + skipped_e
        if len(draws) > 1 and len(by_case) > 1 and len(by_record) > 1:
            v_r, v_c, v_e = (d.var(axis=0, ddof=1) for d in (draws, by_case, by_record))
            target = np.maximum(v_r + v_c - v_e, np.maximum(v_r, v_c))
            scale = np.sqrt(target / np.where(v_r > 0, v_r, np.inf))
            scale = np.where(v_r > 0, scale, 1.0)
            draws = fit.theta + (draws - draws.mean(axis=0)) * scale
    if skipped:
        logger.warning("BT bootstrap: %d resamples not estimable, skipped", skipped)
    if len(draws) == 0:
        raise InputError("preferences: no bootstrap resample is estimable (too few raters or cases)")
    return BTBootstrap(fit, draws, n_resamples, skipped, confidence_level, resample)


# --------------------------------------------------------------------------------------------
# Agreement and strata
# --------------------------------------------------------------------------------------------


def preference_agreement(records: pd.DataFrame) -> dict[str, float]:
    """Krippendorff's alpha (nominal) between raters on the preferences.

    A unit is one (case, model pair); a rater's value is which model of the pair they preferred (coded by
    model, not by side, so raters who saw the sides swapped still agree) or the tie."""
    from analysis.agreement import krippendorff_alpha

    frame = validate(records)
    left = frame["model_left"].astype(str)
    right = frame["model_right"].astype(str)
    low = np.where(left < right, left, right)
    high = np.where(left < right, right, left)
    winner = np.where(frame["choice"] == "left", left, np.where(frame["choice"] == "right", right, ""))
    code = np.where(winner == "", 1.0, np.where(winner == low, 0.0, 2.0))
    unit = frame["case"].astype(str) + "|" + low + "|" + high
    table = pd.DataFrame({"rater": frame["rater"].to_numpy(), "unit": unit.to_numpy(), "code": code})
    matrix = table.pivot_table(index="rater", columns="unit", values="code", aggfunc="first")
    pairable = int((matrix.notna().sum(axis=0) >= 2).sum())
    if pairable == 0:
        return {"alpha": float("nan"), "units": 0.0, "raters": float(len(matrix))}
    return {"alpha": krippendorff_alpha(matrix.to_numpy(float), "nominal"), "units": float(pairable),
            "raters": float(len(matrix))}  # fmt: skip


def by_specialty(
    records: pd.DataFrame, n_resamples: int = 500, seed: int = 0, confidence_level: float = 0.95
) -> pd.DataFrame:
    """The BT table of every specialty (column ``specialty``), plus "all"; a stratum that cannot be fitted
    gets a row with its reason in ``note``."""
    frame = validate(records)
    strata: list[tuple[str, pd.DataFrame]] = [("all", frame)]
    if "specialty" in frame.columns:
        strata += [(str(s), part) for s, part in frame.groupby("specialty", sort=True)]
    tables = []
    for name, part in strata:
        try:
            table = bootstrap_bradley_terry(part, n_resamples, seed, confidence_level).table()
            table["note"] = ""
        except InputError as error:
            table = pd.DataFrame({"model": list(_models(part)), "note": str(error)})
        table.insert(0, "specialty", name)
        agreement = preference_agreement(part)
        table["alpha_nominal"] = agreement["alpha"]
        table["n_answers"] = len(part)
        table["n_raters"] = part["rater"].nunique()
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Report section
# --------------------------------------------------------------------------------------------


def forest_figure(table: pd.DataFrame, confidence_level: float = 0.95) -> Any:
    """A forest plot of the BT log-strengths with their CIs (a pyplot-free matplotlib Figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = table.sort_values("theta", ignore_index=True)
    figure = Figure(figsize=(6.0, 0.4 * len(rows) + 1.2), dpi=80)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.3, bottom=0.2, right=0.97, top=0.88)
    axes = figure.add_subplot()
    y = np.arange(len(rows))
    err = np.vstack([rows["theta"] - rows["ci_low"], rows["ci_high"] - rows["theta"]]).clip(min=0)
    axes.errorbar(rows["theta"], y, xerr=err, fmt="o", capsize=3)
    axes.set_yticks(y, [str(m) for m in rows["model"]], fontsize=8)
    axes.axvline(0, color="grey", lw=0.8)
    axes.set_xlabel(f"Bradley-Terry log-strength ({confidence_level:.0%} two-way bootstrap CI)")
    axes.set_title("Head-to-head preferences")
    return figure


def preference_report_section(
    records: pd.DataFrame, n_resamples: int = 500, seed: int = 0, confidence_level: float = 0.95
) -> dict[str, Any]:
    """``{"tables", "figures", "notes"}`` for the report (the shape of ``mrmc_report_section``)."""
    boot = bootstrap_bradley_terry(records, n_resamples, seed, confidence_level)
    table = boot.table()
    agreement = preference_agreement(records)
    ties = f"Davidson ties, nu = {boot.fit.nu:.3g}" if boot.fit.nu is not None else "no ties"
    notes = [
        f"Bradley-Terry strengths ({ties}) from {len(validate(records))} answers; {confidence_level:.0%} CIs "
        f"from {boot.n_resamples} bootstrap resamples each of raters, cases and answers, combined as a crossed "
        f"raters x cases variance ({boot.n_skipped} resamples not estimable, skipped).",
        f"Inter-rater agreement on the preferences: Krippendorff's alpha (nominal) = {agreement['alpha']:.3f} "
        f"over {int(agreement['units'])} (case, model pair) units rated by 2 or more raters.",
    ]
    return {
        "tables": {
            "bradley_terry": table,
            "win_rates": win_rate_matrix(records).reset_index(names="model"),
            "by_specialty": by_specialty(records, n_resamples, seed, confidence_level),
        },
        "figures": {"bradley_terry_forest": forest_figure(table, confidence_level)},
        "notes": notes,
    }


DRAW_COLUMNS = ("step", "rater", "pair", "score")


def adaptive_draw_summary(draws: pd.DataFrame) -> pd.DataFrame:
    """Per model pair, how the adaptive draws (the ``adaptive_draws`` export, :func:`db.adaptive.draws_frame`)
    were spent: draws, share, raters, the mean and maximum order uncertainty the pair was drawn at, and the
    first and last step."""
    missing = [c for c in DRAW_COLUMNS if c not in draws.columns]
    if missing:
        raise InputError(f"adaptive draw log: missing column(s) {', '.join(missing)}")
    if draws.empty:
        return pd.DataFrame(columns=["pair", "draws", "share", "raters", "mean_uncertainty", "max_uncertainty",
                                     "first_step", "last_step"])  # fmt: skip
    grouped = draws.groupby("pair", sort=True)
    table = pd.DataFrame(
        {
            "draws": grouped.size(),
            "share": grouped.size() / len(draws),
            "raters": grouped["rater"].nunique(),
            "mean_uncertainty": grouped["score"].mean(),
            "max_uncertainty": grouped["score"].max(),
            "first_step": grouped["step"].min(),
            "last_step": grouped["step"].max(),
        }
    )
    return table.reset_index()


def adaptive_notes(draws: pd.DataFrame) -> list[str]:
    """The report's sentences on an adaptive assignment (see :mod:`db.adaptive`)."""
    summary = adaptive_draw_summary(draws)
    spread = f"{int(summary['draws'].min())}-{int(summary['draws'].max())}" if len(summary) else "0"
    return [
        f"Pairs were assigned adaptively: each of {len(draws)} draws (to {draws['rater'].nunique()} raters) went "
        "to the model pair whose Bradley-Terry order was then least certain, within each rater's balance over "
        f"model pairs, K raters per item and no image seen twice; model pairs got {spread} draws (table "
        "adaptive_draws). The Bradley-Terry maximum-likelihood estimates remain valid under this "
        "outcome-dependent sampling (the likelihood principle: the rule depends only on earlier answers, so "
        "it factors out of the likelihood), but the bootstrap CIs resample raters and cases as if the design "
        "were fixed and are therefore approximate.",
    ]


def head_to_head_report_parts(
    ratings: pd.DataFrame,
    n_resamples: int = 500,
    seed: int = 0,
    confidence_level: float = 0.95,
    draws: pd.DataFrame | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(title, ``{"tables", "figures", "notes"}``) per preference question answered in the exported ratings
    table of a head-to-head study; empty when it has no head-to-head rows. Table and figure names are
    prefixed with the question so both questions fit in one report. ``draws``: the study's adaptive draw
    log (``assignment = "adaptive"``), noted and summarised in every part."""
    if "model_left" not in ratings.columns or not ratings["model_left"].notna().any():
        return []
    adaptive = draws is not None and not draws.empty
    parts: list[tuple[str, dict[str, Any]]] = []
    for question, title in (("prefer_realism", "more realistic"), ("prefer_prompt", "a better match to the prompt")):
        if question not in ratings.columns:
            continue
        records = preferences_from_ratings(ratings, question)
        if records.empty:
            continue
        try:
            section = preference_report_section(records, n_resamples, seed, confidence_level)
        except InputError as error:  # e.g. a model that never loses: reported, not fatal
            section = {"tables": {}, "figures": {}, "notes": [f"Bradley-Terry fit not possible: {error}"]}
        if adaptive and draws is not None:
            section["tables"]["adaptive_draws"] = adaptive_draw_summary(draws)
            section["notes"] = [*section["notes"], *adaptive_notes(draws)]
        section = {
            "tables": {f"{question}/{name}": table for name, table in section["tables"].items()},
            "figures": {f"{question}/{name}": figure for name, figure in section["figures"].items()},
            "notes": section["notes"],
        }
        parts.append((f"Head-to-head: which image is {title}? (Bradley-Terry)", section))
    return parts


def ranking_vs_metrics(
    bt_table: pd.DataFrame, metrics: pd.DataFrame, higher_is_better: dict[str, bool]
) -> pd.DataFrame:
    """The BT ranking next to the automated metrics' rankings.

    ``bt_table``: :meth:`BTBootstrap.table` (columns model, theta); ``metrics``: one row per model, a
    ``model`` column and one column per metric named in ``higher_is_better`` (e.g. ``{"fd": False,
    "clip_score": True}``). Returns one row per model (BT rank, then each metric's value and rank, 1 = best)
    and, in ``attrs["kendall_tau"]``, Kendall's tau-b between the BT order and each metric's order (scipy;
    descriptive: with a handful of models it has almost no power)."""
    from scipy import stats

    missing = [c for c in ("model", *higher_is_better) if c not in metrics.columns]
    if missing:
        raise InputError(f"metrics table: missing column(s) {', '.join(missing)}")
    frame = bt_table[["model", "theta"]].merge(metrics, on="model", how="inner")
    if len(frame) < 2:
        raise InputError("metrics table: fewer than two models in common with the preference analysis")
    frame["rank_bt"] = frame["theta"].rank(ascending=False, method="min").astype(int)
    taus: dict[str, float] = {}
    for metric, higher in higher_is_better.items():
        frame[f"rank_{metric}"] = frame[metric].rank(ascending=not higher, method="min").astype(int)
        taus[metric] = float(stats.kendalltau(frame["rank_bt"], frame[f"rank_{metric}"]).statistic)
    frame = frame.sort_values("rank_bt", ignore_index=True)
    frame.attrs["kendall_tau"] = taus
    return frame
