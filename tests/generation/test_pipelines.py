"""The generic model layer on tiny SD and FLUX pipelines built from configs, fully offline."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from db.errors import MedSynthError
from generation.batch import GenerationConfig, check_inputs, generate_images, resolve_params
from generation.devices import parse_dtype, resolve_device, track_peak_memory
from generation.pipelines import (
    SCHEDULERS,
    ModelSpec,
    PipelineCache,
    build_spec,
    check_model_spec,
    load_pipeline,
    set_scheduler,
    text_to_image_class,
)
from generation.presets import PRESETS, Family, detect_family, native_resolution, resolve_sampling, vae_factor
from generation.testing import save_tiny_pipeline, single_torch_thread, tiny_pipeline

FAMILIES = ("sd", "flux")
# FLUX's tiny T5 reads 16 tokens; the tiny FLUX VAE has factor 1, so 16 px images are 8x8 packed latents.
SMALL = {"sd": {"height": 32, "width": 32}, "flux": {"height": 16, "width": 16, "max_sequence_length": 16}}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {family: save_tiny_pipeline(family, root / family) for family in FAMILIES}


def small_config(family: str, **overrides: object) -> GenerationConfig:
    size = SMALL[family]
    extra = {"max_sequence_length": 16} if family == "flux" else {}
    base: dict[str, object] = {"steps": 2, "height": size["height"], "width": size["width"], "call_kwargs": extra}
    base.update(overrides)
    return GenerationConfig(**base)  # type: ignore[arg-type]


def make(loaded, family: str, seeds: list[int], prompt: str = "a polyp in the colon", **overrides: object):
    params = resolve_params(loaded, small_config(family, **overrides))
    return generate_images(loaded.pipe, [prompt] * len(seeds), seeds, params, loaded.device, output_type="np")


def test_conftest_keeps_the_hub_offline() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_pipeline_generates_offline_through_the_loader(folders: dict[str, Path], family: str) -> None:
    loaded = load_pipeline(build_spec(f"tiny-{family}", "diffusers", str(folders[family])), device="cpu")
    assert type(loaded.pipe).__name__ == {"sd": "StableDiffusionPipeline", "flux": "FluxPipeline"}[family]
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    images = make(loaded, family, [0, 1])
    size = SMALL[family]
    assert images.shape == (2, size["height"], size["width"], 3)
    assert np.isfinite(images).all() and images.std() > 0.01
    assert not np.allclose(images[0], images[1])  # two seeds, two images


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip_gives_the_same_images(folders: dict[str, Path], family: str) -> None:
    fresh = tiny_pipeline(family)  # same seed as the saved folder
    loaded = load_pipeline(build_spec("rt", "diffusers", str(folders[family])), device="cpu")
    params = resolve_params(loaded, small_config(family, guidance=2.0))
    before = generate_images(fresh, ["a chest x-ray"], [7], params, torch.device("cpu"), output_type="np")
    after = generate_images(loaded.pipe, ["a chest x-ray"], [7], params, torch.device("cpu"), output_type="np")
    np.testing.assert_array_equal(before, after)
    index = json.loads((folders[family] / "model_index.json").read_text())
    assert index["_class_name"] == type(loaded.pipe).__name__


def test_msdm_kind_loads_through_the_msdm_loader(folders: dict[str, Path]) -> None:
    loaded = load_pipeline(build_spec("ours", "msdm", str(folders["sd"])), device="cpu")
    assert loaded.family == Family.MSDM
    assert resolve_params(loaded, GenerationConfig(height=32, width=32)).steps == PRESETS[Family.MSDM].steps


def test_scheduler_swap_by_name_and_restore(folders: dict[str, Path]) -> None:
    loaded = load_pipeline(build_spec("sched", "diffusers", str(folders["sd"])), device="cpu")
    pipe = loaded.pipe
    original = pipe.scheduler
    assert set_scheduler(pipe, "dpm++") == "DPMSolverMultistepScheduler"
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.beta_end == original.config.beta_end  # from_config keeps the noise schedule
    dpm = make(loaded, "sd", [3], scheduler="dpm++")
    ddim = make(loaded, "sd", [3], scheduler="ddim")
    assert np.abs(dpm - ddim).max() > 1e-3
    for name in ("euler", "pndm", "euler-a", "lms", "unipc"):
        assert set_scheduler(pipe, name) == SCHEDULERS[name][0]
    set_scheduler(pipe, None)
    assert pipe.scheduler is original
    with pytest.raises(ValueError, match="unknown scheduler 'warp-drive'"):
        set_scheduler(pipe, "warp-drive")


def test_sd_scheduler_refused_on_flux(folders: dict[str, Path]) -> None:
    loaded = load_pipeline(build_spec("flux", "diffusers", str(folders["flux"])), device="cpu")
    with pytest.raises(ValueError, match=r"scheduler 'ddim' does not fit FluxPipeline.*flow-euler"):
        set_scheduler(loaded.pipe, "ddim")
    assert set_scheduler(loaded.pipe, "flow-euler") == "FlowMatchEulerDiscreteScheduler"


def test_presets_detect_families_and_fill_defaults(folders: dict[str, Path]) -> None:
    assert detect_family("FluxPipeline", "black-forest-labs/FLUX.1-dev") == Family.FLUX_DEV
    assert detect_family("FluxPipeline", "black-forest-labs/FLUX.1-schnell") == Family.FLUX_SCHNELL
    assert detect_family("Kandinsky3Pipeline", "kandinsky-community/kandinsky-3") == Family.KANDINSKY3
    assert detect_family("KandinskyV22CombinedPipeline", "kandinsky-community/kandinsky-2-2-decoder") == (
        Family.KANDINSKY22
    )
    assert detect_family("StableDiffusionPipeline", "stabilityai/stable-diffusion-2-1") == Family.SD2
    assert detect_family("StableDiffusionPipeline", "runwayml/stable-diffusion-v1-5") == Family.SD1
    assert detect_family("StableDiffusionXLPipeline", "x/y") == Family.SDXL
    assert detect_family("SomeNewPipeline", "x/y") == Family.GENERIC
    assert detect_family("StableDiffusionPipeline", "anything", kind="msdm") == Family.MSDM

    flux = load_pipeline(build_spec("f", "diffusers", str(folders["flux"])), device="cpu")
    assert flux.family == Family.FLUX_DEV
    assert resolve_sampling(flux.pipe, flux.preset, None, None) == (28, 3.5)
    assert resolve_sampling(flux.pipe, PRESETS[Family.FLUX_SCHNELL], None, None) == (4, 0.0)
    assert vae_factor(flux.pipe) == 2  # VAE factor 1, times 2 for FLUX's 2x2 latent packing
    assert native_resolution(flux.pipe) == flux.pipe.default_sample_size * flux.pipe.vae_scale_factor

    sd = load_pipeline(build_spec("s", "diffusers", str(folders["sd"])), device="cpu")
    assert sd.family == Family.GENERIC  # a bare folder: the pipeline's own call defaults apply
    assert resolve_sampling(sd.pipe, sd.preset, None, None) == (50, 7.5)
    assert resolve_sampling(sd.pipe, sd.preset, 3, 1.5) == (3, 1.5)
    assert native_resolution(sd.pipe) == 32 and vae_factor(sd.pipe) == 2
    params = resolve_params(sd, GenerationConfig(steps=2))
    assert (params.height, params.width) == (32, 32)


def test_text_to_image_entry_point_is_picked_like_autopipeline() -> None:
    # Kandinsky 2.2's decoder folder is not text-to-image by itself: the combined pipeline (prior + decoder) is
    assert text_to_image_class("KandinskyV22Pipeline").__name__ == "KandinskyV22CombinedPipeline"
    assert text_to_image_class("Kandinsky3Pipeline").__name__ == "Kandinsky3Pipeline"
    assert text_to_image_class("FluxPipeline").__name__ == "FluxPipeline"
    assert text_to_image_class("MyOwnResearchPipeline") is None  # loads as saved


def test_pipeline_cache_keeps_warm_pipelines_lru(folders: dict[str, Path]) -> None:
    cache = PipelineCache(capacity=1)
    sd = build_spec("s", "diffusers", str(folders["sd"]))
    flux = build_spec("f", "diffusers", str(folders["flux"]))
    first = cache.get(sd, "cpu")
    assert cache.get(sd, "cpu") is first  # warm: no reload
    cache.get(flux, "cpu")
    assert [key[0].name for key in cache.loaded_keys()] == ["f"]  # capacity 1: sd was evicted
    assert cache.get(sd, "cpu") is not first
    with pytest.raises(ValueError, match="capacity"):
        PipelineCache(capacity=0)


def test_model_spec_parameters_round_trip(tmp_path: Path, folders: dict[str, Path]) -> None:
    lora = tmp_path / "adapter.safetensors"
    lora.write_bytes(b"x")
    spec = build_spec("m", "diffusers", str(folders["sd"]), lora=[f"{lora}@0.5"], dtype="bf16", offload=True)
    assert spec.parameters() == {"lora": [f"{lora}@0.5"], "dtype": "bf16", "offload": True}
    assert ModelSpec.from_record("m", "diffusers", str(folders["sd"]), spec.parameters()) == spec


# ---------------------------------------------------------------------------------------------- bad inputs


def test_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match=f"folder {missing} does not exist"):
        build_spec("m", "diffusers", str(missing))


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no model_index\.json"):
        build_spec("m", "diffusers", str(tmp_path))


def test_hub_id_offline_and_not_cached_names_the_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MedSynthError, match=r"'black-forest-labs/FLUX\.1-dev' is not in the local .*offline"):
        build_spec("flux", "diffusers", "black-forest-labs/FLUX.1-dev")
    spec = ModelSpec("k3", "diffusers", "kandinsky-community/kandinsky-3")
    with pytest.raises(MedSynthError, match="kandinsky-community/kandinsky-3"):
        load_pipeline(spec, device="cpu")


def test_invalid_hub_id_and_unknown_kind() -> None:
    with pytest.raises(ValueError, match="neither an existing folder nor a valid hub id"):
        build_spec("m", "diffusers", "bad id!/x")
    with pytest.raises(ValueError, match="unknown model kind 'onnx'"):
        build_spec("m", "onnx", "x/y")
    with pytest.raises(ValueError, match="--source"):
        check_model_spec(ModelSpec("m", "diffusers", ""))


def test_folder_kind_is_imported_not_generated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no images"):
        build_spec("elsewhere", "folder", str(tmp_path))
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    spec = build_spec("elsewhere", "folder", str(tmp_path))
    with pytest.raises(ValueError, match="imported, not generated"):
        load_pipeline(spec, device="cpu")


def test_devices_and_dtypes() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert parse_dtype(None, torch.device("cpu")) == torch.float32
    assert parse_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        parse_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with track_peak_memory(torch.device("cpu")) as peak:
        block = torch.ones(4_000_000)  # 16 MB
        del block
    assert peak.kind == "cpu_rss" and peak.bytes > 16_000_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 33}, "height=33 px is not a multiple of this model's VAE factor 2: use 32 or 34"),
        ({"width": 100_000}, "width=100000 px is out of range"),
        ({"height": 0}, "height=0 px is out of range"),
        ({"steps": 0}, "steps=0 is out of range"),
        ({"guidance": -1.0}, "guidance=-1.0 is out of range"),
        ({"per_case": 0}, "per-case=0 is out of range"),
        ({"batch_size": 0}, "batch-size=0 must be at least 1"),
        ({"seed": -5}, "seed=-5 must be a non-negative integer"),
    ],
)
def test_check_inputs_names_the_problem(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"height": 32, "width": 32, "factor": 2, "steps": 2, "guidance": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_inputs(**args)  # type: ignore[arg-type]


def test_impossible_resolution_refused_before_generating(folders: dict[str, Path]) -> None:
    loaded = load_pipeline(build_spec("f", "diffusers", str(folders["flux"])), device="cpu")
    with pytest.raises(ValueError, match="not a multiple of this model's VAE factor 2"):
        resolve_params(loaded, small_config("flux", height=15))


def test_local_sources_and_loras_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from generation.testing import make_random_lora, save_tiny_pipeline, tiny_pipeline

    save_tiny_pipeline("sd", tmp_path / "pipe")
    make_random_lora(tiny_pipeline("sd"), tmp_path / "lora", seed=1)
    monkeypatch.chdir(tmp_path)
    spec = build_spec("m", "diffusers", "pipe", lora=["lora@0.5"])
    assert spec.source == str((tmp_path / "pipe").resolve())
    assert spec.loras[0].path == str((tmp_path / "lora").resolve()) and spec.loras[0].scale == 0.5


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The hub switched on (no request leaves: every test below replaces the one probe) with an empty cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    return monkeypatch


def _raise(error: BaseException):
    def probe(*_args: object, **_kwargs: object) -> None:
        raise error

    return probe


def test_gated_missing_and_unreachable_hub_ids_are_one_line(online: pytest.MonkeyPatch) -> None:
    import httpx2
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    response = httpx2.Response(403, request=httpx2.Request("HEAD", "https://huggingface.co/x"))
    cases = [
        (GatedRepoError("403 gated", response=response), r"'black-forest-labs/FLUX\.1-dev' is gated: accept its lic"),
        (RepositoryNotFoundError("404", response=response), r"does not exist \(or is private"),
        (httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"), "cannot reach the Hugging Face hub"),
    ]
    for error, message in cases:
        online.setattr("huggingface_hub.get_hf_file_metadata", _raise(error))
        with pytest.raises(MedSynthError, match=message) as caught:
            build_spec("flux", "diffusers", "black-forest-labs/FLUX.1-dev")
        assert "\n" not in str(caught.value) and caught.value.__cause__ is None  # one line, no chained traceback


def test_unreachable_hub_with_a_cached_copy_only_warns(online: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    import httpx2

    online.setattr("huggingface_hub.get_hf_file_metadata", _raise(httpx2.ConnectTimeout("timed out")))
    online.setattr("huggingface_hub.try_to_load_from_cache", lambda *_a, **_k: "/cache/model_index.json")
    with caplog.at_level("WARNING"):
        spec = build_spec("flux", "diffusers", "black-forest-labs/FLUX.1-dev")
    assert spec.source == "black-forest-labs/FLUX.1-dev" and "using the cached copy" in caplog.text
