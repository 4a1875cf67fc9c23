"""LoRA training on tiny FLUX and SD pipelines, offline: the loss falls, the adapter saves, loads and matters."""

from __future__ import annotations

import json
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
from tests.generation.conftest import SIZES


@pytest.fixture(scope="module")
def bases(tiny_pipeline_folders: dict[str, Path]) -> dict[str, Path]:
    return tiny_pipeline_folders


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
    interrupted_s = torch.load(latest_checkpoint(tmp_path / "b"), weights_only=False)["elapsed_s"]
    resumed = train_lora(config(bases["sd"], tmp_path / "b", "sd", resume=True), examples, progress=False)
    assert resumed.start_step == 2
    assert resumed.wall_time_s > interrupted_s > 0  # the training time counts the interrupted run too
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


def tiny_sdxl(folder: Path) -> Path:
    """A tiny SDXL pipeline (two 2-layer CLIPs, a 2-level UNet with text_time embedding), saved to ``folder``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from generation.testing import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    text = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(tokenizer), projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8, cross_attention_dim=64,
        norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def test_sdxl_with_both_text_encoders(examples: list, tmp_path: Path) -> None:
    base = tiny_sdxl(tmp_path / "sdxl")
    result = train_lora(
        config(base, tmp_path / "out", "sd", steps=8, lr=3e-2, train_text_encoder=True), examples, progress=False
    )
    assert result.family == "sdxl" and result.eval_loss_after < result.eval_loss_before
    with safe_open(result.adapter_path, "pt") as handle:
        prefixes = {key.split(".", 1)[0] for key in handle.keys()}  # noqa: SIM118
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    assert load_pipeline(build_spec("x", "diffusers", str(base), lora=[str(tmp_path / "out")]), "cpu").adapters


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

    class Kandinsky3Pipeline:
        pass

    class PixArtAlphaPipeline:
        pass

    for pipe in (KandinskyV22CombinedPipeline(), Kandinsky3Pipeline()):
        with pytest.raises(ValueError, match="cannot put a LoRA on Kandinsky"):
            trainer_kind(pipe)
    with pytest.raises(ValueError, match="does not support PixArtAlphaPipeline"):
        trainer_kind(PixArtAlphaPipeline())
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        _make_optimizer("adamw8bit", [torch.nn.Parameter(torch.zeros(1))], 1e-3)
