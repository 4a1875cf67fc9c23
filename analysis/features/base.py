"""The feature-extractor interface, image loading and the preprocessing every extractor shares."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

COLOUR_HANDLING = (
    "decoded with PIL and converted to 8-bit RGB; single-channel images (grey-scale radiographs) are "
    "replicated to 3 identical channels; 16-bit/float images are scaled to 0-255 by their dtype range "
    "(16-bit) or min-max (float); alpha is dropped"
)

ImageInput = Sequence[Image.Image] | np.ndarray
"""A list of PIL images or a uint8 array/tensor of shape (N, H, W, 3) or (N, 3, H, W)."""


@dataclass(frozen=True)
class Preprocess:
    """How an extractor turns an RGB uint8 image into its input tensor (recorded in every metric stamp).

    Parameters
    ----------
    size : int
        Output side in pixels (square).
    resize : {"resize", "shortest_side_center_crop"}
        ``resize`` squashes to ``size x size``; ``shortest_side_center_crop`` resizes the shortest side
        to ``shortest_side`` keeping the aspect ratio, then centre-crops ``size x size``.
    interpolation : {"bilinear", "bicubic"}
        Interpolation used by ``torch.nn.functional.interpolate``.
    antialias : bool
        Antialias when downsampling (PIL-like); pytorch-fid's Inception resize has none.
    mean, std : tuple of float
        Per-channel normalisation applied to pixels scaled to [0, 1].
    """

    size: int
    resize: Literal["resize", "shortest_side_center_crop"]
    interpolation: Literal["bilinear", "bicubic"]
    antialias: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    shortest_side: int | None = None
    """Shortest side before the crop (``shortest_side_center_crop`` only); ``None`` means ``size``."""

    def describe(self) -> str:
        """One line for the metric stamp: resize, interpolation, normalisation and colour handling."""
        return (
            f"{self.resize} to {self.size}px (shortest side {self.shortest_side or self.size}; "
            f"{self.interpolation}, antialias={self.antialias}); "
            f"normalise mean={self.mean} std={self.std}; colour: {COLOUR_HANDLING}"
        )


@runtime_checkable
class FeatureExtractor(Protocol):
    """What every feature extractor offers. ``__call__`` returns float64 features of shape (N, dim)."""

    name: str
    dim: int
    weights_sha256: str
    preprocess: Preprocess

    def __call__(self, images: ImageInput) -> np.ndarray: ...


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert one PIL image to 8-bit RGB as described in ``COLOUR_HANDLING``."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(image).astype(np.float64)
        if image.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            arr = arr / 65535.0 * 255.0 if arr.max() > 255 or image.mode.startswith("I;16") else arr
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB")
    # L, LA, P, RGBA, CMYK, YCbCr ...: PIL replicates L to 3 channels and drops alpha.
    return image.convert("RGB")


def load_images(paths: Sequence[str | PathLike[str]]) -> list[Image.Image]:
    """Open image files and convert them to RGB (see ``COLOUR_HANDLING``).

    Parameters
    ----------
    paths : sequence of path-like
        Image files readable by PIL.

    Returns
    -------
    list of PIL.Image.Image
        Fully loaded RGB images, in the order of ``paths``.
    """
    images = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"image file not found: {p}")
        with Image.open(p) as im:
            im.load()
            images.append(to_rgb(im))
    return images


def as_uint8_batch(images: ImageInput) -> list[np.ndarray]:
    """Normalise the accepted inputs to a list of (H, W, 3) uint8 arrays."""
    if isinstance(images, np.ndarray) or hasattr(images, "numpy"):
        arr = np.asarray(images.numpy() if hasattr(images, "numpy") else images)
        if arr.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 (0-255), got dtype {arr.dtype}")
        if arr.ndim != 4:
            raise ValueError(f"image arrays must have shape (N, H, W, 3) or (N, 3, H, W), got {arr.shape}")
        if arr.shape[-1] != 3 and arr.shape[1] == 3:
            arr = arr.transpose(0, 2, 3, 1)
        if arr.shape[-1] != 3:
            raise ValueError(f"image arrays need 3 channels, got shape {arr.shape}")
        return list(arr)
    out = []
    for im in images:
        if not isinstance(im, Image.Image):
            raise ValueError(f"expected PIL images or a uint8 array, got {type(im).__name__}")
        out.append(np.asarray(to_rgb(im)))
    if not out:
        raise ValueError("no images given")
    return out


def preprocess_batch(images: ImageInput, spec: Preprocess) -> torch.Tensor:
    """Resize, crop and normalise images into a float32 tensor (N, 3, size, size) following ``spec``."""
    batch = []
    for arr in as_uint8_batch(images):
        x = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 255.0
        h, w = x.shape[-2:]
        if spec.resize == "resize":
            out_hw = (spec.size, spec.size)
        else:
            side = spec.shortest_side or spec.size
            if side < spec.size:
                raise ValueError(f"shortest_side {side} is smaller than the crop size {spec.size}")
            scale = side / min(h, w)
            out_hw = (max(side, round(h * scale)), max(side, round(w * scale)))
        if (h, w) != out_hw:
            x = F.interpolate(x, size=out_hw, mode=spec.interpolation, align_corners=False, antialias=spec.antialias)
        if spec.resize == "shortest_side_center_crop":
            top = (x.shape[-2] - spec.size) // 2
            left = (x.shape[-1] - spec.size) // 2
            x = x[..., top : top + spec.size, left : left + spec.size]
        batch.append(x.clamp(0.0, 1.0))
    x = torch.cat(batch)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's parameters and buffers (name, dtype, shape, bytes) in key order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: str | PathLike[str]) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_batched(
    model_fn: Callable[[torch.Tensor], torch.Tensor], pixel_batch: torch.Tensor, batch_size: int
) -> np.ndarray:
    """Run ``model_fn`` over ``pixel_batch`` in chunks under ``torch.inference_mode``; float64 output."""
    outs = []
    with torch.inference_mode():
        for start in range(0, pixel_batch.shape[0], batch_size):
            outs.append(model_fn(pixel_batch[start : start + batch_size]).double().cpu().numpy())
    return np.concatenate(outs, axis=0)
