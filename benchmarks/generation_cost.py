"""FLOPs, parameters and seconds per image of MSDM's configs (tiny, paper) and samplers.

    python benchmarks/generation_cost.py [--threads 2] [--time-paper] [--json out.json]

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` under the math SDPA backend, so
attention is decomposed into counted matmuls (the fused CPU flash-attention kernel counts as 0 FLOPs
in torch 2.13). The paper config is built on the meta device (no memory, no time); its seconds per
image are measured only with ``--time-paper`` (one UNet step timed and extrapolated). One image costs
the text encoder on the prompt and the empty prompt, ``steps`` UNet evaluations at batch 2 (classifier-
free guidance) and one VAE decode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.msdm.config import ModelConfig, get_config
from generation.msdm.pipeline import build_unet, build_vae, generate, load_demo_pipeline


@dataclass
class ComponentCost:
    """FLOPs of one forward of each component for one image (UNet: per sample, no CFG)."""

    text_encoder: float
    unet: float
    vae_decode: float
    params: dict[str, int]


def count_flops(fn) -> float:
    """FLOPs of ``fn()`` with attention decomposed into counted matmuls."""
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _text_encoder(cfg: ModelConfig, device: str):
    if cfg.text_encoder == "clip-vit-l14":
        from transformers import CLIPTextConfig, CLIPTextModel

        conf = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        with torch.device(device):
            return CLIPTextModel(conf).eval()
    from generation.text_encoders import load_text_encoder

    return load_text_encoder(cfg.text_encoder, cfg.max_text_length)[1].to(device)


def component_costs(cfg: ModelConfig, device: str = "meta") -> ComponentCost:
    """Count the FLOPs of each MSDM component for one image at the config's resolution."""
    encoder = _text_encoder(cfg, device)
    width = int(encoder.config.hidden_size)
    with torch.device(device):
        vae = build_vae(cfg.vae).eval()
        latent = cfg.resolution // cfg.vae.downsample_factor
        unet = build_unet(cfg.unet, latent, cfg.vae.latent_channels, width).eval()
        ids = torch.ones(1, cfg.max_text_length, dtype=torch.long)
        emb = torch.zeros(1, cfg.max_text_length, width)
        z = torch.zeros(1, cfg.vae.latent_channels, latent, latent)
        t = torch.tensor([500])
    return ComponentCost(
        text_encoder=count_flops(lambda: encoder(ids)),
        unet=count_flops(lambda: unet(z, t, emb)),
        vae_decode=count_flops(lambda: vae.decode(z)),
        params={
            "text_encoder": sum(p.numel() for p in encoder.parameters()),
            "unet": sum(p.numel() for p in unet.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
        },
    )


def flops_per_image(cost: ComponentCost, steps: int, guidance: bool = True) -> float:
    """Total FLOPs for one image: prompt (+ empty prompt), ``steps`` UNet calls (x2 with CFG), decode."""
    k = 2 if guidance else 1
    return k * cost.text_encoder + steps * k * cost.unet + cost.vae_decode


def time_tiny(steps: int = 20, batch: int = 16, sampler: str = "dpmpp", repeats: int = 2) -> float:
    """Images per second of the committed demo MSDM-tiny (64 px, guidance 3.5), best of ``repeats``."""
    pipe = load_demo_pipeline()
    prompts = ["Generate an endoscopy image containing a small polyp in the center."] * batch
    generate(pipe, prompts[:2], num_inference_steps=2, sampler=sampler)  # warm-up
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        generate(pipe, prompts, num_inference_steps=steps, guidance_scale=3.5, seed=r, sampler=sampler)
        best = min(best, time.perf_counter() - start)
    return batch / best


def time_paper_step() -> float:
    """Seconds of one paper-config UNet evaluation at batch 2 (CFG) on this CPU."""
    cfg = get_config("paper").model
    latent = cfg.resolution // cfg.vae.downsample_factor
    unet = build_unet(cfg.unet, latent, cfg.vae.latent_channels, 768).eval()
    z, emb, t = (
        torch.randn(2, cfg.vae.latent_channels, latent, latent),
        torch.randn(2, 64, 768),
        torch.tensor([500] * 2),
    )
    with torch.no_grad():
        unet(z, t, emb)
        start = time.perf_counter()
        unet(z, t, emb)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MSDM generation cost")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-paper", action="store_true", help="time one paper UNet step on this CPU")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, object] = {"threads": args.threads}
    settings = [("ddim", 150), ("dpmpp", 20)]
    for name, device in (("paper", "meta"), ("tiny", "cpu")):
        cfg = get_config(name).model
        cost = component_costs(cfg, device)
        print(
            f"\n== MSDM-{name}: {cfg.resolution} px, params "
            + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in cost.params.items())
        )
        print(
            f"   per forward: text {cost.text_encoder / 1e9:.3f} GFLOPs, UNet {cost.unet / 1e9:.3f} GFLOPs/sample, "
            f"VAE decode {cost.vae_decode / 1e9:.3f} GFLOPs"
        )
        entry: dict[str, object] = {"params": cost.params, "unet_gflops": cost.unet / 1e9}
        for sampler, steps in settings:
            tf = flops_per_image(cost, steps) / 1e12
            entry[f"{sampler}{steps}_cfg_tflops"] = tf
            print(f"   {sampler} {steps} steps x CFG: {tf:.3f} TFLOPs/image")
        report[name] = entry
    print("\n   targets: paper DDIM-150 x CFG ~22.4 TFLOPs/image; DPM-Solver++ 20 <= 3 TFLOPs/image")
    if not args.skip_timing:
        ips = time_tiny()
        report["tiny"]["images_per_s_dpmpp20_b16_cfg"] = ips  # type: ignore[index]
        print(
            f"\n   tiny, {args.threads} threads, batch 16, DPM-Solver++ 20 steps, CFG 3.5: {ips:.2f} images/s "
            f"({1 / ips:.3f} s/image; target >= 4 images/s)"
        )
    if args.time_paper:
        step = time_paper_step()
        for sampler, steps in settings:
            print(f"   paper {sampler} {steps} x CFG on this CPU: ~{step * steps:.0f} s/image (UNet only)")
        report["paper"]["unet_step_b2_s"] = step  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
