"""Feature extractors: stated dims offline, preprocessing, colour handling, loading from folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.features import (
    CLIPExtractor,
    DINOv2Extractor,
    FeatureExtractor,
    InceptionFeatureExtractor,
    Preprocess,
    load_images,
    preprocess_batch,
    preprocess_from_config,
    state_dict_sha256,
)
from analysis.features.tiny import tiny_clip, tiny_dinov2

torch.set_num_threads(1)


def _random_images(n: int, size: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_load_images_replicates_grey_scale_to_rgb(shared_data: Path, tmp_path: Path) -> None:
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
    grey.save(tmp_path / "grey.png")
    deep = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000), mode="I;16")
    deep.save(tmp_path / "deep.png")
    real = sorted((shared_data / "radiology").glob("*.jpg"))[:2]

    images = load_images([tmp_path / "grey.png", tmp_path / "deep.png", *real])

    assert all(im.mode == "RGB" for im in images)
    arr = np.asarray(images[0])
    np.testing.assert_array_equal(arr[..., 0], np.arange(64).reshape(8, 8))
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])
    deep_rgb = np.asarray(images[1])[..., 0].astype(float)
    np.testing.assert_allclose(deep_rgb, np.rint(np.arange(64).reshape(8, 8) * 1000 / 65535 * 255), atol=1)
    with pytest.raises(ValueError, match="not found"):
        load_images([tmp_path / "missing.jpg"])


def test_preprocess_crop_and_array_layouts_agree() -> None:
    spec = Preprocess(
        size=16,
        resize="shortest_side_center_crop",
        interpolation="bicubic",
        antialias=True,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        shortest_side=20,
    )
    images = _random_images(2, (40, 30))
    from_pil = preprocess_batch(images, spec)
    nhwc = np.stack([np.asarray(im) for im in images])
    assert from_pil.shape == (2, 3, 16, 16)
    torch.testing.assert_close(preprocess_batch(nhwc, spec), from_pil)
    torch.testing.assert_close(preprocess_batch(nhwc.transpose(0, 3, 1, 2), spec), from_pil)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_batch(nhwc.astype(np.float32), spec)
    assert "replicated to 3" in spec.describe()


def test_preprocess_from_config_clip_dinov2_and_siglip_forms() -> None:
    dino = preprocess_from_config(
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "resample": 3}
    )
    assert (dino.size, dino.shortest_side, dino.resize, dino.interpolation) == (
        224,
        256,
        "shortest_side_center_crop",
        "bicubic",
    )
    siglip = preprocess_from_config(
        {"size": {"height": 384, "width": 384}, "do_center_crop": False, "image_mean": [0.5] * 3, "resample": 2}
    )
    assert (siglip.size, siglip.resize, siglip.interpolation, siglip.mean) == (384, "resize", "bilinear", (0.5,) * 3)


def test_inception_random_init_gives_2048_pool_features_at_299px() -> None:
    extractor = InceptionFeatureExtractor.random_init(seed=0)
    images = _random_images(1, (120, 90)) + _random_images(1, (64, 64), seed=1)
    feats = extractor(images)
    assert isinstance(extractor, FeatureExtractor)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and (feats >= 0).all()  # post-ReLU average pool
    assert not np.allclose(feats[0], feats[1])
    assert extractor.preprocess.size == 299
    # the state dict uses torchvision Inception3 names, so the standard weight file loads strictly
    keys = extractor.model.state_dict().keys()
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var", "fc.weight"} <= set(keys)
    assert extractor.model.fc.weight.shape == (1008, 2048)
    assert InceptionFeatureExtractor.random_init(seed=0).weights_sha256 == extractor.weights_sha256


def test_inception_refuses_a_weight_file_with_the_wrong_hash(tmp_path: Path) -> None:
    extractor = InceptionFeatureExtractor.random_init(seed=0)
    path = tmp_path / "not-fid.pth"
    torch.save(extractor.model.state_dict(), path)
    with pytest.raises(ValueError, match="not the FID Inception weights"):
        InceptionFeatureExtractor.from_pretrained(path)


def test_tiny_clip_unit_embeddings_in_stated_dim() -> None:
    clip = tiny_clip(seed=0, projection_dim=16)
    images = _random_images(3, (48, 40))
    img = clip(images)
    txt = clip.embed_texts(["generate an image containing a polyp", "chest x-ray", "normal colon"])
    assert isinstance(clip, FeatureExtractor)
    assert img.shape == txt.shape == (3, clip.dim) == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-6)
    assert not np.allclose(txt[0], txt[1])


def test_tiny_dinov2_dim_and_seeded_weights() -> None:
    a, b, c = tiny_dinov2(seed=0), tiny_dinov2(seed=0), tiny_dinov2(seed=1)
    images = _random_images(2, (32, 32))
    assert a(images).shape == (2, a.dim) == (2, 16)
    np.testing.assert_array_equal(a(images), b(images))
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert a.weights_sha256 == state_dict_sha256(a.model)


def test_extractors_load_from_a_folder(tmp_path: Path) -> None:
    clip, dino = tiny_clip(seed=3), tiny_dinov2(seed=3)
    config = {
        "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32},
        "resample": 3,
        "image_mean": list(clip.preprocess.mean),
        "image_std": list(clip.preprocess.std),
    }
    for name, extractor in (("clip", clip), ("dino", dino)):
        folder = tmp_path / name
        extractor.model.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(config))
    clip.tokenizer.save_pretrained(tmp_path / "clip")

    clip2 = CLIPExtractor.from_pretrained(tmp_path / "clip")
    dino2 = DINOv2Extractor.from_pretrained(tmp_path / "dino")

    images = _random_images(2, (50, 32))
    np.testing.assert_allclose(clip2(images), clip(images), atol=1e-6)
    np.testing.assert_allclose(dino2(images), dino(images), atol=1e-6)
    texts = ["polyp in the colon"]
    np.testing.assert_allclose(clip2.embed_texts(texts), clip.embed_texts(texts), atol=1e-6)
    assert clip2.name == "clip" and clip2.weights_sha256 == clip.weights_sha256


# ------------------------------------------------------------------------- load_extractor and offline use


def test_default_extractor_is_committed_and_works_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from analysis.features.handcrafted import HANDCRAFTED_DEFINITION
    from analysis.features.registry import DEFAULT_EXTRACTOR, load_extractor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extractor = load_extractor(DEFAULT_EXTRACTOR)
    assert isinstance(extractor, FeatureExtractor) and extractor.name == "handcrafted-v1"
    assert extractor.weights_sha256 == __import__("hashlib").sha256(HANDCRAFTED_DEFINITION.encode()).hexdigest()
    images = [*_random_images(3, (50, 40), seed=1), Image.new("RGB", (50, 40), (90, 20, 20))]
    feats = extractor(images)
    assert feats.shape == (4, extractor.dim) and np.isfinite(feats).all()
    np.testing.assert_array_equal(feats, extractor(images))
    # A flat red image: the red histogram puts everything in one bin, the gradient histogram in bin 0.
    assert feats[3, :48].reshape(3, 16).max(axis=1) == pytest.approx([1.0, 1.0, 1.0])
    assert feats[3, 112] == pytest.approx(1.0)
    assert not np.allclose(feats[0], feats[1])


def test_missing_inception_weights_are_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import urllib.error

    from analysis.features.registry import load_extractor
    from db.errors import InputError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    monkeypatch.delenv("MEDSYNTH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"--extractor inception:/path/to/pt_inception-2015-12-05-6726825d\.pth"):
        load_extractor("inception")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("MEDSYNTH_OFFLINE", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(InputError, match="could not download.*--extractor inception:"):
        load_extractor("inception")
    with pytest.raises(InputError, match="not found at"):
        load_extractor(f"inception:{tmp_path / 'missing.pth'}")
    with pytest.raises(InputError, match="unknown extractor"):
        load_extractor("clip")
    with pytest.raises(InputError, match="could not load the dinov2 checkpoint"):
        load_extractor(f"dinov2:{tmp_path / 'no-such-folder'}")
