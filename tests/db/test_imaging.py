"""Display windowing: high-depth and float images are windowed, never clipped; 8-bit passes through."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from db.imaging import WINDOW_PRESETS, to_display_rgb, window_to_uint8


def test_uint8_passes_through_unchanged():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(window_to_uint8(arr), arr)


def test_sixteen_bit_uses_percentile_window_not_clip():
    rng = np.random.default_rng(0)
    arr = rng.integers(20_000, 40_000, size=(64, 64)).astype(np.uint16)
    out = window_to_uint8(arr)
    # Clipping to 8 bits would make every pixel 255 (a white square).
    assert out.min() == 0 and out.max() == 255
    assert 100 < out.mean() < 155


def test_explicit_window_matches_formula():
    arr = np.array([-1000.0, -600.0, 150.0, 2000.0])
    center, width = WINDOW_PRESETS["lung"]
    low = center - width / 2
    expected = np.clip(np.rint((arr - low) * 255 / width), 0, 255)
    assert window_to_uint8(arr, center=center, width=width).tolist() == expected.tolist()


def test_constant_and_nan_images():
    assert set(window_to_uint8(np.full((4, 4), 7.5)).ravel()) == {128}
    arr = np.array([[np.nan, 0.0], [1.0, np.inf]])
    out = window_to_uint8(arr)
    assert out[0, 0] == 0 and out[1, 1] == 0


def test_bad_window_arguments():
    with pytest.raises(ValueError, match="both"):
        window_to_uint8(np.zeros(3), center=1.0)
    with pytest.raises(ValueError, match="positive"):
        window_to_uint8(np.zeros(3), center=1.0, width=0.0)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_file_is_grey_rgb_with_range(fmt):
    ramp = (np.linspace(1000, 3000, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format=fmt)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        img.load()
        rgb = np.asarray(to_display_rgb(img))
    assert rgb.shape == (64, 64, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert rgb.min() <= 5 and rgb.max() >= 250


def test_cmyk_and_alpha_become_rgb():
    assert to_display_rgb(Image.new("CMYK", (8, 8), (0, 0, 0, 0))).mode == "RGB"
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert to_display_rgb(rgba).getpixel((0, 0)) == (0, 0, 0)
