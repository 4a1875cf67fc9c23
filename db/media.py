"""The media store: images stored once, content-addressed by sha256, outside the database.

Every image that enters MedSynth passes :func:`inspect_image_bytes`, which refuses non-images, truncated
files, decompression bombs and images over the pixel limit with a message naming the file. What a rater
is served is :meth:`MediaStore.served_copy`: a re-encoded PNG with no metadata (no EXIF, no text chunks),
fitted to one display square so that real and generated images cannot be told apart by format or size.

Served encoding (``SERVED_VERSION`` "fixed1"): an 8-bit RGB PNG whose only chunks are IHDR, one IDAT and
IEND, the IDAT being zlib *stored* (uncompressed) blocks with filter 0 on every row. Its byte length is a
function of the pixel size alone (``served_png_length``), so the two sides of a pair, both fitted onto the
same square, have identical width, height, mode, header and byte length whatever their content (a sharp
real photo compresses worse than a blurred generated one; a grey radiograph better than a faintly
coloured generated one). The price is bandwidth: 512 x 512 is 787,072 bytes, against 307 kB on average for
a default-compressed PNG of the GI samples (2.6x); encoding takes ~11 ms instead of hundreds. Padding
compressed copies to a per-study maximum would save about half the bytes but needs per-study state that
every later image (attention images, studies extended later) must respect, and the noisiest image sets the
maximum anyway.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from db.errors import InputError, MedSynthError
from db.imaging import decode_dicom, is_dicom, open_image, preset_window, to_display_rgb

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})
Fit = Literal["square", "contain"]
#: bumped when the served encoding changes, so stale cached copies are never sent
SERVED_VERSION = "fixed1"
#: the zoom ("full size") copy of a pair: both sides at one common pixel size, the smaller of the two sides'
#: native sizes (:func:`zoom_size`), at most this many pixels a side. The cap bounds what one zoom copy weighs
#: (uncompressed, fixed length: 2048 x 2048 is 12.6 MB, 1024 x 1024 3.1 MB); a pair over it is downscaled.
MAX_ZOOM_SIZE = 2048
#: source modes that are grey-scale: such a real image makes its pair grey on both sides
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


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


def _atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:  # served copies are a cache that can be rendered again: no fsync for them
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def native_square(width: int, height: int, fit: Fit) -> int:
    """The display-square size at which an image of ``width`` x ``height`` is shown with no resampling:
    its short side when ``square`` centre-crops, its long side when ``contain`` letterboxes.

    >>> native_square(1280, 1024, "square"), native_square(1280, 1024, "contain")
    (1024, 1280)
    """
    return min(width, height) if fit == "square" else max(width, height)


def zoom_size(native_sizes: Iterable[tuple[int, int]], fit: Fit, cap: int = MAX_ZOOM_SIZE) -> int:
    """The common pixel size of a pair's zoom copies: the smaller of its sides' :func:`native_square` sizes,
    at most ``cap``. Both sides get it, so the zoom copies' size says nothing about which side is which;
    the side with that native size is shown pixel for pixel and the other is downscaled to it. Never the
    larger size: the smaller side would be upscaled, and its blur would tell it apart (a 512 px generated
    image beside a 1,350 px colonoscopy frame).

    >>> zoom_size([(720, 576), (1024, 1024)], "square"), zoom_size([(4000, 3000), (2500, 2500)], "square")
    (576, 2048)
    """
    return min(min(native_square(w, h, fit) for w, h in native_sizes), cap)


def pair_is_grey(domain: str, real_mode: str) -> bool:
    """Whether a pair is shown in grey on both sides: radiology, or a grey-scale real image."""
    return domain == "radiology" or real_mode in GREY_MODES


def fit_for_display(
    img: Image.Image, size: int, fit: Fit, *, grey: bool = False, window: str | None = None
) -> Image.Image:
    """Fit onto the ``size`` x ``size`` display square: ``square`` centre-crops, ``contain`` keeps the aspect
    and letterboxes onto black (enlarging small images, never a smaller thumbnail).

    Every served image is RGB through :func:`db.imaging.to_display_rgb` (16-bit and float data windowed,
    CMYK and alpha converted); with ``grey`` it is made grey (R = G = B), as a radiology pair's two sides
    must be, so a faint colour spread cannot mark the generated side. ``window`` names a
    :data:`db.imaging.WINDOW_PRESETS` window for high-depth images (default: the file's own window).
    """
    center, width = preset_window(window) if window and img.mode not in ("L", "RGB") else (None, None)
    img = to_display_rgb(img, center=center, width=width)
    if grey:
        img = img.convert("L").convert("RGB")
    if fit == "square":
        if min(img.size) == size:  # native: an exact whole-pixel crop, no resampling (the zoom copy's case)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            return img.crop((left, top, left + size, top + size))
        return ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS)
    scale = size / max(img.width, img.height)
    inner = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img.resize(inner, Image.Resampling.LANCZOS), ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_fixed_png(img: Image.Image) -> bytes:
    """An 8-bit RGB PNG (IHDR, one uncompressed IDAT, IEND) whose length depends on the pixel size only."""
    rgb = img.convert("RGB")
    width, height = rgb.size
    raw = rgb.tobytes()
    stride = width * 3
    rows = b"".join(b"\x00" + raw[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 0)) + _chunk(b"IEND", b"")
    )


def served_png_length(width: int, height: int) -> int:
    """The byte length of every served copy of ``width`` x ``height`` pixels."""
    return len(encode_fixed_png(Image.new("RGB", (width, height))))


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

    def served_path(self, sha256: str, *, size: int, fit: Fit, grey: bool = False, window: str | None = None) -> Path:
        """Where the served copy of ``sha256`` with these settings is kept."""
        self._path(sha256)  # validates the digest
        variant = f"{SERVED_VERSION}-{size}-{fit}" + ("-grey" if grey else "") + (f"-{window}" if window else "")
        return self.root / "served" / variant / sha256[:2] / f"{sha256}.png"

    def render_served(self, sha256: str, *, size: int, fit: Fit, grey: bool = False, window: str | None = None) -> bool:
        """Render and keep the served copy unless it is already kept; True when it was rendered now."""
        return self.render_served_sizes(sha256, [size], fit=fit, grey=grey, window=window) == 1

    def render_served_sizes(
        self, sha256: str, sizes: Iterable[int], *, fit: Fit, grey: bool = False, window: str | None = None
    ) -> int:
        """Render and keep the served copies of ``sha256`` at each of ``sizes`` that is not kept yet, decoding
        the stored image once for all of them; returns how many were rendered now."""
        missing = {
            size: cache
            for size in dict.fromkeys(sizes)
            if not (cache := self.served_path(sha256, size=size, fit=fit, grey=grey, window=window)).exists()
        }
        if not missing:
            return 0
        image = self.open(sha256)
        for size, cache in missing.items():
            data = encode_fixed_png(fit_for_display(image, size, fit, grey=grey, window=window))
            try:
                _atomic_write(cache, data, durable=False)
            except OSError as exc:
                raise StorageError(f"cannot write to the media store at {self.root}: {exc.strerror or exc}") from None
        return len(missing)

    def served_copy(
        self, sha256: str, *, size: int = 512, fit: Fit = "square", grey: bool = False, window: str | None = None
    ) -> bytes:
        """The fixed-length, metadata-free PNG of the image fitted to ``size``.

        Studies render every copy they will serve when they are created (:func:`db.studies.prerender_study`),
        so this only reads a file; a missing copy (e.g. a study made before this encoding) is rendered here,
        with a warning, so nothing is ever refused.
        """
        cache = self.served_path(sha256, size=size, fit=fit, grey=grey, window=window)
        try:
            return cache.read_bytes()
        except FileNotFoundError:
            logger.warning("served copy of %s... was not pre-rendered; rendering it now", sha256[:12])
        self.render_served(sha256, size=size, fit=fit, grey=grey, window=window)
        return cache.read_bytes()
