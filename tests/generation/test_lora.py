"""LoRA adapters: a tiny random LoRA made with peft, saved with save_lora_weights, loaded by the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generation.batch import GenerationConfig, generate_images, resolve_params
from generation.lora import LORA_WEIGHT_NAME, LoraSpec, apply_loras, check_lora, parse_lora
from generation.pipelines import build_spec, load_pipeline
from generation.testing import make_random_lora, save_tiny_pipeline, tiny_pipeline
from tests.generation.conftest import SIZES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Per family: the saved pipeline folder and a folder with a random LoRA for it."""
    root = tmp_path_factory.mktemp("lora")
    out: dict[str, dict[str, Path]] = {}
    for family in SIZES:
        folder = save_tiny_pipeline(family, root / family)  # type: ignore[arg-type]
        lora = make_random_lora(tiny_pipeline(family), root / f"{family}-lora", seed=1)  # type: ignore[arg-type]
        out[family] = {"pipe": folder, "lora": lora}
    return out


def run(loaded, family: str, seed: int = 5) -> np.ndarray:
    extra = {"max_sequence_length": 16} if family == "flux" else {}
    config = GenerationConfig(steps=2, height=SIZES[family], width=SIZES[family], call_kwargs=extra)
    params = resolve_params(loaded, config)
    return generate_images(loaded.pipe, ["a polyp"], [seed], params, loaded.device, output_type="np")


@pytest.mark.parametrize("family", list(SIZES))
def test_lora_changes_the_output_and_scale_zero_does_not(tiny: dict[str, dict[str, Path]], family: str) -> None:
    folder, lora = str(tiny[family]["pipe"]), tiny[family]["lora"]
    assert (lora / LORA_WEIGHT_NAME).is_file()
    plain = run(load_pipeline(build_spec("plain", "diffusers", folder), device="cpu"), family)

    with_lora = load_pipeline(build_spec("lora", "diffusers", folder, lora=[str(lora)]), device="cpu")
    assert with_lora.adapters == ["lora_0"]
    assert with_lora.describe()["lora"] == [str(lora)]
    changed = run(with_lora, family)
    assert np.abs(changed - plain).max() > 1e-3

    # the weight file named directly, at scale 0: the adapter is loaded but contributes nothing
    off = build_spec("off", "diffusers", folder, lora=[f"{lora / LORA_WEIGHT_NAME}@0"])
    np.testing.assert_allclose(run(load_pipeline(off, device="cpu"), family), plain, atol=1e-5)


def test_making_a_random_lora_leaves_the_pipeline_untouched(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    make_random_lora(pipe, tmp_path / "lora")
    after = pipe.unet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_parse_lora() -> None:
    assert parse_lora("./adapters/polyp") == LoraSpec("./adapters/polyp", 1.0)
    assert parse_lora("./adapters/polyp@0.8") == LoraSpec("./adapters/polyp", 0.8)
    assert parse_lora("user/flux-lora@1.5").to_text() == "user/flux-lora@1.5"
    with pytest.raises(ValueError, match="must be a number"):
        parse_lora("x@strong")
    with pytest.raises(ValueError, match="no path"):
        parse_lora("  ")
    with pytest.raises(ValueError, match="finite"):
        parse_lora("x@nan")


def test_bad_lora_paths_are_named(tmp_path: Path, tiny: dict[str, dict[str, Path]]) -> None:
    with pytest.raises(ValueError, match=f"LoRA weights not found: {tmp_path / 'nope'}"):
        check_lora(LoraSpec(str(tmp_path / "nope")))
    with pytest.raises(ValueError, match=r"holds no \.safetensors"):
        check_lora(LoraSpec(str(tmp_path)))
    with pytest.raises(ValueError, match="LoRA weights not found"):
        build_spec("m", "diffusers", str(tiny["sd"]["pipe"]), lora=[str(tmp_path / "missing.safetensors")])


def test_lora_for_another_model_is_refused(tiny: dict[str, dict[str, Path]]) -> None:
    """A FLUX LoRA on the SD pipeline: diffusers finds no matching keys; we say which file."""
    spec = build_spec("mismatch", "diffusers", str(tiny["sd"]["pipe"]), lora=[str(tiny["flux"]["lora"])])
    with pytest.raises(ValueError, match="cannot load LoRA"):
        load_pipeline(spec, device="cpu")


def test_pipeline_without_lora_support_is_refused() -> None:
    class NoLora:
        pass

    with pytest.raises(ValueError, match="NoLora does not support LoRA"):
        apply_loras(NoLora(), [LoraSpec("x")])
    assert apply_loras(NoLora(), []) == []
