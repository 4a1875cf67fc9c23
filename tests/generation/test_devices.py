"""Device helpers: batch sizes on CPU and CUDA."""

from __future__ import annotations

import torch

from generation.devices import suggest_batch_size


def test_cpu_batch_size_follows_image_area() -> None:
    cpu = torch.device("cpu")
    assert suggest_batch_size(cpu, 64, 64) == 16
    assert suggest_batch_size(cpu, 128, 128) == 4
    assert suggest_batch_size(cpu, 256, 256) == 1
    assert suggest_batch_size(cpu, 1024, 1024) == 1


def test_cuda_batch_size_follows_free_memory() -> None:
    cuda = torch.device("cuda")
    small = suggest_batch_size(cuda, 1024, 1024, free_bytes=2 * 2**30)
    large = suggest_batch_size(cuda, 1024, 1024, free_bytes=64 * 2**30)
    assert 1 <= small < large <= 16
