"""GPU check: MSDM paper-config training and generation throughput, and tiny LoRA steps, on CUDA.

One prepared run for a machine with an NVIDIA GPU (no downloads: the paper UNet/VAE are built from
their configs, the CLIP ViT-L/14-sized text encoder from its config with random weights; throughput
does not depend on the weights)::

    bash benchmarks/gpu_check.sh                 # everything, <= 8 minutes on one H100/H200
    python benchmarks/gpu_check.py --only train  # one section
    python benchmarks/gpu_check.py --smoke       # a seconds-long run on CPU with tiny shapes (CI-safe)

Prints, one line per figure:
- paper MSDM UNet training steps/s at batch 64, bf16 autocast, 256 px (latents cached, as training does);
- generation images/s at batch 64 (DPM-Solver++ 20 steps x CFG 3.5) with peak GPU memory and achieved
  TFLOP/s against the card's dense bf16 peak (targets: >= 30% of peak, >= 80 images/s on an H200);
- tiny LoRA training steps/s on tiny FLUX and SD pipelines on the same device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a substring of the card name
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
PROMPT = "Generate an endoscopy image containing a large polyp in the upper left."


def card_peak(device: str) -> tuple[str, float | None]:
    """The card's name and dense bf16 peak (None when unknown or on CPU)."""
    import torch

    if not device.startswith("cuda"):
        return "CPU", None
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    return name, peak


def paper_parts(smoke: bool, device: str):  # type: ignore[no-untyped-def]
    """The paper config (or a tiny one for --smoke), a CLIP-L-shaped random text encoder and its tokenizer."""
    import dataclasses

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from generation.msdm.config import UNetConfig, VAEConfig, get_config
    from generation.testing import tiny_clip_tokenizer

    cfg = get_config("paper").model
    width, layers = 768, 12
    if smoke:
        cfg = dataclasses.replace(
            cfg,
            resolution=32,
            max_text_length=16,
            vae=VAEConfig(block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=8),
            unet=UNetConfig(
                block_out_channels=(16, 32),
                layers_per_block=1,
                cross_attention=(True, True),
                attention_heads=2,
                norm_num_groups=8,
                pooled_text_heads=2,
            ),
        )
        width, layers = 32, 2
    tokenizer = tiny_clip_tokenizer(cfg.max_text_length)
    conf = CLIPTextConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=max(2, width // 64),
        vocab_size=len(tokenizer),
        max_position_embeddings=max(77, cfg.max_text_length),
        projection_dim=width,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    encoder = CLIPTextModel(conf).eval().to(device)
    return cfg, tokenizer, encoder, width


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_train(device: str, batch: int, seconds: float, smoke: bool) -> None:
    """UNet training steps/s on cached latents and text embeddings (what train_msdm's UNet stage does)."""
    import torch
    import torch.nn.functional as F

    from generation.msdm.pipeline import build_noise_scheduler, build_unet

    cfg, _, _, width = paper_parts(smoke, device)
    latent = cfg.resolution // cfg.vae.downsample_factor
    unet = build_unet(cfg.unet, latent, cfg.vae.latent_channels, width).to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    sched = build_noise_scheduler(cfg)
    z = torch.randn(batch, cfg.vae.latent_channels, latent, latent, device=device)
    emb = torch.randn(batch, cfg.max_text_length, width, device=device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32

    def step() -> None:
        noise = torch.randn_like(z)
        t = torch.randint(cfg.num_train_timesteps, (batch,), device=device)
        noisy = sched.add_noise(z, noise, t)
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=device.startswith("cuda")):
            pred = unet(noisy, t, emb).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2:
        step()
        n += 1
    sync(device)
    rate = n / (time.perf_counter() - start)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    what = "smoke-sized" if smoke else "paper"
    precision = "bf16" if device.startswith("cuda") else "fp32"
    print(f"train  | {what} MSDM UNet ({params:.1f} M params) at {cfg.resolution} px, batch {batch}, {precision}: "
          f"{rate:.2f} steps/s = {rate * batch:.0f} images/s")  # fmt: skip


def bench_generate(device: str, batch: int, steps: int, smoke: bool, label: str = "generate") -> None:
    """Images/s at ``batch`` with DPM-Solver++ x CFG, peak memory and achieved TFLOP/s."""
    import torch

    from generation.msdm.pipeline import assemble_pipeline, build_unet, build_vae, set_sampler

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generation_cost import count_flops

    cfg, tokenizer, encoder, width = paper_parts(smoke, device)
    latent = cfg.resolution // cfg.vae.downsample_factor
    torch.manual_seed(0)
    vae = build_vae(cfg.vae)
    unet = build_unet(cfg.unet, latent, cfg.vae.latent_channels, width)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    pipe = assemble_pipeline(cfg, vae, unet, tokenizer, encoder.to("cpu")).to(device, dtype)
    set_sampler(pipe, "dpmpp")
    pipe.set_progress_bar_config(disable=True)
    # FLOPs of one image: 2 text encodings, steps x 2 UNet calls (CFG), one decode (counted in fp32 on CPU)
    z = torch.zeros(1, cfg.vae.latent_channels, latent, latent)
    ids = torch.ones(1, cfg.max_text_length, dtype=torch.long)
    unet_cpu, vae_cpu = pipe.unet.to("cpu", torch.float32), pipe.vae.to("cpu", torch.float32)
    enc_cpu = pipe.text_encoder.to("cpu", torch.float32)
    e = torch.zeros(1, cfg.max_text_length, width)
    unet_flops = count_flops(lambda: unet_cpu(z, torch.tensor([500]), e))
    per_image = 2 * count_flops(lambda: enc_cpu(ids)) + 2 * steps * unet_flops + count_flops(lambda: vae_cpu.decode(z))
    pipe.to(device, dtype)
    prompts = [PROMPT] * batch
    kwargs = {"num_inference_steps": steps, "guidance_scale": 3.5, "output_type": "pt"}
    pipe(prompts[:2], **{**kwargs, "num_inference_steps": 2})  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    repeats = 1 if smoke else 3
    start = time.perf_counter()
    for r in range(repeats):
        pipe(prompts, generator=torch.Generator(device="cpu").manual_seed(r), **kwargs)
    sync(device)
    rate = batch * repeats / (time.perf_counter() - start)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    achieved = rate * per_image / 1e12
    name, peak = card_peak(device)
    share = f" = {100 * achieved / peak:.1f}% of the {name} bf16 peak {peak:.0f}" if peak else f" ({name})"
    print(
        f"{label} | {cfg.resolution} px, batch {batch}, DPM-Solver++ {steps} x CFG: {rate:.1f} images/s, "
        f"peak memory {peak_mem:.1f} GiB, {per_image / 1e12:.3f} TFLOPs/image, {achieved:.2f} TFLOP/s{share}"
    )


def bench_lora(device: str, steps: int) -> None:
    """Tiny LoRA training steps/s on tiny FLUX and SD pipelines (the code path a real fine-tune takes)."""
    from generation.demo_data import generate_samples
    from generation.lora_train import LoraTrainConfig, train_lora
    from generation.testing import save_tiny_pipeline

    examples = [(img, cap) for img, cap, _ in generate_samples(8, seed=0, size=32)]
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("flux", "sd"):
            base = save_tiny_pipeline(family, Path(tmp) / family)
            config = LoraTrainConfig(base=str(base), out_dir=Path(tmp) / f"lora-{family}", rank=4, steps=steps,
                                     resolution=32, batch_size=4, device=device, mixed_precision="no",
                                     )  # fmt: skip
            result = train_lora(config, examples, progress=False)
            print(f"lora   | tiny {family.upper()} on {result.device}: {steps / result.wall_time_s:.1f} steps/s "
                  f"(loss {result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("train", "generate", "lora"), action="append")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script runs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--label", default="generate", help="prefix of the generation line")
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        print("no CUDA device: run with --smoke on CPU, or on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    batch = 2 if args.smoke else args.batch
    sections = args.only or ["train", "generate", "lora"]
    name, _ = card_peak(device)
    print(f"device | {name}, torch {torch.__version__}")
    if "train" in sections:
        bench_train(device, batch, 0.5 if args.smoke else 60.0, args.smoke)
    if "generate" in sections:
        bench_generate(device, batch, 2 if args.smoke else 20, args.smoke, args.label)
    if "lora" in sections:
        bench_lora(device, 2 if args.smoke else 50)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
