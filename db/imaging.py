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

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from db.errors import InputError

logger = logging.getLogger(__name__)

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


#: ``Image.info`` keys set by :func:`open_image` for DICOM: the default window and MONOCHROME1 inversion
WINDOW_INFO_KEY = "medsynth_window"
INVERT_INFO_KEY = "medsynth_invert"


def preset_window(name: str) -> tuple[float, float]:
    """The (centre, width) of a named preset; an unknown name is an :class:`InputError` listing them."""
    try:
        return WINDOW_PRESETS[name]
    except KeyError:
        raise InputError(f"unknown window preset {name!r}; choose one of {', '.join(WINDOW_PRESETS)}") from None


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
    stored_window = img.info.get(WINDOW_INFO_KEY)
    invert = bool(img.info.get(INVERT_INFO_KEY))
    img = ImageOps.exif_transpose(img)
    if center is None and width is None and stored_window is not None:
        center, width = stored_window  # the file's own display window (e.g. DICOM Window Center/Width)
    mode = img.mode
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"} or (center is not None and mode == "L"):
        grey = window_to_uint8(np.asarray(img), center=center, width=width)
        if invert:  # MONOCHROME1: low values are white
            grey = 255 - grey
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in {"RGBA", "LA", "PA"} or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# ----------------------------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DicomImage:
    """A decoded single-frame DICOM image: modality values (rescale applied) and how to display them."""

    pixels: np.ndarray  # float32 (grey, modality units such as HU) or uint8 (H, W, 3) colour
    window: tuple[float, float] | None  # the file's Window Center/Width, if any
    invert: bool  # MONOCHROME1
    modality: str
    photometric: str
    transfer_syntax: str
    bits_stored: int


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    return len(data) > 132 and data[128:132] == b"DICM"


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        seq = list(value)  # type: ignore[call-overload]
    except TypeError:
        seq = [value]
    try:
        return float(seq[0]) if seq else None
    except (TypeError, ValueError):
        return None


def decode_dicom(data: bytes, *, source: object = "DICOM file", max_pixels: int | None = None) -> DicomImage:
    """Decode a single-frame DICOM image at full depth; refuse what cannot be shown with one clear error.

    Compressed transfer syntaxes decode when an installed plugin can (pydicom decodes RLE itself; JPEG,
    JPEG 2000 and JPEG-LS need Pillow, pylibjpeg or GDCM); otherwise the error names the syntax.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        raise InputError("DICOM support needs pydicom (pip install -r requirements.txt)", path=source) from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"not a readable DICOM file ({exc})", path=source) from None
    if "PixelData" not in ds:
        raise InputError("DICOM file has no pixel data (not an image)", path=source)
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    syntax = f"{tsyntax.name} ({tsyntax})" if tsyntax is not None else "unknown transfer syntax"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InputError(f"DICOM file has {frames} frames; only single-frame images are supported", path=source)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise InputError("DICOM image has no pixels (Rows/Columns missing)", path=source)
    if max_pixels is not None and rows * cols > max_pixels:
        raise InputError(f"image is {cols}x{rows} = {rows * cols:,} pixels, over the limit of {max_pixels:,}",
                         path=source)  # fmt: skip
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise InputError(
            f"cannot decode DICOM transfer syntax {syntax}: no installed decoder ({str(exc).splitlines()[0]}); "
            "install pylibjpeg with its plugins or python-gdcm, or convert the file to uncompressed DICOM",
            path=source,
        ) from None
    except (ValueError, AttributeError, KeyError, TypeError, OSError) as exc:
        raise InputError(f"DICOM pixel data unreadable ({syntax}): {str(exc).splitlines()[0]}", path=source) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    modality = str(ds.get("Modality", ""))
    if arr.ndim == 3 and arr.shape[-1] == 3:  # pydicom 3 returns YBR data converted to RGB
        pixels = window_to_uint8(arr) if arr.dtype != np.uint8 else arr
        return DicomImage(pixels, None, False, modality, photometric, syntax, int(ds.get("BitsStored", 8)))
    if arr.ndim != 2:
        raise InputError(f"DICOM pixel array has shape {arr.shape}; expected a single grey or RGB frame", path=source)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return DicomImage(window_to_uint8(apply_color_lut(arr, ds)), None, False, modality, photometric, syntax,
                          int(ds.get("BitsStored", 8)))  # fmt: skip
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    values = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    window = (center, width) if center is not None and width is not None and width > 0 else None
    return DicomImage(values, window, photometric == "MONOCHROME1", modality, photometric, syntax,
                      int(ds.get("BitsStored", 16) or 16))  # fmt: skip


def dicom_image(decoded: DicomImage) -> Image.Image:
    """A PIL image of the decoded pixels: mode ``F`` (grey, modality units) with the default window and
    MONOCHROME1 flag in ``info``, or ``RGB``. :func:`to_display_rgb` honours both."""
    if decoded.pixels.ndim == 3:
        return Image.fromarray(decoded.pixels, mode="RGB")
    img = Image.fromarray(decoded.pixels.astype(np.float32), mode="F")
    if decoded.window is not None:
        img.info[WINDOW_INFO_KEY] = decoded.window
    if decoded.invert:
        img.info[INVERT_INFO_KEY] = True
    return img


def open_image(source: Path | bytes) -> Image.Image:
    """Open a stored image fully loaded: DICOM through :func:`decode_dicom`, everything else through PIL."""
    if isinstance(source, bytes):
        data: bytes | None = source
    else:
        with open(source, "rb") as fh:
            head = fh.read(133)
        data = Path(source).read_bytes() if is_dicom(head) else None
    if data is not None and is_dicom(data):
        return dicom_image(decode_dicom(data, source=source if isinstance(source, Path) else "DICOM bytes"))
    with Image.open(io.BytesIO(data) if data is not None else source) as img:
        img.load()
        return img.copy()


def display_array(source: Path | bytes | Image.Image, *, center: float | None = None,
                  width: float | None = None) -> np.ndarray:  # fmt: skip
    """(H, W, 3) uint8 pixels exactly as raters see them (before resizing): the one mapping for display and
    for metric features. 16-bit PNG/TIFF, float TIFF and DICOM are windowed, never clipped."""
    img = source if isinstance(source, Image.Image) else open_image(source)
    return np.asarray(to_display_rgb(img, center=center, width=width))


def dicom_header(path: Path) -> dict[str, object]:
    """Labels from a DICOM file's header, read without decoding the pixels: modality, photometric
    interpretation, transfer syntax, bits stored, and the file's display window when it has one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"not a readable DICOM file ({exc})", path=path) from None
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    labels: dict[str, object] = {
        "modality": str(ds.get("Modality", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "transfer_syntax": f"{tsyntax.name} ({tsyntax})" if tsyntax is not None else "unknown",
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
    }
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        labels["window"] = {"center": center, "width": width}
    return labels
