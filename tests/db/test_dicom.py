"""DICOM import on pydicom's own test files (real CT and MR, shipped inside the wheel, never downloaded):
full-depth storage, rescale slope/intercept, the file's window as the default, MONOCHROME1, presets,
compressed transfer syntaxes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_rescale
from sqlalchemy import select

from db.errors import InputError
from db.imaging import WINDOW_PRESETS, decode_dicom, display_array, to_display_rgb, window_to_uint8
from db.importers import import_dataset
from db.models import Case, ImageBlob
from db.studies import parse_study_config
from db.workspace import Workspace

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def dicom_folder(tmp_path: Path) -> Path:
    """CT_small (CT, slope 1, intercept -1024), MR_small (window 600/1600), its RLE copy, a JPEG 2000 NM
    image, and MR_small re-labelled as a MONOCHROME1 CR (pixels untouched), with captions beside them."""
    root = tmp_path / "dicom"
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"):
        (root / name).write_bytes((TEST_FILES / name).read_bytes())
    ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Modality = "CR"
    ds.save_as(root / "cr_mono1.dcm")
    (root / "captions.csv").write_text(
        "file_name,text\n"
        "CT_small.dcm,Axial CT slice.\n"
        "MR_small.dcm,MR slice.\n"
        "MR_small_RLE.dcm,MR slice (RLE lossless).\n"
        "JPEG2000.dcm,Nuclear medicine image (JPEG 2000).\n"
        "cr_mono1.dcm,Radiograph stored as MONOCHROME1.\n"
    )
    return root


def test_dicom_import_keeps_full_depth_and_windows(workspace: Workspace, tmp_path: Path) -> None:
    root = dicom_folder(tmp_path)
    summary = import_dataset(workspace.database, workspace.store, "dicom", root, name="dcm")
    assert (summary.cases, summary.images) == (5, 5)
    with workspace.database.session() as s:
        cases = {c.source_file: c for c in s.scalars(select(Case))}
        blobs = {b.sha256: b for b in s.scalars(select(ImageBlob))}
    for name, case in cases.items():  # the DICOM file itself is stored, at full depth
        assert workspace.store.path(case.image_sha256).read_bytes() == (root / name).read_bytes()
        assert blobs[case.image_sha256].format == "DICOM"
    ct = cases["CT_small.dcm"]
    assert ct.labels["modality"] == "CT" and ct.labels["bits_stored"] == 16
    reference = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    hu = apply_rescale(reference.pixel_array, reference)  # pydicom's own modality LUT
    decoded = decode_dicom((root / "CT_small.dcm").read_bytes())
    assert np.allclose(decoded.pixels, hu) and decoded.pixels.min() < -800  # HU, intercept -1024 applied
    # CT has no window tags: a named preset (study config) windows it in HU
    lung = display_array(workspace.store.path(ct.image_sha256), center=-600, width=1500)[..., 0]
    assert np.array_equal(lung, window_to_uint8(hu, center=-600, width=1500))
    # MR: the file's Window Center/Width (600/1600) is the default display window
    mr = cases["MR_small.dcm"]
    assert mr.labels["window"] == {"center": 600.0, "width": 1600.0}
    mr_ds = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    shown = display_array(workspace.store.path(mr.image_sha256))[..., 0]
    assert np.array_equal(shown, window_to_uint8(mr_ds.pixel_array, center=600, width=1600))
    # RLE decodes to the same pixels; MONOCHROME1 is shown inverted
    rle = display_array(workspace.store.path(cases["MR_small_RLE.dcm"].image_sha256))
    assert np.array_equal(rle[..., 0], shown)
    mono1 = display_array(workspace.store.path(cases["cr_mono1.dcm"].image_sha256))[..., 0]
    assert np.array_equal(mono1, 255 - shown)
    # served copies go through the same mapping: an RGB PNG with a full grey range, not a white square
    png = Image.open(io.BytesIO(workspace.store.served_copy(mr.image_sha256, size=64)))
    arr = np.asarray(png)
    assert png.mode == "RGB" and np.array_equal(arr[..., 0], shown)  # 64x64 source at 64: no resampling
    assert arr.max() == 255 and arr.min() < 60 and arr.std() > 40  # the file's window, not a white square
    lung_png = np.asarray(Image.open(io.BytesIO(workspace.store.served_copy(ct.image_sha256, size=128,
                                                                             window="lung"))))  # fmt: skip
    assert np.array_equal(lung_png[..., 0], lung)  # 128x128 source at 128: no resampling


def test_study_config_takes_a_window_preset() -> None:
    base = 'name = "s"\nseed = 1\ndatasets = ["d"]\nmodels = ["m"]\ncases_per_model = 1\n[display]\n'
    assert parse_study_config(base + 'window = "lung"\n').display.window == "lung"
    assert set(WINDOW_PRESETS) >= {"lung", "mediastinum", "bone", "brain"}
    with pytest.raises(InputError, match="display.window must be one of lung"):
        parse_study_config(base + 'window = "liver-ish"\n')


def test_compressed_syntax_without_decoder_names_the_syntax() -> None:
    with pytest.raises(InputError, match=r"cannot decode DICOM transfer syntax JPEG-LS Lossless Image Compression"):
        decode_dicom((TEST_FILES / "MR_small_jpeg_ls_lossless.dcm").read_bytes(), source="ls.dcm")


def test_colour_dicom_passes_through() -> None:
    decoded = decode_dicom((TEST_FILES / "SC_rgb_rle.dcm").read_bytes())
    ref = pydicom.dcmread(TEST_FILES / "SC_rgb_rle.dcm").pixel_array
    assert decoded.pixels.dtype == np.uint8 and np.array_equal(decoded.pixels, ref)
    img = to_display_rgb(Image.fromarray(decoded.pixels))
    assert np.array_equal(np.asarray(img), ref)


def test_csv_listing_may_name_dicom_files(workspace: Workspace, tmp_path: Path) -> None:
    root = dicom_folder(tmp_path)
    (root / "captions.csv").rename(root / "metadata.csv")
    summary = import_dataset(workspace.database, workspace.store, "csv", root, name="dcm-csv")
    assert summary.cases == 5


def test_parquet_given_to_a_text_format_says_so(workspace: Workspace, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"Prompt": ["a polyp"], "Filename": ["a.jpg"]}), tmp_path / "prompt-gt.parquet")
    with pytest.raises(InputError, match="this is a Parquet file, not text"):
        import_dataset(workspace.database, workspace.store, "medvqa-gi", tmp_path / "prompt-gt.parquet", name="x")
