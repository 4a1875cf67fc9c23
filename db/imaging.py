"""Pixel data to display pixels: one place that turns any stored image into 8-bit RGB.

Real radiographs arrive as 16-bit PNG/TIFF, float arrays or DICOM; generated images as 8-bit RGB. A rater
must see both through the same mapping, and neither may be clipped to white or black. High-depth and float
data are windowed (an explicit centre/width, e.g. from DICOM tags or a named preset, else the 0.5-99.5
percentile range); 8-bit data pass through unchanged unless a window is given. Metric feature extractors
read images through the same function, so what is measured is what raters see.

>>> import numpy as np
>>> sixteen = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
>>> window_to_uint8(sixteen, center=2000, width=4000).tolist()
[[0, 64], [128, 255]]
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

#: the default display window for high-depth data without window tags, in percentiles
DEFAULT_PERCENTILES = (0.5, 99.5)

#: named display windows (centre, width) in Hounsfield units, as radiology viewers ship them
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (60.0, 400.0),
}


def window_to_uint8(
    pixels: np.ndarray,
    *,
    center: float | None = None,
    width: float | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Map ``pixels`` (any dtype, grey or multi-channel) linearly onto 0..255.

    With ``center`` and ``width`` the window is [center - width/2, center + width/2]; without them, uint8
    data are returned as they are and other data are windowed between the given percentiles of their
    finite values. NaN and infinities map to 0. A constant image maps to mid-grey, never to white.
    """
    arr = np.asarray(pixels)
    if (center is None) != (width is None):
        raise ValueError("give both center and width, or neither")
    if center is None and arr.dtype == np.uint8:
        return arr.copy()
    data = arr.astype(np.float64, copy=False)
    finite = np.isfinite(data)
    if center is not None and width is not None:
        if not width > 0:
            raise ValueError(f"window width must be positive, got {width}")
        low, high = center - width / 2.0, center + width / 2.0
    else:
        values = data[finite]
        if values.size == 0:
            return np.zeros(arr.shape, dtype=np.uint8)
        low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        out = np.full(arr.shape, 128, dtype=np.uint8)
        out[~finite] = 0
        return out
    scaled = (np.where(finite, data, low) - low) * (255.0 / (high - low))
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    out[~finite] = 0
    return out


def to_display_rgb(img: Image.Image, *, center: float | None = None, width: float | None = None) -> Image.Image:
    """Any PIL image (16-bit, 32-bit int, float, CMYK, palette, alpha, EXIF-rotated) as 8-bit RGB.

    Grey sources stay grey (R = G = B); alpha is composited onto black; high-depth grey is windowed by
    :func:`window_to_uint8`.
    """
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"} or (center is not None and mode == "L"):
        grey = window_to_uint8(np.asarray(img), center=center, width=width)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in {"RGBA", "LA", "PA"} or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
