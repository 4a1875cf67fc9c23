"""Losses of MSDM training: the VAE objective (MSE + perceptual + small KL) and text dropout.

The perceptual term uses :class:`FixedFeatureNet`, a small convolutional net whose weights are drawn
from a fixed seed and never trained or downloaded (random-feature perceptual loss): multi-scale
feature maps of reconstructions are compared with those of the inputs. No torchvision, no lpips.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from db.errors import InputError


class FixedFeatureNet(nn.Module):
    """Frozen 4-stage conv net (seeded orthogonal init) returning normalised multi-scale features."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), seed: int = 1234) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        layers = []
        cin = 3
        for i, w in enumerate(widths):
            conv = nn.Conv2d(cin, w, 3, stride=1 if i == 0 else 2, padding=1)
            with torch.no_grad():
                weight = torch.empty(w, cin * 9)
                nn.init.orthogonal_(weight, generator=gen)
                conv.weight.copy_(weight.view(w, cin, 3, 3))
                conv.bias.zero_()
            layers.append(conv)
            cin = w
        self.stages = nn.ModuleList(layers)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in self.stages:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x / (x.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-6))
        return feats


def perceptual_loss(net: FixedFeatureNet, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between :class:`FixedFeatureNet` features of ``recon`` and ``target``."""
    with torch.no_grad():
        target_feats = net(target)
    losses = [F.mse_loss(a, b) for a, b in zip(net(recon), target_feats, strict=True)]
    return torch.stack(losses).mean()


def text_dropout_mask(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of the prompts to replace by the empty prompt: ``rand(n) < p`` under ``generator``."""
    if not 0.0 <= p <= 1.0:
        raise InputError(f"text dropout probability must be in [0, 1], got {p}")
    return torch.rand(n, generator=generator) < p


def apply_text_dropout(captions: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each caption by ``""`` with probability ``p`` (classifier-free guidance training)."""
    mask = text_dropout_mask(len(captions), p, generator)
    return ["" if drop else c for c, drop in zip(captions, mask.tolist(), strict=True)]
