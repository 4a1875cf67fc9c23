"""Per-family sampling defaults (steps, guidance, resolution) for text-to-image pipelines.

A family is detected from the pipeline class name in ``model_index.json`` and, where one class
serves several checkpoints (FLUX dev vs schnell, SD 1.x vs 2.x), from the source id. Values follow
the model cards / reference pipelines:

========================  =====  ========  ==========  ====================================
family                    steps  guidance  resolution  source
========================  =====  ========  ==========  ====================================
flux-dev                  28     3.5       1024        FLUX.1-dev card, FluxPipeline
flux-schnell              4      0.0       1024        FLUX.1-schnell card (distilled, no CFG)
sd1                       50     7.5       512         SD 1.x cards
sd2                       50     7.5       768         SD 2.x (768-v) cards
sdxl                      50     5.0       1024        SDXL base card
sd3                       28     7.0       1024        SD3 medium card
kandinsky-2.2             50     4.0       768         kandinsky-2-2-decoder card
kandinsky-3               25     3.0       1024        kandinsky-3 card
pixart                    20     4.5       1024        PixArt-alpha card
msdm                      20     3.5       native      generation.msdm
generic                   call   call      native      the pipeline's own ``__call__`` defaults
========================  =====  ========  ==========  ====================================

Resolution rule (see :func:`resolve_resolution`): an explicit value wins; otherwise the *native*
resolution of the loaded weights (``sample_size`` times the VAE factor), which tells e.g. SD 2.1
(768) from SD 2.1-base (512) although both are one class; the preset's value only when the pipeline
does not say.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass, field
from typing import Any


class Family(enum.StrEnum):
    """Model families with their own defaults."""

    FLUX_DEV = "flux-dev"
    FLUX_SCHNELL = "flux-schnell"
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SD3 = "sd3"
    KANDINSKY22 = "kandinsky-2.2"
    KANDINSKY3 = "kandinsky-3"
    PIXART = "pixart"
    MSDM = "msdm"
    GENERIC = "generic"


@dataclass(frozen=True)
class Preset:
    """Sampling defaults of one family; ``None`` means "ask the pipeline".

    Attributes
    ----------
    family
        The family these defaults are for.
    steps, guidance
        Number of inference steps and guidance scale.
    resolution
        Square side in pixels, used only when the pipeline's native size is unknown.
    call_kwargs
        Extra keyword arguments for the pipeline call (e.g. ``max_sequence_length`` for schnell).
    """

    family: Family
    steps: int | None
    guidance: float | None
    resolution: int | None
    call_kwargs: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[Family, Preset] = {
    Family.FLUX_DEV: Preset(Family.FLUX_DEV, 28, 3.5, 1024),
    Family.FLUX_SCHNELL: Preset(Family.FLUX_SCHNELL, 4, 0.0, 1024, {"max_sequence_length": 256}),
    Family.SD1: Preset(Family.SD1, 50, 7.5, 512),
    Family.SD2: Preset(Family.SD2, 50, 7.5, 768),
    Family.SDXL: Preset(Family.SDXL, 50, 5.0, 1024),
    Family.SD3: Preset(Family.SD3, 28, 7.0, 1024),
    Family.KANDINSKY22: Preset(Family.KANDINSKY22, 50, 4.0, 768),
    Family.KANDINSKY3: Preset(Family.KANDINSKY3, 25, 3.0, 1024),
    Family.PIXART: Preset(Family.PIXART, 20, 4.5, 1024),
    Family.MSDM: Preset(Family.MSDM, 20, 3.5, None),
    Family.GENERIC: Preset(Family.GENERIC, None, None, None),
}


def detect_family(class_name: str, source: str = "", kind: str = "diffusers") -> Family:
    """The family of a pipeline from its class name (``model_index.json``'s ``_class_name``) and source.

    Parameters
    ----------
    class_name
        Pipeline class name, e.g. ``FluxPipeline`` or ``KandinskyV22CombinedPipeline``.
    source
        Hub id or folder; disambiguates checkpoints of one class (``schnell``, ``stable-diffusion-2``).
    kind
        Registered model kind; ``msdm`` always maps to :attr:`Family.MSDM`.
    """
    if kind == "msdm":
        return Family.MSDM
    name, src = class_name.lower(), source.lower()
    if name.startswith("flux"):
        return Family.FLUX_SCHNELL if "schnell" in src else Family.FLUX_DEV
    if name.startswith("stablediffusionxl"):
        return Family.SDXL
    if name.startswith("stablediffusion3"):
        return Family.SD3
    if name.startswith("kandinsky3"):
        return Family.KANDINSKY3
    if name.startswith("kandinskyv22"):
        return Family.KANDINSKY22
    if name.startswith("pixart"):
        return Family.PIXART
    if name == "stablediffusionpipeline":
        if "stable-diffusion-2" in src:
            return Family.SD2
        if "stable-diffusion" in src or "sd-v1" in src or "sd1" in src:
            return Family.SD1
    return Family.GENERIC


def call_defaults(pipe: Any) -> dict[str, Any]:
    """The pipeline's own ``__call__`` defaults for ``num_inference_steps`` and ``guidance_scale``."""
    params = inspect.signature(type(pipe).__call__).parameters
    out: dict[str, Any] = {}
    for key in ("num_inference_steps", "guidance_scale"):
        if key in params and params[key].default is not inspect.Parameter.empty:
            out[key] = params[key].default
    return out


def vae_factor(pipe: Any) -> int:
    """The factor height and width must be multiples of (FLUX: VAE factor x 2 for its 2x2 packing)."""
    processor = getattr(pipe, "image_processor", None)
    config = getattr(processor, "config", None)
    factor = getattr(config, "vae_scale_factor", None)
    if factor is None:
        factor = getattr(pipe, "vae_scale_factor", None) or getattr(pipe, "movq_scale_factor", None) or 8
    return int(factor)


def native_resolution(pipe: Any) -> int | None:
    """The square side the loaded weights were made for, when the pipeline says (else ``None``)."""
    scale = getattr(pipe, "vae_scale_factor", None)
    if scale is None:
        return None
    unet = getattr(pipe, "unet", None)
    if unet is not None and isinstance(getattr(unet.config, "sample_size", None), int):
        return int(unet.config.sample_size) * int(scale)
    default = getattr(pipe, "default_sample_size", None)
    if isinstance(default, int):
        return default * int(scale)
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and isinstance(getattr(transformer.config, "sample_size", None), int):
        return int(transformer.config.sample_size) * int(scale)
    return None


def resolve_resolution(pipe: Any, preset: Preset, height: int | None, width: int | None) -> tuple[int, int]:
    """Height and width: explicit values, else the native size, else the preset's, else 512."""
    side = native_resolution(pipe) or preset.resolution or 512
    return (height or side, width or side)


def resolve_sampling(pipe: Any, preset: Preset, steps: int | None, guidance: float | None) -> tuple[int, float]:
    """Steps and guidance: explicit values, else the preset's, else the pipeline's call defaults."""
    defaults = call_defaults(pipe)
    steps = steps if steps is not None else preset.steps or defaults.get("num_inference_steps", 50)
    if guidance is None:
        guidance = preset.guidance if preset.guidance is not None else defaults.get("guidance_scale", 7.5)
    return int(steps), float(guidance)
