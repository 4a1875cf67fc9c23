"""LoRA fine-tuning (peft) of FLUX, Stable Diffusion (1/2/XL, MSDM) and Kandinsky 2.2/3 pipelines.

``python app.py train lora --dataset NAME --base HUB_ID_OR_FOLDER --out DIR`` calls :func:`train_lora`, which
runs a :class:`LoraTrainer` (``setup`` / ``step`` / ``checkpoint`` / ``resume`` / ``save``).
The adapter goes on the denoiser (the UNet or the FLUX transformer) and optionally on the CLIP/T5 text
encoders; the base weights stay frozen. The objective is the one the family was trained with:

==============  ===========================  ==================================================
family          denoiser                     objective
==============  ===========================  ==================================================
flux            ``transformer`` (packed)     rectified flow: ``x_t = (1-s) x0 + s n``, target ``n - x0``
sd (1/2, MSDM)  ``unet``                     epsilon or v prediction (``scheduler.prediction_type``)
sdxl            ``unet`` (+ pooled, time)    epsilon or v prediction
kandinsky22     ``unet`` (decoder)           epsilon, conditioned on the target image's CLIP image embedding
kandinsky3      ``unet`` (Kandinsky3UNet)    epsilon, conditioned on T5 token embeddings and their mask
==============  ===========================  ==================================================

Kandinsky's UNets have no diffusers adapter mixin (``Kandinsky3UNet``) or loader (the 2.2 pipelines), so
their LoRA is injected by module name with peft (``inject_adapter_in_model``) and saved by
:func:`generation.lora.save_peft_lora` with its rank, alpha and module names; ``models add --lora`` puts
it back with ``set_peft_model_state_dict``. Kandinsky 2.2 is trained as diffusers'
``train_text_to_image_lora_decoder.py`` does: the decoder learns to rebuild an image from that image's
CLIP embedding; at generation time the (unchanged) prior maps the prompt to such an embedding.

Training runs through accelerate (``accelerate launch app.py train lora ...`` for several GPUs: each
process draws its own batches, gradients are averaged). Every batch, noise and timestep draw of step
``s`` comes from a generator seeded by ``(seed, s, process)``, so a resumed run continues exactly as an
uninterrupted one. Checkpoints hold only the trainable (LoRA) weights, optimizer, schedule and EMA state.
Memory options for one large GPU: bf16/fp16 mixed precision (frozen weights stored in that dtype, LoRA
weights in fp32), gradient checkpointing, 8-bit AdamW (bitsandbytes, where installed), latents and text
embeddings computed once and cached (the text encoders then leave the GPU). The caches are memory-mapped
``.npy`` files under ``OUT/cache`` (``latents/``, ``cond/``; bf16 kept bit for bit), written chunk by chunk
and reused by a resumed run while the base, resolution and data are unchanged, so neither FLUX's T5
embeddings (~4 MiB a caption in bf16) nor the latents have to fit in RAM: only a step's rows are read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from db.errors import DependencyError, InputError
from generation.lora import LORA_WEIGHT_NAME, save_peft_lora
from generation.msdm.pipeline import model_kind_for

if TYPE_CHECKING:
    from db.workspace import Workspace

log = logging.getLogger(__name__)

MixedPrecision = Literal["no", "bf16", "fp16"]
Optimizer = Literal["adamw", "adamw8bit"]
PredictionType = Literal["auto", "epsilon", "v_prediction"]
WeightingScheme = Literal["none", "logit_normal", "mode", "sigma_sqrt", "cosmap"]
TrainerKind = Literal["flux", "sd", "sdxl", "kandinsky22", "kandinsky3"]
ImageLike = Image.Image | str | Path
Example = tuple[ImageLike, str]

TRAIN_META_FILE = "lora_train.json"
CHECKPOINT_DIR = "checkpoints"
CACHE_DIR = "cache"
CACHE_META_FILE = "cache.json"
#: Images or captions encoded per chunk while a cache is built.
CACHE_CHUNK = 16
VALIDATION_DIR = "validation"
#: Samples (examples in order, cycled; fixed noise and times) of the before/after loss.
EVAL_SAMPLES = 32

#: Pipeline class name -> trainer kind.
PIPELINE_TRAINERS: dict[str, TrainerKind] = {
    "FluxPipeline": "flux",
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "KandinskyV22CombinedPipeline": "kandinsky22",
    "KandinskyV22Pipeline": "kandinsky22",
    "Kandinsky3Pipeline": "kandinsky3",
}

#: Default LoRA target modules of each denoiser (attention projections; FLUX also its context stream).
DENOISER_TARGETS: dict[TrainerKind, tuple[str, ...]] = {
    "flux": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
    "sd": ("to_q", "to_k", "to_v", "to_out.0"),
    "sdxl": ("to_q", "to_k", "to_v", "to_out.0"),
    # the 2.2 decoder's SimpleCrossAttn blocks project the image-embedding tokens with add_k/add_v
    "kandinsky22": ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"),
    "kandinsky3": ("to_q", "to_k", "to_v", "to_out.0"),
}
#: Text encoders that take a LoRA with ``train_text_encoder`` (the diffusers training scripts' choice).
TEXT_ENCODERS: dict[TrainerKind, tuple[str, ...]] = {
    "flux": ("text_encoder",),
    "sd": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "kandinsky22": (),  # the decoder sees no text: its condition is a CLIP image embedding
    "kandinsky3": (),
}
CLIP_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


# ---------------------------------------------------------------------------------------------- config


@dataclass
class LoraTrainConfig:
    """What ``train lora`` asks for.

    Attributes
    ----------
    base
        Hub id or folder of the base pipeline (a saved MSDM folder works too).
    out_dir
        Where the adapter, checkpoints, validation images and ``lora_train.json`` go.
    dataset, split
        Registered dataset (and optional ``split`` value) to train on when no examples are given.
    rank, alpha
        LoRA rank and scale numerator (``alpha=None`` means ``alpha = rank``, i.e. scale 1).
    steps, lr, batch_size, gradient_accumulation_steps
        Optimizer steps, learning rate, images per process per micro-batch, micro-batches per step.
    resolution
        Square training side in pixels; ``None`` = the pipeline's native size.
    lr_scheduler, lr_warmup_steps, max_grad_norm
        diffusers ``get_scheduler`` name, warm-up steps and gradient clipping.
    train_text_encoder
        Also put a LoRA on the text encoder(s) (turns text-embedding caching off).
    target_modules
        Denoiser modules to adapt; ``None`` = :data:`DENOISER_TARGETS` of the family.
    ema_decay
        Keep an exponential moving average of the LoRA weights (saved instead of the raw ones); ``None`` = off.
    mixed_precision
        ``no``, ``bf16`` or ``fp16`` (CUDA only; the CPU always trains in fp32).
    gradient_checkpointing
        Recompute activations in the backward pass (less memory, ~30 % more compute).
    optimizer
        ``adamw`` or ``adamw8bit`` (needs ``bitsandbytes``).
    cache_latents, cache_text_embeddings
        Encode every image / caption once before training, into memory-mapped files under ``out_dir/cache``.
    prediction_type
        UNet families: ``auto`` (the scheduler's), ``epsilon`` or ``v_prediction``.
    weighting_scheme, logit_mean, logit_std, mode_scale
        FLUX: how flow-matching times are drawn and weighted (diffusers' SD3/FLUX options).
    flux_guidance
        FLUX-dev: the guidance value fed to the guidance embedding during training.
    max_sequence_length
        FLUX T5 tokens; ``None`` = ``min(512, tokenizer_2.model_max_length)``.
    checkpoint_every, keep_checkpoints
        Save a resumable checkpoint every N steps; keep the last K.
    validate_every, validation_prompts, validation_steps, validation_guidance
        Validation images every N steps (0 = only at the end); prompts default to the first two captions.
    seed
        Seed of the LoRA initialisation and of every draw.
    resume
        Continue from the latest checkpoint in ``out_dir/checkpoints``.
    count_flops
        Count the FLOPs of one training step with ``torch.utils.flop_counter`` (recorded in the result).
    device
        ``auto``, ``cuda`` or ``cpu`` (under ``accelerate launch`` each process takes its own GPU).
    """

    base: str
    out_dir: str | Path
    dataset: str | None = None
    split: str | None = None
    rank: int = 16
    alpha: float | None = None
    steps: int = 1000
    lr: float = 1e-4
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    resolution: int | None = None
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    train_text_encoder: bool = False
    target_modules: tuple[str, ...] | None = None
    ema_decay: float | None = None
    mixed_precision: MixedPrecision = "bf16"
    gradient_checkpointing: bool = False
    optimizer: Optimizer = "adamw"
    cache_latents: bool = True
    cache_text_embeddings: bool = True
    prediction_type: PredictionType = "auto"
    weighting_scheme: WeightingScheme = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    flux_guidance: float = 1.0
    max_sequence_length: int | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 0
    validation_prompts: tuple[str, ...] = ()
    validation_steps: int | None = None
    validation_guidance: float | None = None
    seed: int = 0
    resume: bool = False
    count_flops: bool = True
    device: str = "auto"

    def validate(self) -> None:
        """Refuse impossible settings with a ``ValueError`` naming the field and the rule."""
        positive = {
            "rank": self.rank,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"LoRA training: {name} must be a whole number >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"LoRA training: lr must be a positive number, got {self.lr!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise InputError(f"LoRA training: alpha must be positive, got {self.alpha!r}")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 8):
            raise InputError(f"LoRA training: resolution must be whole pixels >= 8, got {self.resolution!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise InputError(f"LoRA training: mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise InputError(f"LoRA training: optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.prediction_type not in ("auto", "epsilon", "v_prediction"):
            raise InputError(
                f"LoRA training: prediction_type must be auto, epsilon or v_prediction, got {self.prediction_type!r}"
            )
        if self.weighting_scheme not in ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap"):
            raise InputError(f"LoRA training: unknown weighting_scheme {self.weighting_scheme!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise InputError(f"LoRA training: ema_decay must be between 0 and 1, got {self.ema_decay!r}")
        if self.validate_every < 0 or self.lr_warmup_steps < 0:
            raise InputError("LoRA training: validate_every and lr_warmup_steps must not be negative")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (paths as text)."""
        data = dataclasses.asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


@dataclass
class LoraTrainResult:
    """What :func:`train_lora` did.

    Attributes
    ----------
    out_dir, adapter_path
        The output folder and the saved ``pytorch_lora_weights.safetensors``.
    family, pipeline
        Trainer kind (``flux``/``sd``/``sdxl``) and the base pipeline class.
    losses
        Training loss of every step (resumed runs include the earlier steps).
    eval_loss_before, eval_loss_after
        Mean loss over ``EVAL_SAMPLES`` fixed draws (same examples, noise, times) before and after training.
    trainable_parameters, base_parameters
        LoRA parameters and the frozen parameters of the adapted modules plus the rest of the pipeline.
    wall_time_s, device_hours, num_processes, device
        Wall-clock time (resumed runs: all runs up to their last checkpoint plus this one),
        ``wall_time_s * num_processes / 3600``, processes and device label.
    start_step
        Step this run started from (> 0 when resumed).
    step_flops
        FLOPs of one optimizer step on one process (``None`` when not counted).
    validation_images
        Paths of the validation grids written.
    """

    out_dir: Path
    adapter_path: Path
    family: TrainerKind
    pipeline: str
    losses: list[float]
    eval_loss_before: float
    eval_loss_after: float
    trainable_parameters: int
    base_parameters: int
    wall_time_s: float
    device_hours: float
    num_processes: int
    device: str
    start_step: int
    step_flops: int | None
    validation_images: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (paths as text)."""
        data = dataclasses.asdict(self)
        for key in ("out_dir", "adapter_path"):
            data[key] = str(data[key])
        data["validation_images"] = [str(p) for p in self.validation_images]
        return data


# ---------------------------------------------------------------------------------------------- data


def dataset_examples(
    workspace: Workspace, dataset: str, *, split: str | None = None, case_ids: Sequence[int] | None = None
) -> list[tuple[Path, str]]:
    """``(image path, prompt)`` of a registered dataset's cases, in case order.

    Parameters
    ----------
    workspace
        A ``db.workspace.Workspace``.
    dataset
        Registered dataset name.
    split
        Only cases whose ``split`` column has this value.
    case_ids
        Only these cases (the comparison's training split).

    Raises
    ------
    db.errors.NotFoundError
        For an unknown dataset.
    ValueError
        When no case is left.
    """
    from db.generated import case_rows, dataset_cases

    with workspace.database.session() as session:
        refs = dataset_cases(session, dataset, split=split)
        wanted = {ref.id for ref in refs} if case_ids is None else {ref.id for ref in refs} & set(case_ids)
        rows = case_rows(session, sorted(wanted))
    if not rows:
        where = f" with split {split!r}" if split else ""
        raise InputError(f"dataset {dataset!r} has no cases{where} to train on")
    return [(workspace.store.path(sha), prompt) for _, sha, prompt in rows]


def load_pixels(items: Sequence[ImageLike], resolution: int) -> torch.Tensor:
    """Images as a float tensor in ``[-1, 1]``, ``(N, 3, resolution, resolution)``, centre-cropped."""
    from generation.msdm.train import load_image_tensor

    return torch.stack([load_image_tensor(item, resolution) for item in items]).float() / 127.5 - 1.0


def step_generator(seed: int, step: int, process: int, purpose: str = "train") -> torch.Generator:
    """The CPU generator of one step's draws (depends only on seed, step, process and purpose)."""
    digest = hashlib.sha256(f"medsynth-lora-v1|{seed}|{purpose}|{step}|{process}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


# ---------------------------------------------------------------------------------------------- disk caches

#: torch dtypes numpy cannot hold, stored as same-width integers (bit for bit) and viewed back.
_BIT_VIEWS = {torch.bfloat16: torch.int16}


@dataclass(frozen=True)
class MappedArray:
    """One cached table: a read-only ``np.memmap`` and the torch dtype its rows come back as."""

    array: np.memmap
    dtype: torch.dtype

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows ``indices`` read from disk into a tensor (only these rows are paged in)."""
        chunk = torch.from_numpy(np.ascontiguousarray(self.array[indices.numpy()]))
        return chunk.view(self.dtype) if self.dtype in _BIT_VIEWS else chunk


def _data_identity(examples: Sequence[Example], captions: Sequence[str]) -> str:
    """A digest of the training data: file path, size and mtime, or the pixels of in-memory images; captions."""
    digest = hashlib.sha256()
    for image, caption in zip((img for img, _ in examples), captions, strict=True):
        if isinstance(image, Image.Image):
            digest.update(f"{image.mode}|{image.size}|".encode())
            digest.update(hashlib.sha256(image.tobytes()).digest())
        else:
            path = Path(image).expanduser().resolve()
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        digest.update(caption.encode() + b"\0")
    return digest.hexdigest()


def _cache_key(base: str, kind: str, what: str, resolution: int, identity: str) -> str:
    text = json.dumps([base, kind, what, resolution, identity, CACHE_CHUNK])
    return hashlib.sha256(text.encode()).hexdigest()


def build_cache(
    folder: Path, key: str, n_rows: int, encode: Callable[[int, int], dict[str, torch.Tensor]], chunk: int = CACHE_CHUNK
) -> bool:
    """Write the tables ``encode(start, stop)`` returns, chunk by chunk, into memory-mapped ``.npy`` files.

    A cache whose ``cache.json`` holds the same ``key`` is kept as it is (a resumed run reuses it). Files
    are written as ``*.npy.partial`` and renamed when complete, and ``cache.json`` last, so an interrupted
    build is redone. Returns whether anything was encoded.
    """
    meta_path = folder / CACHE_META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") == key and all((folder / f"{name}.npy").is_file() for name in meta.get("dtypes", {})):
            return False
        meta_path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    maps: dict[str, np.memmap] = {}
    dtypes: dict[str, str] = {}
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        tables = encode(start, stop)
        for name, value in tables.items():
            value = value.detach().cpu()
            if value.is_floating_point() and value.dtype not in (torch.float16, torch.bfloat16):
                value = value.float()
            if name not in maps:
                dtypes[name] = str(value.dtype).removeprefix("torch.")
                stored = _BIT_VIEWS.get(value.dtype, value.dtype)
                np_dtype = torch.empty(0, dtype=stored).numpy().dtype
                maps[name] = np.lib.format.open_memmap(
                    folder / f"{name}.npy.partial", mode="w+", dtype=np_dtype, shape=(n_rows, *value.shape[1:])
                )
            if value.dtype in _BIT_VIEWS:
                value = value.view(_BIT_VIEWS[value.dtype])
            maps[name][start:stop] = value.numpy()
    for name, array in maps.items():
        array.flush()
        del array
        (folder / f"{name}.npy.partial").replace(folder / f"{name}.npy")
    maps.clear()
    meta_path.write_text(json.dumps({"key": key, "rows": n_rows, "dtypes": dtypes}) + "\n", encoding="utf-8")
    return True


def open_cache(folder: Path) -> dict[str, MappedArray]:
    """The tables of a cache :func:`build_cache` wrote, memory-mapped read-only (nothing is read yet)."""
    meta = json.loads((folder / CACHE_META_FILE).read_text(encoding="utf-8"))
    return {
        name: MappedArray(np.load(folder / f"{name}.npy", mmap_mode="r"), getattr(torch, dtype))
        for name, dtype in meta["dtypes"].items()
    }


# ---------------------------------------------------------------------------------------------- families


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def trainer_kind(pipe: Any) -> TrainerKind:
    """The trainer kind of a loaded pipeline (its class name).

    Raises
    ------
    ValueError
        For an unsupported pipeline (e.g. PixArt), naming the supported ones.
    """
    name = type(pipe).__name__
    if name in PIPELINE_TRAINERS:
        return PIPELINE_TRAINERS[name]
    raise InputError(f"train lora does not support {name}; supported pipelines: {', '.join(sorted(PIPELINE_TRAINERS))}")


@contextmanager
def _in_fp32(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``module`` in fp32 for the block (VAEs overflow in fp16), then restore its dtype."""
    dtype = next(module.parameters()).dtype
    if dtype != torch.float32:
        module.to(torch.float32)
    try:
        yield module
    finally:
        if dtype != torch.float32:
            module.to(dtype)


class Family:
    """How one family encodes text and images and what its denoiser is trained to predict.

    ``image_conditioned`` families (Kandinsky 2.2's decoder) are conditioned on an embedding of the
    training image itself (:meth:`encode_condition_images`), not on its caption. ``peft_inject``
    families have no diffusers adapter mixin or LoRA loader: the LoRA is injected by module name with
    peft and saved with :func:`generation.lora.save_peft_lora`.
    """

    kind: TrainerKind
    denoiser_name: str
    image_conditioned = False
    peft_inject = False

    def __init__(self, pipe: Any, config: LoraTrainConfig) -> None:
        self.pipe = pipe
        self.config = config

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.vae

    def call_kwargs(self) -> dict[str, Any]:
        """Extra pipeline-call arguments for validation images."""
        return {}

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Posterior mean and std, ``(N, 2, C, h, w)``, unscaled; the VAE runs in fp32."""
        with _in_fp32(self.vae) as vae:
            dist = vae.encode(pixels.to(device, torch.float32)).latent_dist
            return torch.stack([dist.mean, dist.std], dim=1).float().cpu()

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents to the scale the denoiser was trained on."""
        return latents * float(self.vae.config.scaling_factor)

    def encode_text(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """Conditioning tensors of ``prompts`` (batch first)."""
        raise NotImplementedError

    def encode_condition_images(self, images: Sequence[ImageLike], device: torch.device) -> dict[str, torch.Tensor]:
        """Conditioning tensors computed from the training images (``image_conditioned`` families)."""
        raise NotImplementedError

    def loss(
        self, model: torch.nn.Module, x0: torch.Tensor, cond: dict[str, torch.Tensor], gen: torch.Generator
    ) -> torch.Tensor:
        """The training loss of one batch of scaled latents ``x0`` (draws from ``gen``)."""
        raise NotImplementedError


class _UNetFamily(Family):
    """Epsilon / v prediction on a DDPM schedule (SD 1/2/XL, MSDM)."""

    denoiser_name = "unet"

    def __init__(self, pipe: Any, config: LoraTrainConfig) -> None:
        from diffusers import DDPMScheduler

        super().__init__(pipe, config)
        self.schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        configured = self.schedule.config.get("prediction_type", "epsilon")
        self.prediction_type = configured if config.prediction_type == "auto" else config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(
                f"{type(pipe).__name__}: prediction type {self.prediction_type!r} cannot be trained here; "
                "set prediction_type to epsilon or v_prediction"
            )

    def predict(self, model: torch.nn.Module, noisy: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]):
        raise NotImplementedError

    def loss(
        self, model: torch.nn.Module, x0: torch.Tensor, cond: dict[str, torch.Tensor], gen: torch.Generator
    ) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.randint(0, self.schedule.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(x0.device)
        noisy = self.schedule.add_noise(x0, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.schedule.get_velocity(x0, noise, t)
        pred = self.predict(model, noisy, t, cond)
        return F.mse_loss(pred.float(), target.float())


class SDFamily(_UNetFamily):
    """Stable Diffusion 1/2 and MSDM: CLIP (or any) text tokens by cross-attention."""

    kind: TrainerKind = "sd"

    def encode_text(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompts, device, 1, False)
        return {"prompt_embeds": embeds}

    def predict(self, model, noisy, t, cond):
        return model(noisy, t, encoder_hidden_states=cond["prompt_embeds"]).sample


class SDXLFamily(_UNetFamily):
    """SDXL: two CLIP encoders, pooled text and size/crop ids added to the time embedding."""

    kind: TrainerKind = "sdxl"

    def encode_text(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"prompt_embeds": embeds, "pooled": pooled}

    def predict(self, model, noisy, t, cond):
        side = noisy.shape[-1] * int(self.pipe.vae_scale_factor)
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=noisy.device, dtype=cond["pooled"].dtype)
        added = {"text_embeds": cond["pooled"], "time_ids": time_ids.repeat(noisy.shape[0], 1)}
        return model(noisy, t, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=added).sample


class FluxFamily(Family):
    """FLUX: rectified flow on 2x2-packed latents, CLIP pooled + T5 tokens, optional guidance embedding."""

    kind: TrainerKind = "flux"
    denoiser_name = "transformer"

    def __init__(self, pipe: Any, config: LoraTrainConfig) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        super().__init__(pipe, config)
        self.schedule = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        tokenizer_max = int(getattr(pipe.tokenizer_2, "model_max_length", 512) or 512)
        self.max_sequence_length = config.max_sequence_length or min(512, tokenizer_max)

    def call_kwargs(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        return (latents - float(cfg.shift_factor or 0.0)) * float(cfg.scaling_factor)

    def encode_text(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompts, prompt_2=None, device=device, max_sequence_length=self.max_sequence_length
        )
        return {"prompt_embeds": embeds, "pooled": pooled}

    def loss(
        self, model: torch.nn.Module, x0: torch.Tensor, cond: dict[str, torch.Tensor], gen: torch.Generator
    ) -> torch.Tensor:
        from diffusers import FluxPipeline
        from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

        cfg = self.config
        batch, channels, height, width = x0.shape
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        u = compute_density_for_timestep_sampling(
            cfg.weighting_scheme, batch, cfg.logit_mean, cfg.logit_std, cfg.mode_scale, generator=gen
        )
        n_train = int(self.schedule.config.num_train_timesteps)
        index = (u * n_train).long().clamp(0, len(self.schedule.timesteps) - 1)
        timesteps = self.schedule.timesteps[index].to(x0.device)
        sigmas = self.schedule.sigmas[index].to(x0.device, x0.dtype).view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * x0 + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)
        image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, x0.device, x0.dtype)
        text_ids = torch.zeros(cond["prompt_embeds"].shape[1], 3, device=x0.device, dtype=x0.dtype)
        unwrapped = getattr(model, "module", model)
        guidance = None
        if unwrapped.config.guidance_embeds:
            guidance = torch.full((batch,), cfg.flux_guidance, device=x0.device, dtype=x0.dtype)
        pred = model(
            hidden_states=packed,
            timestep=timesteps / 1000.0,
            guidance=guidance,
            pooled_projections=cond["pooled"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=text_ids,
            img_ids=image_ids,
        ).sample
        factor = int(self.pipe.vae_scale_factor)
        pred = FluxPipeline._unpack_latents(pred, height * factor, width * factor, factor)
        weighting = compute_loss_weighting_for_sd3(cfg.weighting_scheme, sigmas)
        return (weighting.float() * (pred.float() - (noise - x0).float()) ** 2).mean()


class _MoVQMixin:
    """Kandinsky 2.2 / 3 latents: the MoVQ encoder's output, unquantised and unscaled (the pipelines
    decode ``movq.decode(latents, force_not_quantize=True)`` with no scaling factor)."""

    pipe: Any

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.movq

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        """MoVQ latents as ``(N, 2, C, h, w)`` with a zero std (the encoder is deterministic)."""
        with _in_fp32(self.vae) as movq:
            latents = movq.encode(pixels.to(device, torch.float32)).latents.float().cpu()
        return torch.stack([latents, torch.zeros_like(latents)], dim=1)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class Kandinsky22Family(_MoVQMixin, _UNetFamily):
    """Kandinsky 2.2 decoder: epsilon prediction conditioned on the CLIP image embedding of the target
    image (``added_cond_kwargs={"image_embeds": ...}``), as diffusers' ``train_text_to_image_lora_decoder.py``;
    the prior, which maps text to that embedding, stays as it is. The UNet's extra (learned-variance)
    output channels are not trained."""

    kind: TrainerKind = "kandinsky22"
    image_conditioned = True
    peft_inject = True

    def __init__(self, pipe: Any, config: LoraTrainConfig) -> None:
        for name in ("prior_image_encoder", "prior_image_processor", "movq"):
            if getattr(pipe, name, None) is None:
                raise InputError(
                    f"{type(pipe).__name__} has no {name}: Kandinsky 2.2 LoRA training needs the combined "
                    "(prior + decoder) pipeline, whose CLIP image encoder makes the decoder's condition"
                )
        super().__init__(pipe, config)

    @torch.no_grad()
    def encode_condition_images(self, images: Sequence[ImageLike], device: torch.device) -> dict[str, torch.Tensor]:
        pil = [item if isinstance(item, Image.Image) else Image.open(item) for item in images]
        pixels = self.pipe.prior_image_processor([im.convert("RGB") for im in pil], return_tensors="pt").pixel_values
        encoder = self.pipe.prior_image_encoder
        dtype = next(encoder.parameters()).dtype
        return {"image_embeds": encoder(pixels.to(device, dtype)).image_embeds.float().cpu()}

    def predict(self, model, noisy, t, cond):
        added = {"image_embeds": cond["image_embeds"]}
        return model(noisy, t, encoder_hidden_states=None, added_cond_kwargs=added).sample[:, : noisy.shape[1]]


class Kandinsky3Family(_MoVQMixin, _UNetFamily):
    """Kandinsky 3: epsilon prediction by ``Kandinsky3UNet`` on T5 token embeddings with their attention mask."""

    kind: TrainerKind = "kandinsky3"
    peft_inject = True

    def encode_text(self, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        embeds, _, mask, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device)
        return {"prompt_embeds": embeds, "attention_mask": mask}

    def predict(self, model, noisy, t, cond):
        return model(noisy, t, encoder_hidden_states=cond["prompt_embeds"],
                     encoder_attention_mask=cond["attention_mask"]).sample  # fmt: skip


FAMILIES: dict[TrainerKind, type[Family]] = {
    "flux": FluxFamily,
    "sd": SDFamily,
    "sdxl": SDXLFamily,
    "kandinsky22": Kandinsky22Family,
    "kandinsky3": Kandinsky3Family,
}


# ---------------------------------------------------------------------------------------------- helpers


def _load_base(config: LoraTrainConfig, device: torch.device, dtype: torch.dtype) -> Any:
    """Load the base pipeline (diffusers or saved MSDM folder) onto ``device`` in ``dtype``."""
    from generation.msdm.pipeline import MSDM_META_FILE
    from generation.pipelines import ModelSpec, load_pipeline

    kind = "msdm" if (Path(config.base).expanduser() / MSDM_META_FILE).is_file() else "diffusers"
    spec = ModelSpec(name="lora-base", kind=kind, source=config.base)  # type: ignore[arg-type]
    return load_pipeline(spec, device=device, dtype=dtype).pipe


def allow_mixed_precision(mixed_precision: str) -> None:
    """Let a new ``Accelerator`` use ``mixed_precision`` in this process.

    accelerate keeps one global state and refuses a second ``Accelerator`` with another precision; a
    single process that trains several models in a row (``compare``) resets it here. Under several
    processes (``accelerate launch``) the state is left alone.
    """
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and str(shared.get("mixed_precision")) != mixed_precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=False)


def _accelerator(mixed_precision: MixedPrecision, accumulation: int) -> Any:
    """An ``Accelerator`` with ``mixed_precision`` (see :func:`allow_mixed_precision`)."""
    from accelerate import Accelerator

    allow_mixed_precision(mixed_precision)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=accumulation)


def _make_optimizer(kind: Optimizer, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW.

    Raises
    ------
    ImportError
        For ``adamw8bit`` when bitsandbytes is not installed (with the command that installs it).
    """
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise DependencyError(
                "8-bit Adam needs bitsandbytes (CUDA only): pip install bitsandbytes, or use --optimizer adamw"
            ) from exc
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-4)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)


def _trainable(modules: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    return {
        f"{component}.{name}": param
        for component, module in modules.items()
        for name, param in module.named_parameters()
        if param.requires_grad
    }


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest ``step_*.pt`` in ``out_dir/checkpoints`` (``None`` when there is none)."""
    found = sorted((Path(out_dir) / CHECKPOINT_DIR).glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def _grid(images: Sequence[Image.Image]) -> Image.Image:
    width, height = images[0].size
    grid = Image.new("RGB", (width * len(images), height))
    for k, image in enumerate(images):
        grid.paste(image.convert("RGB"), (k * width, 0))
    return grid


# ---------------------------------------------------------------------------------------------- training


@dataclass
class _Setup:
    """Everything :meth:`LoraTrainer.setup` builds (present only after it ran)."""

    examples: Sequence[Example]
    out: Path
    accelerator: Any
    device: torch.device
    weight_dtype: torch.dtype
    pipe: Any
    kind: TrainerKind
    family: Family
    preset: Any
    resolution: int
    lora_config: Any
    adapted: dict[str, torch.nn.Module]
    models: dict[str, torch.nn.Module]
    params: list[torch.nn.Parameter]
    n_trainable: int
    n_base: int
    unique: list[str]
    caption_index: torch.Tensor
    embed: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    text_table: dict[str, MappedArray] | None
    latent_table: MappedArray | None
    optimizer: Any
    lr_schedule: Any
    ema: Any
    fingerprint: str

    @property
    def model(self) -> torch.nn.Module:
        """The (prepared) denoiser."""
        return self.models[self.family.denoiser_name]


class LoraTrainer:
    """LoRA fine-tuning as a trainer object, in the manner of diffusers' training scripts and utilities.

    ``setup()`` loads the base pipeline, puts LoRA adapters on it, builds the latent and embedding caches,
    the optimizer, schedule and EMA; ``step()`` runs one optimizer step and returns its loss;
    ``checkpoint(path)`` / ``resume(path)`` write and read the resumable state (LoRA weights, optimizer,
    schedule, EMA, losses); ``save(path)`` writes the adapter where ``models add --lora`` finds it;
    ``train()`` runs the whole loop (checkpoints, validation images, the adapter card). Every draw of step
    ``s`` comes from a generator seeded by ``(seed, s, process)``, so a resumed trainer continues exactly as
    an uninterrupted one.

    Examples
    --------
    ``trainer = LoraTrainer(config, examples); trainer.setup(); loss = trainer.step()``;
    ``trainer.checkpoint(path)``; later ``other.setup(); other.resume(path); other.step()``.
    """

    def __init__(
        self,
        config: LoraTrainConfig,
        examples: Sequence[Example] | None = None,
        *,
        workspace: Workspace | None = None,
        progress: bool = True,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.config = config
        self._examples = examples
        self._workspace = workspace
        self.progress = progress
        self.on_step = on_step
        #: Optimizer steps done (resumed runs count the earlier ones).
        self.global_step = 0
        #: Training loss of every step done.
        self.losses: list[float] = []
        self.start_step = 0
        self.step_flops: int | None = None
        self.validation_images: list[Path] = []
        self._earlier_s = 0.0  # wall time of the runs this one resumes
        self._started = time.perf_counter()
        self._state: _Setup | None = None

    @property
    def state(self) -> _Setup:
        """What :meth:`setup` built (a bug to ask before it ran)."""
        if self._state is None:
            raise RuntimeError("LoraTrainer.setup() has not run")
        return self._state

    # ---- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Load the base, add the LoRA adapters, build the caches, optimizer, schedule and EMA.

        Raises
        ------
        db.errors.InputError
            For impossible settings, an unsupported pipeline, a resolution that is not a multiple of the
            VAE factor, or no training data.
        db.errors.DependencyError
            For ``adamw8bit`` without bitsandbytes.
        """
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel, cast_training_params
        from peft import LoraConfig, inject_adapter_in_model

        from generation.devices import resolve_device
        from generation.presets import PRESETS, detect_family, native_resolution, vae_factor

        config = self.config
        config.validate()
        examples = self._examples
        if examples is None:
            if self._workspace is None or not config.dataset:
                raise InputError(
                    "train lora needs training examples, or a dataset name and a workspace to read it from"
                )
            examples = dataset_examples(self._workspace, config.dataset, split=config.split)
        if not examples:
            raise InputError("no training examples given")
        self._started = time.perf_counter()
        out = Path(config.out_dir).expanduser()
        on_cuda = resolve_device(config.device).type == "cuda"
        mixed: MixedPrecision = config.mixed_precision if on_cuda else "no"
        accelerator = _accelerator(mixed, config.gradient_accumulation_steps)
        device = accelerator.device if on_cuda else torch.device("cpu")
        weight_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed]

        pipe = _load_base(config, device, weight_dtype)
        kind = trainer_kind(pipe)
        family = FAMILIES[kind](pipe, config)
        factor = vae_factor(pipe)
        preset = PRESETS[detect_family(type(pipe).__name__, config.base)]
        # the preset's size where the pipeline does not say (Kandinsky 2.2's combined pipeline: 768 px)
        resolution = config.resolution or native_resolution(pipe) or preset.resolution or 512
        if resolution % factor:
            raise InputError(
                f"resolution {resolution} px is not a multiple of {type(pipe).__name__}'s VAE factor {factor}: "
                f"use {resolution - resolution % factor or factor} or {resolution - resolution % factor + factor}"
            )

        # ---- frozen base, LoRA adapters -----------------------------------------------------
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
        torch.manual_seed(config.seed)  # LoRA A matrices (B starts at zero)
        alpha = config.alpha if config.alpha is not None else config.rank
        denoiser = family.denoiser
        targets = list(config.target_modules or DENOISER_TARGETS[kind])
        lora_config = LoraConfig(r=config.rank, lora_alpha=alpha, init_lora_weights=True, target_modules=targets)
        if family.peft_inject:  # no adapter mixin on the model class: peft wraps the modules by name
            inject_adapter_in_model(lora_config, denoiser, adapter_name="default")
        else:
            denoiser.add_adapter(lora_config)
        adapted: dict[str, torch.nn.Module] = {family.denoiser_name: denoiser}
        if config.train_text_encoder and not TEXT_ENCODERS[kind]:
            raise InputError(
                f"{type(pipe).__name__}: no text-encoder LoRA for {kind} (train_text_encoder must be off)"
            )
        if config.train_text_encoder:
            for name in TEXT_ENCODERS[kind]:
                encoder = getattr(pipe, name, None)
                if encoder is None:
                    continue
                # peft directly: transformers' own add_adapter wants a newer peft than the pinned one
                text_lora = LoraConfig(r=config.rank, lora_alpha=alpha, target_modules=list(CLIP_TEXT_TARGETS))
                inject_adapter_in_model(text_lora, encoder, adapter_name="default")
                adapted[name] = encoder
        for module in adapted.values():
            module.train()
            cast_training_params(module, dtype=torch.float32)
            if config.gradient_checkpointing:
                _enable_gradient_checkpointing(module)
        params = list(_trainable(adapted).values())
        n_trainable = sum(p.numel() for p in params)
        n_base = sum(_count(c) for c in pipe.components.values() if isinstance(c, torch.nn.Module)) - n_trainable

        # ---- data: captions and latents (cached once, or per step) --------------------------
        captions = [caption for _, caption in examples]
        unique = sorted(set(captions))
        caption_index = torch.tensor([unique.index(c) for c in captions])
        cache_text = config.cache_text_embeddings and not config.train_text_encoder

        def embed(indices: torch.Tensor) -> dict[str, torch.Tensor]:
            return family.encode_text([unique[i] for i in indices.tolist()], device)

        if family.image_conditioned:  # one condition per example (its image), not per caption

            def embed(indices: torch.Tensor) -> dict[str, torch.Tensor]:
                return family.encode_condition_images([examples[i][0] for i in indices.tolist()], device)

            caption_index = torch.arange(len(examples))
            n_conditions = len(examples)
        else:
            n_conditions = len(unique)

        # Caches live on disk as memory-mapped .npy files under out/cache (reused by a resumed run), so a
        # large dataset's T5 embeddings or latents never have to fit in RAM.
        cache_root = out / CACHE_DIR
        identity = _data_identity(examples, captions)
        text_table: dict[str, MappedArray] | None = None
        if cache_text:
            text_key = _cache_key(config.base, kind, "cond", resolution, identity)

            def embed_chunk(start: int, stop: int) -> dict[str, torch.Tensor]:
                with torch.no_grad():
                    return embed(torch.arange(start, stop))

            if accelerator.is_main_process:
                build_cache(cache_root / "cond", text_key, n_conditions, embed_chunk)
            accelerator.wait_for_everyone()
            text_table = open_cache(cache_root / "cond")
        latent_table: MappedArray | None = None
        if config.cache_latents:
            latent_key = _cache_key(config.base, kind, "latents", resolution, identity)

            def latent_chunk(start: int, stop: int) -> dict[str, torch.Tensor]:
                pixels = load_pixels([img for img, _ in examples[start:stop]], resolution)
                return {"latents": family.encode_images(pixels, device)}

            if accelerator.is_main_process:
                build_cache(cache_root / "latents", latent_key, len(examples), latent_chunk)
            accelerator.wait_for_everyone()
            latent_table = open_cache(cache_root / "latents")["latents"]

        # ---- optimizer, schedule, EMA -------------------------------------------------------
        optimizer = _make_optimizer(config.optimizer, params, config.lr)
        lr_schedule = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.steps
        )
        ema = EMAModel(params, decay=config.ema_decay) if config.ema_decay is not None else None
        prepared = accelerator.prepare(*adapted.values(), optimizer)
        models, optimizer = dict(zip(adapted, prepared[:-1], strict=True)), prepared[-1]
        if ema is not None:
            ema.to(device)
        self._state = _Setup(
            examples=examples, out=out, accelerator=accelerator, device=device, weight_dtype=weight_dtype,
            pipe=pipe, kind=kind, family=family, preset=preset, resolution=resolution, lora_config=lora_config,
            adapted=adapted, models=models, params=params, n_trainable=n_trainable, n_base=n_base, unique=unique,
            caption_index=caption_index, embed=embed, text_table=text_table, latent_table=latent_table,
            optimizer=optimizer, lr_schedule=lr_schedule, ema=ema,
            fingerprint=_fingerprint(config, kind, resolution, len(examples)),
        )  # fmt: skip

    # ---- batches ----------------------------------------------------------------------------

    def _batch_latents(self, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        s = self.state
        stats = s.latent_table.rows(indices) if s.latent_table is not None else None
        if stats is None:
            pixels = load_pixels([s.examples[i][0] for i in indices.tolist()], s.resolution)
            stats = s.family.encode_images(pixels, s.device)
        sample = stats[:, 0] + stats[:, 1] * torch.randn(stats[:, 0].shape, generator=gen)
        return s.family.scale_latents(sample).to(s.device, s.weight_dtype)

    def _batch_cond(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.state
        rows = s.caption_index[indices]
        if s.text_table is not None:
            return {key: value.rows(rows).to(s.device, s.weight_dtype) for key, value in s.text_table.items()}
        return {key: value.to(s.weight_dtype) for key, value in s.embed(rows).items()}

    def _loss(self, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        s = self.state
        return s.family.loss(s.model, self._batch_latents(indices, gen), self._batch_cond(indices), gen)

    # ---- training ---------------------------------------------------------------------------

    def step(self, batch: Sequence[torch.Tensor] | None = None) -> float:
        """One optimizer step (``gradient_accumulation_steps`` micro-batches); returns its mean loss.

        ``batch`` gives the example indices of each micro-batch; ``None`` (what :meth:`train` does) draws
        them from the step's seeded generator, which also draws the step's noise and times.
        """
        s, config = self.state, self.config
        accelerator = s.accelerator
        if batch is not None and len(batch) != config.gradient_accumulation_steps:
            raise InputError(
                f"a step takes {config.gradient_accumulation_steps} micro-batch(es) of example indices, "
                f"got {len(batch)}"
            )
        gen = step_generator(config.seed, self.global_step, accelerator.process_index)
        total = 0.0
        for micro in range(config.gradient_accumulation_steps):
            if batch is None:
                indices = torch.randint(len(s.examples), (config.batch_size,), generator=gen)
            else:
                indices = torch.as_tensor(batch[micro], dtype=torch.long)
            with accelerator.accumulate(s.model):
                with accelerator.autocast():
                    loss = self._loss(indices, gen)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(s.params, config.max_grad_norm)
                s.optimizer.step()
                s.lr_schedule.step()
                s.optimizer.zero_grad(set_to_none=True)
            total += float(loss.detach()) / config.gradient_accumulation_steps
        if s.ema is not None:
            s.ema.step(s.params)
        self.global_step += 1
        self.losses.append(total)
        return total

    def eval_loss(self) -> float:
        """Mean loss over ``EVAL_SAMPLES`` fixed draws (examples in order, fixed noise and times)."""
        s, config = self.state, self.config
        gen = step_generator(config.seed, 0, 0, "eval")
        total, n_eval = 0.0, max(EVAL_SAMPLES, config.batch_size)
        with torch.no_grad(), s.accelerator.autocast():
            for start in range(0, n_eval, config.batch_size):
                indices = torch.arange(start, min(start + config.batch_size, n_eval)) % len(s.examples)
                total += float(self._loss(indices, gen)) * len(indices)
        return total / n_eval

    def elapsed_s(self) -> float:
        """Training wall time so far, the runs this one resumes included."""
        return self._earlier_s + time.perf_counter() - self._started

    # ---- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, path: str | Path | None = None) -> Path | None:
        """Write the resumable state; ``None`` = ``out/checkpoints/step_N.pt``, keeping the last K there.

        Only the main process writes; the others return ``None``.
        """
        s = self.state
        if not s.accelerator.is_main_process:
            return None
        folder = s.out / CHECKPOINT_DIR
        target = Path(path) if path is not None else folder / f"step_{self.global_step:07d}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.global_step,
            "fingerprint": s.fingerprint,
            "trainable": {k: v.detach().cpu().clone() for k, v in _trainable(s.adapted).items()},
            "optimizer": s.optimizer.state_dict(),
            "lr_scheduler": s.lr_schedule.state_dict(),
            "ema": s.ema.state_dict() if s.ema is not None else None,
            "losses": self.losses,
            "elapsed_s": self.elapsed_s(),
        }
        tmp = target.with_name(target.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(target)
        if path is None:
            saved = sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
            for old in saved[: -self.config.keep_checkpoints]:
                old.unlink()
        return target

    def resume(self, path: str | Path | None = None) -> int:
        """Continue from a checkpoint (``None`` = the latest in ``out/checkpoints``, if any); returns its step.

        Raises
        ------
        db.errors.InputError
            When the checkpoint was made with other settings or data.
        """
        s = self.state
        checkpoint = Path(path) if path is not None else latest_checkpoint(s.out)
        if checkpoint is None:
            return self.global_step
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != s.fingerprint:
            raise InputError(
                f"checkpoint {checkpoint} was made with other settings or data; train into another --out "
                "or start over without --resume"
            )
        named = _trainable(s.adapted)
        with torch.no_grad():
            for key, value in state["trainable"].items():
                named[key].copy_(value)
        s.optimizer.load_state_dict(state["optimizer"])
        s.lr_schedule.load_state_dict(state["lr_scheduler"])
        if s.ema is not None:
            s.ema.load_state_dict(state["ema"])
            s.ema.to(s.device)
        self.global_step = self.start_step = int(state["step"])
        self.losses = list(state["losses"])
        self._earlier_s = float(state.get("elapsed_s", 0.0))
        return self.global_step

    # ---- output -----------------------------------------------------------------------------

    def save(self, path: str | Path | None = None) -> Path:
        """Write the LoRA adapter (the EMA weights where kept) into ``path`` (``None`` = ``out``); its file."""
        from peft.utils import get_peft_model_state_dict

        s = self.state
        out = Path(path).expanduser() if path is not None else s.out
        if s.ema is not None:
            s.ema.store(s.params)
            s.ema.copy_to(s.params)
        try:
            if s.accelerator.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
                if s.family.peft_inject:
                    unwrapped = s.accelerator.unwrap_model(s.model)
                    save_peft_lora(out, {s.family.denoiser_name: unwrapped}, {s.family.denoiser_name: s.lora_config})
                else:
                    layers = {
                        f"{name}_lora_layers": get_peft_model_state_dict(s.accelerator.unwrap_model(module))
                        for name, module in s.models.items()
                    }
                    type(s.pipe).save_lora_weights(out, **layers)
        finally:
            if s.ema is not None:
                s.ema.restore(s.params)
        return out / LORA_WEIGHT_NAME

    def validate(self) -> Path | None:
        """Sample the validation prompts with the current weights into ``out/validation/step_N.png``."""
        from generation.batch import SamplingParams, generate_images
        from generation.presets import resolve_sampling

        s, config = self.state, self.config
        if not s.accelerator.is_main_process:
            return None
        prompts = list(config.validation_prompts) or s.unique[:2]
        steps, guidance = resolve_sampling(s.pipe, s.preset, config.validation_steps, config.validation_guidance)
        scheduler = type(s.pipe.scheduler).__name__
        sampling = SamplingParams(
            steps, guidance, s.resolution, s.resolution, scheduler, len(prompts), None, s.family.call_kwargs()
        )
        for module in s.adapted.values():
            module.eval()
        try:
            seeds = [config.seed + k for k in range(len(prompts))]
            images = generate_images(s.pipe, prompts, seeds, sampling, s.device)
        finally:
            for module in s.adapted.values():
                module.train()
        path = s.out / VALIDATION_DIR / f"step_{self.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _grid(images).save(path)
        self.validation_images.append(path)
        return path

    def train(self) -> LoraTrainResult:
        """Set up, resume where asked, run the remaining steps, save the adapter, card and ``lora_train.json``."""
        from tqdm.auto import tqdm

        from generation.devices import device_label

        config = self.config
        self.setup()
        s = self.state
        if config.resume:
            self.resume()
        eval_before = self.eval_loss()
        bar = tqdm(
            range(self.global_step, config.steps),
            initial=self.global_step,
            total=config.steps,
            desc=f"lora {s.kind}",
            disable=not (self.progress and s.accelerator.is_main_process),
        )
        for _ in bar:
            if config.count_flops and self.step_flops is None:
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    value = self.step()
                self.step_flops = int(counter.get_total_flops())
            else:
                value = self.step()
            bar.set_postfix(loss=f"{value:.4f}")
            done = self.global_step
            if done % config.checkpoint_every == 0 and done < config.steps:
                self.checkpoint()
            if self.on_step is not None:
                self.on_step(done, value)
            if config.validate_every and done % config.validate_every == 0 and done < config.steps:
                self.validate()
        bar.close()

        s.accelerator.wait_for_everyone()
        if s.ema is not None:
            s.ema.copy_to(s.params)  # the adapter, the after-loss and the last images use the EMA weights
        eval_after = self.eval_loss()
        adapter = self.save()
        self.validate()
        wall = self.elapsed_s()
        result = LoraTrainResult(
            out_dir=s.out,
            adapter_path=adapter,
            family=s.kind,
            pipeline=type(s.pipe).__name__,
            losses=self.losses,
            eval_loss_before=eval_before,
            eval_loss_after=eval_after,
            trainable_parameters=s.n_trainable,
            base_parameters=s.n_base,
            wall_time_s=wall,
            device_hours=wall * s.accelerator.num_processes / 3600.0,
            num_processes=s.accelerator.num_processes,
            device=device_label(s.device),
            start_step=self.start_step,
            step_flops=self.step_flops,
            validation_images=self.validation_images,
        )
        log.info("LoRA on %s: %d steps in %.0f s, eval loss %.4f -> %.4f", config.base, config.steps, wall,
                 eval_before, eval_after)  # fmt: skip
        if s.accelerator.is_main_process:
            n = len(s.examples)
            meta = {"config": config.to_dict(), "resolution": s.resolution, "n_examples": n, **result.to_dict()}
            (s.out / TRAIN_META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            (s.out / "README.md").write_text(adapter_card(config, result, s.resolution, n), encoding="utf-8")
        return result


def _enable_gradient_checkpointing(module: torch.nn.Module) -> None:
    """Turn on activation recomputation (diffusers' or transformers' switch), or refuse with a message."""
    if hasattr(module, "enable_gradient_checkpointing"):
        if not getattr(module, "_supports_gradient_checkpointing", True):
            raise InputError(
                f"{type(module).__name__} (diffusers {_diffusers_version()}) has no gradient checkpointing: "
                "train without --gradient-checkpointing (use a smaller batch or bf16 instead)"
            )
        module.enable_gradient_checkpointing()
    else:
        module.gradient_checkpointing_enable()


def train_lora(
    config: LoraTrainConfig,
    examples: Sequence[Example] | None = None,
    *,
    workspace: Workspace | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> LoraTrainResult:
    """Train a LoRA adapter on ``(image, caption)`` pairs and save it where ``models add --lora`` finds it.

    ``LoraTrainer(config, examples, ...).train()``; see :class:`LoraTrainer` for the steps.

    Parameters
    ----------
    config
        Settings (see :class:`LoraTrainConfig`).
    examples
        ``(PIL image or path, caption)`` pairs; ``None`` reads ``config.dataset`` from ``workspace``.
    workspace
        A ``db.workspace.Workspace`` (needed only when ``examples`` is ``None``).
    progress
        Show a tqdm bar (main process only).
    on_step
        Called as ``on_step(step, loss)`` after every optimizer step.

    Returns
    -------
    LoraTrainResult

    Raises
    ------
    ValueError
        For impossible settings, an unsupported pipeline, a resolution that is not a multiple of the VAE
        factor, no training data, or a checkpoint made with other settings.
    ImportError
        For ``adamw8bit`` without bitsandbytes.
    """
    return LoraTrainer(config, examples, workspace=workspace, progress=progress, on_step=on_step).train()


def _fingerprint(config: LoraTrainConfig, kind: str, resolution: int, n_examples: int) -> str:
    """What a checkpoint must agree with to be resumed (settings that change the trajectory)."""
    keep = {
        k: v
        for k, v in config.to_dict().items()
        if k not in ("out_dir", "resume", "progress", "validate_every", "validation_prompts", "count_flops", "device")
    }
    text = json.dumps({"config": keep, "kind": kind, "resolution": resolution, "n": n_examples}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def adapter_card(config: LoraTrainConfig, result: LoraTrainResult, resolution: int, n_examples: int) -> str:
    """The README.md written beside the adapter: base, data, settings, losses, time and how to load it."""
    tail = result.losses[-min(20, len(result.losses)) :] or [math.nan]
    lines = [
        f"# LoRA on {config.base}",
        "",
        f"Trained by MedSynth (`generation.lora_train.train_lora`), {result.family} objective, on {n_examples} "
        f"images ({config.dataset or 'given examples'}) at {resolution} px.",
        "",
        f"- rank {config.rank}, alpha {config.alpha if config.alpha is not None else config.rank}; "
        f"{result.trainable_parameters:,} trainable parameters over {result.base_parameters:,} frozen",
        f"- {config.steps} steps, batch {config.batch_size} x {config.gradient_accumulation_steps} accumulation "
        f"x {result.num_processes} processes, lr {config.lr} ({config.lr_scheduler}), EMA {config.ema_decay}",
        f"- mixed precision {config.mixed_precision}, gradient checkpointing {config.gradient_checkpointing}, "
        f"optimizer {config.optimizer}, text encoder trained: {config.train_text_encoder}",
        f"- loss on {EVAL_SAMPLES} fixed draws {result.eval_loss_before:.5f} -> {result.eval_loss_after:.5f}; "
        f"mean of the last {len(tail)} training losses {sum(tail) / len(tail):.5f}",
        f"- wall time {result.wall_time_s / 60:.1f} min on {result.device} ({result.device_hours:.3f} device hours)",
        "",
        "## Use",
        "",
        "```bash",
        f"python app.py models add NAME --kind {model_kind_for(config.base)} --source {config.base} "
        f"--lora {result.out_dir}",
        "```",
        "",
    ]
    return "\n".join(lines)
