"""16-bit PNG/TIFF and float radiographs: imported as they are, windowed (never clipped) for raters and for
metric features through the one function (db.imaging.display_array)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from db.imaging import display_array, to_display_rgb
from db.importers import import_dataset
from db.models import Case, ImageBlob
from db.workspace import Workspace


def high_depth(grey: np.ndarray, kind: str) -> Image.Image:
    """A real radiograph re-expressed at high depth: 12-bit detector counts in 16 bits, or float."""
    counts = grey.astype(np.float64) * 16.0 + 1000.0  # 1000..5080: every pixel above 255
    if kind == "float":
        return Image.fromarray((counts / 4096.0).astype(np.float32), mode="F")
    return Image.fromarray(counts.astype(np.uint16))


@pytest.mark.parametrize(("kind", "suffix"), [("16", ".png"), ("16", ".tif"), ("float", ".tif")])
def test_high_depth_radiograph_is_served_with_its_grey_range(
    workspace: Workspace, shared_data: Path, tmp_path: Path, kind: str, suffix: str
) -> None:
    rad = shared_data / "radiology"
    row = next(csv.DictReader((rad / "captions.csv").open()))
    with Image.open(rad / row["file"]) as im:
        grey = np.asarray(im.convert("L"))
    name = Path(row["file"]).stem + suffix
    high_depth(grey, kind).save(tmp_path / name)
    with (tmp_path / "metadata.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file_name", "text"], [name, row["caption"]]])
    import_dataset(workspace.database, workspace.store, "csv", tmp_path, name="hd", domain="radiology")
    with workspace.database.session() as s:
        sha = s.scalar(select(Case.image_sha256))
        blob = s.scalar(select(ImageBlob))
    assert blob is not None and blob.mode in ("I;16", "I", "F")  # stored at full depth
    assert workspace.store.path(sha).read_bytes() == (tmp_path / name).read_bytes()
    shown = display_array(workspace.store.path(sha))
    assert shown.dtype == np.uint8 and np.array_equal(shown[..., 0], shown[..., 2])
    # windowed, not clipped: clipping 1000..5080 to 8 bits would be a white square
    assert shown.min() == 0 and shown.max() == 255 and np.corrcoef(shown[..., 0].ravel(), grey.ravel())[0, 1] > 0.95
    served = np.asarray(Image.open(io.BytesIO(workspace.store.served_copy(sha, size=256))))
    assert served.std() > 20 and 30 < served.mean() < 225
    # metric features read the same pixels as raters see
    assert np.array_equal(shown, np.asarray(to_display_rgb(workspace.store.open(sha))))
