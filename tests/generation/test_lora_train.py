"""LoRA training on tiny FLUX and SD pipelines, offline: the loss falls, the adapter saves, loads and matters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from generation.batch import GenerationConfig, generate_images, resolve_params
from generation.demo_data import generate_samples
from generation.lora import LORA_WEIGHT_NAME
from generation.lora_train import (
    TRAIN_META_FILE,
    LoraTrainConfig,
    _make_optimizer,
    latest_checkpoint,
    train_lora,
    trainer_kind,
)
from generation.pipelines import build_spec, load_pipeline
from generation.testing import save_tiny_pipeline, single_torch_thread

SIZES = {"sd": 32, "flux": 16}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {family: save_tiny_pipeline(family, root / family) for family in SIZES}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def examples() -> list[tuple[object, str]]:
    return [(image, caption) for image, caption, _ in generate_samples(3, seed=3, size=64)]


def config(base: Path, out: Path, family: str, **changes: object) -> LoraTrainConfig:
    settings: dict[str, object] = {
        "base": str(base),
        "out_dir": out,
        "rank": 4,
        "steps": 4,
        "lr": 1e-2,
        "batch_size": 4,
        "resolution": SIZES[family],
        "checkpoint_every": 2,
        "validation_steps": 2,
        "count_flops": False,
        "device": "cpu",
    }
    settings.update(changes)
    return LoraTrainConfig(**settings)  # type: ignore[arg-type]


def sample(source: Path, family: str, lora: Path | None = None) -> np.ndarray:
    loaded = load_pipeline(build_spec("m", "diffusers", str(source), lora=[str(lora)] if lora else []), device="cpu")
    extra = {"max_sequence_length": 16} if family == "flux" else {}
    params = resolve_params(
        loaded, GenerationConfig(steps=2, height=SIZES[family], width=SIZES[family], call_kwargs=extra)
    )
    return generate_images(loaded.pipe, ["a polyp in the colon"], [7], params, loaded.device, output_type="np")


@pytest.mark.parametrize("family", list(SIZES))
def test_training_lowers_the_loss_and_the_adapter_loads_and_changes_the_output(
    family: str, bases: dict[str, Path], examples: list, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    steps: list[int] = []
    result = train_lora(
        config(bases[family], out, family, steps=15, lr=3e-2, count_flops=True),
        examples,
        progress=False,
        on_step=lambda s, _loss: steps.append(s),
    )
    assert result.family == family
    assert steps == list(range(1, 16)) and len(result.losses) == 15
    assert result.eval_loss_after < result.eval_loss_before  # same fixed batch, noise and times
    assert result.trainable_parameters > 0 and result.base_parameters > result.trainable_parameters
    assert result.step_flops is not None and result.step_flops > 0
    assert result.adapter_path == out / LORA_WEIGHT_NAME and result.adapter_path.is_file()
    assert result.validation_images and result.validation_images[-1].is_file()
    meta = json.loads((out / TRAIN_META_FILE).read_text())
    assert meta["family"] == family and meta["config"]["rank"] == 4
    assert "models add" in (out / "README.md").read_text()

    plain = sample(bases[family], family)
    tuned = sample(bases[family], family, out)
    assert np.abs(tuned - plain).max() > 1e-3


def test_resume_continues_exactly_like_an_uninterrupted_run(
    bases: dict[str, Path], examples: list, tmp_path: Path
) -> None:
    straight = train_lora(config(bases["sd"], tmp_path / "a", "sd"), examples, progress=False)

    class Stop(Exception):
        pass

    def stop_after_two(step: int, _loss: float) -> None:
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        train_lora(config(bases["sd"], tmp_path / "b", "sd"), examples, progress=False, on_step=stop_after_two)
    assert latest_checkpoint(tmp_path / "b").name == "step_0000002.pt"
    resumed = train_lora(config(bases["sd"], tmp_path / "b", "sd", resume=True), examples, progress=False)
    assert resumed.start_step == 2
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5, atol=1e-6)
    with safe_open(straight.adapter_path, "pt") as a, safe_open(resumed.adapter_path, "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():  # noqa: SIM118 - safe_open has no __iter__
            torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="other settings"):
        train_lora(config(bases["sd"], tmp_path / "b", "sd", resume=True, rank=8), examples, progress=False)


def test_memory_options_do_not_change_the_trajectory(bases: dict[str, Path], examples: list, tmp_path: Path) -> None:
    """Gradient checkpointing and uncached latents/embeddings compute the same steps as the defaults."""
    reference = train_lora(config(bases["sd"], tmp_path / "ref", "sd", steps=2), examples, progress=False)
    changed = train_lora(
        config(
            bases["sd"],
            tmp_path / "mem",
            "sd",
            steps=2,
            gradient_checkpointing=True,
            cache_latents=False,
            cache_text_embeddings=False,
        ),
        examples,
        progress=False,
    )
    np.testing.assert_allclose(changed.losses, reference.losses, rtol=1e-5)


def test_text_encoder_lora_and_ema_are_saved(bases: dict[str, Path], examples: list, tmp_path: Path) -> None:
    result = train_lora(
        config(bases["flux"], tmp_path / "te", "flux", steps=2, train_text_encoder=True, ema_decay=0.9),
        examples,
        progress=False,
    )
    with safe_open(result.adapter_path, "pt") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("transformer.") for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys)
    assert np.abs(sample(bases["flux"], "flux", tmp_path / "te") - sample(bases["flux"], "flux")).max() > 0


def test_bad_settings_are_named(bases: dict[str, Path], examples: list, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rank must be"):
        config(bases["sd"], tmp_path, "sd", rank=0).validate()
    with pytest.raises(ValueError, match="mixed_precision"):
        config(bases["sd"], tmp_path, "sd", mixed_precision="fp8").validate()
    with pytest.raises(ValueError, match="not a multiple of .* VAE factor 2"):
        train_lora(config(bases["flux"], tmp_path / "x", "flux", resolution=17), examples, progress=False)
    with pytest.raises(ValueError, match="no training examples"):
        train_lora(config(bases["sd"], tmp_path / "y", "sd"), [], progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        train_lora(config(tmp_path / "missing", tmp_path / "z", "sd"), examples, progress=False)


def test_unsupported_pipelines_and_missing_bitsandbytes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class KandinskyV22CombinedPipeline:
        pass

    class PixArtAlphaPipeline:
        pass

    with pytest.raises(ValueError, match="no LoRA loader"):
        trainer_kind(KandinskyV22CombinedPipeline())
    with pytest.raises(ValueError, match="does not support PixArtAlphaPipeline"):
        trainer_kind(PixArtAlphaPipeline())
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        _make_optimizer("adamw8bit", [torch.nn.Parameter(torch.zeros(1))], 1e-3)
