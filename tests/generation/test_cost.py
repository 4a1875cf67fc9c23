"""FLOP counting and device-hour arithmetic of ``generation.cost`` (the cost stage of a comparison)."""

from __future__ import annotations

import pytest

from generation.cost import count_flops, gpu_hours, reference_denoiser_flops


def test_flop_counts_match_the_arithmetic() -> None:
    """FlopCounterMode counts 2 FLOPs per multiply-add: a (8 x 16) @ (16 x 4) product is 2 * 8 * 16 * 4."""
    import torch

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b).total == 2 * 8 * 16 * 4
    layer = torch.nn.Linear(16, 4)
    assert count_flops(lambda: layer(a)).by_module == {"Linear": 2 * 8 * 16 * 4}
    sd = reference_denoiser_flops("sd15", 64)
    assert 0.85e9 < sd.parameters < 0.87e9  # SD 1.5's UNet has 860 M parameters
    assert gpu_hours(3600 * 989e12 * 0.5, 989.0, 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown reference"):
        reference_denoiser_flops("dalle", 64)
