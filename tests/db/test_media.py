"""Served copies: one encoding for every image, so real and generated cannot be told apart by format."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from db.media import ImageInfo, MediaStore, served_png_length


def test_grey_and_colour_images_are_served_alike(tmp_path: Path, shared_data: Path) -> None:
    store = MediaStore(tmp_path / "media")
    radiograph = next((shared_data / "radiology").glob("*.jpg"))
    grey = store.put_bytes(radiograph.read_bytes(), source=radiograph)
    colour = store.put_image(Image.new("RGB", (80, 60), (200, 90, 70)))
    single = store.put_image(Image.new("L", (50, 90), 128))
    served = [store.served_copy(info.sha256, size=128, fit="square") for info in (grey, colour, single)]
    for data in served:
        assert data[25] == 2  # PNG colour type 2 (RGB) for every image
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (128, 128) and img.mode == "RGB" and not img.info
    with Image.open(io.BytesIO(served[2])) as img:
        r, g, b = img.split()
        assert r.tobytes() == g.tobytes() == b.tobytes()  # a grey-scale image is still shown grey


def _pair_cases(shared_data: Path) -> dict[str, tuple[Image.Image, Image.Image]]:
    """Real-looking vs generated-looking pairs that differ in everything a PNG encoder cares about."""
    photo = next((shared_data / "gi").glob("*.jpg"))
    with Image.open(photo) as img:
        sharp = img.convert("RGB")
    blurred = sharp.resize((64, 64)).filter(ImageFilter.GaussianBlur(3))
    ramp = np.linspace(0, 60_000, 300 * 200, dtype=np.uint16).reshape(200, 300)
    sixteen = Image.fromarray(ramp)  # mode I;16
    cmyk = sharp.convert("CMYK")
    tall = sharp.resize((90, 700))
    wide = Image.new("L", (1000, 37), 200)
    return {
        "blurred vs sharp": (sharp, blurred),
        "16-bit vs 8-bit colour": (sixteen, blurred),
        "CMYK vs RGB": (cmyk, sharp.resize((333, 111))),
        "odd aspect ratios": (tall, wide),
    }


def _put_tiff(store: MediaStore, image: Image.Image) -> ImageInfo:
    buf = io.BytesIO()
    image.save(buf, format="TIFF")  # TIFF keeps CMYK and 16-bit as they are
    return store.put_bytes(buf.getvalue(), source="test image")


@pytest.mark.parametrize("fit", ["square", "contain"])
@pytest.mark.parametrize("grey", [False, True])
def test_both_sides_of_a_pair_are_served_alike(tmp_path: Path, shared_data: Path, fit: str, grey: bool) -> None:
    store = MediaStore(tmp_path / "media")
    for what, (real, generated) in _pair_cases(shared_data).items():
        a, b = (_put_tiff(store, im) for im in (real, generated))
        served = [store.served_copy(info.sha256, size=160, fit=fit, grey=grey) for info in (a, b)]  # type: ignore[arg-type]
        assert len(served[0]) == len(served[1]) == served_png_length(160, 160), what
        assert served[0][:33] == served[1][:33], what  # signature and IHDR: format, size, depth, colour type
        for data in served:
            with Image.open(io.BytesIO(data)) as img:
                assert img.size == (160, 160) and img.mode == "RGB" and not img.info, what
                if grey:
                    r, g, b_ = img.split()
                    assert r.tobytes() == g.tobytes() == b_.tobytes(), what
        assert served[0] != served[1], what  # the pictures themselves differ


def test_contain_letterboxes_small_images_up_to_the_display_square(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media")
    small = store.put_image(Image.new("RGB", (64, 32), (250, 250, 250)))
    with Image.open(io.BytesIO(store.served_copy(small.sha256, size=256, fit="contain"))) as img:
        arr = np.asarray(img)
    assert img.size == (256, 256)
    assert arr[128, :, 0].min() > 200  # the picture spans the full width (enlarged, not a thumbnail)
    assert arr[:60, 128, 0].max() == 0 and arr[-60:, 128, 0].max() == 0  # letterbox bars above and below


def test_sixteen_bit_is_windowed_not_clipped(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media")
    ramp = Image.fromarray(np.linspace(1000, 40_000, 128 * 128, dtype=np.uint16).reshape(128, 128))
    info = store.put_image(ramp)
    with Image.open(io.BytesIO(store.served_copy(info.sha256, size=128, fit="square", grey=True))) as img:
        values = np.asarray(img)[..., 0]
    assert values.min() < 10 and values.max() > 245 and len(np.unique(values)) > 100


def test_served_copies_are_read_not_rendered_on_request(tmp_path: Path) -> None:
    store = MediaStore(tmp_path / "media")
    info = store.put_image(Image.new("RGB", (50, 40), (10, 20, 30)))
    assert store.render_served(info.sha256, size=96, fit="square") is True
    assert store.render_served(info.sha256, size=96, fit="square") is False  # kept: nothing to do
    path = store.served_path(info.sha256, size=96, fit="square")
    path.write_bytes(b"kept copy")  # what a request returns is the kept file, not a fresh rendering
    assert store.served_copy(info.sha256, size=96, fit="square") == b"kept copy"


def test_several_sizes_of_one_image_render_from_one_decode_to_the_same_bytes(tmp_path: Path) -> None:
    image = Image.radial_gradient("L").convert("RGB").resize((300, 200))
    together, apart = MediaStore(tmp_path / "together"), MediaStore(tmp_path / "apart")
    sha = together.put_image(image).sha256
    apart.put_image(image)
    opened: list[str] = []
    real_open = together.open
    together.open = lambda s: (opened.append(s), real_open(s))[1]  # type: ignore[method-assign]
    assert together.render_served_sizes(sha, [64, 96, 64], fit="square", grey=True) == 2
    assert opened == [sha]  # decoded once for both sizes
    assert together.render_served_sizes(sha, [96, 64], fit="square", grey=True) == 0  # kept: not even opened
    assert opened == [sha]
    for size in (64, 96):
        assert apart.render_served(sha, size=size, fit="square", grey=True) is True
        assert together.served_copy(sha, size=size, fit="square", grey=True) == apart.served_copy(
            sha, size=size, fit="square", grey=True
        )
