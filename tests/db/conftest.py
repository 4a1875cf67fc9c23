"""Fixtures for the database tests: a fresh workspace and the real samples laid out in each format."""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageFilter, ImageOps
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.importers import import_dataset, import_generated
from db.session import open_database
from db.workspace import Workspace
from tests.pg import PG_ADMIN_URL_ENV, drop_postgres, fresh_postgres_url


@dataclass(frozen=True)
class Template:
    """A database built once per test process and backend, copied for each test: a SQLite file or a
    PostgreSQL database name, and the data folder (media store) that goes with it, if any."""

    database: str
    data_dir: Path | None = None


@pytest.fixture(scope="session")
def db_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Template]]:
    """``(kind, backend) -> Template``, built on first use: ``schema`` (migrated, empty) and ``gi`` (the GI
    samples and two models imported, as :func:`import_gi_with_models` makes them).

    A test's database starts as a copy of one instead of running every migration and import again: the copy is
    the very database those steps make, so what a test sees is unchanged. The PostgreSQL ones are dropped at
    the end."""
    templates: dict[tuple[str, str], Template] = {}
    yield templates
    for (_, backend), template in templates.items():
        if backend == "postgresql":
            drop_postgres(os.environ[PG_ADMIN_URL_ENV], template.database)


def _copy_database(db_url: str, template: Template) -> None:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        shutil.copyfile(template.database, str(url.database))
        return
    engine = create_engine(os.environ[PG_ADMIN_URL_ENV], isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{url.database}" TEMPLATE "{template.database}"'))
    finally:
        engine.dispose()


def _template_url(backend: str, kind: str, templates: dict[tuple[str, str], Template], folder: Path) -> str:
    """A new empty database for building a template (registered at once, so it is dropped even if it fails)."""
    if backend == "sqlite":
        path = folder / f"{kind}.sqlite3"
        templates[(kind, backend)] = Template(str(path), folder / "data" if kind != "schema" else None)
        return f"sqlite:///{path}"
    name = f"medsynth_{kind}_{uuid.uuid4().hex[:12]}"
    templates[(kind, backend)] = Template(name, folder / "data" if kind != "schema" else None)
    return fresh_postgres_url(os.environ[PG_ADMIN_URL_ENV], name)


def _forget(templates: dict[tuple[str, str], Template], kind: str, backend: str) -> None:
    """Drop a template that could not be built (or copied), so the next test builds its own again."""
    template = templates.pop((kind, backend))
    if backend == "postgresql":
        drop_postgres(os.environ[PG_ADMIN_URL_ENV], template.database)


def _self_contained(db_url: str) -> bool:
    """False for a SQLite database that left a WAL or journal file beside it (a plain copy would miss it)."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return True
    path = Path(str(url.database))
    return not any(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-journal"))


def start_from_template(
    db_url: str, templates: dict[tuple[str, str], Template], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Make the empty database of ``db_url`` (from the ``db_url`` fixture) a copy of the migrated template."""
    backend = make_url(db_url).get_backend_name()
    if ("schema", backend) not in templates:
        url = _template_url(backend, "schema", templates, tmp_path_factory.mktemp("schema"))
        try:
            open_database(url).dispose()
        except BaseException:
            _forget(templates, "schema", backend)
            raise
        if not _self_contained(url):
            _forget(templates, "schema", backend)
            return  # let this test migrate its own database
    _copy_database(db_url, templates[("schema", backend)])


@pytest.fixture
def workspace(
    db_url: str, tmp_path: Path, db_templates: dict[tuple[str, str], Template], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workspace]:
    """A fresh workspace on each database backend (see ``db_url`` in tests/conftest.py), with the newest schema."""
    start_from_template(db_url, db_templates, tmp_path_factory)
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
def gi_workspace(
    db_url: str,
    tmp_path: Path,
    shared_data: Path,
    db_templates: dict[tuple[str, str], Template],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workspace]:
    """A workspace with the 50 GI samples imported and two 'models' with 24 images each (a copy of the
    database and media folder that :func:`import_gi_with_models` made once per test process and backend)."""
    backend = make_url(db_url).get_backend_name()
    if ("gi", backend) not in db_templates:
        folder = tmp_path_factory.mktemp("gi-template")
        url = _template_url(backend, "gi", db_templates, folder)
        template = db_templates[("gi", backend)]
        assert template.data_dir is not None
        try:
            built = Workspace.open(url, template.data_dir)
            try:
                import_gi_with_models(built, shared_data, folder)
            finally:
                built.close()
        except BaseException:
            _forget(db_templates, "gi", backend)  # a half-built template must not be copied by later tests
            raise
        if not _self_contained(url):
            _forget(db_templates, "gi", backend)
            ws = Workspace.open(db_url, tmp_path / "data")  # build this test's own, as the template was built
            yield import_gi_with_models(ws, shared_data, tmp_path)
            ws.close()
            return
    template = db_templates[("gi", backend)]
    assert template.data_dir is not None
    _copy_database(db_url, template)
    shutil.copytree(template.data_dir, tmp_path / "data")
    ws = Workspace.open(db_url, tmp_path / "data")
    yield ws
    ws.close()


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
