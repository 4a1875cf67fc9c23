"""Every import format on the real samples in ../shared/data, laid out in the format's official layout."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.errors import ConflictError, InputError
from db.importers import import_dataset
from db.models import Case, Dataset, Domain, GeneratedImage
from db.workspace import Workspace

from .conftest import link_images


def count_cases(ws: Workspace, name: str) -> int:
    with ws.database.session() as s:
        return s.scalar(select(func.count(Case.id)).join(Dataset).where(Dataset.name == name)) or 0


def test_csv_folder_with_mapped_columns(workspace: Workspace, shared_data: Path) -> None:
    summary = import_dataset(workspace.database, workspace.store, "csv", shared_data / "gi", name="gi",
                             file_column="file", text_column="caption")  # fmt: skip
    assert summary.cases == 50 and summary.images == 50
    rows = {r["file"]: r["caption"] for r in csv.DictReader((shared_data / "gi" / "captions.csv").open())}
    with workspace.database.session() as s:
        cases = {c.key: c for c in s.scalars(select(Case))}
        assert {k: c.prompt for k, c in cases.items()} == rows
        some = next(iter(cases.values()))
        assert workspace.store.path(some.image_sha256).read_bytes() == (shared_data / "gi" / some.key).read_bytes()


def test_radiology_csv(workspace: Workspace, shared_data: Path) -> None:
    summary = import_dataset(workspace.database, workspace.store, "csv", shared_data / "radiology" / "captions.csv",
                             name="rad", domain="radiology", file_column="file", text_column="caption")  # fmt: skip
    assert summary.cases == 40
    with workspace.database.session() as s:
        assert s.scalar(select(Dataset.domain).where(Dataset.name == "rad")) == Domain.RADIOLOGY


def test_medvqa_gi_missing_images_fail_without_skip(workspace: Workspace, shared_data: Path) -> None:
    prompt_file = shared_data / "prompts" / "medvqa-gi-2024_dev_prompt-gt.csv"
    with pytest.raises(InputError, match=r"1960 of 2000 images listed are missing.*--skip-missing"):
        import_dataset(workspace.database, workspace.store, "medvqa-gi", prompt_file, images_dir=shared_data / "gi",
                       name="mv")  # fmt: skip
    assert count_cases(workspace, "mv") == 0


def test_medvqa_gi_skip_missing_imports_40_images_395_prompts(workspace: Workspace, shared_data: Path) -> None:
    prompt_file = shared_data / "prompts" / "medvqa-gi-2024_dev_prompt-gt.csv"
    summary = import_dataset(workspace.database, workspace.store, "medvqa-gi", prompt_file,
                             images_dir=shared_data / "gi", name="mv", skip_missing=True)  # fmt: skip
    assert (summary.images, summary.cases, summary.skipped_missing) == (40, 395, 1960)
    assert summary.skipped == {"whose image is missing": 20241 - 395}
    assert "skipped 19,846 cases: 19,846 whose image is missing (1,960 missing images, e.g." in summary.describe()
    per_image = {}
    for r in csv.DictReader((shared_data / "gi" / "prompts_per_image.csv").open()):
        per_image.setdefault(r["file"], []).append(r["prompt"])
    with workspace.database.session() as s:
        got: dict[str, list[str]] = {}
        for c in s.scalars(select(Case).order_by(Case.id)):
            got.setdefault(c.labels["filename"], []).append(c.prompt)
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in per_image.items()}


def test_rocov2_official_layout(workspace: Workspace, shared_data: Path, tmp_path: Path) -> None:
    rad = shared_data / "radiology"
    prov = list(csv.DictReader((rad / "provenance.csv").open()))[:10]
    captions = {r["file"]: r["caption"] for r in csv.DictReader((rad / "captions.csv").open())}
    root = tmp_path / "rocov2"
    (root / "test").mkdir(parents=True)
    with (root / "test_captions.csv").open("w", newline="") as fh, (root / "test_concepts.csv").open("w") as ch:
        w = csv.writer(fh)
        w.writerow(["ID", "Caption"])
        ch.write("ID,CUIs\n")
        for n, r in enumerate(prov, start=1):
            ident = f"ROCOv2_2023_test_{n:06d}"
            w.writerow([ident, captions[r["file"]]])
            ch.write(f"{ident},{';'.join(r['umls_cuis'].split())}\n")
            (root / "test" / f"{ident}.jpg").write_bytes((rad / r["file"]).read_bytes())
    summary = import_dataset(workspace.database, workspace.store, "rocov2", root / "test_captions.csv", name="r2")
    assert summary.cases == 10
    with workspace.database.session() as s:
        case = s.scalar(select(Case).where(Case.key == "ROCOv2_2023_test_000001"))
        assert case is not None and case.split == "test"
        assert case.labels["cuis"] == prov[0]["umls_cuis"].split()
        assert case.prompt == captions[prov[0]["file"]]


ROCO_FILES = ("captions.txt", "dlinks.txt", "licences.txt", "cuis.txt", "keywords.txt", "semtypes.txt")


def roco_v1_layout(shared_data: Path, tmp_path: Path, *, by_roco_id: bool) -> tuple[Path, list[dict[str, str]]]:
    """The official ROCO v1 folder ``data/test/radiology/`` from the verbatim metadata lines, with the 40
    sample images linked in as the current download script names them (``images/ROCO_xxxxx.jpg``) or as
    older copies do (``images/PMC<id>_<name>.jpg``)."""
    rad = shared_data / "radiology"
    folder = tmp_path / "roco-dataset" / "data" / "test" / "radiology"
    (folder / "images").mkdir(parents=True)
    for name in ROCO_FILES:
        (folder / name).write_bytes((rad / "roco-v1-official" / name).read_bytes())
    prov = list(csv.DictReader((rad / "provenance.csv").open()))
    for r in prov:
        target = folder / "images" / (f"{r['roco_id']}.jpg" if by_roco_id else r["file"])
        try:
            os.link(rad / r["file"], target)
        except OSError:
            shutil.copyfile(rad / r["file"], target)
    return folder, prov


@pytest.mark.parametrize("by_roco_id", [True, False], ids=["images-by-roco-id", "images-by-pmc-name"])
def test_roco_v1_official_layout(workspace: Workspace, shared_data: Path, tmp_path: Path, by_roco_id: bool) -> None:
    folder, prov = roco_v1_layout(shared_data, tmp_path, by_roco_id=by_roco_id)
    summary = import_dataset(workspace.database, workspace.store, "roco", folder / "captions.txt", name="roco")
    assert (summary.cases, summary.images, summary.skipped) == (40, 40, {})
    captions = {r["file"]: r["caption"] for r in csv.DictReader((shared_data / "radiology" / "captions.csv").open())}
    with workspace.database.session() as s:
        cases = {c.key: c for c in s.scalars(select(Case))}
    assert set(cases) == {r["roco_id"] for r in prov}
    for r in prov:
        case = cases[r["roco_id"]]
        assert case.prompt == captions[r["file"]]
        assert case.source_file == (f"{r['roco_id']}.jpg" if by_roco_id else r["file"])
        original = (shared_data / "radiology" / r["file"]).read_bytes()
        assert workspace.store.path(case.image_sha256).read_bytes() == original
        assert case.split == "test"
        assert case.labels["cuis"] == r["umls_cuis"].split()
        assert case.labels["keywords"] == r["keywords"].split()
        assert " ".join(f"{t['tui']} {t['name']}" for t in case.labels["semtypes"]) == r["semtypes"]
        assert case.labels["license"] == r["license"] == "CC BY"
        assert case.labels["pmc_id"] == r["attribution"].split()[5]
        assert r["attribution"].split("(")[1].rstrip(")") in case.labels["attribution"]


def test_roco_v1_missing_images_are_named_by_roco_id(workspace: Workspace, shared_data: Path, tmp_path: Path) -> None:
    folder, prov = roco_v1_layout(shared_data, tmp_path, by_roco_id=True)
    (folder / "images" / f"{prov[0]['roco_id']}.jpg").unlink()
    with pytest.raises(InputError, match=rf"1 of 40 images listed are missing.*{prov[0]['roco_id']}\.jpg"):
        import_dataset(workspace.database, workspace.store, "roco", folder, name="roco")
    summary = import_dataset(workspace.database, workspace.store, "roco", folder, name="roco", skip_missing=True)
    assert (summary.cases, summary.skipped) == (39, {"whose image is missing": 1})


def test_imagefolder_jsonl(workspace: Workspace, shared_data: Path, tmp_path: Path) -> None:
    import json

    rows = list(csv.DictReader((shared_data / "gi" / "captions.csv").open()))[:5]
    folder = tmp_path / "hf"
    link_images(shared_data / "gi", folder, [r["file"] for r in rows])
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": r["file"], "text": r["caption"], "finding": "x"}) + "\n" for r in rows)
    )
    summary = import_dataset(workspace.database, workspace.store, "imagefolder", folder, name="hf")
    assert summary.cases == 5
    with workspace.database.session() as s:
        assert all(c.labels == {"finding": "x"} for c in s.scalars(select(Case)))


def test_limit_and_reimport(workspace: Workspace, shared_data: Path) -> None:
    kwargs = dict(name="gi", file_column="file", text_column="caption")
    import_dataset(workspace.database, workspace.store, "csv", shared_data / "gi", limit=10, **kwargs)
    assert count_cases(workspace, "gi") == 10
    with pytest.raises(ConflictError, match=r"already exists.*--merge"):
        import_dataset(workspace.database, workspace.store, "csv", shared_data / "gi", **kwargs)
    summary = import_dataset(workspace.database, workspace.store, "csv", shared_data / "gi", merge=True, **kwargs)
    assert (summary.cases, summary.merged_existing) == (40, 10)
    assert count_cases(workspace, "gi") == 50


def test_import_generated_records_model_images(gi_workspace: Workspace) -> None:
    with gi_workspace.database.session() as s:
        n = s.scalar(select(func.count(GeneratedImage.id)))
    assert n == 48


def test_case_groups_put_every_prompt_of_an_image_in_one_group(workspace: Workspace, shared_data: Path) -> None:
    """The split used by `compare` groups MEDVQA-GI's 7-14 prompts per image (40 images, 395 prompts)."""
    from db.generated import case_groups

    prompt_file = shared_data / "prompts" / "medvqa-gi-2024_dev_prompt-gt.csv"
    import_dataset(workspace.database, workspace.store, "medvqa-gi", prompt_file, images_dir=shared_data / "gi",
                   name="medvqa", skip_missing=True)
    with workspace.database.session() as session:
        groups = case_groups(session, "medvqa")
    assert len(groups) == 395 and len(set(groups.values())) == 40
