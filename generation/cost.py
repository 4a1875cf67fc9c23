"""What a model costs: parameters, FLOPs per image, seconds and peak memory per image, GPU-hour estimates.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplications, convolutions
and attention; a multiply-add is 2 FLOPs; element-wise work is not counted) around one real pipeline
call for one image, so text encoding, every denoising step (with classifier-free guidance when the
pipeline does it) and the VAE decode are all in the figure. Seconds and peak memory per image are not
re-measured here: :mod:`generation.batch` records them with every generated image, and
:func:`generation_timing` summarises those records.

For GPU planning without the weights, :func:`reference_denoiser_flops` builds the published denoiser
architectures on the ``meta`` device (no memory, no download) and counts one forward pass at a given
resolution; :func:`gpu_hours` turns FLOPs into hours at an assumed utilisation. Those are estimates.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from db.errors import InputError

if TYPE_CHECKING:
    from db.session import Database

#: bf16 dense peak of one H100 SXM / H200 (TFLOP/s), the basis of the GPU-hour estimates.
H100_BF16_TFLOPS = 989.0


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call: the total and the top-level modules that ran (e.g. ``UNet2DConditionModel``)."""

    total: int
    by_module: dict[str, int]


def count_parameters(pipe: Any) -> dict[str, int]:
    """Parameters of each ``torch.nn.Module`` component of a pipeline, plus ``total``."""
    counts = {
        name: sum(p.numel() for p in component.parameters())
        for name, component in getattr(pipe, "components", {}).items()
        if isinstance(component, torch.nn.Module)
    }
    counts["total"] = sum(counts.values())
    return counts


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """Run ``fn()`` under ``FlopCounterMode`` and return its FLOPs (total and per top-level module)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    per_module = {
        name: int(sum(ops.values()))
        for name, ops in counter.get_flop_counts().items()
        if name != "Global" and "." not in name
    }
    return FlopCount(total=int(counter.get_total_flops()), by_module=per_module)


def pipeline_flops_per_image(pipe: Any, params: Any, prompt: str, device: torch.device, seed: int = 0) -> FlopCount:
    """FLOPs of making one image of ``prompt`` with ``pipe`` at the resolved ``params`` (``SamplingParams``)."""
    from dataclasses import replace

    from generation.batch import generate_images

    one = replace(params, batch_size=1)
    return count_flops(lambda: generate_images(pipe, [prompt], [seed], one, device, output_type="np"))


@dataclass(frozen=True)
class GenerationTiming:
    """Per-image generation time and memory from the recorded images of one model."""

    images: int
    seconds_per_image: float | None
    peak_memory_bytes: int | None
    peak_memory_kind: str | None
    device: str | None


def generation_timing(database: Database, model_id: int, case_ids: Sequence[int] | None = None) -> GenerationTiming:
    """Median seconds per image and the largest recorded peak memory of a model's generated images.

    Parameters
    ----------
    database
        ``db.session.Database``.
    model_id
        The registered model.
    case_ids
        Only these cases (e.g. a comparison's held-out prompts); ``None`` = all.
    """
    from db.generated import generation_records

    with database.session() as session:
        rows = generation_records(session, model_id, None if case_ids is None else list(case_ids))
    seconds = [float(s) for s, *_ in rows if s is not None]
    peaks = [int(p) for _, p, *_ in rows if p is not None]
    kinds = {str((params or {}).get("peak_memory_kind", "")) for _, _, params, _ in rows} - {""}
    devices = {str(d) for *_, d in rows if d}
    return GenerationTiming(
        images=len(rows),
        seconds_per_image=statistics.median(seconds) if seconds else None,
        peak_memory_bytes=max(peaks) if peaks else None,
        peak_memory_kind=", ".join(sorted(kinds)) or None,
        device=", ".join(sorted(devices)) or None,
    )


def gpu_hours(flops: float, peak_tflops: float = H100_BF16_TFLOPS, utilisation: float = 0.4) -> float:
    """Hours to execute ``flops`` on one GPU of ``peak_tflops`` at ``utilisation`` (an estimate).

    Raises
    ------
    ValueError
        If ``peak_tflops`` is not positive or ``utilisation`` is outside ``(0, 1]``.
    """
    if peak_tflops <= 0 or not 0 < utilisation <= 1:
        raise InputError(f"need peak_tflops > 0 and 0 < utilisation <= 1, got {peak_tflops}, {utilisation}")
    return float(flops) / (peak_tflops * 1e12 * utilisation) / 3600.0


# ---------------------------------------------------------------------------------------------- references


def _flux_dev() -> tuple[torch.nn.Module, Callable[[torch.nn.Module, int], Any]]:
    """FLUX.1-dev transformer (19 double + 38 single blocks, 3072 wide; 512 T5 tokens)."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(guidance_embeds=True)

    def forward(m: torch.nn.Module, side: int) -> Any:
        tokens = (side // 16) ** 2
        return m(
            hidden_states=torch.randn(1, tokens, 64),
            encoder_hidden_states=torch.randn(1, 512, 4096),
            pooled_projections=torch.randn(1, 768),
            timestep=torch.ones(1),
            guidance=torch.ones(1),
            img_ids=torch.zeros(tokens, 3),
            txt_ids=torch.zeros(512, 3),
        )

    return model, forward


def _unet(config: dict[str, Any], text: tuple[int, int], sdxl: bool = False):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(**config)

    def forward(m: torch.nn.Module, side: int) -> Any:
        x = torch.randn(1, m.config.in_channels, side // 8, side // 8)
        added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)} if sdxl else None
        return m(x, torch.ones(1), torch.randn(1, *text), added_cond_kwargs=added)

    return model, forward


def _sd15():
    """Stable Diffusion 1.5 UNet (the diffusers defaults are SD 1.x's; CLIP ViT-L 77 x 768)."""
    return _unet({"cross_attention_dim": 768, "attention_head_dim": 8}, (77, 768))


def _sdxl():
    """SDXL base UNet (model card config)."""
    config = {
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
        "use_linear_projection": True,
    }
    return _unet(config, (77, 2048), sdxl=True)


def _msdm_paper():
    """MSDM's UNet at the paper config (:func:`generation.msdm.config.paper_config`, CLIP ViT-L/14 text)."""
    from generation.msdm.config import paper_config
    from generation.msdm.pipeline import build_unet

    cfg = paper_config().model
    factor = cfg.vae.downsample_factor
    model = build_unet(cfg.unet, cfg.resolution // factor, cfg.vae.latent_channels, 768)

    def forward(m: torch.nn.Module, side: int) -> Any:
        x = torch.randn(1, cfg.vae.latent_channels, side // factor, side // factor)
        return m(x, torch.ones(1), torch.randn(1, cfg.max_text_length, 768))

    return model, forward


#: Published denoisers whose FLOPs the GPU estimate uses (built on the meta device).
REFERENCE_DENOISERS: dict[str, Callable[[], Any]] = {
    "flux-dev": _flux_dev,
    "sd15": _sd15,
    "sdxl": _sdxl,
    "msdm-paper": _msdm_paper,
}


@dataclass(frozen=True)
class ReferenceCost:
    """Parameters of a reference denoiser and the FLOPs of one forward pass for one image."""

    name: str
    resolution: int
    parameters: int
    forward_flops: int


def reference_denoiser_flops(name: str, resolution: int) -> ReferenceCost:
    """Parameters and one-image forward FLOPs of a published denoiser, counted on the ``meta`` device.

    Raises
    ------
    ValueError
        For a name not in :data:`REFERENCE_DENOISERS`.
    """
    if name not in REFERENCE_DENOISERS:
        raise InputError(f"unknown reference denoiser {name!r}; expected one of {', '.join(REFERENCE_DENOISERS)}")
    with torch.device("meta"):
        model, forward = REFERENCE_DENOISERS[name]()
        flops = count_flops(lambda: forward(model, resolution))
    return ReferenceCost(name, resolution, sum(p.numel() for p in model.parameters()), flops.total)


def main() -> None:
    """Print the reference denoisers' parameters and forward FLOPs (``python -m generation.cost``)."""
    for name, side in (("msdm-paper", 256), ("sd15", 512), ("sdxl", 1024), ("flux-dev", 512), ("flux-dev", 1024)):
        ref = reference_denoiser_flops(name, side)
        billions, tflops = ref.parameters / 1e9, ref.forward_flops / 1e12
        print(f"{name:<11} {side:>5} px  {billions:6.3f} B parameters  {tflops:8.3f} TFLOP per forward")


if __name__ == "__main__":
    main()
