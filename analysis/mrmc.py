"""Multi-reader multi-case (MRMC) ROC analysis of a reader study: Obuchowski-Rockette with Hillis df.

Radiology journals judge reader studies by MRMC analysis, which accounts for the variability of both
readers and cases. This module gives a study coordinator that analysis of a MedSynth study directly.

ROC data
--------
The core works on a tidy frame with one row per reading: ``reader``, ``test``, ``case``, ``truth``
(1 = positive, 0 = negative) and ``score`` (higher = more likely positive). In MedSynth the "tests"
(the modalities of a classic reader study) are the generative models, a case is one image, truth is
generated (1) or real (0), and the score is how *generated* the image looks to that rater.
An AUC of 0.5 means experts cannot tell the model's images from real ones, which is the model's goal;
an AUC of 1 means they always can.

:func:`roc_data_from_ratings` turns the tidy ratings table (``docs/ratings-table.md``) into ROC data,
with one of these scores:

``"realism"``
    Each image of a pair is a case: the generated image (truth 1, case ``"gen:<sha256>"``) and the
    real image (truth 0, case ``"real:<sha256>"``), with score ``6 - realism`` (the 1-5 realism rating
    inverted). Real images are shared by all models, so within model *m* the cases are *m*'s
    generated images plus the real images shown in *m*'s pairs: negatives are crossed with models,
    positives nested within models. Readings without a realism answer are left out.
``"2afc"``
    The two-alternative forced choice "which image is generated?". The image the rater picked gets
    score +1, the other -1. Because every pair gives one positive and one negative with opposite
    scores, the empirical AUC of these data equals the rater's proportion correct exactly
    (``p**2 + 2 * p * (1 - p) / 2 = p``), the classic identity "2AFC proportion correct = AUC".
    (Exactly so when a rater sees each real image once per model; see the repeat rule below.)
    Pairs without an answer are left out (counting them as ties would bias the identity).
``"2afc_confidence"``
    The same, with the score ``+confidence`` / ``-confidence`` (1-5): a confidence-rated ROC whose
    area also uses the rater's confidence; it is *not* the proportion correct. Pairs without an
    answer or without a confidence are left out.

Rules of the adapter, for every score: attention items (``item_kind == "attention"``, whose generated
side is deliberately broken) are excluded; pairs the rater marked ``cannot_assess`` are excluded;
when a rater saw the same pair more than once (``repeat`` items, resubmissions) only the *first*
reading (lowest ``position``, then earliest ``server_received_at``) is used; when a rater saw the same
real image in two pairs of the same model, its first reading is used.

Statistics
----------
* :func:`empirical_auc`: Mann-Whitney (trapezoidal) AUC, ties counted one half;
  :func:`placement_values` gives the DeLong placement values (structural components) it is made of.
* :func:`or_analysis`: Obuchowski-Rockette (OR) analysis of the reader x test AUC table with the
  AUC error covariance estimated by ``"jackknife"`` (leave one case out, over all cases of the study),
  ``"delong"`` (structural components) or ``"unbiased"`` (Gallas et al. 2007). It reports the OR
  variance components and three analyses, each with a global test of equal AUC across tests,
  confidence intervals for every pairwise difference and for every test's AUC:
  random readers and random cases (RRRC, Hillis 2007/2008 denominator df ``ddf_H``), fixed readers
  and random cases (FRRC, chi-square / z) and random readers and fixed cases (RRFC, conventional
  reader x test ANOVA). Conventions follow MRMCaov 0.3 and OR-DBM MRMC 2.5 and reproduce their
  published Van Dyke (1993) results: covariances are averaged over cells (Cov1 = same reader,
  different test; Cov2 = different reader, same test; Cov3 = different reader and test);
  single-test CIs are clipped to [0, 1]; pairwise differences all use the pooled error term.
* :func:`roc_curve_points`, :func:`roc_curves` and :func:`plot_roc_curves`: empirical ROC curves.

Designs
-------
Every reader must have an AUC for every test (each reader x test cell needs at least two positive
and two negative cases), otherwise the OR reader x test ANOVA is not defined: :func:`or_analysis`
raises a ``ValueError`` naming the reader and test, or drops such readers with
``drop_incomplete_readers=True`` (listed in :attr:`ORResult.dropped_readers`).
Within that, cases may be read by any subset of the reader x test cells: factorial, cases nested
within readers or within tests, split-plot (blocks of readers reading blocks of cases) and other
incomplete designs. Each reader's AUC is computed over the cases that reader read in that test.
Two AUCs computed from no common case are independent, so their covariance is set to exactly zero;
the others are estimated from the cases as they were read:

* jackknife: leave each case of the study out in turn (AUCs of cells that did not read it do not
  change), ``(K - 1) / K`` times the cross-products of the deviations, K = all cases of the study
  (MRMCaov's rule; with the zero rule this reproduces its nested-design results);
* DeLong: ``sum_i (V10_a,i - AUC_a)(V10_b,i - AUC_b) / (n_s - 1) * n_s / (n_a * n_b)`` over the
  ``n_s`` positives read in both cells (and the same for negatives); this is DeLong's estimator in a
  factorial design and its natural extension when the two cells share only some cases;
* unbiased: Gallas's estimator on the shared cases (MRMCaov's ``unbiased`` for unpaired data).

A case must have one truth throughout; a reader may read a case at most once per test.
Memory and time: the layout is a dense (reader x test cells) x cases array; jackknife and DeLong
cost O(cells x cases x log cases + cells^2 x cases), the unbiased method O(cells^2 x n_pos x n_neg)
(about 1 s, 1 s and 45 s for 40 readers x 4 tests x 2,000 cases on 2 cores; see benchmarks/mrmc.py).
Not covered: partial AUC, parametric (binormal) curves, more than one reading of a case by the same
reader in the same test (deduplicate first), and tests with a single reader (RRRC needs ``J >= 2``).

Report
------
:func:`mrmc_report_section` runs the analysis for each score and returns a plain ``dict`` the report
writer can embed::

    {"results": {score: ORResult},
     "tables": {"<score>/<name>": DataFrame},   # ORResult.tables() per score
     "figures": {"<score>/roc": matplotlib.figure.Figure},
     "notes": [str, ...]}                       # exclusions, dropped readers, scores not analysable

Tables per score: ``auc_by_test`` (reader-averaged AUC with RRRC CI), ``global_tests`` (equal AUC
across models: RRRC, FRRC, RRFC), ``differences`` (pairwise differences with CIs), ``auc_by_reader``
(per-reader table), ``reader_cis`` (single reader-model CIs), ``variance_components``.

References: Obuchowski & Rockette (1995) Commun Stat Simul Comput 24:285-308; Hillis (2007) Stat Med
26:596-619; Hillis, Berbaum & Metz (2008) Acad Radiol 15:647-661; DeLong, DeLong & Clarke-Pearson
(1988) Biometrics 44:837-845; Gallas, Pennello & Myers (2007) JOSA A 24:B70-B80; Smith, Hillis &
Pesce (2023) MRMCaov, J Stat Softw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

if TYPE_CHECKING:
    pass

CovMethod = Literal["jackknife", "delong", "unbiased"]
RatingScore = Literal["realism", "2afc", "2afc_confidence"]
Analysis = Literal["RRRC", "FRRC", "RRFC"]

_MAX_CHUNK_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------------------------------
# AUC, placement values and ROC points
# ---------------------------------------------------------------------------------------------------


def _as_scores(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty: an AUC needs at least one positive and one negative score")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def placement_values(scores_pos: Any, scores_neg: Any) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values (structural components) of positive and negative scores.

    Parameters
    ----------
    scores_pos, scores_neg
        Scores of the positive and negative cases (higher = more likely positive).

    Returns
    -------
    v10, v01
        ``v10[i]``: fraction of negatives scored below positive *i* (ties 1/2);
        ``v01[j]``: fraction of positives scored above negative *j* (ties 1/2).
        Both average to the empirical AUC. Computed by sorting, O(n log n).
    """
    pos = _as_scores(scores_pos, "scores_pos")
    neg = _as_scores(scores_neg, "scores_neg")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, "left") + np.searchsorted(neg_sorted, pos, "right")
    pos_sorted = np.sort(pos)
    above = np.searchsorted(pos_sorted, neg, "left") + np.searchsorted(pos_sorted, neg, "right")
    return below / (2.0 * neg.size), 1.0 - above / (2.0 * pos.size)


def empirical_auc(scores_pos: Any, scores_neg: Any) -> float:
    """Empirical (trapezoidal, Mann-Whitney) AUC with ties counted one half.

    Parameters
    ----------
    scores_pos, scores_neg
        Scores of the positive and negative cases (higher = more likely positive).

    Returns
    -------
    float
        ``P(score_pos > score_neg) + P(score_pos == score_neg) / 2`` over all positive-negative pairs.
    """
    v10, _ = placement_values(scores_pos, scores_neg)
    return float(v10.mean())


def roc_curve_points(scores_pos: Any, scores_neg: Any) -> pd.DataFrame:
    """Operating points of the empirical ROC curve.

    Parameters
    ----------
    scores_pos, scores_neg
        Scores of the positive and negative cases (higher = more likely positive).

    Returns
    -------
    pandas.DataFrame
        Columns ``threshold``, ``fpr``, ``tpr``: one row per distinct score (call positive when
        ``score >= threshold``), from ``(0, 0)`` at ``threshold = inf`` to ``(1, 1)``. The trapezoidal
        area under these points equals :func:`empirical_auc`.
    """
    pos = _as_scores(scores_pos, "scores_pos")
    neg = _as_scores(scores_neg, "scores_neg")
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = (pos.size - np.searchsorted(np.sort(pos), thresholds, "left")) / pos.size
    fpr = (neg.size - np.searchsorted(np.sort(neg), thresholds, "left")) / neg.size
    return pd.DataFrame(
        {
            "threshold": np.concatenate([[np.inf], thresholds]),
            "fpr": np.concatenate([[0.0], fpr]),
            "tpr": np.concatenate([[0.0], tpr]),
        }
    )


# ---------------------------------------------------------------------------------------------------
# Study layout: reader x test cells by cases
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Dense cell x case layout of ROC data. Cell g = test index * n_readers + reader index."""

    readers: tuple[Any, ...]
    tests: tuple[Any, ...]
    scores: np.ndarray  # (G, K), NaN where the cell did not read the case
    positive: np.ndarray  # (K,) bool: truth of each case
    dropped_readers: tuple[Any, ...]

    @property
    def read(self) -> np.ndarray:
        return ~np.isnan(self.scores)

    @property
    def cell_test(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.tests)), len(self.readers))

    @property
    def cell_reader(self) -> np.ndarray:
        return np.tile(np.arange(len(self.readers)), len(self.tests))


def _layout(
    data: pd.DataFrame,
    *,
    reader: str,
    test: str,
    case: str,
    truth: str,
    score: str,
    drop_incomplete_readers: bool,
) -> _Layout:
    missing = [c for c in (reader, test, case, truth, score) if c not in data.columns]
    if missing:
        raise ValueError(f"ROC data lack the column(s) {missing}; got {list(data.columns)}")
    if len(data) == 0:
        raise ValueError("ROC data are empty")
    if data[[reader, test, case, truth, score]].isna().any().any():
        raise ValueError("ROC data contain missing values; drop unanswered readings first")
    truth_values = pd.to_numeric(data[truth], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isin(truth_values, (0.0, 1.0))):
        raise ValueError(f"column {truth!r} must be 0 (negative) or 1 (positive)")
    score_values = pd.to_numeric(data[score], errors="coerce").to_numpy(dtype=float)
    if not np.all(np.isfinite(score_values)):
        raise ValueError(f"column {score!r} must hold finite numbers")

    r_code, r_levels = pd.factorize(data[reader], sort=True)
    t_code, t_levels = pd.factorize(data[test], sort=True)
    k_code, k_levels = pd.factorize(data[case], sort=True)
    n_r, n_t, n_k = len(r_levels), len(t_levels), len(k_levels)

    n_per_case = np.bincount(k_code, minlength=n_k)
    pos_per_case = np.bincount(k_code, weights=truth_values, minlength=n_k)
    mixed = (pos_per_case > 0) & (pos_per_case < n_per_case)
    if mixed.any():
        raise ValueError(f"case(s) {list(k_levels[mixed][:5])} have both truth 0 and 1; a case must have one truth")
    positive = pos_per_case > 0

    cell = t_code * n_r + r_code
    flat = cell.astype(np.int64) * n_k + k_code
    counts = np.bincount(flat, minlength=n_t * n_r * n_k)
    if counts.max() > 1:
        g, k = divmod(int(np.argmax(counts)), n_k)
        raise ValueError(
            f"reader {r_levels[g % n_r]!r} read case {k_levels[k]!r} in test {t_levels[g // n_r]!r} "
            "more than once; keep one reading per reader, test and case"
        )
    scores = np.full((n_t * n_r, n_k), np.nan)
    scores[cell, k_code] = score_values

    read = ~np.isnan(scores)
    n_pos = (read & positive).sum(axis=1).reshape(n_t, n_r)
    n_neg = (read & ~positive).sum(axis=1).reshape(n_t, n_r)
    bad = (n_pos < 2) | (n_neg < 2)
    dropped: tuple[Any, ...] = ()
    if bad.any():
        t_bad, r_bad = np.nonzero(bad)
        if not drop_incomplete_readers:
            problems = [
                f"reader {r_levels[r]!r} / test {t_levels[t]!r}: {n_pos[t, r]} positive, {n_neg[t, r]} negative"
                for t, r in zip(t_bad[:5], r_bad[:5], strict=True)
            ]
            raise ValueError(
                "the OR analysis needs an AUC for every reader in every test, from at least 2 positive "
                "and 2 negative cases; unsupported (incomplete reader x test) design: "
                + "; ".join(problems)
                + ". Pass drop_incomplete_readers=True to leave such readers out."
            )
        keep_r = ~bad.any(axis=0)
        dropped = tuple(r_levels[~keep_r])
        keep_cell = np.tile(keep_r, n_t)
        scores = scores[keep_cell]
        r_levels = r_levels[keep_r]
        n_r = len(r_levels)
        read = ~np.isnan(scores)
        used = read.any(axis=0)
        scores, positive = scores[:, used], positive[used]
    if n_r < 2:
        raise ValueError(
            f"the OR analysis needs at least 2 readers with complete data, got {n_r}"
            + (f" (dropped: {list(dropped)})" if dropped else "")
        )
    return _Layout(
        readers=tuple(r_levels),
        tests=tuple(t_levels),
        scores=scores,
        positive=positive,
        dropped_readers=dropped,
    )


@dataclass(frozen=True)
class _CellStats:
    auc: np.ndarray  # (G,)
    placement: np.ndarray  # (G, K): V10 for positives, V01 for negatives, NaN where unread
    n_pos: np.ndarray  # (G,)
    n_neg: np.ndarray  # (G,)


def _cell_stats(layout: _Layout) -> _CellStats:
    read = layout.read
    n_cells = layout.scores.shape[0]
    placement = np.full(layout.scores.shape, np.nan)
    auc = np.empty(n_cells)
    for g in range(n_cells):  # one sort per reader x test cell, not per case
        pos_idx = np.flatnonzero(read[g] & layout.positive)
        neg_idx = np.flatnonzero(read[g] & ~layout.positive)
        v10, v01 = placement_values(layout.scores[g, pos_idx], layout.scores[g, neg_idx])
        placement[g, pos_idx] = v10
        placement[g, neg_idx] = v01
        auc[g] = v10.mean()
    return _CellStats(
        auc=auc,
        placement=placement,
        n_pos=(read & layout.positive).sum(axis=1).astype(float),
        n_neg=(read & ~layout.positive).sum(axis=1).astype(float),
    )


# ---------------------------------------------------------------------------------------------------
# Covariance of the cell AUCs
# ---------------------------------------------------------------------------------------------------


def _jackknife_cov(layout: _Layout, cs: _CellStats) -> np.ndarray:
    read = layout.read
    pos = layout.positive[None, :]
    auc = cs.auc[:, None]
    n1, n0 = cs.n_pos[:, None], cs.n_neg[:, None]
    # leave-one-case-out AUC from the placement values: no re-sorting per case
    pseudo = np.where(
        read & pos,
        (n1 * auc - cs.placement) / (n1 - 1.0),
        np.where(read & ~pos, (n0 * auc - cs.placement) / (n0 - 1.0), auc),
    )
    n_cases = pseudo.shape[1]
    dev = pseudo - pseudo.mean(axis=1, keepdims=True)
    return (n_cases - 1.0) / n_cases * (dev @ dev.T)


def _delong_cov(layout: _Layout, cs: _CellStats) -> np.ndarray:
    read = layout.read
    dev = np.where(read, cs.placement - cs.auc[:, None], 0.0)
    mask = read.astype(float)
    cov = np.zeros((dev.shape[0], dev.shape[0]))
    for cols, n in ((layout.positive, cs.n_pos), (~layout.positive, cs.n_neg)):
        d, m = dev[:, cols], mask[:, cols]
        shared = m @ m.T
        cov += (d @ d.T) / np.maximum(shared - 1.0, 1.0) * shared / np.outer(n, n)
    return cov


def _unbiased_cov(layout: _Layout, cs: _CellStats) -> np.ndarray:
    read = layout.read
    pos_cols, neg_cols = layout.positive, ~layout.positive
    s_pos, s_neg = layout.scores[:, pos_cols], layout.scores[:, neg_cols]
    m_pos, m_neg = read[:, pos_cols].astype(float), read[:, neg_cols].astype(float)
    n1, n0 = cs.n_pos, cs.n_neg
    # row / column sums of each cell's psi matrix, on the study's case grid (0 where unread)
    row_sums = np.nan_to_num(cs.placement[:, pos_cols]) * n0[:, None]
    col_sums = np.nan_to_num(cs.placement[:, neg_cols]) * n1[:, None]
    total = cs.auc * n1 * n0
    n_cells, n_neg_cases = s_neg.shape
    chunk = max(1, _MAX_CHUNK_BYTES // (8 * n_cells * n_neg_cases))
    psi_gram = np.zeros((n_cells, n_cells))
    for start in range(0, s_pos.shape[1], chunk):
        x = s_pos[:, start : start + chunk, None]
        y = s_neg[:, None, :]
        psi = ((x > y) + 0.5 * (x == y)).reshape(n_cells, -1)  # NaN (unread) compares False -> 0
        psi_gram += psi @ psi.T
    shared_pos, shared_neg = m_pos @ m_pos.T, m_neg @ m_neg.T
    nxny = np.outer(n1 * n0, n1 * n0)
    denom = nxny - np.outer(n1, n1) * shared_neg - np.outer(n0, n0) * shared_pos + shared_pos * shared_neg
    delta = nxny / denom
    inner = row_sums @ row_sums.T + col_sums @ col_sums.T - psi_gram
    return ((1.0 - delta) * np.outer(total, total) + delta * inner) / nxny


_COV_METHODS = {"jackknife": _jackknife_cov, "delong": _delong_cov, "unbiased": _unbiased_cov}


def _auc_covariance(method: CovMethod, layout: _Layout, cs: _CellStats) -> np.ndarray:
    """Covariance matrix of the cell AUCs, with exact zeros between cells that share no case."""
    read = layout.read.astype(float)
    cov = _COV_METHODS[method](layout, cs)
    return np.where(read @ read.T > 0, cov, 0.0)


def _design_name(layout: _Layout) -> str:
    read = layout.read
    if read.all():
        return "factorial"
    readers_per_case = np.zeros((len(layout.readers), read.shape[1]), dtype=bool)
    tests_per_case = np.zeros((len(layout.tests), read.shape[1]), dtype=bool)
    np.logical_or.at(readers_per_case, layout.cell_reader, read)
    np.logical_or.at(tests_per_case, layout.cell_test, read)
    if (readers_per_case.sum(axis=0) == 1).all():
        return "cases nested within readers"
    if (tests_per_case.sum(axis=0) == 1).all():
        return "cases nested within tests"
    return "incomplete (split-plot or partially paired)"


# ---------------------------------------------------------------------------------------------------
# Obuchowski-Rockette analysis
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ORTest:
    """One OR analysis (RRRC, FRRC or RRFC) of a reader study.

    Attributes
    ----------
    analysis
        ``"RRRC"`` random readers and cases, ``"FRRC"`` fixed readers, ``"RRFC"`` fixed cases.
    statistic_name
        ``"F"`` (RRRC, RRFC) or ``"X2"`` (FRRC, chi-square).
    statistic, df1, df2, p_value
        Global test of equal AUC across tests (``df2`` is ``inf`` for the chi-square test; all NaN
        with a single test).
    denominator
        Error term of the global test.
    differences
        One row per pair of tests: ``comparison`` ("a - b"), ``test_a``, ``test_b``, ``estimate``,
        ``std_err``, ``df``, ``ci_lower``, ``ci_upper``, ``statistic`` (t or z), ``p_value``.
    test_cis
        One row per test: ``test``, ``estimate`` (reader-averaged AUC), ``std_err``, ``df``,
        ``ci_lower``, ``ci_upper`` (clipped to [0, 1]); each uses only that test's data.
    reader_differences, reader_cis
        FRRC only: pairwise differences per reader, and a CI for every reader x test AUC.
    note
        Why the global test is undefined (``statistic`` and ``p_value`` NaN), if it is:
        ``"modalities identical"``, ``"all ratings tied"``, ``"perfect separation"``,
        ``"zero error variance"`` or ``"readers identical"``; empty otherwise. Mean squares and
        (co)variances below ``1e-12`` times the squared largest AUC are rounding noise and set to 0.
    """

    analysis: Analysis
    statistic_name: Literal["F", "X2"]
    statistic: float
    df1: float
    df2: float
    p_value: float
    denominator: float
    differences: pd.DataFrame
    test_cis: pd.DataFrame
    reader_differences: pd.DataFrame | None = None
    reader_cis: pd.DataFrame | None = None
    note: str = ""


@dataclass(frozen=True, eq=False)
class ORResult:
    """Result of :func:`or_analysis`.

    Attributes
    ----------
    cov_method, design, conf_level
        Covariance method, detected design, confidence level of all intervals.
    readers, tests
        Labels (sorted) of the readers and tests analysed.
    auc
        Per reader x test AUC: columns ``reader``, ``test``, ``auc``, ``n_pos``, ``n_neg``.
    test_means
        Reader-averaged AUC per test.
    covariance
        AUC error covariance matrix, rows and columns labelled by (test, reader).
    ms_t, ms_r, ms_tr
        Mean squares of the test x reader ANOVA of AUCs; ``ms_r_by_test`` per test.
    var_error, cov1, cov2, cov3
        OR error variance and covariances (Cov1 same reader, Cov2 same test, Cov3 neither).
    var_r, var_tr
        OR reader and test x reader variance components (ANOVA estimates, may be negative).
    rrrc, frrc, rrfc
        The three analyses.
    dropped_readers
        Readers left out by ``drop_incomplete_readers=True``.
    """

    cov_method: CovMethod
    design: str
    conf_level: float
    readers: tuple[Any, ...]
    tests: tuple[Any, ...]
    auc: pd.DataFrame
    test_means: pd.Series
    covariance: pd.DataFrame
    ms_t: float
    ms_r: float
    ms_tr: float
    ms_r_by_test: pd.Series
    var_error: float
    cov1: float
    cov2: float
    cov3: float
    var_r: float
    var_tr: float
    rrrc: ORTest
    frrc: ORTest
    rrfc: ORTest
    dropped_readers: tuple[Any, ...] = ()

    def auc_table(self) -> pd.DataFrame:
        """Reader x test AUC table (readers as rows, tests as columns)."""
        return self.auc.pivot(index="reader", columns="test", values="auc")

    def variance_components(self) -> pd.DataFrame:
        """OR variance components with correlations ``Cov_i / Var(Error)``."""
        est = [self.var_r, self.var_tr, self.var_error, self.cov1, self.cov2, self.cov3]
        corr = [math.nan] * 3 + [c / self.var_error for c in (self.cov1, self.cov2, self.cov3)]
        return pd.DataFrame(
            {"estimate": est, "correlation": corr},
            index=pd.Index(["reader", "test:reader", "error", "cov1", "cov2", "cov3"], name="component"),
        )

    def global_tests(self) -> pd.DataFrame:
        """The test of equal AUC across tests, one row per analysis (``note``: why it is undefined)."""
        return pd.DataFrame(
            [
                {
                    "analysis": t.analysis,
                    "statistic_name": t.statistic_name,
                    "statistic": t.statistic,
                    "df1": t.df1,
                    "df2": t.df2,
                    "p_value": t.p_value,
                    "denominator": t.denominator,
                    "note": t.note,
                }
                for t in (self.rrrc, self.frrc, self.rrfc)
            ]
        )

    def tables(self) -> dict[str, pd.DataFrame]:
        """Tables for a report, keyed by name (see the module docstring)."""
        by_reader = self.auc.pivot(index="reader", columns="test", values="auc")
        by_reader.columns = [f"auc[{c}]" for c in by_reader.columns]
        by_reader["n_cases"] = self.auc.groupby("reader")[["n_pos", "n_neg"]].sum().sum(axis=1)
        stacked = [t.differences.assign(analysis=t.analysis) for t in (self.rrrc, self.frrc, self.rrfc)]
        return {
            "auc_by_test": self.rrrc.test_cis,
            "global_tests": self.global_tests(),
            "differences": pd.concat(stacked, ignore_index=True),
            "auc_by_reader": by_reader.reset_index(),
            "reader_cis": self.frrc.reader_cis if self.frrc.reader_cis is not None else pd.DataFrame(),
            "variance_components": self.variance_components().reset_index(),
        }


def _mean_where(cov: np.ndarray, mask: np.ndarray) -> float:
    return float(cov[mask].mean()) if mask.any() else math.nan


def _two_sided(stat: np.ndarray | float, df: float) -> np.ndarray:
    stat = np.abs(np.asarray(stat, dtype=float))
    return 2.0 * (stats.norm.sf(stat) if math.isinf(df) else stats.t.sf(stat, df))


def _quantile(conf_level: float, df: float) -> float:
    q = (1.0 + conf_level) / 2.0
    return float(stats.norm.ppf(q) if math.isinf(df) else stats.t.ppf(q, df))


def _differences(tests: tuple[Any, ...], means: np.ndarray, se: float, df: float, conf_level: float) -> pd.DataFrame:
    rows = []
    q = _quantile(conf_level, df) if np.isfinite(se) else math.nan
    for i in range(len(tests)):
        for j in range(i + 1, len(tests)):
            est = float(means[i] - means[j])
            with np.errstate(divide="ignore", invalid="ignore"):
                stat = est / se if se > 0 else math.nan
            rows.append(
                {
                    "comparison": f"{tests[i]} - {tests[j]}",
                    "test_a": tests[i],
                    "test_b": tests[j],
                    "estimate": est,
                    "std_err": se,
                    "df": df,
                    "ci_lower": est - q * se,
                    "ci_upper": est + q * se,
                    "statistic": stat,
                    "p_value": float(_two_sided(stat, df)),
                }
            )
    cols = ["comparison", "test_a", "test_b", "estimate", "std_err", "df"]
    cols += ["ci_lower", "ci_upper", "statistic", "p_value"]
    return pd.DataFrame(rows, columns=cols)


def _cis(labels: dict[str, Any], est: np.ndarray, se: np.ndarray, df: np.ndarray, conf_level: float) -> pd.DataFrame:
    q = np.array([_quantile(conf_level, d) for d in df])
    frame = pd.DataFrame({**labels, "estimate": est, "std_err": se, "df": df})
    frame["ci_lower"] = np.clip(est - q * se, 0.0, 1.0)
    frame["ci_upper"] = np.clip(est + q * se, 0.0, 1.0)
    return frame


_ZERO_RELATIVE = 1e-12


def _zero_below(value: float, eps: float) -> float:
    return 0.0 if math.isfinite(value) and abs(value) < eps else value


def _undefined_reason(layout: _Layout, auc: np.ndarray, var_e: float) -> str:
    """Why the test of equal AUC is undefined, or "" (see :class:`ORTest`)."""
    scores = layout.scores[~np.isnan(layout.scores)]
    if scores.size and np.all(scores == scores[0]):
        return "all ratings tied"
    if var_e == 0.0 and np.all((auc == 0.0) | (auc == 1.0)):
        return "perfect separation"
    n_t, n_r = len(layout.tests), len(layout.readers)
    by_test = layout.scores.reshape(n_t, n_r, -1)
    if all(np.array_equal(by_test[0], by_test[t], equal_nan=True) for t in range(1, n_t)):
        return "modalities identical"
    if var_e == 0.0:
        return "zero error variance"
    if n_r > 1 and all(np.array_equal(by_test[:, 0], by_test[:, r], equal_nan=True) for r in range(1, n_r)):
        return "readers identical"
    return ""


def _or_tests(
    auc: np.ndarray, cov: np.ndarray, layout: _Layout, conf_level: float
) -> tuple[dict[str, float], ORTest, ORTest, ORTest, np.ndarray]:
    tests, n_t, n_r = layout.tests, len(layout.tests), len(layout.readers)
    a = auc.reshape(n_t, n_r)
    ct, cr = layout.cell_test, layout.cell_reader
    same_t, same_r = ct[:, None] == ct[None, :], cr[:, None] == cr[None, :]

    m_t, m_r, m = a.mean(axis=1), a.mean(axis=0), a.mean()
    ms_r = n_t * float(((m_r - m) ** 2).sum()) / (n_r - 1)
    if n_t > 1:
        ms_t = n_r * float(((m_t - m) ** 2).sum()) / (n_t - 1)
        ms_tr = float(((a - m_t[:, None] - m_r[None, :] + m) ** 2).sum()) / ((n_t - 1) * (n_r - 1))
    else:
        ms_t = ms_tr = math.nan
    ms_r_t = a.var(axis=1, ddof=1)

    var_e = float(np.diag(cov).mean())
    cov1 = _mean_where(cov, ~same_t & same_r)
    cov2 = _mean_where(cov, same_t & ~same_r)
    cov3 = _mean_where(cov, ~same_t & ~same_r)
    var_t = np.array([np.diag(cov)[ct == t].mean() for t in range(n_t)])
    cov2_t = np.array([_mean_where(cov, same_t & ~same_r & (ct[:, None] == t)) for t in range(n_t)])
    # Mean squares and (co)variances are squares of AUC differences: below a scale-relative epsilon
    # they are rounding noise (identical modalities gave MS(T) 1.5e-31 / MS(T*R) 3e-32, i.e. F = 5).
    eps = _ZERO_RELATIVE * max(float(np.max(np.abs(a))) ** 2, np.finfo(float).tiny)
    ms_t, ms_r, ms_tr, var_e, cov1, cov2, cov3 = (
        _zero_below(v, eps) for v in (ms_t, ms_r, ms_tr, var_e, cov1, cov2, cov3)
    )
    ms_r_t, var_t, cov2_t = (np.where(np.abs(v) < eps, 0.0, v) for v in (ms_r_t, var_t, cov2_t))
    note = _undefined_reason(layout, a, var_e) if n_t > 1 else ""
    comps = {
        "ms_t": ms_t,
        "ms_r": ms_r,
        "ms_tr": ms_tr,
        "var_error": var_e,
        "cov1": cov1,
        "cov2": cov2,
        "cov3": cov3,
        "var_r": (ms_r - ms_tr) / n_t - cov1 + cov3 if n_t > 1 else math.nan,
        "var_tr": ms_tr - var_e + cov1 + (cov2 - cov3) if n_t > 1 else math.nan,
    }
    df1 = float(n_t - 1) if n_t > 1 else math.nan
    test_labels = {"test": list(tests)}

    def global_test(stat: float, df2: float, kind: Literal["F", "X2"]) -> float:
        if not np.isfinite(stat) or note:
            return math.nan
        if kind == "F" and math.isinf(df2):  # F(df1, inf) = chi2(df1) / df1
            return float(stats.chi2.sf(stat * df1, df1))
        return float(stats.chi2.sf(stat, df1) if kind == "X2" else stats.f.sf(stat, df1, df2))

    with np.errstate(divide="ignore", invalid="ignore"):
        # random readers, random cases (Hillis ddf)
        den = ms_tr + n_r * max(cov2 - cov3, 0.0) if n_t > 1 else math.nan
        f_rrrc = ms_t / den if den > 0 and not note else math.nan
        ddf = den**2 / (ms_tr**2 / ((n_t - 1) * (n_r - 1))) if ms_tr > 0 else math.inf
        num_single = ms_r_t + n_r * np.maximum(cov2_t, 0.0)
        df_single = np.where(ms_r_t > 0, num_single**2 / (ms_r_t**2 / (n_r - 1)), np.inf)
        rrrc = ORTest(
            analysis="RRRC",
            statistic_name="F",
            statistic=f_rrrc,
            df1=df1,
            df2=ddf if n_t > 1 else math.nan,
            p_value=global_test(f_rrrc, ddf, "F"),
            denominator=den,
            differences=_differences(tests, m_t, math.sqrt(2.0 / n_r * den), ddf, conf_level),
            test_cis=_cis(test_labels, m_t, np.sqrt(num_single / n_r), df_single, conf_level).assign(
                ms_r=ms_r_t, cov2=cov2_t
            ),
            note=note,
        )

        # fixed readers, random cases
        den_fr = var_e - cov1 + (n_r - 1) * max(cov2 - cov3, 0.0) if n_t > 1 else math.nan
        x2 = (n_t - 1) * ms_t / den_fr if den_fr > 0 and not note else math.nan
        se_t_fr = np.sqrt((var_t + (n_r - 1) * np.maximum(cov2_t, 0.0)) / n_r)
        reader_diffs = []
        for j, rdr in enumerate(layout.readers):
            cells = cr == j
            var_j = float(np.diag(cov)[cells].mean())
            cov1_j = _mean_where(cov, ~same_t & same_r & cells[:, None] & cells[None, :])
            se_j = math.sqrt(max(2.0 * (var_j - cov1_j), 0.0)) if n_t > 1 else math.nan
            diffs = _differences(tests, a[:, j], se_j, math.inf, conf_level)
            reader_diffs.append(diffs.assign(reader=rdr, var_error=var_j, cov1=cov1_j))
        reader_cis = _cis(
            {"test": np.repeat(tests, n_r), "reader": np.tile(layout.readers, n_t)},
            auc,
            np.sqrt(np.diag(cov)),
            np.full(auc.size, math.inf),
            conf_level,
        )
        frrc = ORTest(
            analysis="FRRC",
            statistic_name="X2",
            statistic=x2,
            df1=df1,
            df2=math.inf,
            p_value=global_test(x2, math.inf, "X2"),
            denominator=den_fr,
            differences=_differences(tests, m_t, math.sqrt(2.0 / n_r * den_fr), math.inf, conf_level),
            test_cis=_cis(test_labels, m_t, se_t_fr, np.full(n_t, math.inf), conf_level).assign(
                var_error=var_t, cov2=cov2_t
            ),
            reader_differences=pd.concat(reader_diffs, ignore_index=True),
            reader_cis=reader_cis,
            note=note,
        )

        # random readers, fixed cases: conventional test x reader ANOVA
        df_tr = float((n_t - 1) * (n_r - 1)) if n_t > 1 else math.nan
        f_rrfc = ms_t / ms_tr if ms_tr > 0 and not note else math.nan
        rrfc = ORTest(
            analysis="RRFC",
            statistic_name="F",
            statistic=f_rrfc,
            df1=df1,
            df2=df_tr,
            p_value=global_test(f_rrfc, df_tr, "F"),
            denominator=ms_tr,
            differences=_differences(tests, m_t, math.sqrt(2.0 / n_r * ms_tr), df_tr, conf_level),
            test_cis=_cis(test_labels, m_t, np.sqrt(ms_r_t / n_r), np.full(n_t, float(n_r - 1)), conf_level).assign(
                ms_r=ms_r_t
            ),
            note=note,
        )
    return comps, rrrc, frrc, rrfc, ms_r_t


def or_analysis(
    data: pd.DataFrame,
    *,
    reader: str = "reader",
    test: str = "test",
    case: str = "case",
    truth: str = "truth",
    score: str = "score",
    cov_method: CovMethod = "jackknife",
    conf_level: float = 0.95,
    drop_incomplete_readers: bool = False,
) -> ORResult:
    """Obuchowski-Rockette MRMC analysis of empirical AUCs with Hillis denominator df.

    Parameters
    ----------
    data
        ROC data, one row per reading (see the module docstring).
    reader, test, case, truth, score
        Column names. ``truth`` is 1 for positive, 0 for negative cases; higher ``score`` = more
        likely positive.
    cov_method
        ``"jackknife"``, ``"delong"`` or ``"unbiased"`` (Gallas) covariance of the AUCs.
    conf_level
        Confidence level of all intervals.
    drop_incomplete_readers
        Leave out readers without an AUC (2+ positive and 2+ negative cases) in some test, instead of
        raising ``ValueError``.

    Returns
    -------
    ORResult
        Per-reader AUCs, test means, covariance components and the RRRC, FRRC and RRFC analyses.

    Raises
    ------
    ValueError
        On missing columns or values, a case with two truths, repeated readings, an unknown
        ``cov_method``, fewer than 2 readers, or an incomplete reader x test design.
    """
    if cov_method not in get_args(CovMethod):
        raise ValueError(f"cov_method must be one of {get_args(CovMethod)}, got {cov_method!r}")
    if not 0.0 < conf_level < 1.0:
        raise ValueError(f"conf_level must lie in (0, 1), got {conf_level}")
    layout = _layout(
        data,
        reader=reader,
        test=test,
        case=case,
        truth=truth,
        score=score,
        drop_incomplete_readers=drop_incomplete_readers,
    )
    cs = _cell_stats(layout)
    cov = _auc_covariance(cov_method, layout, cs)
    comps, rrrc, frrc, rrfc, ms_r_t = _or_tests(cs.auc, cov, layout, conf_level)
    labels = pd.MultiIndex.from_arrays(
        [np.repeat(layout.tests, len(layout.readers)), np.tile(layout.readers, len(layout.tests))],
        names=["test", "reader"],
    )
    auc_frame = pd.DataFrame(
        {
            "reader": labels.get_level_values("reader"),
            "test": labels.get_level_values("test"),
            "auc": cs.auc,
            "n_pos": cs.n_pos.astype(int),
            "n_neg": cs.n_neg.astype(int),
        }
    )
    means = cs.auc.reshape(len(layout.tests), len(layout.readers)).mean(axis=1)
    return ORResult(
        cov_method=cov_method,
        design=_design_name(layout),
        conf_level=conf_level,
        readers=layout.readers,
        tests=layout.tests,
        auc=auc_frame,
        test_means=pd.Series(means, index=pd.Index(layout.tests, name="test"), name="auc"),
        covariance=pd.DataFrame(cov, index=labels, columns=labels),
        ms_r_by_test=pd.Series(ms_r_t, index=pd.Index(layout.tests, name="test"), name="ms_r"),
        rrrc=rrrc,
        frrc=frrc,
        rrfc=rrfc,
        dropped_readers=layout.dropped_readers,
        **comps,
    )


# ---------------------------------------------------------------------------------------------------
# Empirical ROC curves
# ---------------------------------------------------------------------------------------------------


def roc_curves(
    data: pd.DataFrame,
    *,
    reader: str = "reader",
    test: str = "test",
    truth: str = "truth",
    score: str = "score",
) -> pd.DataFrame:
    """Empirical ROC operating points of every reader in every test.

    Parameters
    ----------
    data
        ROC data (see the module docstring).
    reader, test, truth, score
        Column names.

    Returns
    -------
    pandas.DataFrame
        Columns ``test``, ``reader``, ``threshold``, ``fpr``, ``tpr`` (see :func:`roc_curve_points`);
        cells without both positive and negative readings are left out.
    """
    frames = []
    for (t, r), cell in data.groupby([test, reader], sort=True):
        is_pos = cell[truth].to_numpy(dtype=float) == 1.0
        values = cell[score].to_numpy(dtype=float)
        if is_pos.any() and (~is_pos).any():
            frames.append(roc_curve_points(values[is_pos], values[~is_pos]).assign(test=t, reader=r))
    columns = ["test", "reader", "threshold", "fpr", "tpr"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _require_matplotlib() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is in requirements.txt
        raise ImportError("ROC figures need matplotlib: pip install 'matplotlib>=3.8'") from err
    return Figure


def plot_roc_curves(
    curves: pd.DataFrame,
    *,
    test_means: pd.Series | None = None,
    title: str | None = None,
    panel_size: float = 3.2,
) -> Figure:
    """Plot empirical ROC curves, one panel per test, one line per reader.

    Parameters
    ----------
    curves
        Output of :func:`roc_curves`.
    test_means
        Reader-averaged AUC per test (e.g. ``ORResult.test_means``), shown in the panel titles.
    title
        Figure title.
    panel_size
        Width and height of each panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        Made without pyplot (no global state, no GUI backend); save it with ``fig.savefig(...)``.
    """
    figure_cls = _require_matplotlib()
    tests = list(pd.unique(curves["test"])) or ["(no data)"]
    fig = figure_cls(figsize=(panel_size * len(tests), panel_size + 0.4), layout="constrained")
    axes = fig.subplots(1, len(tests), squeeze=False)[0]
    for ax, t in zip(axes, tests, strict=True):
        for r, pts in curves[curves["test"] == t].groupby("reader", sort=True):
            ax.plot(pts["fpr"], pts["tpr"], marker=".", linewidth=1, markersize=3, label=str(r))
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        label = str(t)
        if test_means is not None and t in test_means.index:
            label += f" (mean AUC {test_means[t]:.3f})"
        ax.set(title=label, xlabel="false positive fraction", xlim=(0, 1), ylim=(0, 1), aspect="equal")
        ax.set_ylabel("true positive fraction")
    if 0 < curves["reader"].nunique() <= 12:
        axes[-1].legend(title="reader", fontsize="x-small", title_fontsize="x-small", loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------------
# Adapters from MedSynth ratings
# ---------------------------------------------------------------------------------------------------

_PAIR_COLUMNS = ("rater", "model", "item_kind", "real_image", "generated_image", "position")
_SCORE_COLUMNS: dict[str, tuple[str, ...]] = {
    "realism": ("realism_generated", "realism_real"),
    "2afc": ("which_generated", "generated_side"),
    "2afc_confidence": ("which_generated", "generated_side", "confidence"),
}


def _first_readings(ratings: pd.DataFrame, score: RatingScore) -> tuple[pd.DataFrame, dict[str, int]]:
    """Pairs that enter the analysis (first readings, no attention / cannot-assess items)."""
    if score not in _SCORE_COLUMNS:
        raise ValueError(f"score must be one of {tuple(_SCORE_COLUMNS)}, got {score!r}")
    missing = [c for c in (*_PAIR_COLUMNS, *_SCORE_COLUMNS[score]) if c not in ratings.columns]
    if missing:
        raise ValueError(f"ratings lack the column(s) {missing} (see docs/ratings-table.md)")
    counts = {"rows": len(ratings)}
    attention = ratings["item_kind"].eq("attention").fillna(False).to_numpy(dtype=bool)
    counts["attention"] = int(attention.sum())
    pairs = ratings.loc[~attention]
    order = ["rater", "position"] + (["server_received_at"] if "server_received_at" in pairs else [])
    pairs = pairs.sort_values(order, kind="stable")
    first = ~pairs.duplicated(["rater", "model", "real_image", "generated_image"], keep="first")
    counts["later_readings"] = int((~first).sum())
    pairs = pairs.loc[first]
    if "cannot_assess" in pairs:
        unassessable = pairs["cannot_assess"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        counts["cannot_assess"] = int(unassessable.sum())
        pairs = pairs.loc[~unassessable]
    return pairs, counts


def _roc_data(ratings: pd.DataFrame, score: RatingScore) -> tuple[pd.DataFrame, dict[str, int]]:
    pairs, counts = _first_readings(ratings, score)
    base = {"reader": pairs["rater"].astype(str).to_numpy(), "test": pairs["model"].astype(str).to_numpy()}
    gen_case = ("gen:" + pairs["generated_image"].astype(str)).to_numpy()
    real_case = ("real:" + pairs["real_image"].astype(str)).to_numpy()
    if score == "realism":
        gen_score = 6.0 - pd.to_numeric(pairs["realism_generated"]).to_numpy(dtype=float, na_value=np.nan)
        real_score = 6.0 - pd.to_numeric(pairs["realism_real"]).to_numpy(dtype=float, na_value=np.nan)
    else:
        answered = pairs["which_generated"].notna().to_numpy(dtype=bool)
        weight = np.ones(len(pairs))
        if score == "2afc_confidence":
            weight = pd.to_numeric(pairs["confidence"]).to_numpy(dtype=float, na_value=np.nan)
        picked_generated = (
            pairs["which_generated"].astype(str).to_numpy() == pairs["generated_side"].astype(str).to_numpy()
        )
        gen_score = np.where(answered, np.where(picked_generated, weight, -weight), np.nan)
        real_score = -gen_score
    frame = pd.concat(
        [
            pd.DataFrame({**base, "case": gen_case, "truth": 1, "score": gen_score}),
            pd.DataFrame({**base, "case": real_case, "truth": 0, "score": real_score}),
        ],
        ignore_index=True,
    )
    # pairs are in reading order, generated rows first: keep each reader's first reading of an image
    n_read = len(frame)
    frame = frame.iloc[np.argsort(np.tile(np.arange(len(pairs)), 2), kind="stable")]
    frame = frame.loc[frame["score"].notna()]
    counts["unanswered_images"] = n_read - len(frame)
    dup = frame.duplicated(["reader", "test", "case"], keep="first")
    counts["repeated_real_images"] = int(dup.sum())
    frame = frame.loc[~dup].reset_index(drop=True)
    return frame[["reader", "test", "case", "truth", "score"]], counts


def roc_data_from_ratings(ratings: pd.DataFrame, score: RatingScore = "realism") -> pd.DataFrame:
    """ROC data (reader, test = model, case = image, truth, score) from the tidy ratings table.

    Parameters
    ----------
    ratings
        Tidy ratings table (``docs/ratings-table.md``).
    score
        ``"realism"`` (inverted realism rating of each image), ``"2afc"`` (+1 / -1 for the image the
        rater picked as generated / the other one: AUC = proportion correct) or ``"2afc_confidence"``
        (+/- the confidence). See the module docstring for the exclusion rules.

    Returns
    -------
    pandas.DataFrame
        Columns ``reader`` (rater), ``test`` (model), ``case`` (``"gen:<sha256>"`` / ``"real:<sha256>"``),
        ``truth`` (1 generated, 0 real) and ``score`` (higher = looks more generated).
    """
    return _roc_data(ratings, score)[0]


def mrmc_from_ratings(
    ratings: pd.DataFrame,
    score: RatingScore = "realism",
    cov_method: CovMethod = "jackknife",
    *,
    conf_level: float = 0.95,
    drop_incomplete_readers: bool = True,
) -> ORResult:
    """OR MRMC analysis of a MedSynth study: models as tests, generated (1) vs real (0) images.

    Parameters
    ----------
    ratings
        Tidy ratings table.
    score, cov_method, conf_level
        See :func:`roc_data_from_ratings` and :func:`or_analysis`.
    drop_incomplete_readers
        Leave out raters who did not read at least 2 generated and 2 real images of every model
        (listed in ``ORResult.dropped_readers``); with ``False`` such a design raises ``ValueError``.

    Returns
    -------
    ORResult
    """
    return or_analysis(
        roc_data_from_ratings(ratings, score),
        cov_method=cov_method,
        conf_level=conf_level,
        drop_incomplete_readers=drop_incomplete_readers,
    )


def mrmc_report_section(
    ratings: pd.DataFrame,
    *,
    scores: tuple[RatingScore, ...] = ("realism", "2afc"),
    cov_method: CovMethod = "jackknife",
    conf_level: float = 0.95,
    figures: bool = True,
) -> dict[str, Any]:
    """Tables, ROC figures and notes of the MRMC analysis, for the study report.

    Parameters
    ----------
    ratings
        Tidy ratings table.
    scores
        Scores to analyse (see :func:`roc_data_from_ratings`).
    cov_method, conf_level
        See :func:`or_analysis`.
    figures
        Make matplotlib ROC figures (one per score).

    Returns
    -------
    dict
        ``{"results": {score: ORResult}, "tables": {"<score>/<name>": DataFrame},
        "figures": {"<score>/roc": Figure}, "notes": [str]}``. A score that cannot be analysed (too
        few readers or readings) gets a note instead of a result.
    """
    section: dict[str, Any] = {"results": {}, "tables": {}, "figures": {}, "notes": []}
    for score in scores:
        data, counts = _roc_data(ratings, score)
        section["notes"].append(
            f"{score}: {counts['rows']} ratings; excluded {counts['attention']} attention items, "
            f"{counts['later_readings']} repeated readings (first reading kept), "
            f"{counts.get('cannot_assess', 0)} pairs marked cannot-assess, "
            f"{counts['unanswered_images']} unanswered image readings, "
            f"{counts['repeated_real_images']} repeated real images within a model (first kept)."
        )
        try:
            result = or_analysis(data, cov_method=cov_method, conf_level=conf_level, drop_incomplete_readers=True)
        except ValueError as err:
            section["notes"].append(f"{score}: MRMC analysis not possible: {err}")
            continue
        section["results"][score] = result
        if result.dropped_readers:
            section["notes"].append(
                f"{score}: raters left out (did not read 2+ generated and 2+ real images of every model): "
                + ", ".join(map(str, result.dropped_readers))
            )
        test_text = (
            f"undefined ({result.rrrc.note})"
            if result.rrrc.note
            else f"F({result.rrrc.df1:.0f}, {result.rrrc.df2:.2f}) = {result.rrrc.statistic:.3f}, "
            f"p = {result.rrrc.p_value:.4g}"
        )
        section["notes"].append(
            f"{score}: {len(result.readers)} raters x {len(result.tests)} models, design {result.design}, "
            f"{cov_method} covariance; RRRC test of equal AUC across models: {test_text}."
        )
        for name, table in result.tables().items():
            section["tables"][f"{score}/{name}"] = table
        if figures:
            kept = data[data["reader"].isin(result.readers)]
            section["figures"][f"{score}/roc"] = plot_roc_curves(
                roc_curves(kept), test_means=result.test_means, title=f"Empirical ROC ({score} score)"
            )
    return section
