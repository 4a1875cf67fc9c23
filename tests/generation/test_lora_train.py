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
    LoraTrainer,
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


def test_trainer_checkpoint_then_resume_gives_the_uninterrupted_loss_trajectory(
    bases: dict[str, Path], examples: list, tmp_path: Path
) -> None:
    """setup / step / checkpoint(path) in one trainer, resume(path) in a fresh one: the same losses and weights."""
    settings = config(bases["sd"], tmp_path / "run", "sd", steps=6, lr_scheduler="linear", lr_warmup_steps=2)
    straight = LoraTrainer(settings, examples, progress=False)
    straight.setup()
    uninterrupted = [straight.step() for _ in range(5)]
    assert len(set(uninterrupted)) == 5 and straight.losses == uninterrupted

    first = LoraTrainer(settings, examples, progress=False)
    first.setup()
    head = [first.step() for _ in range(2)]
    saved = first.checkpoint(tmp_path / "elsewhere" / "state.pt")
    assert saved is not None and saved.is_file()
    first.step()  # the interrupted trainer goes on; the checkpoint must not see it
    del first

    second = LoraTrainer(settings, examples, progress=False)
    second.setup()
    assert second.resume(saved) == 2 and second.losses == head
    tail = [second.step() for _ in range(3)]
    np.testing.assert_allclose(head + tail, uninterrupted, rtol=1e-6, atol=1e-7)
    for key, value in second.state.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(value["exp_avg"], straight.state.optimizer.state_dict()["state"][key]["exp_avg"])

    adapter = second.save(tmp_path / "adapter")
    assert adapter == tmp_path / "adapter" / LORA_WEIGHT_NAME and adapter.is_file()
    other = LoraTrainer(config(bases["sd"], tmp_path / "run", "sd", steps=6, rank=8), examples, progress=False)
    other.setup()
    with pytest.raises(ValueError, match="other settings"):
        other.resume(saved)


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

    assert trainer_kind(KandinskyV22CombinedPipeline()) == "kandinsky22"
    assert trainer_kind(Kandinsky3Pipeline()) == "kandinsky3"
    with pytest.raises(ValueError, match="does not support PixArtAlphaPipeline"):
        trainer_kind(PixArtAlphaPipeline())
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        _make_optimizer("adamw8bit", [torch.nn.Parameter(torch.zeros(1))], 1e-3)


@pytest.fixture(scope="module")
def kandinsky22_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from generation.testing import save_tiny_pipeline

    return save_tiny_pipeline("kandinsky22", tmp_path_factory.mktemp("k22") / "base")


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def test_kandinsky22_decoder_lora_trains_and_reloads_with_identical_images(
    kandinsky22_base: Path, examples: list, tmp_path: Path
) -> None:
    """The decoder UNet takes a peft LoRA (no adapter mixin needed), trained on the target images' CLIP image
    embeddings; the saved adapter goes back onto a fresh pipeline and reproduces the trained pipeline's image."""
    from PIL import Image

    prompt = "a polyp in the colon"
    settings = config(
        kandinsky22_base, tmp_path / "k22", "sd", steps=6, lr=5e-2, validation_prompts=(prompt,), checkpoint_every=50
    )
    result = train_lora(settings, examples, progress=False)
    assert result.family == "kandinsky22" and result.pipeline == "KandinskyV22CombinedPipeline"
    assert all(np.isfinite(result.losses)) and len(result.losses) == 6
    tensors = lora_tensors(result.adapter_path)
    assert tensors and all(key.startswith("unet.") for key in tensors)
    assert any("add_k_proj.lora_B" in key for key in tensors)  # the image-token projections are adapted
    assert max(float(v.abs().max()) for k, v in tensors.items() if "lora_B" in k) > 0  # B starts at zero
    assert "--kind diffusers" in (tmp_path / "k22" / "README.md").read_text()

    loaded = load_pipeline(build_spec("k", "diffusers", str(kandinsky22_base), lora=[str(tmp_path / "k22")]), "cpu")
    assert loaded.adapters == ["lora_0"]
    trained = np.asarray(Image.open(result.validation_images[-1]).convert("RGB"), dtype=np.int16)
    params = resolve_params(loaded, GenerationConfig(steps=2, height=32, width=32))
    again = generate_images(loaded.pipe, [prompt], [settings.seed], params, loaded.device)[0]
    assert np.abs(np.asarray(again.convert("RGB"), dtype=np.int16) - trained).max() <= 1
    plain_spec = build_spec("p", "diffusers", str(kandinsky22_base))
    plain_loaded = load_pipeline(plain_spec, "cpu")
    plain = generate_images(plain_loaded.pipe, [prompt], [settings.seed], params, plain_loaded.device)[0]
    assert np.abs(np.asarray(plain.convert("RGB"), dtype=np.int16) - trained).max() > 1


def test_kandinsky3_unet_lora_trains_and_reloads_with_identical_images(examples: list, tmp_path: Path) -> None:
    """Kandinsky3UNet has no adapter mixin: peft wraps its attention modules by name; T5-conditioned epsilon loss."""
    from PIL import Image

    from generation.testing import save_tiny_pipeline

    base = save_tiny_pipeline("kandinsky3", tmp_path / "base")
    with pytest.raises(ValueError, match="Kandinsky3UNet .* has no gradient checkpointing"):
        train_lora(config(base, tmp_path / "gc", "sd", resolution=16, gradient_checkpointing=True), examples)
    prompt = "a polyp in the colon"
    settings = config(base, tmp_path / "k3", "sd", steps=6, lr=5e-2, resolution=16, validation_prompts=(prompt,))
    result = train_lora(settings, examples, progress=False)
    assert result.family == "kandinsky3" and all(np.isfinite(result.losses))
    tensors = lora_tensors(result.adapter_path)
    assert tensors and any(".attention.to_q.lora_A" in key for key in tensors)
    assert max(float(v.abs().max()) for k, v in tensors.items() if "lora_B" in k) > 0

    loaded = load_pipeline(build_spec("k", "diffusers", str(base), lora=[str(tmp_path / "k3")]), "cpu")
    trained = np.asarray(Image.open(result.validation_images[-1]).convert("RGB"), dtype=np.int16)
    params = resolve_params(loaded, GenerationConfig(steps=2, height=16, width=16))
    again = generate_images(loaded.pipe, [prompt], [settings.seed], params, loaded.device)[0]
    assert np.abs(np.asarray(again.convert("RGB"), dtype=np.int16) - trained).max() <= 1
    plain_loaded = load_pipeline(build_spec("p", "diffusers", str(base)), "cpu")
    plain = generate_images(plain_loaded.pipe, [prompt], [settings.seed], params, plain_loaded.device)[0]
    assert np.abs(np.asarray(plain.convert("RGB"), dtype=np.int16) - trained).max() > 1
    off = load_pipeline(build_spec("z", "diffusers", str(base), lora=[f"{tmp_path / 'k3'}@0"]), "cpu")
    zero = generate_images(off.pipe, [prompt], [settings.seed], params, off.device)[0]
    np.testing.assert_array_equal(np.asarray(zero), np.asarray(plain))  # the @SCALE of models add --lora applies


def test_a_kandinsky_adapter_for_another_base_is_refused_with_a_message(tmp_path: Path) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    from generation.lora import save_peft_lora
    from generation.testing import save_tiny_pipeline, tiny_kandinsky22_pipeline

    unet = tiny_kandinsky22_pipeline().unet
    settings = LoraConfig(r=2, lora_alpha=2, target_modules=["add_k_proj"])
    inject_adapter_in_model(settings, unet, adapter_name="default")
    save_peft_lora(tmp_path / "k22-lora", {"unet": unet}, {"unet": settings})
    k3 = save_tiny_pipeline("kandinsky3", tmp_path / "k3")
    with pytest.raises(ValueError, match="cannot load LoRA .* into Kandinsky3Pipeline"):
        load_pipeline(build_spec("x", "diffusers", str(k3), lora=[str(tmp_path / "k22-lora")]), "cpu")


def test_latent_and_embedding_caches_are_memory_maps_on_disk_and_keep_the_losses(
    bases: dict[str, Path], examples: list, tmp_path: Path
) -> None:
    from generation.lora_train import CACHE_DIR, open_cache

    cached = train_lora(config(bases["sd"], tmp_path / "c", "sd", steps=2), examples, progress=False)
    root = tmp_path / "c" / CACHE_DIR
    tables = {**open_cache(root / "cond"), **open_cache(root / "latents")}
    assert set(tables) == {"prompt_embeds", "latents"}
    assert all(isinstance(table.array, np.memmap) for table in tables.values())
    assert len(tables["latents"]) == len(examples) and len(tables["prompt_embeds"]) == len({c for _, c in examples})
    stamp = {p.name: p.stat().st_mtime_ns for p in root.rglob("*.npy")}

    uncached = train_lora(
        config(bases["sd"], tmp_path / "u", "sd", steps=2, cache_latents=False, cache_text_embeddings=False),
        examples,
        progress=False,
    )
    np.testing.assert_allclose(cached.losses, uncached.losses, rtol=1e-5)
    assert not (tmp_path / "u" / CACHE_DIR).exists()

    again = train_lora(config(bases["sd"], tmp_path / "c", "sd", steps=2, resume=True), examples, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in root.rglob("*.npy")} == stamp  # reused, not rebuilt
    np.testing.assert_allclose(again.losses, cached.losses, rtol=1e-6)


def test_a_bfloat16_cache_round_trips_bit_for_bit(tmp_path: Path) -> None:
    from generation.lora_train import build_cache, open_cache

    data = torch.randn(5, 3, 4).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 0]] * 5)
    assert build_cache(tmp_path, "k", 5, lambda a, b: {"e": data[a:b], "m": mask[a:b]}, chunk=2)
    assert not build_cache(tmp_path, "k", 5, lambda a, b: {"e": data[a:b], "m": mask[a:b]}, chunk=2)
    tables = open_cache(tmp_path)
    rows = torch.tensor([4, 0, 2])
    assert torch.equal(tables["e"].rows(rows), data[rows]) and tables["e"].rows(rows).dtype == torch.bfloat16
    assert torch.equal(tables["m"].rows(rows), mask[rows])
    assert build_cache(tmp_path, "other", 5, lambda a, b: {"e": data[a:b] * 2, "m": mask[a:b]})  # new key: rebuilt
    torch.testing.assert_close(open_cache(tmp_path)["e"].rows(rows), data[rows] * 2)
