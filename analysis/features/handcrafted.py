"""A committed, weight-free feature extractor: the offline default of ``report --metrics``.

It needs no download, so a report with automated metrics can be written on an air-gapped hospital machine.
Its features are hand-crafted image statistics, not a learned embedding: a Fréchet distance on them is NOT
FID and is comparable only with other values from this extractor at the same version. Every metric computed
with it is named ``<METRIC>_handcrafted-v1`` and stamped with the sha256 of its definition below.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from analysis.features.base import ImageInput, Preprocess, preprocess_batch

HANDCRAFTED_VERSION = "handcrafted-v1"
HANDCRAFTED_DEFINITION = (
    f"{HANDCRAFTED_VERSION}: RGB resized (bilinear, antialias) to 128x128 in [0,1]; per channel a 16-bin "
    "intensity histogram (48); 8x8 average-pooled grey thumbnail (64); 16-bin histogram of the Sobel gradient "
    "magnitude of grey (16); per channel mean, std, skewness (9); grey-level co-occurrence-like horizontal and "
    "vertical neighbour differences, mean absolute and std (4); HSV-free colourfulness (Hasler-Suesstrunk) (1). "
    "142 features, float64."
)
HANDCRAFTED_PREPROCESS = Preprocess(
    size=128, resize="resize", interpolation="bilinear", antialias=True, mean=(0.0,) * 3, std=(1.0,) * 3
)
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _histograms(x: torch.Tensor, bins: int, low: float, high: float) -> torch.Tensor:
    """Normalised histograms of each row of ``x`` (N, P) over [low, high]."""
    idx = ((x - low) / (high - low) * bins).floor().clamp(0, bins - 1).long()
    counts = torch.zeros(x.shape[0], bins, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts / x.shape[1]


class HandcraftedExtractor:
    """142 deterministic image statistics (intensity, texture, layout, colour); no learned weights."""

    name = HANDCRAFTED_VERSION
    dim = 142
    preprocess = HANDCRAFTED_PREPROCESS
    weights_sha256 = hashlib.sha256(HANDCRAFTED_DEFINITION.encode()).hexdigest()
    backbone = "hand-crafted statistics (committed, offline; not FID)"

    def __call__(self, images: ImageInput) -> np.ndarray:
        """Features (N, 142) in float64."""
        x = preprocess_batch(images, self.preprocess).double()  # (N, 3, 128, 128) in [0, 1]
        n = x.shape[0]
        flat = x.flatten(2)  # (N, 3, P)
        colour_hist = torch.cat([_histograms(flat[:, c], 16, 0.0, 1.0) for c in range(3)], dim=1)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
        thumb = F.adaptive_avg_pool2d(grey, 8).flatten(1)
        sobel = _SOBEL.double()
        gx = F.conv2d(grey, sobel.view(1, 1, 3, 3))
        gy = F.conv2d(grey, sobel.T.contiguous().view(1, 1, 3, 3))
        magnitude = torch.sqrt(gx**2 + gy**2).flatten(1) / 4.0
        grad_hist = _histograms(magnitude, 16, 0.0, 1.0)
        mean = flat.mean(2)
        std = flat.std(2, unbiased=False)
        skew = ((flat - mean[..., None]) ** 3).mean(2) / (std**3).clamp(min=1e-12)
        dh, dv = grey[..., :, 1:] - grey[..., :, :-1], grey[..., 1:, :] - grey[..., :-1, :]
        texture = torch.stack(
            [dh.abs().flatten(1).mean(1), dh.flatten(1).std(1), dv.abs().flatten(1).mean(1), dv.flatten(1).std(1)],
            dim=1,
        )
        rg, yb = x[:, 0] - x[:, 1], 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
        colourful = (
            torch.sqrt(rg.flatten(1).std(1) ** 2 + yb.flatten(1).std(1) ** 2)
            + 0.3 * torch.sqrt(rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2)
        )[:, None]
        feats = torch.cat([colour_hist, thumb, grad_hist, mean, std, skew, texture, colourful], dim=1)
        if feats.shape != (n, self.dim):
            raise AssertionError(f"handcrafted features have shape {tuple(feats.shape)}, expected ({n}, {self.dim})")
        return feats.numpy()
