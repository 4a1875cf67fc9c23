"""Images/s and peak memory of batch generation with a tiny pipeline on CPU (or any device).

Runs :func:`generation.batch.run_generation` on a tiny SD or FLUX pipeline built from configs (no
download), for several batch sizes, into an in-memory sink, and prints one line per batch size::

    python benchmarks/generation_speed.py                      # tiny SD, 32 px, 24 images, batch 1/2/4/8
    python benchmarks/generation_speed.py --family flux --size 32 --threads 2

The figures measure the generation layer's overhead plus the tiny model's compute; they are not a
proxy for real models. Peak memory on CPU is the process's resident set (see ``generation.devices``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass(frozen=True)
class BenchCase:
    id: int
    key: str
    prompt: str


PROMPTS = ("a small polyp in the colon", "normal colon", "chest x-ray of a lung", "a large polyp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("sd", "flux"), default="sd")
    parser.add_argument("--images", type=int, default=24, help="images per batch size")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    args = parser.parse_args(argv)

    import torch

    from generation.batch import GenerationConfig, MemorySink, run_generation
    from generation.devices import device_label
    from generation.pipelines import build_spec, load_pipeline
    from generation.testing import save_tiny_pipeline

    torch.set_num_threads(args.threads)
    cases = [BenchCase(i, f"bench/{i}", PROMPTS[i % len(PROMPTS)]) for i in range(args.images)]
    extra = {"max_sequence_length": 16} if args.family == "flux" else {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_pipeline(args.family, Path(tmp) / args.family)
        loaded = load_pipeline(build_spec(f"tiny-{args.family}", "diffusers", str(folder)), device=args.device)
        warm = GenerationConfig(steps=args.steps, height=args.size, width=args.size, batch_size=1, call_kwargs=extra)
        run_generation(loaded, cases[:1], warm, MemorySink(), progress=False)  # first call: lazy init
        print(
            f"tiny {args.family}, {args.size} px, {args.steps} steps, {args.images} images, "
            f"device {device_label(loaded.device)}, {torch.get_num_threads()} thread(s)"
        )
        print(f"{'batch':>5}  {'images/s':>9}  {'s/image':>8}  {'peak MiB':>9}")
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            config = GenerationConfig(
                steps=args.steps, height=args.size, width=args.size, batch_size=batch_size, call_kwargs=extra
            )
            report = run_generation(loaded, cases, config, MemorySink(), progress=False)
            print(
                f"{batch_size:>5}  {report.images_per_second:>9.2f}  {report.seconds / report.generated:>8.4f}  "
                f"{report.peak_memory_bytes / 2**20:>9.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
