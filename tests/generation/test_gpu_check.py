"""The prepared GPU check runs end to end (its --smoke mode on CPU), so it has not rotted when a GPU comes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_gpu_check_smoke_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    import gpu_check

    assert gpu_check.main(["--smoke", "--only", "train", "--only", "generate"]) == 0
    out = capsys.readouterr().out
    assert "train  | smoke-sized MSDM UNet" in out and "steps/s" in out
    assert "generate | 32 px, batch 2, DPM-Solver++ 2 x CFG" in out and "TFLOPs/image" in out


def test_gpu_check_without_cuda_says_how_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    import gpu_check
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--only", "train"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
