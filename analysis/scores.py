"""Per-model human scores: realism and accuracy with bootstrap CIs, comparisons and effect sizes.

The unit of analysis is the item (a blinded pair): a rater's scores of one item are averaged
with the other raters' scores of it, so raters who rate many items do not count as independent
observations. Bootstrap intervals resample items (as :mod:`analysis.agreement`).

Comparison design, chosen per pair of models (``design="auto"``):

* paired (Wilcoxon signed-rank) when both models were rated on exactly the same cases (prompt +
  real image): the per-case mean scores of the two models are compared case by case;
* unpaired (Mann-Whitney U, two-sided) otherwise, on per-item mean scores.

Effect sizes: matched-pairs rank-biserial correlation for Wilcoxon (Kerby 2014), Cliff's delta
(= the rank-biserial correlation of the U test) for Mann-Whitney; positive means the first model
scores higher. P-values are Holm-corrected within each question and family (``between_models``,
``vs_real``). Friedman's test runs over the cases that every model was rated on (complete
blocks), with Kendall's W.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from analysis.bootstrap import ItemResampler
from db.questions import IMAGE_KINDS, IMAGE_SCORES

__all__ = [
    "SCORE_QUESTIONS",
    "cliffs_delta",
    "friedman_table",
    "holm",
    "item_means",
    "model_comparisons",
    "model_differences",
    "model_scores",
    "rank_biserial_paired",
]

#: The scores asked of each image (``realism``, ``accuracy``), from the study's question schema.
SCORE_QUESTIONS: tuple[str, ...] = IMAGE_SCORES
REAL = "real (ceiling)"
Design = Literal["auto", "paired", "unpaired"]


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    if len(finite) == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def cliffs_delta(a: ArrayLike, b: ArrayLike) -> float:
    """Cliff's delta ``P(A > B) - P(A < B)`` from the Mann-Whitney U of ``a`` vs ``b``.

    Examples
    --------
    >>> cliffs_delta([3, 4, 5], [1, 2, 3])
    0.8888888888888888
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if len(x) == 0 or len(y) == 0:
        raise ValueError("Cliff's delta needs two non-empty samples")
    u = stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic").statistic
    return float(2.0 * u / (len(x) * len(y)) - 1.0)


def rank_biserial_paired(a: ArrayLike, b: ArrayLike) -> float:
    """Matched-pairs rank-biserial correlation ``(T+ - T-) / (T+ + T-)`` of ``a - b``; zero differences dropped.

    Examples
    --------
    >>> rank_biserial_paired([3, 4, 5, 2], [1, 2, 6, 2])
    0.6666666666666666
    """
    difference = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    difference = difference[difference != 0]
    if len(difference) == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(difference))
    positive = ranks[difference > 0].sum()
    negative = ranks[difference < 0].sum()
    return float((positive - negative) / (positive + negative))


def _score_rows(frame: pd.DataFrame, item_kinds: Sequence[str]) -> pd.DataFrame:
    """The rows of ``item_kinds`` and only the columns scores need (filtering all columns is slow)."""
    columns = ["item", "model", "case", *(f"{q}_{kind}" for q in SCORE_QUESTIONS for kind in IMAGE_KINDS)]
    keep = frame["item_kind"].isin(item_kinds).to_numpy(dtype=bool)
    return frame.loc[keep, columns]


def item_means(frame: pd.DataFrame, question: str, item_kinds: Sequence[str] | None = ("normal",)) -> pd.DataFrame:
    """Per item: model, case, mean generated and real score of ``question`` over raters, and counts.

    ``item_kinds=None`` takes ``frame`` as already filtered.
    """
    if question not in SCORE_QUESTIONS:
        raise ValueError(f"question must be one of {SCORE_QUESTIONS}, got {question!r}")
    rows = frame if item_kinds is None else _score_rows(frame, item_kinds)
    codes, items = pd.factorize(rows["item"], sort=True)
    first = np.unique(codes, return_index=True)[1]
    table = pd.DataFrame(
        {
            "item": np.asarray(items, dtype=object),
            "model": rows["model"].to_numpy(dtype=object)[first],
            "case": rows["case"].to_numpy(dtype=object)[first],
        }
    )
    for kind in ("generated", "real"):
        values = rows[f"{question}_{kind}"].to_numpy(dtype=float, na_value=np.nan)
        present = ~np.isnan(values)
        table[f"{kind}_sum"] = np.bincount(codes[present], weights=values[present], minlength=len(items))
        table[f"{kind}_n"] = np.bincount(codes[present], minlength=len(items))
        with np.errstate(invalid="ignore", divide="ignore"):
            table[kind] = table[f"{kind}_sum"] / table[f"{kind}_n"].where(table[f"{kind}_n"] > 0)
    return table


def model_scores(
    frame: pd.DataFrame,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
    item_kinds: Sequence[str] = ("normal",),
    resample: Literal["items", "two-way"] = "items",
) -> pd.DataFrame:
    """Mean realism and accuracy per model with bootstrap CIs, and the real images' (the ceiling).

    The mean is over all ratings of the model's items; the interval (percentile method, seeded)
    resamples items with all their ratings (``resample="items"``: generalises to new items read by
    these raters) or raters and items independently (``"two-way"``, :mod:`analysis.bootstrap`:
    generalises to new raters too; conservative). The ``ci_resample`` column names the choice.

    Returns
    -------
    pandas.DataFrame
        ``question, model, n_items, n_ratings, mean, ci_low, ci_high, sd, share_4_or_5,
        ci_resample``; the real images appear as model ``real (ceiling)``.
    """
    if resample not in ("items", "two-way"):
        raise ValueError(f"resample must be 'items' or 'two-way', got {resample!r}")
    rows: list[dict[str, object]] = []
    alpha = (1 - confidence_level) / 2
    resamplers: dict[int, ItemResampler] = {}  # one draw per item count, shared by models and questions
    score_rows = _score_rows(frame, item_kinds)
    row_models = score_rows["model"].to_numpy(dtype=object)
    for question in SCORE_QUESTIONS:
        per_item = item_means(score_rows, question, item_kinds=None)
        groups = [(str(model), part, "generated") for model, part in per_item.groupby("model", sort=True)]
        groups.append((REAL, per_item, "real"))
        for model, part, kind in groups:
            sums = part[f"{kind}_sum"].to_numpy(dtype=float)
            counts = part[f"{kind}_n"].to_numpy(dtype=float)
            if counts.sum() == 0 or len(part) < 2:
                continue
            if len(part) not in resamplers:
                resamplers[len(part)] = ItemResampler(len(part), n_resamples, seed)
            resampler = resamplers[len(part)]
            means = np.concatenate(
                [(chunk @ np.column_stack([sums, counts])) for chunk in resampler.multiplicity_chunks()]
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                distribution = means[:, 0] / means[:, 1]
            low, high = np.nanquantile(distribution, [alpha, 1 - alpha])
            values = score_rows[f"{question}_{kind}"].to_numpy(dtype=float, na_value=np.nan)
            mine = ~np.isnan(values) & ((row_models == model) | (model == REAL))
            if resample == "two-way":
                low, high = _two_way_interval(frame, score_rows, mine, values, n_resamples, seed, confidence_level)
            values = values[mine]
            rows.append(
                {
                    "question": question,
                    "model": model,
                    "n_items": int((counts > 0).sum()),
                    "n_ratings": int(counts.sum()),
                    "mean": float(sums.sum() / counts.sum()),
                    "ci_low": float(low),
                    "ci_high": float(high),
                    "sd": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
                    "share_4_or_5": float((values >= 4).mean()),
                    "ci_resample": resample,
                }
            )
    columns = ["question", "model", "n_items", "n_ratings", "mean", "ci_low", "ci_high", "sd", "share_4_or_5"]
    return pd.DataFrame(rows, columns=[*columns, "ci_resample"])


def _two_way_interval(
    frame: pd.DataFrame,
    score_rows: pd.DataFrame,
    mine: np.ndarray,
    values: np.ndarray,
    n_resamples: int,
    seed: int,
    confidence_level: float,
) -> tuple[float, float]:
    """Percentile interval of a mean resampling raters and items (see :mod:`analysis.bootstrap`)."""
    from analysis.bootstrap import bootstrap_group_means

    raters = frame.loc[score_rows.index, "rater"].to_numpy()
    items = score_rows["item"].to_numpy()
    boot = bootstrap_group_means(raters[mine], items[mine], values[mine], n_resamples=n_resamples, seed=seed)
    _, _, low, high = boot.interval([1.0], confidence_level)
    return low, high


def _case_means(per_item: pd.DataFrame) -> pd.DataFrame:
    """Cases x models table of mean generated scores (a case may hold several items of a model)."""
    return per_item.pivot_table(index="case", columns="model", values="generated", aggfunc="mean", observed=True)


def _compare(first: np.ndarray, second: np.ndarray, paired: bool) -> tuple[str, float, float, str, float, int, int]:
    if paired:
        keep = ~np.isnan(first) & ~np.isnan(second)
        a, b = first[keep], second[keep]
        if len(a) < 2 or np.all(a == b):
            return "wilcoxon", np.nan, np.nan, "rank_biserial", rank_biserial_paired(a, b), len(a), len(b)
        d = np.abs(a - b)  # exact only without zeros or ties (as R's wilcox.test); scipy's "auto" permutes: slow
        exact = len(d) <= 50 and bool(np.all(d > 0)) and len(np.unique(d)) == len(d)
        method = "exact" if exact else "approx"
        result = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided", method=method)
        return (
            "wilcoxon",
            float(result.statistic),
            float(result.pvalue),
            "rank_biserial",
            rank_biserial_paired(a, b),
            len(a),
            len(b),
        )
    a, b = first[~np.isnan(first)], second[~np.isnan(second)]
    if len(a) < 1 or len(b) < 1:
        return "mann_whitney", np.nan, np.nan, "cliffs_delta", np.nan, len(a), len(b)
    result = stats.mannwhitneyu(a, b, alternative="two-sided")
    return (
        "mann_whitney",
        float(result.statistic),
        float(result.pvalue),
        "cliffs_delta",
        cliffs_delta(a, b),
        len(a),
        len(b),
    )


def model_comparisons(
    frame: pd.DataFrame, *, design: Design = "auto", item_kinds: Sequence[str] = ("normal",)
) -> pd.DataFrame:
    """Pairwise model comparisons and each model vs the real images, per question, Holm-corrected.

    Parameters
    ----------
    frame : pandas.DataFrame
        The tidy ratings table.
    design : {"auto", "paired", "unpaired"}
        ``auto``: paired when the two models share exactly the same cases (see the module
        docstring). Model vs real is always paired by item.
    item_kinds : sequence of str

    Returns
    -------
    pandas.DataFrame
        ``question, family, first, second, test, statistic, p_value, p_holm, effect_size_kind,
        effect_size, n_first, n_second, mean_first, mean_second``.
    """
    if design not in ("auto", "paired", "unpaired"):
        raise ValueError(f"design must be 'auto', 'paired' or 'unpaired', got {design!r}")
    rows: list[dict[str, object]] = []
    score_rows = _score_rows(frame, item_kinds)
    for question in SCORE_QUESTIONS:
        per_item = item_means(score_rows, question, item_kinds=None)
        cases = _case_means(per_item)
        models = sorted(per_item["model"].unique())
        family_rows: list[dict[str, object]] = []
        for first, second in itertools.combinations(models, 2):
            cases_first = set(per_item.loc[per_item["model"] == first, "case"])
            cases_second = set(per_item.loc[per_item["model"] == second, "case"])
            paired = design == "paired" or (design == "auto" and cases_first == cases_second)
            if paired:
                a, b = cases[first].to_numpy(dtype=float), cases[second].to_numpy(dtype=float)
            else:
                a = per_item.loc[per_item["model"] == first, "generated"].to_numpy(dtype=float)
                b = per_item.loc[per_item["model"] == second, "generated"].to_numpy(dtype=float)
            family_rows.append(_comparison_row(question, "between_models", first, second, a, b, paired))
        real_rows = []
        for model in models:
            part = per_item[per_item["model"] == model]
            a, b = part["generated"].to_numpy(dtype=float), part["real"].to_numpy(dtype=float)
            real_rows.append(_comparison_row(question, "vs_real", model, REAL, a, b, True))
        for family in (family_rows, real_rows):
            adjusted = holm([float(row["p_value"]) for row in family])  # type: ignore[arg-type]
            for row, p_adjusted in zip(family, adjusted, strict=True):
                row["p_holm"] = float(p_adjusted)
            rows.extend(family)
    columns = ["question", "family", "first", "second", "test", "statistic", "p_value", "p_holm"]
    columns += ["effect_size_kind", "effect_size", "n_first", "n_second", "mean_first", "mean_second"]
    return pd.DataFrame(rows, columns=columns)


def _comparison_row(
    question: str, family: str, first: str, second: str, a: np.ndarray, b: np.ndarray, paired: bool
) -> dict[str, object]:
    test, statistic, p_value, effect_kind, effect, n_first, n_second = _compare(a, b, paired)
    return {
        "question": question,
        "family": family,
        "first": first,
        "second": second,
        "test": test,
        "statistic": statistic,
        "p_value": p_value,
        "effect_size_kind": effect_kind,
        "effect_size": effect,
        "n_first": n_first,
        "n_second": n_second,
        "mean_first": float(np.nanmean(a)) if np.isfinite(a).any() else np.nan,
        "mean_second": float(np.nanmean(b)) if np.isfinite(b).any() else np.nan,
    }


def friedman_table(frame: pd.DataFrame, *, item_kinds: Sequence[str] = ("normal",)) -> pd.DataFrame:
    """Friedman's test across models over complete blocks (cases rated for every model), per question.

    Returns
    -------
    pandas.DataFrame
        ``question, n_models, n_blocks, statistic, p_value, kendalls_w, note``; ``note`` says why
        a test is missing (fewer than 3 models or 2 complete blocks).
    """
    rows: list[dict[str, object]] = []
    score_rows = _score_rows(frame, item_kinds)
    for question in SCORE_QUESTIONS:
        cases = _case_means(item_means(score_rows, question, item_kinds=None)).dropna(axis=0, how="any")
        n_blocks, n_models = cases.shape
        row: dict[str, object] = {"question": question, "n_models": n_models, "n_blocks": n_blocks}
        if n_models < 3 or n_blocks < 2:
            rows.append({**row, "statistic": np.nan, "p_value": np.nan, "kendalls_w": np.nan,
                         "note": "needs at least 3 models and 2 complete blocks"})  # fmt: skip
            continue
        result = stats.friedmanchisquare(*(cases[column].to_numpy() for column in cases.columns))
        statistic = float(result.statistic)
        rows.append(
            {
                **row,
                "statistic": statistic,
                "p_value": float(result.pvalue),
                "kendalls_w": statistic / (n_blocks * (n_models - 1)),
                "note": "",
            }
        )
    return pd.DataFrame(
        rows, columns=["question", "n_models", "n_blocks", "statistic", "p_value", "kendalls_w", "note"]
    )


METHOD_TURING_DIFF = "MRMC Obuchowski-Rockette RRRC on 2AFC (AUC = proportion correct), Hillis df; raters+cases random"
METHOD_SCORE_DIFF = "two-way (raters x cases) cluster bootstrap, percentile CI, normal p; conservative (Owen 2007)"


def model_differences(
    frame: pd.DataFrame,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence_level: float = 0.95,
    item_kinds: Sequence[str] = ("normal",),
) -> pd.DataFrame:
    """Every pair of models: difference in Turing accuracy, mean realism and mean accuracy score.

    Raters and cases are random throughout. The Turing accuracy difference comes from the MRMC OR
    analysis of the 2AFC answers (:func:`analysis.mrmc.mrmc_from_ratings`, ``score="2afc"``; raters
    missing a model are left out). The score differences resample raters and cases (prompt + real
    image, shared by the models) with :func:`analysis.bootstrap.bootstrap_group_means`. P-values
    are Holm-adjusted across the pairs of each question.

    Returns
    -------
    pandas.DataFrame
        ``question, first, second, difference (first - second), ci_low, ci_high, p_value, p_holm,
        method`` (``note`` says why a question could not be analysed).
    """
    from analysis.bootstrap import bootstrap_group_means
    from analysis.mrmc import mrmc_from_ratings

    rows: list[dict[str, object]] = []
    family: list[dict[str, object]] = []
    try:
        result = mrmc_from_ratings(frame, score="2afc", conf_level=confidence_level)
        for diff in result.rrrc.differences.itertuples(index=False):
            family.append({"question": "turing_accuracy", "first": diff.test_a, "second": diff.test_b,
                           "difference": diff.estimate, "ci_low": diff.ci_lower, "ci_high": diff.ci_upper,
                           "p_value": diff.p_value, "method": METHOD_TURING_DIFF,
                           "note": result.rrrc.note})  # fmt: skip
    except ValueError as err:
        family.append({"question": "turing_accuracy", "method": METHOD_TURING_DIFF, "note": str(err)})
    rows.extend(_holm_rows(family))
    keep = frame["item_kind"].isin(item_kinds).to_numpy(dtype=bool)
    part = frame.loc[keep]
    for question in SCORE_QUESTIONS:
        values = pd.to_numeric(part[f"{question}_generated"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        present = ~np.isnan(values)
        models = sorted(part.loc[present, "model"].astype(str).unique())
        if len(models) < 2:
            continue
        boot = bootstrap_group_means(
            part.loc[present, "rater"].to_numpy(),
            part.loc[present, "case"].to_numpy(),
            values[present],
            part.loc[present, "model"].astype(str).to_numpy(),
            resample="two-way",
            n_resamples=n_resamples,
            seed=seed,
        )
        family = []
        for a, b in itertools.combinations(range(len(boot.groups)), 2):
            weights = np.zeros(len(boot.groups))
            weights[a], weights[b] = 1.0, -1.0
            estimate, se, low, high = boot.interval(weights, confidence_level)
            p_value = float(2.0 * stats.norm.sf(abs(estimate) / se)) if se > 0 else np.nan
            family.append({"question": question, "first": boot.groups[a], "second": boot.groups[b],
                           "difference": estimate, "ci_low": low, "ci_high": high, "p_value": p_value,
                           "method": METHOD_SCORE_DIFF, "note": ""})  # fmt: skip
        rows.extend(_holm_rows(family))
    columns = ["question", "first", "second", "difference", "ci_low", "ci_high", "p_value", "p_holm", "method", "note"]
    return pd.DataFrame(rows, columns=columns)


def _holm_rows(family: list[dict[str, object]]) -> list[dict[str, object]]:
    p_values = np.array([row.get("p_value", np.nan) for row in family], dtype=float)
    adjusted = holm(p_values)
    return [{**row, "p_holm": float(p)} for row, p in zip(family, adjusted, strict=True)]
