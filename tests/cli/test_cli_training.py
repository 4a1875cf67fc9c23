"""The training and comparison commands of the CLI, end to end on tiny models and the real GI samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import main
from generation.testing import save_tiny_pipeline


def run(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def gi(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    data = tmp_path / "data"
    code, _, err = run(capsys, data, "import", "csv", str(shared_data / "gi"), "--name", "gi", "--domain", "gi",
                       "--file-column", "file", "--text-column", "caption", "--limit", "8")  # fmt: skip
    assert code == 0, err
    return data


@pytest.mark.slow
def test_train_msdm_then_register_and_generate(gi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "msdm"
    code, stdout, err = run(capsys, gi, "train", "msdm", "--dataset", "gi", "--config", "tiny", "--out", str(out),
                            "--steps", "2", "--vae-steps", "2", "--batch-size", "4")  # fmt: skip
    assert code == 0, err
    assert (out / "model_index.json").exists() and "saved MSDM (tiny)" in stdout
    code, _, err = run(capsys, gi, "models", "add", "msdm-tiny", "--kind", "msdm", "--source", str(out))
    assert code == 0, err
    code, stdout, err = run(capsys, gi, "generate", "--dataset", "gi", "--model", "msdm-tiny", "--steps", "2",
                            "--limit", "2", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert "generated 2 images" in stdout


def test_train_msdm_paper_offline_fails_before_any_training_step(
    gi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The paper config's CLIP text encoder is not cached here: one error line, no VAE checkpoint written."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "paper"
    code, _, err = run(capsys, gi, "train", "msdm", "--dataset", "gi", "--config", "paper", "--out", str(out),
                       "--device", "cpu")  # fmt: skip
    assert code == 2
    assert "could not load text encoder 'clip-vit-l14'" in err and "Traceback" not in err
    assert not (out / "checkpoints" / "vae").exists() and not (out / "checkpoints" / "vae_final").exists()


@pytest.mark.slow
def test_train_lora_on_a_tiny_sd_pipeline_and_load_it(gi: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    base = save_tiny_pipeline("sd", tmp_path / "tiny-sd")
    out = tmp_path / "lora"
    code, stdout, err = run(capsys, gi, "train", "lora", "--dataset", "gi", "--base", str(base), "--out", str(out),
                            "--rank", "4", "--steps", "3", "--resolution", "32", "--batch-size", "4",
                            "--mixed-precision", "no", "--device", "cpu", "--lr", "0.01")  # fmt: skip
    assert code == 0, err
    adapter = out / "pytorch_lora_weights.safetensors"
    assert adapter.exists() and "saved the LoRA adapter" in stdout
    code, _, err = run(capsys, gi, "models", "add", "sd-lora", "--kind", "diffusers", "--source", str(base),
                       "--lora", str(adapter))  # fmt: skip
    assert code == 0, err


def test_train_errors_are_one_line(gi: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, gi, "train", "lora", "--dataset", "gi", "--base", str(tmp_path / "missing"),
                       "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, gi, "train", "msdm", "--dataset", "nope", "--out", str(tmp_path / "o"))
    assert code == 2 and "no dataset called 'nope'" in err
    code, _, err = run(capsys, gi, "compare", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in err
