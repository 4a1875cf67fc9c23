"""Losses of MSDM training: the VAE objective (MSE + perceptual + small KL) and text dropout.

Two perceptual nets, named by ``TrainConfig.perceptual_net``:

- ``lpips-vgg`` (the paper's): LPIPS (Zhang et al. 2018) on VGG-16 features, built here without
  torchvision and loaded from weights the user provides (``perceptual_weights = "VGG16.pth,LPIPS.pth"``:
  torchvision's ``vgg16`` state dict and the ``lpips`` package's ``weights/v0.1/vgg.pth``);
- ``fixed-random``: :class:`FixedFeatureNet`, a small convolutional net whose weights come from a fixed
  seed, never trained or downloaded (a random-feature perceptual loss; the tiny config's offline choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


#: torchvision's VGG-16 ``features``: channels per conv, "M" for max-pooling (indices match its state dict)
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: LPIPS taps: after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_TAPS = (3, 8, 15, 22, 29)
_LPIPS_WIDTHS = (64, 128, 256, 512, 512)


class LPIPSVGG(nn.Module):
    """LPIPS v0.1 with a VGG-16 trunk: learned per-channel weights on unit-normalised feature differences.

    ``forward(recon, target)`` takes images in [-1, 1] and returns one distance per image, as the ``lpips``
    package's ``LPIPS(net="vgg")`` does (its ScalingLayer, channel normalisation, 1x1 ``lin`` layers,
    spatial average, sum over the five layers).
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                cin = int(item)
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in _LPIPS_WIDTHS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised VGG features at the five LPIPS layers."""
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _LPIPS_TAPS:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
            if i == _LPIPS_TAPS[-1]:
                break
        return out

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = recon.new_zeros(recon.shape[0])
        for lin, a, b in zip(self.lins, self.taps(recon), self.taps(target), strict=True):
            total = total + lin((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_files(cls, vgg_path: str | Path, lpips_path: str | Path) -> LPIPSVGG:
        """Load torchvision's ``vgg16`` state dict (``features.N.*`` keys, extra keys ignored) and the
        ``lpips`` package's ``vgg.pth`` (``linK.model.1.weight``).

        Raises
        ------
        FileNotFoundError, KeyError
            When a file is missing or lacks a needed key.
        """
        net = cls()
        vgg = torch.load(Path(vgg_path), map_location="cpu", weights_only=True)
        feats = {k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")}
        net.features.load_state_dict(feats)
        lin = torch.load(Path(lpips_path), map_location="cpu", weights_only=True)
        for k, conv in enumerate(net.lins):
            conv.weight.data.copy_(lin[f"lin{k}.model.1.weight"])
        return net


def perceptual_loss(net: nn.Module, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The perceptual term for images in [-1, 1]: mean LPIPS for :class:`LPIPSVGG`, else the mean squared
    distance between :class:`FixedFeatureNet` features."""
    if isinstance(net, LPIPSVGG):
        return net(recon, target).mean()
    with torch.no_grad():
        target_feats = net(target)
    losses = [F.mse_loss(a, b) for a, b in zip(net(recon), target_feats, strict=True)]
    return torch.stack(losses).mean()


def make_perceptual_net(name: str, weights: str | None) -> nn.Module:
    """The perceptual net a config names; ``lpips-vgg`` needs ``weights = "VGG16.pth,LPIPS_VGG.pth"``.

    Raises
    ------
    ValueError
        Naming what is missing and how to provide it.
    """
    if name == "fixed-random":
        return FixedFeatureNet()
    if name != "lpips-vgg":
        raise ValueError(f"unknown perceptual net {name!r}; expected 'lpips-vgg' or 'fixed-random'")
    parts = [p.strip() for p in (weights or "").split(",") if p.strip()]
    hint = (
        "give --perceptual-weights VGG16.pth,LPIPS_VGG.pth (torchvision's vgg16-397923af.pth and the lpips "
        "package's weights/v0.1/vgg.pth, downloaded once), or --perceptual-net fixed-random to train without them"
    )
    if len(parts) != 2:
        raise ValueError(f"the LPIPS-VGG perceptual loss needs two weight files; {hint}")
    for part in parts:
        if not Path(part).expanduser().is_file():
            raise ValueError(f"perceptual weights file {part} does not exist; {hint}")
    try:
        return LPIPSVGG.from_files(Path(parts[0]).expanduser(), Path(parts[1]).expanduser())
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{parts} are not torchvision VGG-16 and lpips vgg.pth weights ({exc}); {hint}") from exc


def text_dropout_mask(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of the prompts to replace by the empty prompt: ``rand(n) < p`` under ``generator``."""
    if not 0.0 <= p <= 1.0:
        raise InputError(f"text dropout probability must be in [0, 1], got {p}")
    return torch.rand(n, generator=generator) < p


def apply_text_dropout(captions: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each caption by ``""`` with probability ``p`` (classifier-free guidance training)."""
    mask = text_dropout_mask(len(captions), p, generator)
    return ["" if drop else c for c, drop in zip(captions, mask.tolist(), strict=True)]
