"""Served copies: one encoding for every image, so real and generated cannot be told apart by format."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from db.media import MediaStore


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
