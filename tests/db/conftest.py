"""Fixtures for the database tests: a fresh workspace and the real samples laid out in each format."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFilter, ImageOps

from db.importers import import_dataset, import_generated
from db.workspace import Workspace


@pytest.fixture
def workspace(db_url: str, tmp_path: Path) -> Iterator[Workspace]:
    """A fresh workspace on each database backend (see ``db_url`` in tests/conftest.py)."""
    ws = Workspace.open(db_url, tmp_path / "data")
    yield ws
    ws.close()


def link_images(src: Path, dst: Path, names: list[str]) -> None:
    """Symlink-free copies would duplicate data in tmp; hard links keep the test cheap (fall back to copy)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dst / name
        try:
            os.link(src / name, target)
        except OSError:
            shutil.copyfile(src / name, target)


def write_generated(real_dir: Path, out: Path, names: list[str], transform, seed: int = 1) -> Path:  # type: ignore[no-untyped-def]
    """Make 'generated' images by transforming real ones, with a manifest (file, case, seed)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "case", "seed"])
        for name in names:
            with Image.open(real_dir / name) as img:
                made = transform(img.convert("RGB").resize((128, 128)))
            file = Path(name).with_suffix(".png").name
            made.save(out / file)
            writer.writerow([file, name, seed])
    return out


TRANSFORMS = {
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "mirror": ImageOps.mirror,
}


def import_gi_with_models(workspace: Workspace, shared_data: Path, tmp_path: Path) -> Workspace:
    """Import the 50 GI samples as dataset "gi" and two 'models' (blur, mirror) with 24 images each."""
    import_dataset(workspace.database, workspace.store, "csv", shared_data / "gi", name="gi", domain="gi",
                   file_column="file", text_column="caption")  # fmt: skip
    names = [r["file"] for r in csv.DictReader((shared_data / "gi" / "captions.csv").open())][:24]
    for model, fn in TRANSFORMS.items():
        made = write_generated(shared_data / "gi", tmp_path / f"gen-{model}", names, fn)
        import_generated(workspace.database, workspace.store, made, dataset="gi", model=model)
    return workspace


@pytest.fixture
def gi_workspace(workspace: Workspace, shared_data: Path, tmp_path: Path) -> Workspace:
    """A workspace with the 50 GI samples imported and two 'models' with 24 images each."""
    return import_gi_with_models(workspace, shared_data, tmp_path)


STUDY_TOML = """
name = "pilot"
seed = 11
datasets = ["gi"]
models = ["blur", "mirror"]
cases_per_model = 12
raters_per_item = 2
rater_slots = 3
attention_fraction = 0.1
repeat_fraction = 0.1
"""
