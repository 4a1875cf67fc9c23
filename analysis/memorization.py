"""Memorization audit: does a generator reproduce its training images?

For every generated image of a model, its nearest training image is found in two stages:

(a) **retrieval** by cosine similarity of a descriptor (default ``pixels``: a weight-free, contrast-normalised
    grey thumbnail; or any extractor spec of ``python app.py report --extractor``), made robust to
    flips and small crops by test-time augmentation: each training image is indexed as 7 views (full frame,
    centred 90 % and 80 % crops, 85 % crops at the corners), each generated image is queried as itself and its
    horizontal and vertical mirror, always by the inner 80 % of each view; the best ``top_k`` distinct training
    images are kept (:func:`top_k_search`, blocked float32 matrix products with a running top-k), screened by a
    coarse pixel score, and the best ``verify_k`` get the full check;
(b) **pixel verification** of those candidates (:func:`pixel_match`): the zero-mean normalised
    cross-correlation (NCC) of the grey images after alignment, maximised over 4 flips, 5 small rotations,
    6 crop scales (100-75 %) and every shift (FFT template matching). NCC ignores brightness/contrast
    changes, JPEG noise and most colour jitter; the alignment search absorbs crops, flips and rotations.

A generated image is a **copy** when its pixel score reaches the copy threshold. The default threshold is
calibrated on a fixture made from the real samples (:func:`calibration_fixture`, :func:`calibrate`), never
guessed; ``benchmarks/memorization_calibration.py`` reproduces it and prints the ROC.

The per-model summary puts the nearest-neighbour similarity of generated images next to the same
distribution for held-out real images against the training set (the natural baseline: real images of
new patients are not copies; a generator closer to its training set than they are is suspicious).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage
from PIL import Image, ImageOps

from analysis.features.base import FeatureExtractor, ImageInput, Preprocess, as_uint8_batch, to_rgb

logger = logging.getLogger(__name__)

DEFAULT_COPY_THRESHOLD = 0.81
"""Pixel score (aligned NCC) at or above which a generated image is a copy of a training image.

Calibrated by :func:`calibrate` on ``calibration_fixture(../shared/data, seed=0)`` (GI + radiology samples):
the midpoint of the widest score gap among thresholds that maximise Youden's J (TPR - FPR), rounded to
two decimals; see ``benchmarks/memorization_calibration.py``. On that fixture (38 training images, 304
transformed copies, 126 distinct images of the same findings) the AUC is 1.000 (descriptor cosine alone:
0.954); every copy scores >= 0.868 (lowest: a 4 degree rotation), every distinct image <= 0.747 (two
oesophagitis images of different examinations that share the endoscope's octagonal frame and text overlay),
so J = 1 on (0.747, 0.868) and the midpoint 0.808 rounds to 0.81."""

Progress = Callable[[str, int, int], object]
"""Called as ``progress(stage, done, total)``."""

ImageLike = Image.Image | str | PathLike[str]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# ------------------------------------------------------------------------------------------ descriptor


def _open(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    with Image.open(Path(image)) as im:
        im.load()
        return to_rgb(im)


def grey_square(image: Image.Image, size: int) -> np.ndarray:
    """The image as grey float32 ``size x size`` (aspect ratio squashed, as generators output squares)."""
    grey = to_rgb(image).convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32)


def center_crop(image: Image.Image, fraction: float) -> Image.Image:
    """The centred crop keeping ``fraction`` of each side."""
    if fraction >= 1.0:
        return image
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


QUERY_INNER = 0.8
"""Retrieval compares inner regions: borders (frames, rotation corners, crop offsets) matter least there."""
INDEX_CROPS = ((1.0, 0.5, 0.5), (0.9, 0.5, 0.5), (0.8, 0.5, 0.5),
               (0.85, 0.0, 0.0), (0.85, 1.0, 0.0), (0.85, 0.0, 1.0), (0.85, 1.0, 1.0))  # fmt: skip
"""Crops of a training image a generated image is assumed to show: (side fraction, x anchor, y anchor),
anchors 0 = left/top edge, 0.5 = centred, 1 = right/bottom edge; one index view each."""


def _crop_at(image: Image.Image, fraction: float, ax: float, ay: float) -> Image.Image:
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = round((w - cw) * ax), round((h - ch) * ay)
    return image.crop((left, top, left + cw, top + ch))


def index_views(image: Image.Image) -> list[Image.Image]:
    """Training-side test-time augmentation: the inner region of the full frame, of centred 90 % / 80 % crops
    and of 85 % crops at the four corners."""
    return [center_crop(_crop_at(image, f, ax, ay), QUERY_INNER) for f, ax, ay in INDEX_CROPS]


def query_views(image: Image.Image) -> list[Image.Image]:
    """Query-side test-time augmentation: the inner region of the image and of its two mirrors."""
    inner = center_crop(image, QUERY_INNER)
    return [inner, ImageOps.mirror(inner), ImageOps.flip(inner)]


class PixelDescriptor:
    """Weight-free retrieval descriptor: a grey ``side x side`` thumbnail, zero-mean, unit norm.

    The cosine of two descriptors is the Pearson correlation of the thumbnails, so brightness and contrast
    shifts (colour jitter) do not change it; the low resolution tolerates JPEG noise, small shifts and
    rotations. Flips and crops are handled by :func:`query_views` / :func:`index_views`. (A flip-invariant
    variant, sorting each pixel with its mirror images, would save the flip views but missed 3 of 76 crops
    on the calibration fixture, so it is not used.)
    """

    def __init__(self, side: int = 24) -> None:
        self.side = side
        self.dim = side * side
        self.name = f"pixels{side}"
        self.backbone = "grey thumbnail (no weights)"
        self.weights_sha256 = hashlib.sha256(f"pixels-v1|{side}".encode()).hexdigest()
        self.preprocess = Preprocess(
            size=side, resize="resize", interpolation="bilinear", antialias=True, mean=(0.0,) * 3, std=(1.0,) * 3
        )

    def __call__(self, images: ImageInput) -> np.ndarray:
        """Descriptors (N, side*side), float64, unit norm."""
        rows = [grey_square(Image.fromarray(a), self.side).ravel().astype(np.float64) for a in as_uint8_batch(images)]
        feats = np.stack(rows) if rows else np.zeros((0, self.dim))
        return _unit(feats - feats.mean(axis=1, keepdims=True))


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 1e-12, norm, 1.0)


def make_descriptor(spec: str = "pixels") -> FeatureExtractor:
    """``pixels`` / ``pixelsN`` (weight-free, offline) or any :func:`analysis.features.load_extractor` spec."""
    if spec == "pixels":
        return PixelDescriptor()
    if spec.startswith("pixels") and spec[6:].isdigit():
        return PixelDescriptor(int(spec[6:]))
    from analysis.features import load_extractor

    return load_extractor(spec)


def embed_views(
    extractor: FeatureExtractor,
    images: Sequence[ImageLike],
    views: Callable[[Image.Image], list[Image.Image]],
    *,
    batch: int = 64,
    progress: Progress = _no_progress,
    stage: str = "embed",
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm float32 features of every view of every image, and the image index of each row."""
    feats: list[np.ndarray] = []
    owners: list[int] = []
    for start in range(0, len(images), batch):
        chunk: list[Image.Image] = []
        for i in range(start, min(start + batch, len(images))):
            vs = views(_open(images[i]))
            chunk.extend(vs)
            owners.extend([i] * len(vs))
        feats.append(_unit(np.asarray(extractor(chunk), dtype=np.float64)).astype(np.float32))
        progress(stage, min(start + batch, len(images)), len(images))
    if not feats:
        return np.zeros((0, int(extractor.dim)), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats), np.asarray(owners, dtype=np.int64)


# ------------------------------------------------------------------------------------------ search


def top_k_search(
    queries: np.ndarray,
    index: np.ndarray,
    k: int,
    *,
    block_rows: int = 16384,
    progress: Progress = _no_progress,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of each query row over the index rows (blocked float32, running top-k).

    Returns ``(similarities, indices)`` of shape (Q, k), best first. Memory is O(Q * block_rows).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = index.shape[0]
    if q.ndim != 2 or index.ndim != 2 or q.shape[1] != index.shape[1]:
        raise ValueError(f"queries {q.shape} and index {index.shape} must be 2-D with the same width")
    k = min(k, n)
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((q.shape[0], 0), np.int64)
    for start in range(0, n, block_rows):
        block = np.asarray(index[start : start + block_rows], dtype=np.float32)
        sims = q @ block.T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, keep, axis=1)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
        progress("search", min(start + block_rows, n), n)
    return best_s, best_i


def nearest_by_owner(
    q_feats: np.ndarray,
    q_owner: np.ndarray,
    i_feats: np.ndarray,
    i_owner: np.ndarray,
    n_queries: int,
    k: int,
    *,
    exclude_same: Sequence[int] | None = None,
    block_rows: int = 16384,
    progress: Progress = _no_progress,
) -> list[list[tuple[int, float]]]:
    """For each query image, its ``k`` most similar distinct index images (max over all view pairs).

    ``exclude_same[j]`` (optional) is an index image never returned for query ``j`` (leave-one-out).
    """
    views = max(1, int(np.bincount(i_owner).max()) if len(i_owner) else 1)
    extra = 1 if exclude_same is not None else 0
    sims, idx = top_k_search(q_feats, i_feats, (k + extra) * views, block_rows=block_rows, progress=progress)
    best: list[dict[int, float]] = [{} for _ in range(n_queries)]
    for row in range(sims.shape[0]):
        j = int(q_owner[row])
        for s, i in zip(sims[row], idx[row], strict=True):
            owner = int(i_owner[i])
            if exclude_same is not None and owner == exclude_same[j]:
                continue
            if s > best[j].get(owner, -np.inf):
                best[j][owner] = float(s)
    return [sorted(b.items(), key=lambda t: -t[1])[:k] for b in best]


# ------------------------------------------------------------------------------------------ pixel check


@dataclass(frozen=True)
class AlignConfig:
    """The alignment search of the pixel check."""

    work_size: int = 64
    inner: float = 0.8
    """Fraction of the (aligned) generated image used as template: leaves room for shifts and rotation."""
    scales: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
    """Crop fractions of the training image searched."""
    angles: tuple[float, ...] = (-6.0, -3.0, 0.0, 3.0, 6.0)
    flips: tuple[str, ...] = ("none", "h", "v", "hv")
    refine: bool = True
    """Refine the best coarse alignment on a finer grid (scale +-2.5 %, angle +-1.5 degrees)."""
    highpass_sigma: float = 3.0
    """Gaussian sigma (work-size pixels) of the blur subtracted before the NCC (0: raw grey): compares
    structure, not the layout every image of a modality shares (frames, overlays, body outline)."""


@dataclass(frozen=True)
class PixelMatch:
    """Best alignment of a generated image onto a training image and its NCC."""

    score: float
    flip: str
    angle: float
    scale: float
    shift: tuple[int, int]


def _flip(arr: np.ndarray, flip: str) -> np.ndarray:
    out = arr
    if "h" in flip:
        out = out[:, ::-1]
    if "v" in flip:
        out = out[::-1, :]
    return np.ascontiguousarray(out)


class QueryTemplates:
    """The zero-mean, unit-norm templates of one generated image (every flip and angle)."""

    def __init__(self, image: Image.Image, cfg: AlignConfig) -> None:
        self.cfg = cfg
        s = cfg.work_size
        big = to_rgb(image).convert("L").resize((s, s), Image.Resampling.BILINEAR)
        self.m = max(8, round(s * cfg.inner))
        lo = (s - self.m) // 2
        temps, keys = [], []
        for angle in cfg.angles:
            rot = big.rotate(angle, resample=Image.Resampling.BILINEAR) if angle else big
            arr = _highpass(np.asarray(rot, dtype=np.float64), cfg.highpass_sigma)[lo : lo + self.m, lo : lo + self.m]
            for flip in cfg.flips:
                t = _flip(arr, flip)
                t = t - t.mean()
                norm = np.linalg.norm(t)
                temps.append(t / norm if norm > 1e-9 else t)
                keys.append((flip, angle))
        self.image = image
        self.templates = np.stack(temps).astype(np.float32)
        self.keys = keys
        self._fft: dict[int, np.ndarray] = {}

    def fft(self, size: int) -> np.ndarray:
        """Conjugate spectra of the templates zero-padded to ``size x size``."""
        if size not in self._fft:
            self._fft[size] = np.conj(scipy.fft.rfft2(self.templates, s=(size, size)))
        return self._fft[size]


def _highpass(arr: np.ndarray, sigma: float) -> np.ndarray:
    return arr - scipy.ndimage.gaussian_filter(arr, sigma, mode="reflect") if sigma > 0 else arr


def _window_sums(a: np.ndarray, m: int) -> np.ndarray:
    c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return c[m:, m:] - c[:-m, m:] - c[m:, :-m] + c[:-m, :-m]


def pixel_match(query: Image.Image | QueryTemplates, train: Image.Image, cfg: AlignConfig | None = None) -> PixelMatch:
    """Aligned NCC of a generated image against a training image (max over flips, angles, crops, shifts)."""
    templates = query if isinstance(query, QueryTemplates) else QueryTemplates(query, cfg or AlignConfig())
    best = _match(templates, train)
    if not templates.cfg.refine:
        return best
    c = templates.cfg
    fine = AlignConfig(
        work_size=c.work_size, inner=c.inner, highpass_sigma=c.highpass_sigma, refine=False, flips=(best.flip,),
        angles=tuple(best.angle + d for d in (-1.5, 0.0, 1.5)),
        scales=tuple(best.scale * f for f in (0.975, 0.9875, 1.0, 1.0125, 1.025)),
    )  # fmt: skip
    refined = _match(QueryTemplates(templates.image, fine), train)
    return refined if refined.score > best.score else best


def _match(templates: QueryTemplates, train: Image.Image) -> PixelMatch:
    cfg = templates.cfg
    grey = to_rgb(train).convert("L")
    m = templates.m
    best = PixelMatch(-1.0, "none", 0.0, 1.0, (0, 0))
    for scale in cfg.scales:
        size = max(m + 1, round(cfg.work_size / scale))
        t = _highpass(np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32),
                      cfg.highpass_sigma).astype(np.float64)  # fmt: skip
        fast = scipy.fft.next_fast_len(size, real=True)
        spec = scipy.fft.rfft2(t.astype(np.float32), s=(fast, fast))[None] * templates.fft(fast)
        valid = scipy.fft.irfft2(spec, s=(fast, fast))[:, : size - m + 1, : size - m + 1]
        sums = _window_sums(t, m)
        sq = _window_sums(t * t, m)
        var = np.maximum(sq - sums * sums / (m * m), 0.0)
        denom = np.sqrt(var)
        ncc = np.where(denom > 1e-6, valid / np.where(denom > 1e-6, denom, 1.0), 0.0)
        flat = int(np.argmax(ncc))
        ti, yy, xx = np.unravel_index(flat, ncc.shape)
        score = float(ncc[ti, yy, xx])
        if score > best.score:
            flip, angle = templates.keys[ti]
            best = PixelMatch(score, flip, float(angle), float(scale), (int(yy), int(xx)))
    return best


# ------------------------------------------------------------------------------------------ audit


@dataclass(frozen=True)
class AuditConfig:
    """Settings of one memorization audit."""

    threshold: float = DEFAULT_COPY_THRESHOLD
    top_k: int = 8
    """Training candidates per generated image from the descriptor search, screened in pixel space."""
    verify_k: int = 2
    """Candidates with the best coarse pixel score that get the full alignment search."""
    align: AlignConfig = field(default_factory=AlignConfig)
    coarse: AlignConfig = field(
        default_factory=lambda: AlignConfig(work_size=32, angles=(-4.5, 0.0, 4.5), refine=False, highpass_sigma=1.5)
    )
    """The cheap screen (32 px, 3 angles, no refinement) that ranks the ``top_k`` candidates."""
    block_rows: int = 16384
    pairs_saved: int = 12
    """Top matches written side by side as PNG."""


@dataclass(frozen=True)
class ImageMatch:
    """A query image and its nearest training image."""

    query: int
    train: int
    """Index into the training images (-1: none)."""
    feature_similarity: float
    """Best descriptor cosine over all training images (stage a)."""
    pixel_score: float
    """Aligned NCC with ``train`` (stage b): the copy score."""
    is_copy: bool
    alignment: dict[str, Any]


def audit_images(
    queries: Sequence[ImageLike],
    train: Sequence[ImageLike],
    extractor: FeatureExtractor,
    cfg: AuditConfig | None = None,
    *,
    train_feats: tuple[np.ndarray, np.ndarray] | None = None,
    exclude_same: Sequence[int] | None = None,
    progress: Progress = _no_progress,
    stage: str = "generated",
) -> list[ImageMatch]:
    """Nearest training image of every query image, by descriptor retrieval then pixel verification."""
    cfg = cfg or AuditConfig()
    if not train:
        raise ValueError("no training images to compare with")
    i_feats, i_owner = train_feats or embed_views(extractor, train, index_views, progress=progress, stage="index")
    q_feats, q_owner = embed_views(extractor, queries, query_views, progress=progress, stage=f"embed {stage}")
    cands = nearest_by_owner(q_feats, q_owner, i_feats, i_owner, len(queries), cfg.top_k,
                             exclude_same=exclude_same, block_rows=cfg.block_rows, progress=progress)  # fmt: skip
    cache: dict[int, Image.Image] = {}
    out = []
    side = round(cfg.align.work_size / min(cfg.align.scales)) * 2
    for j, cand in enumerate(cands):
        query = _open(queries[j])
        if len(cache) > 4096:
            cache.clear()  # bounded memory on large training sets
        for i, _sim in cand:
            if i not in cache:
                cache[i] = _open(train[i]).convert("L").resize((side, side), Image.Resampling.BILINEAR)
        screen = QueryTemplates(query, cfg.coarse)
        ranked = sorted((i for i, _ in cand), key=lambda i: -pixel_match(screen, cache[i]).score)
        templates = QueryTemplates(query, cfg.align)
        best: tuple[PixelMatch, int] | None = None
        for i in ranked[: cfg.verify_k]:
            match = pixel_match(templates, cache[i])
            if best is None or match.score > best[0].score:
                best = (match, i)
        feat_sim = cand[0][1] if cand else float("nan")
        if best is None:
            out.append(ImageMatch(j, -1, feat_sim, float("nan"), False, {}))
        else:
            pm, i = best
            out.append(ImageMatch(j, i, feat_sim, pm.score, pm.score >= cfg.threshold,
                                  {"flip": pm.flip, "angle": pm.angle, "scale": pm.scale}))  # fmt: skip
        progress(f"verify {stage}", j + 1, len(cands))
    return out


def side_by_side(generated: ImageLike, training: ImageLike, height: int = 256) -> Image.Image:
    """Generated (left) and training (right) image at one height, 8-px gap, as RGB."""
    a, b = _open(generated), _open(training)
    a = a.resize((max(1, round(a.width * height / a.height)), height), Image.Resampling.BICUBIC)
    b = b.resize((max(1, round(b.width * height / b.height)), height), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (a.width + b.width + 8, height), (255, 255, 255))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + 8, 0))
    return canvas


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"n": 0}
    q = np.quantile(arr, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": int(arr.size), "mean": float(arr.mean()), "p05": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]), "max": float(arr.max())}  # fmt: skip


@dataclass
class AuditSummary:
    """Per-model summary of a memorization audit."""

    model: str
    dataset: str
    split: str | None
    extractor: str
    threshold: float
    n_generated: int
    n_copies: int
    share_copies: float
    generated_pixel: dict[str, float]
    generated_feature: dict[str, float]
    baseline: str
    """Which real images form the baseline: ``held-out`` (other splits) or ``leave-one-out`` (training)."""
    heldout_pixel: dict[str, float]
    heldout_feature: dict[str, float]
    share_above_heldout_p95: float
    """Share of generated images whose pixel score exceeds the 95th percentile of the held-out images."""
    top_copied: list[dict[str, Any]]
    pairs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        h = self.heldout_pixel.get("median", float("nan"))
        g = self.generated_pixel.get("median", float("nan"))
        return (
            f"model {self.model!r} vs {self.dataset!r} ({self.split or 'all'}): {self.n_copies}/{self.n_generated} "
            f"generated images are copies (pixel score >= {self.threshold:.2f}, {100 * self.share_copies:.1f} %); "
            f"median nearest-neighbour pixel score {g:.3f} generated vs {h:.3f} {self.baseline} real"
        )


def summarise(
    model: str,
    dataset: str,
    split: str | None,
    extractor_name: str,
    threshold: float,
    generated: Sequence[ImageMatch],
    heldout: Sequence[ImageMatch],
    baseline: str,
    train_keys: Sequence[str],
    top_n: int = 10,
) -> AuditSummary:
    """The per-model summary from the matches of generated and baseline images (pure)."""
    copies = [m for m in generated if m.is_copy]
    held_pixel = [m.pixel_score for m in heldout]
    p95 = float(np.quantile(held_pixel, 0.95)) if held_pixel else float("nan")
    above = sum(1 for m in generated if np.isfinite(p95) and m.pixel_score > p95)
    counts = Counter(m.train for m in copies)
    top = [{"train_key": train_keys[i], "copies": n} for i, n in counts.most_common(top_n)]
    n = len(generated)
    return AuditSummary(
        model=model, dataset=dataset, split=split, extractor=extractor_name, threshold=threshold, n_generated=n,
        n_copies=len(copies), share_copies=len(copies) / n if n else 0.0,
        generated_pixel=_quantiles([m.pixel_score for m in generated]),
        generated_feature=_quantiles([m.feature_similarity for m in generated]), baseline=baseline,
        heldout_pixel=_quantiles(held_pixel), heldout_feature=_quantiles([m.feature_similarity for m in heldout]),
        share_above_heldout_p95=above / n if n and held_pixel else float("nan"), top_copied=top,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class FixtureImage:
    """One query image of the calibration fixture."""

    image: Image.Image
    label: int
    """1: a transformed copy of a training image; 0: a distinct image (same finding) not in training."""
    kind: str
    source: str


@dataclass(frozen=True)
class CalibrationFixture:
    """Training images and labelled queries made from the real samples."""

    train: list[Image.Image]
    train_keys: list[str]
    queries: list[FixtureImage]


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        im.load()
        return im.convert("RGB")


def _jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(image, dtype=np.float64)
    gain = rng.uniform(0.75, 1.25, size=3)  # per-channel gain: brightness and colour cast
    contrast = rng.uniform(0.75, 1.25)
    mean = arr.mean()
    out = (arr - mean) * contrast + mean
    out = out * gain + rng.uniform(-20, 20)
    grey = out.mean(axis=2, keepdims=True)
    sat = rng.uniform(0.6, 1.4)
    out = grey + (out - grey) * sat
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def _random_crop(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    frac = float(rng.uniform(0.8, 0.95))
    w, h = image.size
    cw, ch = round(w * frac), round(h * frac)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((left, top, left + cw, top + ch)), f"crop{frac:.2f}"


def _rotate(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    angle = float(rng.uniform(2.0, 6.0) * rng.choice([-1, 1]))
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False), f"rot{angle:+.1f}"


def copy_transforms(image: Image.Image, rng: np.random.Generator) -> list[tuple[Image.Image, str]]:
    """The transformed copies a copy detector must flag (each then squashed to a 256-px square)."""
    crop, crop_kind = _random_crop(image, rng)
    rot, rot_kind = _rotate(image, rng)
    quality = int(rng.integers(20, 60))
    out = [
        (image, "exact"),
        (crop, crop_kind),
        (ImageOps.mirror(image), "hflip"),
        (ImageOps.flip(image), "vflip"),
        (rot, rot_kind),
        (_jpeg(image, quality), f"jpeg{quality}"),
        (_jitter(image, rng), "jitter"),
        (_jitter(ImageOps.mirror(_random_crop(image, rng)[0]), rng), "crop+hflip+jitter"),
    ]
    return [(_jpeg(im.resize((256, 256), Image.Resampling.BICUBIC), 90), kind) for im, kind in out]


def _sample_groups(data_dir: Path) -> list[tuple[Path, str]]:
    """(image path, finding group) of the GI (by caption) and radiology (by modality) samples."""
    import csv

    rows: list[tuple[Path, str]] = []
    with (data_dir / "gi" / "captions.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append((data_dir / "gi" / r["file"], "gi:" + r["caption"].strip().lower()))
    with (data_dir / "radiology" / "provenance.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append((data_dir / "radiology" / r["file"], "radiology:" + r["modality_guess_from_caption"]))
    return rows


def calibration_fixture(data_dir: str | PathLike[str], seed: int = 0, max_side: int = 512) -> CalibrationFixture:
    """Training images and labelled queries from the real samples (in memory; nothing is written).

    Within every finding group of two or more images (GI: same caption; radiology: same modality), half the
    images (at least one) are training images and the rest are held out. Positives: 8 transformed copies of
    each training image (exact, 80-95 % crop, horizontal and vertical flip, 2-6 degree rotation, JPEG
    quality 20-60, colour jitter, crop + flip + jitter). Negatives: every held-out image of the same finding
    as itself, mirrored and colour-jittered. Every query is squashed to 256 x 256 like a generator's output.
    """
    data_dir = Path(data_dir)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Path]] = {}
    for path, group in _sample_groups(data_dir):
        groups.setdefault(group, []).append(path)
    train_paths: list[Path] = []
    held: list[Path] = []
    for group in sorted(groups):
        paths = sorted(groups[group])
        if len(paths) < 2:
            continue
        order = rng.permutation(len(paths))
        n_train = max(1, len(paths) // 2)
        train_paths += [paths[i] for i in order[:n_train]]
        held += [paths[i] for i in order[n_train:]]

    def load(p: Path) -> Image.Image:
        im = _open(p)
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return im

    train = [load(p) for p in train_paths]
    queries: list[FixtureImage] = []
    for p, im in zip(train_paths, train, strict=True):
        for made, kind in copy_transforms(im, rng):
            queries.append(FixtureImage(made, 1, kind, p.name))
    for p in held:
        im = load(p)
        variants = ((im, "distinct"), (ImageOps.mirror(im), "distinct+hflip"), (_jitter(im, rng), "distinct+jitter"))
        for made, kind in variants:
            queries.append(FixtureImage(made.resize((256, 256), Image.Resampling.BICUBIC), 0, kind, p.name))
    return CalibrationFixture(train=train, train_keys=[p.name for p in train_paths], queries=queries)


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) at every distinct score, flagging ``score >= t``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pos, neg = int(y.sum()), int((1 - y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("an ROC needs both positive and negative examples")
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    tpr = np.array([(s[y == 1] >= t).sum() / pos for t in thresholds])
    fpr = np.array([(s[y == 0] >= t).sum() / neg for t in thresholds])
    return fpr, tpr, thresholds


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC = P(score of a positive > score of a negative) + 0.5 P(tie) (Mann-Whitney)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    p, n = s[y == 1], s[y == 0]
    if p.size == 0 or n.size == 0:
        raise ValueError("an AUC needs both positive and negative examples")
    greater = (p[:, None] > n[None, :]).sum()
    ties = (p[:, None] == n[None, :]).sum()
    return float((greater + 0.5 * ties) / (p.size * n.size))


def youden_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Threshold maximising TPR - FPR; among equally good cut points, the middle of the widest score gap."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    values = np.unique(s)
    best_j, best_t, best_gap = -np.inf, float(values[0]), -1.0
    cuts = [(float(values[0]) - 1e-6, float(values[0]))] + [
        ((float(a) + float(b)) / 2.0, float(b)) for a, b in itertools.pairwise(values)
    ]
    for n, (mid, upper) in enumerate(cuts):
        flag = s >= upper
        j = flag[y == 1].mean() - flag[y == 0].mean()
        gap = float(values[n] - values[n - 1]) if n > 0 else 0.0
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and gap > best_gap):
            best_j, best_t, best_gap = j, mid, gap
    return best_t


@dataclass
class CalibrationResult:
    """The detector's ROC on the fixture and the threshold derived from it."""

    auc_pixel: float
    auc_feature: float
    threshold: float
    tpr: float
    fpr: float
    by_kind: dict[str, dict[str, float]]
    matches: list[ImageMatch]
    labels: list[int]
    roc: tuple[np.ndarray, np.ndarray, np.ndarray]


def calibrate(
    fixture: CalibrationFixture, extractor: FeatureExtractor | None = None, cfg: AuditConfig | None = None,
    progress: Progress = _no_progress,
) -> CalibrationResult:  # fmt: skip
    """Run the detector on the fixture: ROC/AUC of the pixel score and of the descriptor alone, the
    Youden threshold (:func:`youden_threshold`) and, per transform kind, the share flagged at it."""
    extractor = extractor or PixelDescriptor()
    cfg = cfg or AuditConfig()
    queries = [q.image for q in fixture.queries]
    labels = [q.label for q in fixture.queries]
    matches = audit_images(queries, fixture.train, extractor, cfg, progress=progress, stage="fixture")
    pixel = [m.pixel_score for m in matches]
    threshold = round(youden_threshold(pixel, labels), 2)
    flagged = np.asarray(pixel) >= threshold
    lab = np.asarray(labels)
    by_kind: dict[str, dict[str, float]] = {}
    families = [kind_family(q.kind) for q in fixture.queries]
    for kind in sorted(set(families)):
        sel = [n for n, f in enumerate(families) if f == kind]
        by_kind[kind] = {"n": len(sel), "flagged": float(flagged[sel].mean()),
                         "min_score": float(min(pixel[n] for n in sel)),
                         "max_score": float(max(pixel[n] for n in sel))}  # fmt: skip
    return CalibrationResult(
        auc_pixel=roc_auc(pixel, labels),
        auc_feature=roc_auc([m.feature_similarity for m in matches], labels),
        threshold=threshold,
        tpr=float(flagged[lab == 1].mean()),
        fpr=float(flagged[lab == 0].mean()),
        by_kind=by_kind,
        matches=matches,
        labels=labels,
        roc=roc_curve(pixel, labels),
    )


def kind_family(kind: str) -> str:
    """``crop0.87`` -> ``crop``, ``rot+3.2`` -> ``rot``, ``jpeg35`` -> ``jpeg``; other kinds unchanged."""
    match = re.fullmatch(r"(crop|rot|jpeg)[0-9.+-]+", kind)
    return match.group(1) if match else kind


# ------------------------------------------------------------------------------------------ service


def _dedupe(refs: Sequence[Any], skip: set[str] | None = None) -> list[Any]:
    seen = set(skip or ())
    out = []
    for ref in refs:
        if ref.sha256 not in seen:
            seen.add(ref.sha256)
            out.append(ref)
    return out


def run_audit(
    workspace: Any,
    model: str,
    dataset: str,
    *,
    split: str | None = None,
    extractor: str = "pixels",
    out_dir: str | PathLike[str] | None = None,
    cfg: AuditConfig | None = None,
    baseline_max: int = 500,
    seed: int = 0,
    progress: Progress = _no_progress,
) -> AuditSummary:
    """Audit a model's generated images against a training dataset; store the result through ``db/``.

    Training images are the dataset's cases (or those of ``split``), each distinct image once. The baseline
    is the held-out real images (cases of other splits, at most ``baseline_max``, seeded sample) or, with
    no other split, a leave-one-out pass over training images. With ``out_dir``, writes ``summary.json``,
    ``matches.csv`` and the top matches side by side under ``pairs/``.
    """
    import json

    import pandas as pd

    from db.memorization import MatchRow, audit_inputs, save_run

    cfg = cfg or AuditConfig()
    with workspace.database.session() as session:
        inputs = audit_inputs(session, model, dataset, split)
    store = workspace.store
    train = _dedupe(inputs.train)
    train_paths = [store.path(r.sha256) for r in train]
    gen_paths = [store.path(r.sha256) for r in inputs.generated]
    descriptor = make_descriptor(extractor)
    logger.info("memorization audit of %s against %s: %d generated, %d training images", model, dataset,
                len(gen_paths), len(train_paths))  # fmt: skip
    train_feats = embed_views(descriptor, train_paths, index_views, progress=progress, stage="index training")
    matches = audit_images(gen_paths, train_paths, descriptor, cfg, train_feats=train_feats, progress=progress)
    rng = np.random.default_rng(seed)
    heldout = _dedupe(inputs.heldout, {r.sha256 for r in train})
    if heldout:
        baseline = "held-out"
        pick = sorted(rng.choice(len(heldout), min(baseline_max, len(heldout)), replace=False))
        base_paths = [store.path(heldout[i].sha256) for i in pick]
        base = audit_images(base_paths, train_paths, descriptor, cfg, train_feats=train_feats, progress=progress,
                            stage="held-out")  # fmt: skip
    elif len(train) > 1:
        baseline = "leave-one-out training"
        pick = sorted(rng.choice(len(train), min(baseline_max, len(train)), replace=False))
        base = audit_images([train_paths[i] for i in pick], train_paths, descriptor, cfg, train_feats=train_feats,
                            exclude_same=[int(i) for i in pick], progress=progress, stage="baseline")  # fmt: skip
    else:
        baseline, base = "none", []
    summary = summarise(model, dataset, split, getattr(descriptor, "name", extractor), cfg.threshold, matches, base,
                        baseline, [r.key for r in train])  # fmt: skip
    if out_dir is not None:
        out = Path(out_dir)
        (out / "pairs").mkdir(parents=True, exist_ok=True)
        ranked = sorted((m for m in matches if m.train >= 0), key=lambda m: -m.pixel_score)[: cfg.pairs_saved]
        for rank, m in enumerate(ranked, 1):
            tag = "copy" if m.is_copy else "near"
            name = f"{rank:02d}_{tag}_{m.pixel_score:.3f}_gen{inputs.generated[m.query].id}.png"
            side_by_side(gen_paths[m.query], train_paths[m.train]).save(out / "pairs" / name)
            summary.pairs.append(f"pairs/{name}")
        pd.DataFrame([{"generated_image_id": inputs.generated[m.query].id, "case": inputs.generated[m.query].key,
                       "nearest_training_case": train[m.train].key if m.train >= 0 else "",
                       "feature_similarity": m.feature_similarity, "pixel_score": m.pixel_score, "is_copy": m.is_copy,
                       **m.alignment} for m in matches]).to_csv(out / "matches.csv", index=False)  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=float))
    rows = [MatchRow(inputs.generated[m.query].id, train[m.train].id if m.train >= 0 else None,
                     float(np.nan_to_num(m.feature_similarity)), float(np.nan_to_num(m.pixel_score)), m.is_copy,
                     m.alignment) for m in matches]  # fmt: skip
    with workspace.database.session() as session:
        save_run(session, inputs, split=split, extractor=summary.extractor, threshold=cfg.threshold,
                 summary=_json_safe(summary.to_dict()), matches=rows)  # fmt: skip
    return summary


def _json_safe(value: Any) -> Any:
    """NaN/inf become None so the summary is valid JSON in every database."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


# ------------------------------------------------------------------------------------------ report


def memorization_table(summaries: Sequence[dict[str, Any]]) -> Any:
    """One row per (model, training dataset) from stored audit summaries (pure)."""
    import pandas as pd

    def q(d: dict[str, Any] | None, key: str) -> float:
        value = (d or {}).get(key)
        return float(value) if value is not None else float("nan")

    rows = []
    for s in summaries:
        rows.append({
            "model": s["model"], "training_dataset": s["dataset"], "split": s.get("split") or "all",
            "n_generated": s["n_generated"], "copies": s["n_copies"], "share_copies": s["share_copies"],
            "copy_threshold": s["threshold"], "nn_pixel_median_generated": q(s.get("generated_pixel"), "median"),
            "nn_pixel_median_baseline": q(s.get("heldout_pixel"), "median"),
            "nn_pixel_p95_generated": q(s.get("generated_pixel"), "p95"),
            "nn_pixel_p95_baseline": q(s.get("heldout_pixel"), "p95"),
            "share_above_baseline_p95": s.get("share_above_heldout_p95"),
            "nn_feature_median_generated": q(s.get("generated_feature"), "median"),
            "nn_feature_median_baseline": q(s.get("heldout_feature"), "median"),
            "baseline": s.get("baseline", ""), "extractor": s.get("extractor", ""),
            "most_copied": "; ".join(f"{t['train_key']} ({t['copies']})" for t in s.get("top_copied", [])[:3]),
            "audited_at": s.get("created_at", ""),
        })  # fmt: skip
    return pd.DataFrame(rows)


MEMORIZATION_NOTES = [
    "Each generated image's nearest training image: descriptor retrieval (cosine, flip/crop test-time "
    "augmentation), then aligned normalised cross-correlation of the grey images (flips, small rotations, "
    "crops of 75-100 %, shifts) as the pixel score.",
    "A copy: pixel score at or above the copy threshold, calibrated on transformed copies vs distinct images of "
    "the same finding from the real samples (benchmarks/memorization_calibration.py).",
    "Baseline: the same nearest-neighbour scores of held-out real images (other splits) against the training set; "
    "a model whose images sit closer to its training set than new real images do is suspicious.",
]


def memorization_section(summaries: Sequence[dict[str, Any]]) -> list[Any]:
    """The report section (a one-element list, empty without audits) from stored summaries."""
    if not summaries:
        return []
    from analysis.report import ReportSection

    table = memorization_table(summaries)
    title = "Memorization audit (copies of training images)"
    return [ReportSection(title=title, tables={"memorization": table}, notes=list(MEMORIZATION_NOTES))]


def study_memorization_section(workspace: Any, study_name: str) -> list[Any]:
    """The memorization section for the models of a study (empty when none of them was audited)."""
    from db.memorization import latest_summaries
    from db.studies import get_study, study_config

    with workspace.database.session() as session:
        models = study_config(get_study(session, study_name)).models
        summaries = latest_summaries(session, models)
    return memorization_section(summaries)
