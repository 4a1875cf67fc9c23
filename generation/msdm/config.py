"""Dataclass configs of MSDM: the model (VAE, UNet, schedule, sampling) and its training.

Two named configs ship: ``paper`` (the MSDM paper's settings, for a GPU) and ``tiny`` (64 px, a few
million parameters, trains on 2 CPU cores in minutes). Use :func:`get_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from db.errors import InputError

ConfigName = Literal["tiny", "paper"]
Sampler = Literal["ddim", "dpmpp"]
MixedPrecision = Literal["no", "fp16", "bf16"]


@dataclass
class VAEConfig:
    """``diffusers.AutoencoderKL`` shape; the down-sampling factor is ``2 ** (levels - 1)``.

    The default (the paper config's) has 14.0 M parameters, the closest ``AutoencoderKL`` gets to the
    reference MSDM VAE's 13.4 M at four levels and 8 latent channels (docs/compare.md, "paper vs reference").
    """

    block_out_channels: tuple[int, ...] = (32, 64, 128, 256)
    latent_channels: int = 8
    layers_per_block: int = 2
    norm_num_groups: int = 32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class UNetConfig:
    """``diffusers.UNet2DConditionModel`` shape: cross-attention on text tokens at every level plus the
    attention-pooled text embedding added to the time embedding (``addition_embed_type="text"``)."""

    block_out_channels: tuple[int, ...] = (256, 256, 512, 1024)
    layers_per_block: int = 2
    #: cross-attention at each level (the last, lowest-resolution level of SD has none)
    cross_attention: tuple[bool, ...] = (True, True, True, False)
    #: diffusers' ``attention_head_dim`` (for this UNet it is the number of heads per level)
    attention_heads: int = 8
    norm_num_groups: int = 32
    pooled_text_heads: int = 8

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class ModelConfig:
    """Everything needed to build an MSDM pipeline (the text encoder is loaded, not built)."""

    resolution: int = 256
    text_encoder: str = "clip-vit-l14"
    max_text_length: int = 64
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: Literal["epsilon"] = "epsilon"
    # sampling defaults
    guidance_scale: float = 3.5
    num_inference_steps: int = 150
    sampler: Sampler = "ddim"

    def validate(self) -> None:
        """Raise ``ValueError`` if the shapes cannot work together."""
        if len(self.unet.cross_attention) != len(self.unet.block_out_channels):
            raise InputError(
                f"unet.cross_attention has {len(self.unet.cross_attention)} entries but there are "
                f"{len(self.unet.block_out_channels)} UNet levels"
            )
        check_resolution(self.resolution, self.resolution, self.vae.downsample_factor)
        latent = self.resolution // self.vae.downsample_factor
        if latent % self.unet.downsample_factor:
            raise InputError(
                f"resolution {self.resolution} gives a {latent}px latent, not a multiple of the UNet's "
                f"down-sampling factor {self.unet.downsample_factor}"
            )


@dataclass
class TrainConfig:
    """Training of the VAE then the UNet (see :func:`generation.msdm.train.train_msdm`)."""

    name: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    # VAE stage
    vae_steps: int = 20_000
    vae_batch_size: int = 16
    vae_lr: float = 1e-4
    #: train the (fully convolutional) VAE on random square crops of this size; None = whole image
    vae_crop: int | None = None
    perceptual_weight: float = 0.1
    #: ``lpips-vgg`` (the paper's LPIPS; needs ``perceptual_weights``) or ``fixed-random`` (no download)
    perceptual_net: str = "lpips-vgg"
    #: "VGG16.pth,LPIPS_VGG.pth": torchvision's vgg16 state dict and the lpips package's v0.1 vgg.pth
    perceptual_weights: str | None = None
    kl_weight: float = 1e-6
    # UNet stage
    unet_steps: int = 100_000
    batch_size: int = 64
    lr: float = 1e-4
    lr_warmup_steps: int = 500
    text_dropout: float = 0.2
    freeze_text_encoder: bool = True
    ema_decay: float = 0.9999
    gradient_accumulation_steps: int = 1
    mixed_precision: MixedPrecision = "bf16"
    max_grad_norm: float = 1.0
    # bookkeeping
    checkpoint_every: int = 5_000
    validate_every: int = 5_000
    validation_prompts: tuple[str, ...] = (
        "Generate an endoscopy image containing a large polyp in the upper left.",
        "Generate a chest X-ray with an opacity in the left lung.",
    )
    seed: int = 0
    num_workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_resolution(height: int, width: int, factor: int) -> None:
    """Raise ``ValueError`` unless ``height`` and ``width`` are positive multiples of ``factor``."""
    for label, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % factor:
            raise InputError(f"{label}={value!r} is impossible: it must be a positive multiple of {factor}")


def paper_config() -> TrainConfig:
    """The MSDM paper's settings (256 px, CLIP ViT-L/14 text, GPU)."""
    return TrainConfig(name="paper")


def tiny_config() -> TrainConfig:
    """64 px, ~6 M parameters (VAE 1.0 M, UNet 5.2 M), packaged MiniLM text encoder; trains on 1-2 CPU
    cores in ~30 min (the committed demo model's recipe: 700 VAE and 3000 UNet steps).

    The perceptual loss is off (``perceptual_weight=0``): at 64 px with a small VAE the MSE + KL
    objective already reconstructs the procedural frames, and it saves a third of the VAE step.
    """
    model = ModelConfig(
        resolution=64,
        text_encoder="minilm",
        max_text_length=32,
        vae=VAEConfig(block_out_channels=(16, 32, 64, 64), latent_channels=8, layers_per_block=1, norm_num_groups=8),
        unet=UNetConfig(
            block_out_channels=(32, 64, 128),
            layers_per_block=1,
            cross_attention=(True, True, True),
            attention_heads=4,
            norm_num_groups=16,
            pooled_text_heads=6,
        ),
        guidance_scale=3.5,
        num_inference_steps=20,
        sampler="dpmpp",
    )
    return TrainConfig(
        name="tiny",
        model=model,
        vae_steps=700,
        vae_batch_size=32,
        vae_lr=1e-3,
        vae_crop=32,
        perceptual_weight=0.0,
        perceptual_net="fixed-random",
        kl_weight=1e-6,
        unet_steps=3000,
        batch_size=32,
        lr=1e-3,
        lr_warmup_steps=50,
        ema_decay=0.995,
        mixed_precision="no",
        checkpoint_every=250,
        validate_every=250,
        num_workers=0,
    )


CONFIGS = {"paper": paper_config, "tiny": tiny_config}


def get_config(name: ConfigName | str) -> TrainConfig:
    """Return a fresh copy of the named config (``tiny`` or ``paper``)."""
    if name not in CONFIGS:
        raise InputError(f"unknown MSDM config {name!r}; expected one of {sorted(CONFIGS)}")
    return CONFIGS[name]()
