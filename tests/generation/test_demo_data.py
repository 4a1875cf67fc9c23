"""The procedural demo dataset: deterministic, captions and attributes agree, findings are drawn."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from generation.demo_data import (
    ATTRIBUTE_COLUMNS,
    DOMAIN_ATTRIBUTES,
    caption_for,
    empty_attributes,
    generate_samples,
    make_demo_dataset,
    parse_caption,
    read_metadata,
    render_image,
)


def test_same_seed_gives_identical_files(tmp_path):
    a = make_demo_dataset(tmp_path / "a", n_per_domain=4, seed=7)
    b = make_demo_dataset(tmp_path / "b", n_per_domain=4, seed=7)
    c = make_demo_dataset(tmp_path / "c", n_per_domain=4, seed=8)
    assert [s.path.name for s in a] == [s.path.name for s in b]
    for sa, sb in zip(a, b, strict=True):
        assert sa.path.read_bytes() == sb.path.read_bytes()
        assert (sa.caption, sa.attributes) == (sb.caption, sb.attributes)
    assert (tmp_path / "a" / "metadata.csv").read_bytes() == (tmp_path / "b" / "metadata.csv").read_bytes()
    assert any(sa.path.read_bytes() != sc.path.read_bytes() for sa, sc in zip(a, c, strict=True))


def test_growing_the_dataset_keeps_earlier_frames():
    small, large = generate_samples(3, seed=1), generate_samples(5, seed=1)
    large_by_domain = large[:3] + large[5:8]
    for (im_s, cap_s, _), (im_l, cap_l, _) in zip(small, large_by_domain, strict=True):
        assert cap_s == cap_l
        assert np.array_equal(np.asarray(im_s), np.asarray(im_l))


def test_captions_parse_back_to_their_attributes():
    samples = generate_samples(60, seed=3)
    assert {a["domain"] for _, _, a in samples} == {"endoscopy", "chest_xray"}
    for img, caption, attrs in samples:
        assert img.size == (64, 64)
        assert parse_caption(caption) == attrs
        other = "chest_xray" if attrs["domain"] == "endoscopy" else "endoscopy"
        assert all(attrs[k] is None for k in DOMAIN_ATTRIBUTES[other])
        assert caption.startswith("Generate ")


def test_metadata_csv_matches_returned_samples(tmp_path):
    samples = make_demo_dataset(tmp_path, n_per_domain=5, seed=2)
    with open(tmp_path / "metadata.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["file_name", "text", *ATTRIBUTE_COLUMNS]
    back = read_metadata(tmp_path)
    assert [(s.path, s.caption, s.attributes) for s in back] == [(s.path, s.caption, s.attributes) for s in samples]
    assert all(s.path.is_file() for s in back)


def _frame(attrs, seed=0):
    return np.asarray(render_image(attrs, np.random.default_rng(seed)), dtype=np.float32)


def test_polyp_is_drawn_where_the_caption_says():
    base = empty_attributes("endoscopy") | {
        "polyp_count": 0,
        "polyp_size": "none",
        "polyp_position": "none",
        "ulcer": False,
        "instrument": False,
    }
    with_polyp = base | {"polyp_count": 1, "polyp_size": "large", "polyp_position": "upper left"}
    diff = np.abs(_frame(with_polyp) - _frame(base)).sum(axis=2)
    assert diff[:32, :32].sum() > 5 * (diff[32:, 32:].sum() + 1)
    assert caption_for(with_polyp) == "Generate an endoscopy image containing a large polyp in the upper left."


def test_left_lung_opacity_is_on_the_image_right_and_big_heart_is_brighter():
    base = empty_attributes("chest_xray") | {"opacity": "none", "cardiomegaly": False, "effusion": False}
    diff = (_frame(base | {"opacity": "left"}) - _frame(base)).sum(axis=2)
    assert diff[:, 32:].sum() > 5 * abs(diff[:, :32].sum())
    assert _frame(base | {"cardiomegaly": True})[36:56, 16:48].mean() > _frame(base)[36:56, 16:48].mean() + 5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="n_per_domain"):
        generate_samples(0)
    with pytest.raises(ValueError, match="domain"):
        parse_caption("Generate a picture of a cat.")
    with pytest.raises(ValueError, match="domain"):
        empty_attributes("dermatology")
    with pytest.raises(ValueError, match="metadata.csv"):
        read_metadata("/nonexistent/folder")
