"""Automated image metrics: FD, KID, CMMD, diversity, MS-SSIM, text-image alignment, MEDVQA-GI scores.

Pure functions take feature arrays (N, dim) from one extractor (see :mod:`analysis.features`) and return
floats; the ``*_metric`` wrappers return :class:`MetricResult` rows stamped with the extractor, its weights
sha256, the preprocessing and colour handling, N, the seed and library versions. A metric is always named
with its extractor (``FD_inception``, ``KID_dinov2-base``, ``CMMD_clip-vit-large-patch14-336``), and tables
are built per extractor, so extractors are never mixed in one table.
"""

from __future__ import annotations

import importlib.metadata
import platform
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.distance import pdist

from analysis.bootstrap import percentile_interval, two_sample_bootstrap, two_sample_bootstrap_ci
from analysis.features.base import COLOUR_HANDLING, FeatureExtractor, load_images
from db.errors import InputError

__all__ = [
    "MS_SSIM_WEIGHTS",
    "FrechetDistance",
    "HumanMetricComparison",
    "KIDResult",
    "MedVQAGI2025Scores",
    "MetricResult",
    "MetricStamp",
    "alignment_metric",
    "cmmd",
    "cmmd_bootstrap_ci",
    "cmmd_metric",
    "compare_models",
    "diversity_by_group",
    "equalize_n",
    "fd_metric",
    "fd_score",
    "feature_bootstrap_ci",
    "feature_stats",
    "frechet_distance",
    "human_metric_comparison",
    "kid",
    "kid_metric",
    "load_images",
    "mean_pairwise_distance",
    "medvqa_gi_2025",
    "metrics_report_section",
    "metrics_tables",
    "ms_ssim",
    "ms_ssim_diversity",
    "nearest_real_distance",
    "ssim",
    "text_image_alignment",
]

# --------------------------------------------------------------------------------------------- stamps


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine metric values (python, numpy, scipy, torch, ...)."""
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "scipy", "torch", "transformers", "pillow"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


@dataclass(frozen=True)
class MetricStamp:
    """Everything needed to reproduce (or refuse to compare) a metric value."""

    extractor: str
    weights_sha256: str
    preprocess: str
    """Resize, interpolation, normalisation and colour handling (grey-scale replicated to RGB)."""
    n_a: int
    n_b: int | None
    seed: int | None
    backbone: str | None = None
    versions: dict[str, str] = field(default_factory=library_versions)

    @classmethod
    def for_extractor(
        cls, extractor: FeatureExtractor, n_a: int, n_b: int | None = None, seed: int | None = None
    ) -> MetricStamp:
        """Stamp from an extractor's ``name``, ``weights_sha256`` and ``preprocess``."""
        describe = getattr(extractor.preprocess, "describe", None)
        preprocess = describe() if callable(describe) else f"{extractor.preprocess}; colour: {COLOUR_HANDLING}"
        return cls(
            extractor=extractor.name,
            weights_sha256=extractor.weights_sha256,
            preprocess=preprocess,
            n_a=n_a,
            n_b=n_b,
            seed=seed,
            backbone=getattr(extractor, "backbone", extractor.name),
        )


@dataclass(frozen=True)
class MetricResult:
    """One metric value with its sample sizes, optional CI / spread, and its stamp."""

    metric: str
    value: float
    stamp: MetricStamp
    ci_low: float | None = None
    ci_high: float | None = None
    std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Metric named with its extractor, e.g. ``FD_inception``."""
        return f"{self.metric}_{self.stamp.extractor}"

    def to_row(self) -> dict[str, Any]:
        """Flat dict for a table row (versions flattened to ``version_<lib>`` columns)."""
        stamp = asdict(self.stamp)
        versions = stamp.pop("versions")
        row = {"metric": self.name, "value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}
        row |= {"std": self.std, **self.extra, **stamp}
        return row | {f"version_{k}": v for k, v in versions.items()}


# --------------------------------------------------------------------------------------- validation


def _as_features(feats: Any, what: str = "features", min_rows: int = 2) -> np.ndarray:
    arr = np.asarray(feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (N, dim), got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise InputError(f"{what} need at least {min_rows} rows, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contain NaN or infinite values")
    return arr


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(
            f"feature dimensions differ ({a.shape[1]} vs {b.shape[1]}): were they made by the same extractor?"
        )


def check_sample_size(n: int, dim: int, metric: str) -> None:
    """Warn when ``n < dim``: the covariance is then singular and FD is biased and unstable."""
    if n < dim:
        warnings.warn(
            f"{metric}: N={n} images is smaller than the feature dimension {dim}, so the covariance matrix is "
            f"singular (rank <= {n - 1}) and the Fréchet distance is strongly biased and unstable; use N >= "
            f"{dim} (several thousand for 2048-d Inception), or compare models only at the same N",
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------ Fréchet distance


def feature_stats(feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1) of features, in float64."""
    arr = _as_features(feats)
    return arr.mean(axis=0), np.cov(arr, rowvar=False)


def _sym(m: np.ndarray) -> np.ndarray:
    return (m + m.T) / 2.0


def _compute_fd(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    factor1: np.ndarray | None = None,
) -> float:
    """Fréchet distance between two Gaussians, float64, without ``scipy.linalg.sqrtm``.

    ``tr(sqrt(S1 S2)) = sum(sqrt(eig(R^T S2 R)))`` for any factor ``S1 = R R^T``: ``R^T S2 R`` has the
    eigenvalues of ``S1 S2`` but is symmetric positive semi-definite, so ``eigvalsh`` applies and rounding
    noise only produces tiny negative eigenvalues, which are clipped to 0. ``factor1`` (dim, k) may give such
    an ``R`` (the centred data / sqrt(N - 1) when N <= dim, so the eigenproblem is only N x N).
    """
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise InputError(f"inconsistent shapes: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {s1.shape}, sigma2 {s2.shape}")
    s1, s2 = _sym(s1), _sym(s2)
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2, factor1))
    return max(fd, 0.0)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, factor1: np.ndarray | None = None) -> float:
    """``tr(sqrt(S1 S2))`` for symmetric PSD ``S1, S2`` via a symmetric similar matrix, in float64.

    The factor ``R`` (``S1 = R R^T``) is ``factor1`` if given, else the Cholesky factor when ``S1`` is
    positive definite (fast), else the PSD square root from ``eigh`` (singular ``S1``). torch's LAPACK (MKL)
    is used: at 2048-d its ``eigvalsh`` is an order of magnitude faster than numpy's OpenBLAS build here.
    """
    t1, t2 = torch.from_numpy(s1), torch.from_numpy(s2)
    if factor1 is not None:
        root = torch.from_numpy(np.asarray(factor1, dtype=np.float64))
    else:
        root, info = torch.linalg.cholesky_ex(t1)
        if int(info) != 0:
            w, v = torch.linalg.eigh(t1)
            root = v * torch.sqrt(torch.clamp(w, min=0.0))
    m = root.T @ t2 @ root
    eig = torch.linalg.eigvalsh((m + m.T) / 2.0)
    return float(torch.sqrt(torch.clamp(eig, min=0.0)).sum())


def _compute_fd_sqrtm(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The textbook formula with ``scipy.linalg.sqrtm(S1 @ S2)`` (pytorch-fid); slow, for benchmarks only."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(np.real(covmean)))


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """Fréchet distance between two feature sets (FID when the features are FID-Inception pool features).

    Parameters
    ----------
    feats_a, feats_b : array-like (N, dim)
        Features from the same extractor.

    Returns
    -------
    float
        ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` in float64, warning when N < dim.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    _same_dim(a, b)
    check_sample_size(min(a.shape[0], b.shape[0]), a.shape[1], "FD")
    if b.shape[0] < a.shape[0]:  # FD is symmetric: factor the smaller set
        a, b = b, a
    mu_a = a.mean(axis=0)
    factor = (a - mu_a).T / np.sqrt(a.shape[0] - 1) if a.shape[0] <= a.shape[1] else None
    return _compute_fd(mu_a, np.cov(a, rowvar=False), *feature_stats(b), factor1=factor)


class FrechetDistance:
    """Stateful FD like torchmetrics: ``update(feats, real=...)`` in batches, then ``compute()``.

    Sums and outer-product sums are accumulated in float64; ``compute`` calls the pure :func:`_compute_fd`.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise InputError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated features."""
        self._n = {True: 0, False: 0}
        self._sum = {k: np.zeros(self.dim) for k in (True, False)}
        self._outer = {k: np.zeros((self.dim, self.dim)) for k in (True, False)}

    def update(self, feats: Any, real: bool) -> None:
        """Add a batch of features (N, dim) to the real or generated side."""
        arr = _as_features(feats, min_rows=1)
        if arr.shape[1] != self.dim:
            raise InputError(f"expected features of dim {self.dim}, got {arr.shape[1]}")
        self._n[real] += arr.shape[0]
        self._sum[real] += arr.sum(axis=0)
        self._outer[real] += arr.T @ arr

    @property
    def n(self) -> dict[str, int]:
        """Images seen so far per side."""
        return {"real": self._n[True], "generated": self._n[False]}

    def _stats(self, real: bool) -> tuple[np.ndarray, np.ndarray]:
        n = self._n[real]
        if n < 2:
            raise InputError(f"need at least 2 {'real' if real else 'generated'} feature rows, got {n}")
        mu = self._sum[real] / n
        return mu, (self._outer[real] - n * np.outer(mu, mu)) / (n - 1)

    def compute(self) -> float:
        """FD between everything seen on the real and generated sides."""
        real, generated = self._stats(True), self._stats(False)
        check_sample_size(min(self._n.values()), self.dim, "FD")
        return _compute_fd(*real, *generated)


# --------------------------------------------------------------------------------------------------- KID


@dataclass(frozen=True)
class KIDResult:
    """Mean and standard deviation of the unbiased MMD^2 over random subsets."""

    mean: float
    std: float
    subset_size: int
    n_subsets: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``(x y^T / dim + coef0) ** degree`` (the KID kernel of Binkowski et al. 2018)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def _mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    m = k_xx.shape[0]
    n = k_yy.shape[0]
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kid(
    feats_a: Any,
    feats_b: Any,
    n_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    coef0: float = 1.0,
    seed: int = 0,
) -> KIDResult:
    """Kernel Inception Distance: unbiased polynomial-kernel MMD^2 averaged over seeded random subsets.

    Parameters
    ----------
    feats_a, feats_b : array-like (N, dim)
    n_subsets : int
        Number of subset pairs drawn (without replacement within a subset).
    subset_size : int
        Subset size; lowered (with a warning) to the smaller N when larger than it.
    degree, coef0 : int, float
        Kernel ``(x.y / dim + coef0) ** degree``.
    seed : int
        Seed of the ``numpy.random.default_rng`` that draws the subsets.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    _same_dim(a, b)
    if n_subsets < 1 or subset_size < 2:
        raise InputError(f"need n_subsets >= 1 and subset_size >= 2, got {n_subsets}, {subset_size}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < subset_size:
        warnings.warn(
            f"KID: subset_size {subset_size} is larger than N ({a.shape[0]}, {b.shape[0]}); using {m}",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for i in range(n_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        values[i] = _mmd2_unbiased(
            polynomial_kernel(x, x, degree, coef0),
            polynomial_kernel(y, y, degree, coef0),
            polynomial_kernel(x, y, degree, coef0),
        )
    return KIDResult(float(values.mean()), float(values.std()), m, n_subsets)


# -------------------------------------------------------------------------------------------------- CMMD

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
CMMD_MIN_N = 300
"""Below this many images per side CMMD is too noisy to rank models; a warning says so."""

CMMDEstimator = Literal["unbiased", "biased"]


def _rbf_mean(p: np.ndarray, q: np.ndarray, gamma: float, exclude: np.ndarray | None = None) -> float:
    """Mean of ``exp(-gamma |p_i - q_j|^2)`` over all (i, j), or over the pairs where ``exclude`` is False."""
    d2 = np.einsum("ij,ij->i", p, p)[:, None] + np.einsum("ij,ij->i", q, q)[None, :] - 2.0 * (p @ q.T)
    k = np.exp(-gamma * np.clip(d2, 0.0, None))
    if exclude is None:
        return float(k.mean())
    keep = ~exclude
    if not keep.any():
        raise InputError("CMMD (unbiased) needs at least 2 distinct images per side")
    return float(k[keep].mean())


def _cmmd_indexed(
    x: np.ndarray, y: np.ndarray, ix: np.ndarray, iy: np.ndarray, gamma: float, estimator: CMMDEstimator
) -> float:
    """MMD^2 of rows ``x[ix]`` and ``y[iy]``; the unbiased form leaves out every pair of one source row."""
    px, py = x[ix], y[iy]
    if estimator == "biased":
        return _rbf_mean(px, px, gamma) + _rbf_mean(py, py, gamma) - 2.0 * _rbf_mean(px, py, gamma)
    same_x = ix[:, None] == ix[None, :]
    same_y = iy[:, None] == iy[None, :]
    return _rbf_mean(px, px, gamma, same_x) + _rbf_mean(py, py, gamma, same_y) - 2.0 * _rbf_mean(px, py, gamma)


def cmmd(
    emb_a: Any,
    emb_b: Any,
    sigma: float = CMMD_SIGMA,
    scale: float = CMMD_SCALE,
    estimator: CMMDEstimator = "unbiased",
    warn_below: int = CMMD_MIN_N,
) -> float:
    """CMMD (Jayasumana et al. 2024): Gaussian-RBF MMD^2 of CLIP embeddings, times ``scale``.

    ``estimator="unbiased"`` (default) is the U-statistic ``mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j)
    - 2 mean k(x_i,y_j)``: about 0 for two samples of one distribution at any N. ``"biased"`` is the
    V-statistic of google-research/cmmd ``distance.mmd`` (diagonals included), which adds roughly
    ``(1 - mean k(x,x'))/N_x + (1 - mean k(y,y'))/N_y`` and so rewards less diverse (mode-collapsed) sets at
    study sizes. ``k = exp(-|x-y|^2 / (2 sigma^2))``, sigma 10, scale 1000, on unit-norm embeddings (our
    :class:`~analysis.features.CLIPExtractor` normalises them). Warns below ``warn_below`` images per side.
    """
    if estimator not in ("unbiased", "biased"):
        raise InputError(f"CMMD estimator must be 'unbiased' or 'biased', got {estimator!r}")
    min_rows = 2 if estimator == "unbiased" else 1
    x, y = _as_features(emb_a, "emb_a", min_rows), _as_features(emb_b, "emb_b", min_rows)
    _same_dim(x, y)
    if sigma <= 0:
        raise InputError(f"sigma must be positive, got {sigma}")
    n = min(x.shape[0], y.shape[0])
    if n < warn_below:
        warnings.warn(
            f"CMMD: N={n} images per side is below {warn_below}; the estimate is noisy (see its CI) and "
            "model rankings at this N are unreliable",
            stacklevel=2,
        )
    gamma = 1.0 / (2.0 * sigma**2)
    ix, iy = np.arange(x.shape[0]), np.arange(y.shape[0])
    return scale * _cmmd_indexed(x, y, ix, iy, gamma, estimator)


def cmmd_bootstrap_ci(
    emb_a: Any,
    emb_b: Any,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    sigma: float = CMMD_SIGMA,
    scale: float = CMMD_SCALE,
    estimator: CMMDEstimator = "unbiased",
) -> tuple[float, float]:
    """Percentile bootstrap CI of CMMD, resampling the rows of each set with replacement.

    For the unbiased estimator, pairs of copies of one source row are left out of the within-set means
    (they would add ``k(x, x) = 1`` and bias the replicates upwards), so the replicates stay unbiased.
    """
    x, y = _as_features(emb_a, "emb_a", 2), _as_features(emb_b, "emb_b", 2)
    _same_dim(x, y)
    if not 0 < level < 1 or n_boot < 2:
        raise InputError(f"need 0 < level < 1 and n_boot >= 2, got {level}, {n_boot}")
    gamma = 1.0 / (2.0 * sigma**2)
    values = two_sample_bootstrap(
        lambda ix, iy: scale * _cmmd_indexed(x, y, ix, iy, gamma, estimator), x.shape[0], y.shape[0], n_boot, seed
    )
    return percentile_interval(values, level)


# ------------------------------------------------------------------------------------ feature diversity


def mean_pairwise_distance(feats: Any, metric: Literal["euclidean", "cosine"] = "euclidean") -> float:
    """Mean distance over all unordered pairs of feature rows (higher = more diverse)."""
    if metric not in ("euclidean", "cosine"):
        raise InputError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    return float(pdist(_as_features(feats), metric=metric).mean())


def diversity_by_group(
    feats: Any, groups: Sequence[str], metric: Literal["euclidean", "cosine"] = "euclidean"
) -> pd.DataFrame:
    """Mean pairwise feature distance within each group (e.g. prompt); groups with N < 2 give NaN."""
    arr = _as_features(feats, min_rows=1)
    labels = np.asarray(groups, dtype=object)
    if labels.shape != (arr.shape[0],):
        raise InputError(f"groups has {labels.shape[0]} labels for {arr.shape[0]} feature rows")
    rows = []
    for group in pd.unique(labels):
        members = arr[labels == group]
        value = mean_pairwise_distance(members, metric) if members.shape[0] >= 2 else float("nan")
        rows.append({"group": group, "n": members.shape[0], "diversity": value})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- (MS-)SSIM

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Wang, Simoncelli & Bovik (2003) exponents for scales 1..5."""


def _image_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) float64 from a PIL image, or an (H, W) / (H, W, C) array (values kept as they are)."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image, dtype=np.float64)
    else:
        arr = np.asarray(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image, np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(f"images must be (H, W) or (H, W, C), got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' (no padding), per channel."""
    c = x.shape[1]
    x = F.conv2d(x, window.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, window.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_cs(
    x: torch.Tensor, y: torch.Tensor, data_range: float, window: torch.Tensor, k1: float, k2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean SSIM and mean contrast-structure term, shape (C,)."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x**2
    var_y = _filter(y * y, window) - mu_y**2
    cov = _filter(x * y, window) - mu_x * mu_y
    cs_map = (2.0 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.mean(dim=(0, 2, 3)), cs_map.mean(dim=(0, 2, 3))


def _pair(
    img_a: Any, img_b: Any, data_range: float, win_size: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not data_range or data_range <= 0:
        raise InputError(f"data_range must be given explicitly and positive (255 for uint8), got {data_range}")
    if win_size % 2 != 1 or win_size < 3:
        raise InputError(f"win_size must be an odd number >= 3, got {win_size}")
    x, y = _image_tensor(img_a), _image_tensor(img_b)
    if x.shape != y.shape:
        raise InputError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y, _gaussian_window(win_size, sigma)


def ssim(
    img_a: Any,
    img_b: Any,
    *,
    data_range: float,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Single-scale SSIM (Gaussian window 11, sigma 1.5, no padding), averaged over channels.

    Equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``.
    """
    x, y, window = _pair(img_a, img_b, data_range, win_size, sigma)
    if min(x.shape[-2:]) < win_size:
        raise InputError(f"images of {tuple(x.shape[-2:])} px are smaller than the {win_size}-px window")
    return float(_ssim_cs(x, y, data_range, window, k1, k2)[0].mean())


def ms_ssim(
    img_a: Any,
    img_b: Any,
    *,
    data_range: float,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Multi-scale SSIM (Wang et al. 2003), averaged over channels.

    At each of the first ``len(weights) - 1`` scales the contrast-structure term is kept, then the image is
    2x2 average-pooled (odd last row/column dropped); the last scale contributes full SSIM. Negative terms
    are clipped to 0 before the powers (as in pytorch-msssim). The smaller side must be at least
    ``win_size * 2 ** (len(weights) - 1)`` px (176 for the defaults).
    """
    x, y, window = _pair(img_a, img_b, data_range, win_size, sigma)
    levels = len(weights)
    min_side = win_size * 2 ** (levels - 1)
    if min(x.shape[-2:]) < min_side:
        raise InputError(
            f"MS-SSIM with {levels} scales needs images of at least {min_side} px, got {tuple(x.shape[-2:])}"
        )
    w = torch.tensor(list(weights), dtype=torch.float64)
    terms = []
    for level in range(levels):
        ssim_c, cs_c = _ssim_cs(x, y, data_range, window, k1, k2)
        if level < levels - 1:
            terms.append(cs_c)
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        else:
            terms.append(ssim_c)
    stacked = torch.clamp(torch.stack(terms), min=0.0)  # (levels, C)
    return float(torch.prod(stacked ** w[:, None], dim=0).mean())


def ms_ssim_diversity(
    images: Sequence[Any], *, data_range: float, size: int | None = 256, **kwargs: Any
) -> tuple[float, int]:
    """Mean MS-SSIM over all pairs of images made from one prompt (lower = more diverse).

    Parameters
    ----------
    images : sequence of PIL images or arrays
        At least 2 images. PIL images are converted to RGB and, if ``size`` is set, resized to
        ``size x size`` (bicubic) so that images of different sizes can be compared.
    data_range : float
        Explicit dynamic range of the pixel values (255 for 8-bit images).

    Returns
    -------
    (float, int)
        Mean pairwise MS-SSIM and the number of pairs.
    """
    if len(images) < 2:
        raise InputError(f"MS-SSIM diversity needs at least 2 images, got {len(images)}")
    prepared = []
    for im in images:
        if isinstance(im, Image.Image):
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
        prepared.append(im)
    values = [ms_ssim(a, b, data_range=data_range, **kwargs) for a, b in combinations(prepared, 2)]
    return float(np.mean(values)), len(values)


# --------------------------------------------------------------------------------- text-image alignment


def text_image_alignment(image_emb: Any, text_emb: Any) -> np.ndarray:
    """Row-wise cosine similarity of paired image and text embeddings from one dual encoder."""
    img, txt = _as_features(image_emb, "image_emb", 1), _as_features(text_emb, "text_emb", 1)
    if img.shape != txt.shape:
        raise InputError(f"image and text embeddings must pair up row by row, got {img.shape} and {txt.shape}")
    num = np.einsum("ij,ij->i", img, txt)
    den = np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1)
    if np.any(den == 0):
        raise InputError("an embedding has zero norm; cosine similarity is undefined")
    return num / den


def alignment_metric(encoder: Any, images: Sequence[Any], prompts: Sequence[str]) -> MetricResult:
    """Mean image-prompt cosine similarity with a dual encoder (CLIP-style); backbone in the stamp.

    ``encoder`` needs ``__call__(images)``, ``embed_texts(texts)`` and the extractor attributes.
    """
    if len(images) != len(prompts):
        raise InputError(f"{len(images)} images but {len(prompts)} prompts")
    cos = text_image_alignment(encoder(images), encoder.embed_texts(list(prompts)))
    stamp = MetricStamp.for_extractor(encoder, n_a=len(images))
    return MetricResult("alignment", float(cos.mean()), stamp, std=float(cos.std(ddof=1)) if len(cos) > 1 else None)


# ------------------------------------------------------------------------------------- MEDVQA-GI 2025


def fd_score(fd: float) -> float:
    """MEDVQA-GI 2025 transform of a Fréchet distance into a score: ``1000 / (1 + FD)``."""
    if fd < 0:
        raise InputError(f"a Fréchet distance cannot be negative, got {fd}")
    return 1000.0 / (1.0 + fd)


MEDVQA_GI_2025_IMAGES_PER_PROMPT = 10
MEDVQA_GI_2025_EXTRACTOR = "ikim-uk-essen/BiomedCLIP_ViT_patch16_224"
"""The organisers' feature model: BiomedCLIP ViT-B/16, features = ``last_hidden_state[:, 0, :]`` (768-d)."""


def _fd_sqrtm_plain(a: np.ndarray, b: np.ndarray) -> float:
    """FD exactly as the organisers' script: ``scipy.linalg.sqrtm(S_a @ S_b).real``, no offset, no clipping."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2.0 * covmean))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero, as ``sklearn.preprocessing.normalize``)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


@dataclass(frozen=True)
class MedVQAGI2025Scores:
    """The ImageCLEFmed MEDVQA-GI 2025 task-2 scores and the per-pair numbers behind them."""

    fidelity: float
    """Mean over pairs of ``1000 / (1 + (FD(A, real) + FD(B, real)) / 2)`` (higher is better)."""
    agreement: float
    """Mean over pairs of the mean cosine similarity between every image of A and every image of B."""
    diversity: float
    """Mean over prompts of the mean pairwise Euclidean distance of L2-normalised features."""
    fbd: float
    """One global Fréchet (BiomedCLIP) distance: all scored generated features vs all pairs' real references."""
    n_pairs: int
    n_per_prompt: int
    script_quirk: bool
    per_pair: pd.DataFrame

    def as_dict(self) -> dict[str, float | int | bool]:
        """The four public scores plus N (what the leaderboard shows, unrounded)."""
        return {
            "fidelity": self.fidelity,
            "agreement": self.agreement,
            "diversity": self.diversity,
            "FBD": self.fbd,
            "n_pairs": self.n_pairs,
            "n_per_prompt": self.n_per_prompt,
            "script_quirk": self.script_quirk,
        }


def medvqa_gi_2025(
    features_by_prompt: Mapping[Any, Any],
    real_features: Mapping[Any, Any] | Any,
    paraphrase_pairs: Sequence[tuple[Any, Any]],
    *,
    script_quirk: bool = False,
    images_per_prompt: int | None = MEDVQA_GI_2025_IMAGES_PER_PROMPT,
) -> MedVQAGI2025Scores:
    """The MEDVQA-GI 2025 image-generation scores (fidelity, agreement, diversity, FBD) as the organisers define them.

    Re-implements the scoring of ``submission_samples/gi-2025/submission_task2.py`` (SushantGautam/MedVQA).

    Parameters
    ----------
    features_by_prompt : mapping prompt -> features (n_per_prompt, dim)
        BiomedCLIP CLS hidden states of the generated images (:class:`~analysis.features.BiomedCLIPExtractor`),
        10 per prompt in the challenge.
    real_features : mapping prompt -> features, or one array
        The real reference of each pair, looked up by the pair's first prompt (the organisers' ``real_mapping``
        gives both prompts of a pair the same images), or one array shared by all pairs.
    paraphrase_pairs : sequence of (prompt_a, prompt_b)
        Prompts that ask for the same image in different words, in the organisers' order.
    script_quirk : bool
        Reproduce the published script literally, to match leaderboard numbers: its loop
        ``range(0, len(prompts) // 2, 2)`` scores only the first half of the pairs (the first
        ``ceil(n_pairs / 2)``), and its FD is ``scipy.linalg.sqrtm(S_a @ S_b).real`` with no safeguard (with 10
        images and 768-d features both covariances are singular and ``sqrtm`` is inexact). Off (default): every
        pair is scored and FD uses the exact symmetric form of :func:`frechet_distance`.
    images_per_prompt : int or None
        Required number of images per prompt (10 in the challenge); ``None`` accepts any N >= 2.

    Returns
    -------
    MedVQAGI2025Scores
        The four scores, N, and a per-pair table (FD of A and B against the real reference, FD(A, B),
        agreement, diversity of A and B). Scores are unrounded (the leaderboard rounds to 2 decimals).
    """
    if not paraphrase_pairs:
        raise InputError("MEDVQA-GI 2025 scores need at least one paraphrase pair")
    gen: dict[Any, np.ndarray] = {}
    for prompt, feats in features_by_prompt.items():
        arr = _as_features(feats, f"generated features of prompt {prompt!r}")
        if images_per_prompt is not None and arr.shape[0] != images_per_prompt:
            raise InputError(
                f"prompt {prompt!r} has {arr.shape[0]} images; MEDVQA-GI 2025 uses {images_per_prompt} per prompt "
                "(pass images_per_prompt=None to accept other counts)"
            )
        gen[prompt] = arr
    shared = None if isinstance(real_features, Mapping) else _as_features(real_features, "real features")
    pairs = [tuple(pair) for pair in paraphrase_pairs]
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise InputError(f"a paraphrase pair needs two different prompts, got {pair!r}")
        missing = [p for p in pair if p not in gen]
        if missing:
            raise InputError(f"paraphrase pair {pair!r}: no generated features for {missing}")
    if script_quirk:
        pairs = pairs[: -(-len(pairs) // 2)]  # range(0, 2 * n_pairs // 2, 2) visits ceil(n_pairs / 2) pairs
    fd: Callable[[np.ndarray, np.ndarray], float] = _fd_sqrtm_plain if script_quirk else frechet_distance
    rows = []
    all_generated: list[np.ndarray] = []
    all_real: list[np.ndarray] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # N=10 < dim is the challenge's design, not the caller's mistake
        for prompt_a, prompt_b in pairs:
            a, b = gen[prompt_a], gen[prompt_b]
            _same_dim(a, b)
            if shared is not None:
                real = shared
            elif prompt_a in real_features:
                real = _as_features(real_features[prompt_a], f"real features of prompt {prompt_a!r}")
            else:
                raise InputError(f"no real features for prompt {prompt_a!r}")
            fd_a, fd_b = fd(a, real), fd(b, real)
            rows.append(
                {
                    "prompt_a": prompt_a,
                    "prompt_b": prompt_b,
                    "fd_a_real": fd_a,
                    "fd_b_real": fd_b,
                    "fd_a_b": fd(a, b),
                    "fidelity": 1000.0 / (1.0 + (fd_a + fd_b) / 2.0),
                    "agreement": float((_unit_rows(a) @ _unit_rows(b).T).mean()),
                    "diversity_a": float(pdist(_unit_rows(a)).mean()),
                    "diversity_b": float(pdist(_unit_rows(b)).mean()),
                    "n_real": real.shape[0],
                }
            )
            all_generated.extend([a, b])
            if shared is None:
                all_real.append(real)
        generated = np.concatenate(all_generated)
        reference = shared if shared is not None else np.concatenate(all_real)
        fbd = fd(generated, reference)
    table = pd.DataFrame(rows)
    return MedVQAGI2025Scores(
        fidelity=float(table["fidelity"].mean()),
        agreement=float(table["agreement"].mean()),
        diversity=float(np.mean(np.concatenate([table["diversity_a"], table["diversity_b"]]))),
        fbd=float(fbd),
        n_pairs=len(table),
        n_per_prompt=min(gen[p].shape[0] for pair in pairs for p in pair),
        script_quirk=script_quirk,
        per_pair=table,
    )


# ------------------------------------------------------------------------- sample size and bootstrap


def equalize_n(
    sets: Mapping[str, Any], seed: int, on_unequal: Literal["subsample", "refuse"] = "subsample"
) -> dict[str, np.ndarray]:
    """Bring feature sets to the same N so models are compared at equal N.

    ``subsample`` draws min-N rows without replacement from each larger set (seeded); ``refuse`` raises.
    """
    if on_unequal not in ("subsample", "refuse"):
        raise InputError(f"on_unequal must be 'subsample' or 'refuse', got {on_unequal!r}")
    arrays = {k: _as_features(v, f"features of {k!r}", 1) for k, v in sets.items()}
    if not arrays:
        raise InputError("no feature sets given")
    sizes = {k: a.shape[0] for k, a in arrays.items()}
    n = min(sizes.values())
    if len(set(sizes.values())) > 1 and on_unequal == "refuse":
        raise InputError(f"feature sets have unequal N {sizes}; compare models only at equal N")
    rng = np.random.default_rng(seed)
    return {
        k: a if a.shape[0] == n else a[np.sort(rng.choice(a.shape[0], n, replace=False))] for k, a in arrays.items()
    }


def feature_bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    feats_a: Any,
    feats_b: Any,
    n_boot: int = 100,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(a, b)`` over two feature sets, resampling the rows (images) of each.

    :func:`analysis.bootstrap.two_sample_bootstrap_ci` on validated feature arrays.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if not 0 < level < 1 or n_boot < 2:
        raise InputError(f"need 0 < level < 1 and n_boot >= 2, got {level}, {n_boot}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the N < dim warning was already raised for the point estimate
        return two_sample_bootstrap_ci(statistic, a, b, n_boot, level, seed)


def fd_metric(
    extractor: FeatureExtractor, feats_gen: Any, feats_real: Any, seed: int = 0, n_boot: int = 50
) -> MetricResult:
    """``FD_<extractor>`` with a percentile bootstrap CI (``n_boot=0`` skips it) and its stamp.

    Each bootstrap replicate is one more FD: about 1-5 s at 2048-d on one CPU core.
    """
    value = frechet_distance(feats_gen, feats_real)
    ci = feature_bootstrap_ci(frechet_distance, feats_gen, feats_real, n_boot, seed=seed) if n_boot else (None, None)
    stamp = MetricStamp.for_extractor(extractor, len(feats_gen), len(feats_real), seed)
    return MetricResult("FD", value, stamp, ci_low=ci[0], ci_high=ci[1])


def kid_metric(
    extractor: FeatureExtractor,
    feats_gen: Any,
    feats_real: Any,
    seed: int = 0,
    n_boot: int = 50,
    n_subsets: int = 100,
    subset_size: int = 1000,
) -> MetricResult:
    """``KID_<extractor>`` (mean and std over subsets) with a percentile bootstrap CI and its stamp.

    Each bootstrap replicate recomputes KID on resampled sets with ``n_subsets // 10`` subsets.
    """
    result = kid(feats_gen, feats_real, n_subsets, subset_size, seed=seed)

    def stat(a: np.ndarray, b: np.ndarray) -> float:
        return kid(a, b, max(1, n_subsets // 10), result.subset_size, seed=seed).mean

    ci = feature_bootstrap_ci(stat, feats_gen, feats_real, n_boot, seed=seed) if n_boot else (None, None)
    stamp = MetricStamp.for_extractor(extractor, len(feats_gen), len(feats_real), seed)
    extra = {"subset_size": result.subset_size, "n_subsets": result.n_subsets}
    return MetricResult("KID", result.mean, stamp, ci_low=ci[0], ci_high=ci[1], std=result.std, extra=extra)


def cmmd_metric(
    extractor: FeatureExtractor,
    emb_gen: Any,
    emb_real: Any,
    seed: int = 0,
    n_boot: int = 200,
    estimator: CMMDEstimator = "unbiased",
) -> MetricResult:
    """``CMMD_<extractor>`` (meant for CLIP-style unit-norm embeddings) with N, a bootstrap CI and its stamp."""
    value = cmmd(emb_gen, emb_real, estimator=estimator)
    ci = cmmd_bootstrap_ci(emb_gen, emb_real, n_boot, seed=seed, estimator=estimator) if n_boot else (None, None)
    stamp = MetricStamp.for_extractor(extractor, len(emb_gen), len(emb_real), seed)
    return MetricResult("CMMD", value, stamp, ci_low=ci[0], ci_high=ci[1], extra={"estimator": estimator})


def compare_models(
    extractor: FeatureExtractor,
    feats_real: Any,
    feats_by_model: Mapping[str, Any],
    seed: int = 0,
    on_unequal: Literal["subsample", "refuse"] = "subsample",
    n_boot: int = 50,
    metrics: Iterable[Literal["FD", "KID", "CMMD"]] = ("FD", "KID"),
) -> pd.DataFrame:
    """FD / KID / CMMD of each model against the real set, all models at the same N (see :func:`equalize_n`).

    Returns one row per (model, metric) with value, CI, N and the stamp columns.
    """
    equal = equalize_n(feats_by_model, seed, on_unequal)
    rows = []
    for model, feats in equal.items():
        for metric in metrics:
            if metric == "FD":
                result = fd_metric(extractor, feats, feats_real, seed, n_boot)
            elif metric == "KID":
                result = kid_metric(extractor, feats, feats_real, seed, n_boot)
            elif metric == "CMMD":
                result = cmmd_metric(extractor, feats, feats_real, seed, max(n_boot, 2) if n_boot else 0)
            else:
                raise InputError(f"unknown metric {metric!r}; choose FD, KID or CMMD")
            rows.append({"model": model, **result.to_row()})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------- human vs automated


HUMAN_SCORES = {"realism": "realism_generated", "accuracy": "accuracy_generated"}
"""Expert scores compared with the automated metrics: question label -> ratings-table column."""


@dataclass(frozen=True)
class HumanMetricComparison:
    """Expert scores against automated metrics: correlations with bootstrap CIs and a ranking table.

    ``per_case``: per-image metrics against the mean expert score of each generated image, per model and
    pooled (Spearman and Kendall tau-b, percentile CIs from resampling cases). ``per_model``: model-level
    metrics against each model's mean expert score across models (CIs resample cases, so they carry the
    experts' uncertainty only; NA below 3 models). ``ranking``: the order of the models by the experts and
    by each metric, and whether they agree. ``scatter``: the points behind every correlation.
    """

    per_case: pd.DataFrame
    per_model: pd.DataFrame
    ranking: pd.DataFrame
    scatter: pd.DataFrame
    n_boot: int
    seed: int
    level: float


def _rank_correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman rho and Kendall tau-b, NaN when undefined (fewer than 3 points or a constant).

    Spearman is Pearson's r of average ranks; tau-b is ``sum sign(dx) sign(dy) / sqrt(n_x n_y)`` over pairs,
    where ``n_x``, ``n_y`` count the pairs untied in x, y (the definitions ``scipy.stats`` implements; the
    tests check them against it). Written in numpy because the case bootstrap calls it thousands of times.
    """
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    rx, ry = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    rho = float(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)))
    if n > 2000:  # the pairwise form needs n^2 memory
        return rho, float(scipy.stats.kendalltau(x, y).statistic)
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    tau = float((sx * sy).sum() / np.sqrt(np.abs(sx).sum() * np.abs(sy).sum()))
    return rho, tau


def _case_bootstrap(
    cases: np.ndarray, stat: Callable[[np.ndarray], tuple[float, float]], n_boot: int, level: float, seed: int
) -> list[tuple[float, float]]:
    """Percentile CIs of both values ``stat(rows)`` returns, resampling whole cases with replacement.

    ``cases`` labels each row; a resample takes every row of each drawn case. Resamples where a value is
    undefined (a constant) are dropped; with fewer than half of them left the CI is NaN.
    """
    codes, uniques = pd.factorize(cases)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    members = [order[starts[i] : starts[i + 1]] for i in range(len(uniques))]
    rng = np.random.default_rng(seed)
    values = np.empty((n_boot, 2))
    for b in range(n_boot):
        values[b] = stat(np.concatenate([members[i] for i in rng.integers(0, len(uniques), len(uniques))]))
    alpha = (1.0 - level) / 2.0
    out = []
    for column in values.T:
        finite = column[np.isfinite(column)]
        ok = len(finite) >= max(10, n_boot // 2)
        out.append(
            (float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha)))
            if ok
            else (float("nan"), float("nan"))
        )
    return out


_CORR_COLUMNS = [
    "spearman_rho",
    "spearman_ci_low",
    "spearman_ci_high",
    "kendall_tau",
    "kendall_ci_low",
    "kendall_ci_high",
]


def _correlation_row(
    cases: np.ndarray,
    stat: Callable[[np.ndarray], tuple[float, float]],
    bootstrap: bool,
    n_boot: int,
    level: float,
    seed: int,
) -> dict[str, float]:
    rho, tau = stat(np.arange(len(cases)))
    nan = (float("nan"), float("nan"))
    (s_low, s_high), (k_low, k_high) = _case_bootstrap(cases, stat, n_boot, level, seed) if bootstrap else (nan, nan)
    return dict(zip(_CORR_COLUMNS, (rho, s_low, s_high, tau, k_low, k_high), strict=True))


def _per_case_rows(
    per_image: pd.DataFrame, image_metrics: pd.DataFrame, n_boot: int, level: float, seed: int
) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    metrics = image_metrics[["generated_image", "metric", "value"]].astype({"generated_image": str})
    joined = per_image.merge(metrics, on="generated_image", how="inner")
    long = joined.melt(
        id_vars=["generated_image", "model", "case", "metric", "value"],
        value_vars=list(HUMAN_SCORES),
        var_name="question",
        value_name="human",
    )
    rows, scatter = [], []
    for (metric, question), part in long.groupby(["metric", "question"], sort=True):
        part = part.dropna(subset=["value", "human"])
        scatter.append(part.assign(level="image"))
        for model, points in [("all models", part), *part.groupby("model", sort=True)]:
            x, y = points["value"].to_numpy(float), points["human"].to_numpy(float)

            def stat(take: np.ndarray, x: np.ndarray = x, y: np.ndarray = y) -> tuple[float, float]:
                return _rank_correlations(x[take], y[take])

            row = {"metric": metric, "question": question, "model": model, "n_images": len(points)}
            row["n_cases"] = points["case"].nunique()
            cases = points["case"].to_numpy()
            rows.append(row | _correlation_row(cases, stat, len(points) >= 3, n_boot, level, seed))
    return rows, scatter


def _per_model_rows(
    per_image: pd.DataFrame, model_metrics: pd.DataFrame, n_boot: int, level: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[pd.DataFrame]]:
    corr_rows, rank_rows, scatter = [], [], []
    metric_values = model_metrics.astype({"model": str})
    for question in HUMAN_SCORES:
        points_all = per_image.dropna(subset=[question])
        human_mean = points_all.groupby("model")[question].mean()
        for metric, part in metric_values.groupby("metric", sort=True):
            values = part.set_index("model")["value"].astype(float)
            lower_better = bool(part["lower_is_better"].iloc[0])
            models = sorted(set(values.index) & set(human_mean.index))
            if not models:
                continue
            h, m = human_mean.loc[models].to_numpy(float), values.loc[models].to_numpy(float)
            scatter.append(
                pd.DataFrame(
                    {"metric": metric, "question": question, "model": models, "value": m, "human": h, "level": "model"}
                )
            )
            # Experts rank higher scores better; the metric is turned so that higher is better too.
            m_good = -m if lower_better else m
            points = points_all[points_all["model"].isin(models)]
            codes = pd.Categorical(points["model"], categories=models).codes
            scores = points[question].to_numpy(float)

            def stat(
                take: np.ndarray, codes: np.ndarray = codes, scores: np.ndarray = scores, m_good: np.ndarray = m_good
            ) -> tuple[float, float]:
                counts = np.bincount(codes[take], minlength=len(m_good))
                sums = np.bincount(codes[take], weights=scores[take], minlength=len(m_good))
                with np.errstate(invalid="ignore", divide="ignore"):
                    means = sums / counts
                return _rank_correlations(means, m_good) if np.isfinite(means).all() else (np.nan, np.nan)

            row = {"metric": metric, "question": question, "n_models": len(models)}
            row |= _correlation_row(points["case"].to_numpy(), stat, len(models) >= 3, n_boot, level, seed)
            corr_rows.append(row | {"direction": "lower is better" if lower_better else "higher is better"})
            human_order = [models[i] for i in np.argsort(-h, kind="stable")]
            metric_order = [models[i] for i in np.argsort(-m_good, kind="stable")]
            rank_rows.append(
                {
                    "metric": metric,
                    "question": question,
                    "n_models": len(models),
                    "expert_order": " > ".join(human_order),
                    "metric_order": " > ".join(metric_order),
                    "same_order": human_order == metric_order,
                    "kendall_tau_orders": float(scipy.stats.kendalltau(h, m_good).statistic)
                    if len(models) >= 2
                    else float("nan"),
                }
            )
    return corr_rows, rank_rows, scatter


def human_metric_comparison(
    ratings: pd.DataFrame,
    model_metrics: pd.DataFrame | None = None,
    image_metrics: pd.DataFrame | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> HumanMetricComparison:
    """Do the automated metrics agree with the experts? Correlations (per case, per model) and model rankings.

    Parameters
    ----------
    ratings : DataFrame
        The tidy ratings table; normal items, non-missing ``realism_generated`` / ``accuracy_generated``.
    model_metrics : DataFrame, optional
        One row per (model, metric): ``model, metric, value, lower_is_better`` (e.g. FD, KID, CMMD).
    image_metrics : DataFrame, optional
        One row per (generated image, metric): ``generated_image, metric, value, lower_is_better`` (e.g. the
        distance to the nearest real image, image-prompt alignment).
    n_boot, seed, level : int, int, float
        Case-bootstrap resamples, seed of ``numpy.random.default_rng``, CI level.
    """
    needed = {"item_kind", "case", "model", "generated_image", *HUMAN_SCORES.values()}
    missing = sorted(needed - set(ratings.columns))
    if missing:
        raise InputError(f"ratings table lacks column(s) {missing}; see docs/ratings-table.md")
    if n_boot < 2 or not 0 < level < 1:
        raise InputError(f"need n_boot >= 2 and 0 < level < 1, got {n_boot}, {level}")
    normal = ratings[ratings["item_kind"].astype(str) == "normal"]
    scores = {q: pd.to_numeric(normal[c].astype("Float64"), errors="coerce") for q, c in HUMAN_SCORES.items()}
    # One expert value per generated image, the mean over its ratings: raters are not independent units.
    per_image = (
        normal.assign(**scores)
        .groupby(["generated_image", "model", "case"], observed=True)[list(HUMAN_SCORES)]
        .mean()
        .reset_index()
        .astype({"generated_image": str, "model": str, "case": str})
    )
    case_rows: list[dict[str, Any]] = []
    model_rows: list[dict[str, Any]] = []
    rank_rows: list[dict[str, Any]] = []
    scatter: list[pd.DataFrame] = []
    if image_metrics is not None and not image_metrics.empty:
        case_rows, scatter = _per_case_rows(per_image, image_metrics, n_boot, level, seed)
    if model_metrics is not None and not model_metrics.empty:
        model_rows, rank_rows, more = _per_model_rows(per_image, model_metrics, n_boot, level, seed)
        scatter += more
    rank_columns = ["metric", "question", "n_models", "expert_order", "metric_order", "same_order"]
    return HumanMetricComparison(
        per_case=pd.DataFrame(
            case_rows, columns=["metric", "question", "model", "n_images", "n_cases", *_CORR_COLUMNS]
        ),
        per_model=pd.DataFrame(model_rows, columns=["metric", "question", "n_models", *_CORR_COLUMNS, "direction"]),
        ranking=pd.DataFrame(rank_rows, columns=[*rank_columns, "kendall_tau_orders"]),
        scatter=pd.concat(scatter, ignore_index=True) if scatter else pd.DataFrame(),
        n_boot=n_boot,
        seed=seed,
        level=level,
    )


def nearest_real_distance(feats_gen: Any, feats_real: Any) -> np.ndarray:
    """Per generated image: Euclidean distance of its features to the nearest real image's (lower = more real-like)."""
    gen, real = _as_features(feats_gen, "feats_gen", 1), _as_features(feats_real, "feats_real", 1)
    _same_dim(gen, real)
    d2 = np.einsum("ij,ij->i", gen, gen)[:, None] + np.einsum("ij,ij->i", real, real)[None, :] - 2 * gen @ real.T
    return np.sqrt(np.clip(d2, 0.0, None).min(axis=1))


# ------------------------------------------------------------------------------------------ reporting


def metrics_tables(results: Iterable[MetricResult]) -> dict[str, pd.DataFrame]:
    """One table per extractor (never mixing extractors), keyed ``metrics_<extractor>``."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        tables.setdefault(f"metrics_{result.stamp.extractor}", []).append(result.to_row())
    return {key: pd.DataFrame(rows) for key, rows in tables.items()}


def metrics_methods(results: Sequence[MetricResult]) -> list[str]:
    """Methods sentences written from the results' stamps: extractor, weights, preprocessing, N, seed, CI."""
    sentences = []
    for extractor, group in pd.DataFrame([r.to_row() | {"name": r.metric} for r in results]).groupby(
        "extractor", sort=False
    ):
        first = group.iloc[0]
        n_gen, n_real = sorted(set(group["n_a"])), sorted(set(group["n_b"].dropna().astype(int)))
        names = ", ".join(dict.fromkeys(group["name"]))
        ci = " with percentile bootstrap CIs (rows of each set resampled)" if group["ci_low"].notna().any() else ""
        estimator = group.get("estimator")
        cmmd_note = (
            f"; CMMD used the {estimator.dropna().iloc[0]} estimator"
            if estimator is not None and estimator.notna().any()
            else ""
        )
        sentences.append(
            f"Automated metrics ({names}) were computed on {extractor} features (backbone {first['backbone']}, weights "
            f"sha256 {str(first['weights_sha256'])[:12]}; {first['preprocess']}) with N = "
            f"{', '.join(map(str, n_gen))} generated and {', '.join(map(str, n_real))} real images per model, "
            f"models compared at equal N, seed {first['seed']}{ci}{cmmd_note}."
        )
    return sentences


def metrics_report_section(results: Iterable[MetricResult], title: str = "Automated image metrics") -> Any:
    """A :class:`analysis.report.ReportSection` with one table per extractor and methods from the stamps."""
    from analysis.report import ReportSection

    results = list(results)
    notes = [
        "Every metric is named with its feature extractor; values from different extractors are not comparable.",
        "N is reported beside every value; compare models only at equal N.",
    ]
    return ReportSection(title=title, tables=metrics_tables(results), notes=notes, methods=metrics_methods(results))
