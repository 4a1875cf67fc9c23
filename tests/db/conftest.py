"""Fixtures for the database tests: a fresh workspace and the real samples laid out in each format."""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFilter, ImageOps
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.importers import import_dataset, import_generated
from db.session import open_database
from db.workspace import Workspace
from tests.pg import PG_ADMIN_URL_ENV, drop_postgres, fresh_postgres_url


@pytest.fixture(scope="session")
def schema_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Per backend, one database migrated to the newest schema (built on first use, per test process).

    ``workspace`` starts from a copy of it instead of running every migration again: the copy is the very
    database the migrations make, so what a test sees is unchanged. The PostgreSQL one is dropped at the end."""
    templates: dict[str, str] = {}
    yield templates
    if "postgresql" in templates:
        drop_postgres(os.environ[PG_ADMIN_URL_ENV], templates["postgresql"])


def start_from_template(db_url: str, templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Make the empty database of ``db_url`` (from the ``db_url`` fixture) a copy of the migrated template."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        if "sqlite" not in templates:
            path = tmp_path_factory.mktemp("schema") / "template.sqlite3"
            open_database(f"sqlite:///{path}").dispose()
            if any(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-journal")):
                return  # not a single self-contained file: let this test migrate its own database
            templates["sqlite"] = str(path)
        shutil.copyfile(templates["sqlite"], str(url.database))
        return
    admin = os.environ[PG_ADMIN_URL_ENV]
    if "postgresql" not in templates:
        name = f"medsynth_schema_{uuid.uuid4().hex[:12]}"
        templates["postgresql"] = name  # dropped by the session fixture even if the migration fails
        open_database(fresh_postgres_url(admin, name)).dispose()
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{url.database}" TEMPLATE "{templates["postgresql"]}"'))
    finally:
        engine.dispose()


@pytest.fixture
def workspace(
    db_url: str, tmp_path: Path, schema_templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workspace]:
    """A fresh workspace on each database backend (see ``db_url`` in tests/conftest.py), with the newest schema."""
    start_from_template(db_url, schema_templates, tmp_path_factory)
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


#: PNG bytes of each transformed image, per (real folder, name, transform): decoding and transforming the
#: full-size samples again for every test was half of a workspace's set-up; the files written are the same.
_MADE: dict[tuple[str, str, object], bytes] = {}


def _transformed_png(real_dir: Path, name: str, transform) -> bytes:  # type: ignore[no-untyped-def]
    key = (str(real_dir), name, transform)
    if key not in _MADE:
        with Image.open(real_dir / name) as img:
            made = transform(img.convert("RGB").resize((128, 128)))
        buffer = io.BytesIO()
        made.save(buffer, format="PNG")
        _MADE[key] = buffer.getvalue()
    return _MADE[key]


def write_generated(real_dir: Path, out: Path, names: list[str], transform, seed: int = 1) -> Path:  # type: ignore[no-untyped-def]
    """Make 'generated' images by transforming real ones, with a manifest (file, case, seed)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "case", "seed"])
        for name in names:
            file = Path(name).with_suffix(".png").name
            (out / file).write_bytes(_transformed_png(real_dir, name, transform))
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
