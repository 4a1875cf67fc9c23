"""Devices, dtypes, batch sizes and peak-memory measurement for generation.

``auto`` means CUDA when available, else CPU. The dtype defaults per device: fp32 on CPU (half
precision matmuls are slow or unsupported there), bf16 on CUDA devices that support it, else fp16.
Peak memory is measured per batch: on CUDA with ``torch.cuda.max_memory_allocated`` after a reset (the
tensors the batch allocated, model weights included); on CPU as the process's resident set size,
sampled by a background thread while the batch runs (weights, activations and everything else the
process holds, so it is an upper bound on what the batch itself needed).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from db.errors import InputError

DeviceName = Literal["auto", "cuda", "cpu"]
DtypeName = Literal["bf16", "fp16", "fp32"]

DEVICE_NAMES: tuple[str, ...] = ("auto", "cuda", "cpu")
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``auto`` / ``cuda`` / ``cuda:N`` / ``cpu`` into a :class:`torch.device`.

    Raises
    ------
    ValueError
        For an unknown name, or ``cuda`` when no CUDA device is available.
    """
    if isinstance(name, torch.device):
        return name
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
        return torch.device(text)
    raise InputError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_NAMES)} (or cuda:N)")


def parse_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The torch dtype for ``name`` (``bf16``/``fp16``/``fp32``); ``None`` picks the device default.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "":
        return default_dtype(device)
    key = str(name).strip().lower().replace("float", "fp").replace("bfloat", "bf")
    key = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "half": "fp16"}.get(key, key)
    if key not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[key]


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on CUDA devices that support it, else fp16."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def dtype_name(dtype: torch.dtype) -> str:
    """Short name (``bf16``/``fp16``/``fp32``) of ``dtype``, as recorded with each image."""
    for key, value in DTYPES.items():
        if value == dtype:
            return key
    return str(dtype).removeprefix("torch.")


def device_label(device: torch.device) -> str:
    """A human label recorded with each image, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes (CUDA only; ``None`` on CPU)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def suggest_batch_size(
    device: torch.device,
    height: int,
    width: int,
    *,
    free_bytes: int | None = None,
    bytes_per_pixel: int = 60_000,
    max_batch: int = 16,
) -> int:
    """A batch size that fits the device: on CPU by image area (16 at 64 px, 1 from 256 px); on CUDA,
    free memory over a per-image estimate.

    The per-image estimate is ``bytes_per_pixel * height * width / 64`` (activations scale with the
    latent area, ``(h/8) * (w/8)``); the default (60 kB per latent pixel, about 1 GB for a 1024 px
    FLUX image in bf16 with CFG-free sampling) is deliberately generous. Half of the free memory is
    used, leaving room for the VAE decode spike.

    Parameters
    ----------
    device
        Target device.
    height, width
        Image size in pixels.
    free_bytes
        Free memory to plan with; read from the device when ``None``.
    bytes_per_pixel
        Estimated bytes per latent pixel per image.
    max_batch
        Upper bound.

    Returns
    -------
    int
        At least 1.
    """
    if device.type != "cuda":
        # CPU: memory is rarely the limit; batching small images amortises per-call overhead
        # (the 64 px demo model runs several times faster at batch 16 than at batch 1).
        return max(1, min(max_batch, (256 * 256) // max(height * width, 1)))
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    if not free:
        return 1
    per_image = bytes_per_pixel * max(1, height * width // 64)
    return int(max(1, min(max_batch, (free // 2) // per_image)))


def _rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; falls back to psutil)."""
    try:
        with open(f"/proc/{os.getpid()}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


@dataclass
class PeakMemory:
    """Result holder filled by :func:`track_peak_memory` when its block ends."""

    bytes: int = 0
    kind: str = ""


@contextmanager
def track_peak_memory(device: torch.device, interval_s: float = 0.005) -> Iterator[PeakMemory]:
    """Measure the peak memory of the enclosed block (see the module docstring for what is counted).

    Yields
    ------
    PeakMemory
        Filled in when the block exits: ``bytes`` and ``kind`` (``cuda_allocated`` or ``cpu_rss``).
    """
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.bytes = int(torch.cuda.max_memory_allocated(device))
            result.kind = "cuda_allocated"
        return
    peak = [_rss_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, name="medsynth-peak-rss", daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result.bytes = max(peak[0], _rss_bytes())
        result.kind = "cpu_rss"
