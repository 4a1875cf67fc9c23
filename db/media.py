"""The media store: images stored once, content-addressed by sha256, outside the database.

Every image that enters MedSynth passes :func:`inspect_image_bytes`, which refuses non-images, truncated
files, decompression bombs and images over the pixel limit with a message naming the file. What a rater
is served is :meth:`MediaStore.served_copy`: a re-encoded PNG with no metadata (no EXIF, no text chunks),
fitted to one display size so that real and generated images cannot be told apart by format or size.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from db.errors import InputError, MedSynthError
from db.imaging import decode_dicom, is_dicom, open_image, preset_window, to_display_rgb

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})
Fit = Literal["square", "contain"]
#: bumped when the served encoding changes, so stale cached copies are never sent
SERVED_VERSION = "rgb1"


class StorageError(MedSynthError, OSError):
    """The media store cannot be written (disk full, read-only folder)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the database keeps of an image."""

    sha256: str
    width: int
    height: int
    mode: str
    format: str
    n_bytes: int


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_file_checked(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read an image file, refusing missing, empty and oversized files with a clear message."""
    if not path.exists():
        raise InputError("file not found", path=path)
    if not path.is_file():
        raise InputError("not a regular file", path=path)
    size = path.stat().st_size
    if size == 0:
        raise InputError("empty file (0 bytes), not an image", path=path)
    if size > max_bytes:
        raise InputError(f"file is {size:,} bytes, over the limit of {max_bytes:,}", path=path)
    return path.read_bytes()


def inspect_image_bytes(data: bytes, *, source: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Validate ``data`` as a complete image within ``max_pixels``; return its :class:`ImageInfo`."""
    if not data:
        raise InputError("empty file (0 bytes), not an image", path=source)
    if is_dicom(data):  # kept at full depth; decoded (once, here) to prove it can be shown
        dcm = decode_dicom(data, source=source, max_pixels=max_pixels)
        height, width = dcm.pixels.shape[:2]
        return ImageInfo(sha256_bytes(data), width, height, "RGB" if dcm.pixels.ndim == 3 else "F", "DICOM", len(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or "?"
                width, height = img.size
                if fmt not in ALLOWED_FORMATS:
                    raise InputError(f"unsupported image format {fmt}", path=source)
                if width <= 0 or height <= 0:
                    raise InputError("image has no pixels", path=source)
                if width * height > max_pixels:
                    raise InputError(
                        f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{max_pixels:,} (decompression bombs are refused)",
                        path=source,
                    )
                if fmt == "JPEG":  # DCT-scaled decode: reads the whole stream (truncation is caught), 4x faster
                    img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
                mode = img.mode
                img.load()
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("not an image (unidentified or corrupt format)", path=source) from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"decompression bomb refused ({exc})", path=source) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"truncated or unreadable image ({exc})", path=source) from None
    return ImageInfo(sha256_bytes(data), width, height, mode, fmt, len(data))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fit_for_display(img: Image.Image, size: int, fit: Fit, *, window: str | None = None) -> Image.Image:
    """Resize to the display size: ``square`` centre-crops to a square, ``contain`` keeps the aspect.

    Every served image is RGB: a grey-scale radiograph stays grey (R = G = B), and the PNG colour type
    cannot tell a rater which side came from a grey-scale source (real) and which from a generator.
    """
    center, width = preset_window(window) if window and img.mode not in ("L", "RGB") else (None, None)
    img = to_display_rgb(img, center=center, width=width)
    if fit == "square":
        return ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS)
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return img


class MediaStore:
    """Content-addressed image files under ``root``: ``root/ab/abcdef....ext``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "objects" / sha256[:2] / sha256

    def path(self, sha256: str) -> Path:
        """The file holding image ``sha256`` (raises if it is not stored)."""
        p = self._path(sha256)
        if not p.exists():
            raise FileNotFoundError(f"image {sha256[:12]}... is not in the media store at {self.root}")
        return p

    def put_bytes(self, data: bytes, *, source: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
        """Validate and store ``data``; storing the same bytes twice is a no-op."""
        info = inspect_image_bytes(data, source=source, max_pixels=max_pixels)
        target = self._path(info.sha256)
        if not target.exists():
            try:
                _atomic_write(target, data)
            except OSError as exc:
                raise StorageError(f"cannot write to the media store at {self.root}: {exc.strerror or exc}") from None
        return info

    def put_image(self, image: Image.Image, *, source: object = "generated image") -> ImageInfo:
        """Encode ``image`` as PNG (no metadata) and store it."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return self.put_bytes(buf.getvalue(), source=source)

    def sweep_temporary(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files a killed process left behind (never read; old ones only, so a
        concurrent writer's file is safe). Returns how many were removed."""
        import time

        if not self.root.exists():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.root.rglob(".tmp-*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def open(self, sha256: str) -> Image.Image:
        """Open a stored image (fully loaded; DICOM decoded at full depth by :func:`db.imaging.open_image`)."""
        return open_image(self.path(sha256))

    def served_copy(self, sha256: str, *, size: int = 512, fit: Fit = "square", window: str | None = None) -> bytes:
        """A metadata-free PNG of the image fitted to ``size``; cached on disk. ``window`` names a
        :data:`db.imaging.WINDOW_PRESETS` window for high-depth images (default: the file's own window)."""
        variant = f"{SERVED_VERSION}-{size}-{fit}" + (f"-{window}" if window else "")
        cache = self.root / "served" / variant / sha256[:2] / f"{sha256}.png"
        if cache.exists():
            return cache.read_bytes()
        img = fit_for_display(self.open(sha256), size, fit, window=window)
        clean = Image.new(img.mode, img.size)
        clean.paste(img)
        buf = io.BytesIO()
        clean.save(buf, format="PNG", optimize=False)
        data = buf.getvalue()
        _atomic_write(cache, data)
        return data
