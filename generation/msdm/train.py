"""Train MSDM from scratch: the VAE, then the text-conditioned UNet, through accelerate.

Call :func:`train_msdm` with a :class:`~generation.msdm.config.TrainConfig` and ``(image, caption)``
pairs; it writes a diffusers pipeline folder with a model card. Multi-GPU: run the calling script
under ``accelerate launch``; each process draws its own batches (seeded by step and process index)
and gradients are averaged by the prepared model.

Every batch, noise draw, timestep draw and text-dropout draw of step ``s`` comes from a generator
seeded with ``(seed, stage, s, process)``, so a resumed run continues exactly as an uninterrupted one.
No image flips or other augmentation: findings have sides ("left lung", "upper left").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm.auto import tqdm

from db.errors import InputError
from generation.msdm.config import TrainConfig
from generation.msdm.losses import make_perceptual_net, perceptual_loss, text_dropout_mask
from generation.msdm.pipeline import (
    assemble_pipeline,
    build_noise_scheduler,
    build_unet,
    build_vae,
    generate,
    save_msdm_pipeline,
)
from generation.run_guard import SETTINGS_FILE, check_resume_settings, out_dir_lock
from generation.text_encoders import load_text_encoder

log = logging.getLogger(__name__)

ImageLike = Image.Image | str | Path
#: settings that may change between a run and its resume (more steps, other bookkeeping)
_NOT_RESUME_SETTINGS = (
    "unet_steps",
    "checkpoint_every",
    "validate_every",
    "validation_prompts",
    "num_workers",
    "perceptual_weights",  # where the files lie may change; which net is used may not
)
_STAGES = {"vae": 1, "unet": 2}


@dataclass
class TrainResult:
    """What :func:`train_msdm` did: where the pipeline is and the loss curves."""

    out_dir: Path
    vae_losses: list[float]
    unet_losses: list[float]
    wall_time_s: float


def load_image_tensor(item: ImageLike, resolution: int) -> torch.Tensor:
    """Load one image as a ``uint8`` tensor ``(3, resolution, resolution)`` (centre-crop + resize).

    Raises
    ------
    ValueError
        If ``item`` is a path that does not exist.
    """
    if isinstance(item, str | Path):
        if not Path(item).is_file():
            raise InputError(f"training image {item} does not exist")
        with Image.open(item) as fh:
            img = fh.convert("RGB")
    else:
        img = item.convert("RGB")
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes one training image per item (for a DataLoader with workers)."""

    def __init__(self, images: Sequence[tuple[ImageLike, str]], resolution: int) -> None:
        self.images, self.resolution = images, resolution

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image_tensor(self.images[index][0], self.resolution)


def pixel_cache(
    images: Sequence[tuple[ImageLike, str]],
    resolution: int,
    path: Path,
    *,
    workers: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """All training images as one ``uint8`` tensor ``(N, 3, r, r)`` backed by a memory-mapped file at ``path``.

    Images are decoded by a DataLoader with ``workers`` processes and written to disk as they come, so
    the dataset never has to fit in RAM (ROCOv2's 60k images at 256 px are 11.8 GB); batches then read
    only their own rows. A complete file from an earlier run (resume) is reused as is.
    """
    shape = (len(images), 3, resolution, resolution)
    done = path.with_suffix(".complete")
    if path.is_file() and done.is_file() and path.stat().st_size == int(np.prod(shape)):
        return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="r+", shape=shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    array = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
    loader = torch.utils.data.DataLoader(
        _ImageDataset(images, resolution), batch_size=64, num_workers=workers, shuffle=False
    )
    row = 0
    for batch in tqdm(loader, desc="decode", disable=not progress, total=len(loader)):
        array[row : row + len(batch)] = batch.numpy()
        row += len(batch)
    array.flush()
    done.write_text(f"{len(images)} images at {resolution} px\n", encoding="utf-8")
    return torch.from_numpy(array)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def _step_generator(seed: int, stage: str, step: int, process: int) -> torch.Generator:
    mixed = (seed * 1_000_003 + _STAGES[stage] * 7_919 + step * 104_729 + process * 15_485_863) % (2**63)
    return torch.Generator().manual_seed(mixed)


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def _save_checkpoint(accelerator: Any, folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> None:
    if not accelerator.is_main_process:
        return
    folder.mkdir(parents=True, exist_ok=True)
    accelerator.save({"step": step, **state}, folder / f"step_{step:07d}.pt")
    for old in sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[:-keep]:
        old.unlink()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _VAEStep(torch.nn.Module):
    """One VAE forward (encode, reparameterise with given noise, decode) as a module, so DDP syncs it."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.mean + posterior.std * eps).sample
        return recon, posterior.kl()


def train_vae(
    config: TrainConfig,
    pixels: torch.Tensor,
    accelerator: Any,
    ckpt_dir: Path,
    *,
    steps: int,
    resume: bool,
    progress: bool,
    perceptual: torch.nn.Module | None = None,
) -> tuple[AutoencoderKL, list[float]]:
    """Train the ``AutoencoderKL`` on ``pixels`` (uint8, N x 3 x H x W); MSE + perceptual + KL.

    ``perceptual`` is the net of :func:`generation.msdm.losses.make_perceptual_net` (made from the config
    when not given)."""
    cfg = config.model
    torch.manual_seed(config.seed)
    vae = build_vae(cfg.vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(100, steps // 10), num_training_steps=steps)
    start, losses = 0, []
    last = _latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        state = torch.load(last, map_location="cpu", weights_only=False)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
        start, losses = state["step"], state["losses"]
    wrapped, opt = accelerator.prepare(_VAEStep(vae), opt)
    feat_net = None
    if config.perceptual_weight > 0:
        net = perceptual or make_perceptual_net(config.perceptual_net, config.perceptual_weights)
        feat_net = net.to(accelerator.device)
    crop = config.vae_crop or cfg.resolution
    latent_hw = (crop // cfg.vae.downsample_factor,) * 2
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="vae", disable=not progress)
    for step in bar:
        gen = _step_generator(config.seed, "vae", step, accelerator.process_index)
        idx = torch.randint(len(pixels), (config.vae_batch_size,), generator=gen)
        top, left = (int(v) for v in torch.randint(cfg.resolution - crop + 1, (2,), generator=gen))
        x = _to_unit(pixels[idx, :, top : top + crop, left : left + crop]).to(accelerator.device)
        eps = torch.randn((x.shape[0], cfg.vae.latent_channels, *latent_hw), generator=gen).to(x.device)
        with accelerator.autocast():
            recon, kl = wrapped(x, eps)
        recon = recon.float()
        loss = F.mse_loss(recon, x) + config.kl_weight * kl.float().mean()
        if feat_net is not None:
            loss = loss + config.perceptual_weight * perceptual_loss(feat_net, recon, x)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(wrapped.parameters(), config.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < steps:
            state = {"model": vae.state_dict(), "optimizer": opt.state_dict(), "losses": losses}
            _save_checkpoint(accelerator, ckpt_dir, step + 1, {**state, "lr_scheduler": sched.state_dict()})
    vae = accelerator.unwrap_model(wrapped).vae.eval()
    vae.requires_grad_(False)
    return vae, losses


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    """Posterior means and stds of all images: ``(N, 2, C, h, w)`` (unscaled)."""
    out = []
    for i in range(0, len(pixels), batch):
        dist = vae.encode(_to_unit(pixels[i : i + batch]).to(device)).latent_dist
        out.append(torch.stack([dist.mean, dist.std], dim=1).float().cpu())
    return torch.cat(out)


def _validate(pipe: Any, config: TrainConfig, out_dir: Path, step: int) -> None:
    cfg = config.model
    images = generate(
        pipe,
        list(config.validation_prompts),
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        seed=config.seed,
    )
    side = cfg.resolution
    grid = Image.new("RGB", (side * len(images), side))
    for k, img in enumerate(images):
        grid.paste(img, (k * side, 0))
    (out_dir / "validation").mkdir(parents=True, exist_ok=True)
    grid.save(out_dir / "validation" / f"step_{step:07d}.png")


def train_msdm(
    config: TrainConfig,
    images: Sequence[tuple[ImageLike, str]],
    out_dir: str | Path,
    *,
    vae: AutoencoderKL | str | Path | None = None,
    steps: int | None = None,
    vae_steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    resume: bool = False,
    include_text_encoder: bool = True,
    progress: bool = True,
    data_description: str = "",
    command: str = "",
    on_step: Callable[[int, float], None] | None = None,
    device: str = "auto",
) -> TrainResult:
    """Train MSDM (VAE, then UNet) on ``(image, caption)`` pairs and save the pipeline to ``out_dir``.

    Parameters
    ----------
    config : named config from :func:`generation.msdm.config.get_config`, possibly edited.
    images : ``(PIL image or path, caption)`` pairs; images are centre-cropped to the config resolution.
    out_dir : pipeline folder to write (``model_index.json``, safetensors, ``msdm.json``, ``README.md``);
        checkpoints go to ``out_dir/checkpoints``, validation grids to ``out_dir/validation``.
    vae : an existing ``AutoencoderKL`` or its folder; skips the VAE stage (its ``scaling_factor`` is used
        if not 1.0, else estimated from the data).
    steps, vae_steps, batch_size, lr : override ``config.unet_steps``, ``config.vae_steps``,
        ``config.batch_size``, ``config.lr``.
    resume : continue from the latest checkpoints in ``out_dir/checkpoints``.
    include_text_encoder : write the text encoder weights into the folder (off for the committed demo,
        whose encoder comes from a pip package and is referenced in ``msdm.json``).
    progress : show tqdm bars.
    data_description, command : written into the model card.
    on_step : called as ``on_step(step, loss)`` after every UNet step.
    device : ``auto`` (CUDA when present), ``cuda`` or ``cpu``.

    Raises
    ------
    InputError
        For no images, bad steps, an output folder another process is writing, or a resume whose
        settings differ from the checkpoints'; the text encoder is loaded before any training step.

    Returns
    -------
    TrainResult
    """
    from accelerate import Accelerator

    config = replace(
        config,
        unet_steps=steps if steps is not None else config.unet_steps,
        vae_steps=vae_steps if vae_steps is not None else config.vae_steps,
        batch_size=batch_size or config.batch_size,
        lr=lr or config.lr,
    )
    cfg = config.model
    cfg.validate()
    if not images:
        raise InputError("no training images given")
    if config.unet_steps < 1:
        raise InputError(f"steps must be >= 1, got {config.unet_steps}")
    out = Path(out_dir)
    started = time.perf_counter()
    mixed = config.mixed_precision if torch.cuda.is_available() and device != "cpu" else "no"
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=device == "cpu",
    )
    # Everything that can fail is loaded and checked before the first step: an offline or gated text
    # encoder fails in seconds, not after hours of VAE training.
    text = load_text_encoder(cfg.text_encoder, cfg.max_text_length)
    perceptual = None
    if vae is None and config.perceptual_weight > 0 and config.vae_steps > 0:
        try:
            perceptual = make_perceptual_net(config.perceptual_net, config.perceptual_weights)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    captions = [c for _, c in images]
    settings = {
        **{k: v for k, v in config.to_dict().items() if k not in _NOT_RESUME_SETTINGS},
        "n_images": len(images),
        "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest(),
        "vae_given": vae is not None,
    }
    if not accelerator.is_main_process:
        return _train_msdm(config, images, out, accelerator, text, perceptual, vae, resume, include_text_encoder,
                           progress, data_description, command, on_step, started)  # fmt: skip
    with out_dir_lock(out):
        ckpt_root = out / "checkpoints"
        earlier_run = any(ckpt_root.glob("*/step_*.pt")) or (ckpt_root / "vae_final").is_dir()
        if earlier_run and not resume:
            raise InputError(
                f"{out} holds checkpoints of an earlier run: continue it with --resume, or train into another --out"
            )
        if not resume:  # nothing of an unfinished earlier start (settings, decoded images) is reused
            (ckpt_root / SETTINGS_FILE).unlink(missing_ok=True)
            for stale in ckpt_root.glob("pixels-*"):
                stale.unlink()
        check_resume_settings(ckpt_root, settings)
        return _train_msdm(config, images, out, accelerator, text, perceptual, vae, resume, include_text_encoder,
                           progress, data_description, command, on_step, started)  # fmt: skip


def _train_msdm(
    config: TrainConfig,
    images: Sequence[tuple[ImageLike, str]],
    out: Path,
    accelerator: Any,
    text: tuple[Any, Any, Any],
    perceptual: torch.nn.Module | None,
    vae: AutoencoderKL | str | Path | None,
    resume: bool,
    include_text_encoder: bool,
    progress: bool,
    data_description: str,
    command: str,
    on_step: Callable[[int, float], None] | None,
    started: float,
) -> TrainResult:
    """The body of :func:`train_msdm`, run with the output folder locked and the settings checked."""
    cfg = config.model
    ckpt_root = out / "checkpoints"
    device = accelerator.device
    with accelerator.main_process_first():  # the main process writes the cache, the others then map it
        pixels = pixel_cache(
            images, cfg.resolution, ckpt_root / f"pixels-{cfg.resolution}.u8", workers=config.num_workers,
            progress=progress and accelerator.is_main_process,
        )  # fmt: skip
    captions = [c for _, c in images]
    earlier_s = 0.0  # wall time of the runs this one resumes (VAE stage and UNet checkpoints)

    # ---- VAE stage --------------------------------------------------------------------------
    vae_losses: list[float] = []
    vae_final = ckpt_root / "vae_final"
    vae_log = vae_final / "train_log.json"
    if vae is None and resume and (vae_final / "config.json").is_file():
        vae = vae_final
        if vae_log.is_file():  # the card of a resumed run still reports the VAE stage it did earlier
            logged = json.loads(vae_log.read_text(encoding="utf-8"))
            vae_losses, earlier_s = list(logged["losses"]), float(logged["seconds"])
    if isinstance(vae, str | Path):
        if not Path(vae).is_dir():
            raise InputError(f"VAE folder {vae} does not exist")
        vae = AutoencoderKL.from_pretrained(vae)
    if vae is None:
        trained_vae, vae_losses = train_vae(
            config, pixels, accelerator, ckpt_root / "vae", steps=config.vae_steps, resume=resume, progress=progress,
            perceptual=perceptual,
        )
        trained_vae.register_to_config(scaling_factor=1.0)
        vae = trained_vae
    assert not isinstance(vae, str | Path)  # a folder was loaded above
    autoencoder = vae.to(device).eval().requires_grad_(False)
    stats = encode_latents(autoencoder, pixels, device)
    if autoencoder.config.scaling_factor == 1.0:
        autoencoder.register_to_config(scaling_factor=float(1.0 / stats[:, 0].std()))
    if accelerator.is_main_process:
        autoencoder.save_pretrained(vae_final)
        if not vae_log.is_file():
            vae_seconds = time.perf_counter() - started
            vae_log.write_text(json.dumps({"losses": vae_losses, "seconds": vae_seconds}) + "\n", encoding="utf-8")
    scale = float(autoencoder.config.scaling_factor)

    # ---- text -------------------------------------------------------------------------------
    tokenizer, text_encoder, info = text
    text_encoder.to(device)
    unique = ["", *sorted(set(captions) - {""})]
    cap_idx = torch.tensor([unique.index(c) for c in captions])

    # ---- UNet stage -------------------------------------------------------------------------
    torch.manual_seed(config.seed + 1)
    unet = build_unet(cfg.unet, cfg.resolution // cfg.vae.downsample_factor, cfg.vae.latent_channels, info.hidden_size)
    pipe = assemble_pipeline(cfg, autoencoder, unet, tokenizer, text_encoder)
    params = list(unet.parameters())
    if not config.freeze_text_encoder:
        text_encoder.requires_grad_(True).train()
        params += list(text_encoder.parameters())
    noise_sched = build_noise_scheduler(cfg)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-2)
    lr_sched = get_scheduler(
        "cosine", opt, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.unet_steps
    )
    ema = EMAModel(unet.parameters(), decay=config.ema_decay)
    start, unet_losses = 0, []
    unet_started = time.perf_counter()
    unet_earlier_s = 0.0
    last = _latest_checkpoint(ckpt_root / "unet") if resume else None
    if last is not None:
        state = torch.load(last, map_location="cpu", weights_only=False)
        unet.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        ema.load_state_dict(state["ema"])
        if "text_encoder" in state:
            text_encoder.load_state_dict(state["text_encoder"])
        start, unet_losses = state["step"], state["losses"]
        unet_earlier_s = float(state.get("elapsed_s", 0.0))
    unet, opt = accelerator.prepare(unet, opt)
    ema.to(device)

    def embed(indices: torch.Tensor) -> torch.Tensor:
        return pipe.encode_prompt([unique[i] for i in indices.tolist()], device, 1, False)[0]

    table = None
    if config.freeze_text_encoder:
        with torch.no_grad():
            table = torch.cat([embed(torch.arange(i, min(i + 64, len(unique)))) for i in range(0, len(unique), 64)])

    bar = tqdm(
        range(start, config.unet_steps), initial=start, total=config.unet_steps, desc="unet", disable=not progress
    )
    accum = config.gradient_accumulation_steps
    for step in bar:
        gen = _step_generator(config.seed, "unet", step, accelerator.process_index)
        step_loss = 0.0
        for _ in range(accum):
            idx = torch.randint(len(pixels), (config.batch_size,), generator=gen)
            mean, std = stats[idx, 0], stats[idx, 1]
            latents = (mean + std * torch.randn(mean.shape, generator=gen)) * scale
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(cfg.num_train_timesteps, (config.batch_size,), generator=gen)
            noisy = noise_sched.add_noise(latents, noise, t)
            cidx = torch.where(text_dropout_mask(config.batch_size, config.text_dropout, gen), 0, cap_idx[idx])
            with accelerator.accumulate(unet):
                cond = table[cidx].to(device) if table is not None else embed(cidx)
                with accelerator.autocast():
                    pred = unet(noisy.to(device), t.to(device), cond).sample
                loss = F.mse_loss(pred.float(), noise.to(device))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                opt.step()
                if accelerator.sync_gradients:
                    lr_sched.step()
                opt.zero_grad(set_to_none=True)
            step_loss += float(loss.detach()) / accum
        ema.step(accelerator.unwrap_model(unet).parameters())
        unet_losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if on_step is not None:
            on_step(step + 1, step_loss)
        done = step + 1
        if done % config.checkpoint_every == 0 and done < config.unet_steps:
            state = {
                "model": accelerator.unwrap_model(unet).state_dict(),
                "optimizer": opt.state_dict(),
                "lr_scheduler": lr_sched.state_dict(),
                "ema": ema.state_dict(),
                "losses": unet_losses,
                "elapsed_s": unet_earlier_s + time.perf_counter() - unet_started,
            }
            if not config.freeze_text_encoder:
                state["text_encoder"] = text_encoder.state_dict()
            _save_checkpoint(accelerator, ckpt_root / "unet", done, state)
        if done % config.validate_every == 0 and accelerator.is_main_process:
            raw = accelerator.unwrap_model(unet)
            ema.store(raw.parameters())
            ema.copy_to(raw.parameters())
            raw.eval()
            _validate(pipe, config, out, done)
            ema.restore(raw.parameters())
            raw.train()

    # ---- write the pipeline -----------------------------------------------------------------
    accelerator.wait_for_everyone()
    raw = accelerator.unwrap_model(unet)
    ema.copy_to(raw.parameters())
    raw.eval()
    text_encoder.eval().requires_grad_(False)
    # cumulative: the VAE stage (this run's or an earlier one's) plus every UNet run up to now
    vae_s = earlier_s if earlier_s else unet_started - started
    wall = vae_s + unet_earlier_s + time.perf_counter() - unet_started
    result = TrainResult(out, vae_losses, unet_losses, wall)
    log.info("MSDM trained into %s in %.0f s (%d VAE, %d UNet steps)", out, wall, len(vae_losses), len(unet_losses))
    if accelerator.is_main_process:
        pipe = assemble_pipeline(cfg, autoencoder.to("cpu"), raw.to("cpu"), tokenizer, text_encoder.to("cpu"))
        counts = {"vae": _count(autoencoder), "unet": _count(raw), "text_encoder": _count(text_encoder)}
        meta = {"parameters": counts, "steps": {"vae": len(vae_losses), "unet": config.unet_steps}}
        save_msdm_pipeline(pipe, out, cfg, include_text_encoder=include_text_encoder, extra_meta=meta)
        card = model_card(
            config,
            counts=counts,
            n_images=len(images),
            n_captions=len(unique) - 1,
            result=result,
            device=_device_name(device),
            data_description=data_description,
            command=command,
            include_text_encoder=include_text_encoder,
        )
        (out / "README.md").write_text(card, encoding="utf-8")
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _mean_last(values: list[float], n: int = 50) -> float:
    tail = values[-n:]
    return float(sum(tail) / len(tail)) if tail else math.nan


def model_card(
    config: TrainConfig,
    *,
    counts: dict[str, int],
    n_images: int,
    n_captions: int,
    result: TrainResult,
    device: str,
    data_description: str = "",
    command: str = "",
    include_text_encoder: bool = True,
) -> str:
    """The README.md written beside the weights: config, parameters, data, steps, time, device."""
    cfg = config.model
    encoder_note = (
        "included in `text_encoder/`"
        if include_text_encoder
        else f"not included; loaded from `{cfg.text_encoder}` by `generation.msdm.pipeline.load_msdm_pipeline`"
    )
    lines = [
        f"# MSDM-{config.name}",
        "",
        "A Stable-Diffusion-style latent diffusion model trained from scratch by MedSynth "
        "(`generation.msdm.train.train_msdm`). Loads with `diffusers.DiffusionPipeline.from_pretrained` "
        "as a stock `StableDiffusionPipeline`.",
        "",
        "## Model",
        f"- resolution: {cfg.resolution} px; VAE x{cfg.vae.downsample_factor}, {cfg.vae.latent_channels} latent "
        f"channels, channels {list(cfg.vae.block_out_channels)}",
        f"- UNet channels {list(cfg.unet.block_out_channels)}, {cfg.unet.layers_per_block} res blocks/level, "
        f"cross-attention {list(cfg.unet.cross_attention)}, pooled text added to the time embedding",
        f"- text encoder: `{cfg.text_encoder}` ({cfg.max_text_length} tokens, frozen: {config.freeze_text_encoder}); "
        f"{encoder_note}",
        f"- parameters: VAE {counts['vae']:,}; UNet {counts['unet']:,}; text encoder {counts['text_encoder']:,}",
        f"- schedule: {cfg.num_train_timesteps}-step {cfg.beta_schedule}, {cfg.prediction_type} prediction; "
        f"sampling default: {cfg.sampler}, {cfg.num_inference_steps} steps, guidance {cfg.guidance_scale}",
        "",
        "## Training",
        f"- data: {n_images} images, {n_captions} distinct captions. {data_description}".rstrip(),
        f"- VAE steps: {len(result.vae_losses)} (batch {config.vae_batch_size}, "
        f"crop {config.vae_crop or cfg.resolution} px); final loss {_mean_last(result.vae_losses):.5f}",
        f"- UNet steps: {config.unet_steps} (batch {config.batch_size} x accumulation "
        f"{config.gradient_accumulation_steps}, lr {config.lr}, text dropout {config.text_dropout}, "
        f"EMA {config.ema_decay}); final loss {_mean_last(result.unet_losses):.5f}",
        f"- wall time: {result.wall_time_s / 60:.1f} min on {device}",
    ]
    if command:
        lines += ["", "## Reproduce", "", "```bash", command, "```"]
    lines += ["", "## Config", "", "```json", json.dumps(config.to_dict(), indent=2), "```", ""]
    return "\n".join(lines)
