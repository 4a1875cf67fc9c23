"""Kvasir-VQA, Kvasir-VQA-x1 / MEDVQA-GI 2025 and Parquet inputs, laid out as published, from the real
MEDVQA-GI samples in ../shared/data (image ids, prompts, and the organisers' question/answer for each prompt)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from db.errors import InputError
from db.importers import import_dataset, paraphrase_groups
from db.models import Case, Dataset, ImageBlob
from db.workspace import Workspace


def gi_rows(shared_data: Path) -> list[dict[str, str]]:
    """One Kvasir-VQA row per MEDVQA-GI prompt of the 40 samples: the organisers' question and answer for
    that prompt (``kvasir-vqa_llm_gens.csv``: caption, Q, A), the image id without its extension."""
    qa: dict[str, tuple[str, str]] = {}
    for r in csv.DictReader((shared_data / "prompts" / "kvasir-vqa_llm_gens.csv").open()):
        qa.setdefault(r["caption"], (r["Q"], r["A"]))
    source = {r["file"]: r["dataset"] for r in csv.DictReader((shared_data / "gi" / "provenance.csv").open())}
    rows = []
    for r in csv.DictReader((shared_data / "gi" / "prompts_per_image.csv").open()):
        q, a = qa[r["prompt"]]
        rows.append({"source": source[r["file"]], "question": q, "answer": a, "img_id": Path(r["file"]).stem,
                     "file": r["file"], "prompt": r["prompt"]})  # fmt: skip
    return rows


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def counts(ws: Workspace) -> tuple[int, int, int]:
    with ws.database.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) or 0 for t in (Dataset, Case, ImageBlob))  # type: ignore[return-value]


def test_kvasir_vqa_metadata_csv_many_questions_per_image(workspace: Workspace, shared_data: Path,
                                                         tmp_path: Path) -> None:  # fmt: skip
    rows = gi_rows(shared_data)
    root = tmp_path / "kvasir-vqa"
    root.mkdir()
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["source", "question", "answer", "img_id"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    ids = sorted({r["img_id"] for r in rows})
    for n, img_id in enumerate(ids):  # the card saves .jpg; any image extension is found by id
        link(shared_data / "gi" / f"{img_id}.jpg", root / "images" / f"{img_id}{'.jpeg' if n % 5 == 0 else '.jpg'}")
    summary = import_dataset(workspace.database, workspace.store, "kvasir-vqa", root, name="kv")
    assert (summary.cases, summary.images) == (395, 40)
    with workspace.database.session() as s:
        cases = list(s.scalars(select(Case)))
        domain = s.scalar(select(Dataset.domain))
    assert domain is not None and domain.value == "gi"
    got = sorted((c.labels["img_id"], c.prompt, c.labels["answer"]) for c in cases)
    assert got == sorted((r["img_id"], r["question"], r["answer"]) for r in rows)
    assert len({c.image_sha256 for c in cases}) == 40


def write_parquet(path: Path, rows: list[dict[str, object]], row_group_size: int = 64) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def test_kvasir_vqa_parquet_with_embedded_images(workspace: Workspace, shared_data: Path, tmp_path: Path) -> None:
    rows = gi_rows(shared_data)
    images = {r["file"]: (shared_data / "gi" / r["file"]).read_bytes() for r in rows}
    table = [{"image": {"bytes": images[r["file"]], "path": None}, "source": r["source"], "question": r["question"],
              "answer": r["answer"], "img_id": r["img_id"]} for r in rows]  # fmt: skip
    # the hub's layout: data/raw-0000k-of-00002.parquet, the same image in both shards
    (tmp_path / "Kvasir-VQA" / "data").mkdir(parents=True)
    write_parquet(tmp_path / "Kvasir-VQA" / "data" / "raw-00000-of-00002.parquet", table[:200])
    write_parquet(tmp_path / "Kvasir-VQA" / "data" / "raw-00001-of-00002.parquet", table[200:])
    write_parquet(tmp_path / "raw-00000.parquet", table)
    summary = import_dataset(workspace.database, workspace.store, "kvasir-vqa", tmp_path / "Kvasir-VQA",
                             name="kvp", workers=2)  # fmt: skip
    assert (summary.cases, summary.images, summary.duplicate_images) == (395, 40, 395 - 40)
    with workspace.database.session() as s:
        by_id = {c.labels["img_id"]: c.image_sha256 for c in s.scalars(select(Case))}
    for img_id, sha in by_id.items():
        assert workspace.store.path(sha).read_bytes() == images[f"{img_id}.jpg"]
    with pytest.raises(InputError, match="--images has no meaning here"):
        import_dataset(workspace.database, workspace.store, "kvasir-vqa", tmp_path / "raw-00000.parquet",
                       name="kvp2", images_dir=tmp_path)  # fmt: skip


def test_medvqa_gi_2025_captions_keep_paraphrase_groups(workspace: Workspace, shared_data: Path,
                                                       tmp_path: Path) -> None:  # fmt: skip
    per_image: dict[str, list[str]] = {}
    for r in csv.DictReader((shared_data / "gi" / "prompts_per_image.csv").open()):
        per_image.setdefault(Path(r["file"]).stem, []).append(r["prompt"])
    # kvasir-captions.json as the organisers' notebook reads it: {img_id: {group: [caption, ...]}}
    captions = {i: {"0": p[: len(p) // 2], "1": p[len(p) // 2 :]} for i, p in per_image.items()}
    root = tmp_path / "gi-2025"
    root.mkdir()
    (root / "kvasir-captions.json").write_text(json.dumps(captions))
    for img_id in per_image:
        link(shared_data / "gi" / f"{img_id}.jpg", root / "images" / f"{img_id}.jpg")
    summary = import_dataset(workspace.database, workspace.store, "kvasir-vqa-x1", root, name="x1")
    assert (summary.cases, summary.images) == (395, 40)
    with workspace.database.session() as s:
        groups = paraphrase_groups(s, "x1")
        prompts = {c.key: c.prompt for c in s.scalars(select(Case))}
    assert len(groups) == 80
    expected = {f"{i}#{g}": caps for i, gs in captions.items() for g, caps in gs.items()}
    assert {g: [prompts[k] for k in keys] for g, keys in groups.items()} == expected


def test_kvasir_vqa_x1_table(workspace: Workspace, shared_data: Path, tmp_path: Path) -> None:
    rows = gi_rows(shared_data)[:30]
    root = tmp_path / "x1"
    (root / "images").mkdir(parents=True)
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["img_id", "complexity", "question", "answer", "original", "question_class"])
        for r in rows:
            w.writerow([r["img_id"], 1, r["question"], r["answer"], json.dumps([r["question"]]), "[]"])
    for img_id in {r["img_id"] for r in rows}:
        link(shared_data / "gi" / f"{img_id}.jpg", root / "images" / f"{img_id}.jpg")
    summary = import_dataset(workspace.database, workspace.store, "kvasir-vqa-x1", root / "metadata.csv", name="x1t")
    assert summary.cases == 30
    with workspace.database.session() as s:
        case = s.scalar(select(Case).where(Case.key == f"{rows[0]['img_id']}#1"))
    assert case is not None and case.prompt == rows[0]["question"] and case.labels["complexity"] == "1"


def test_imagefolder_parquet_bytes_and_paths(workspace: Workspace, shared_data: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader((shared_data / "gi" / "captions.csv").open()))[:12]
    table = [{"image": {"bytes": (shared_data / "gi" / r["file"]).read_bytes(), "path": r["file"]},
              "text": r["caption"], "finding": "x"} for r in rows]  # fmt: skip
    write_parquet(tmp_path / "train-00000-of-00001.parquet", table, row_group_size=5)
    summary = import_dataset(workspace.database, workspace.store, "imagefolder",
                             tmp_path / "train-00000-of-00001.parquet", name="pq", file_column="file_name")  # fmt: skip
    assert (summary.cases, summary.images) == (12, 12)
    with workspace.database.session() as s:
        cases = {c.source_file: c for c in s.scalars(select(Case))}
    assert {k: c.prompt for k, c in cases.items()} == {r["file"]: r["caption"] for r in rows}
    assert all(c.labels == {"finding": "x"} for c in cases.values())
    # paths instead of bytes: a file-name column, files under --images
    write_parquet(tmp_path / "paths.parquet", [{"file_name": r["file"], "text": r["caption"]} for r in rows])
    summary = import_dataset(workspace.database, workspace.store, "csv", tmp_path / "paths.parquet", name="pq2",
                             images_dir=shared_data / "gi")  # fmt: skip
    assert summary.cases == 12 and summary.new_images == 0


def test_parquet_without_image_column_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    write_parquet(tmp_path / "t.parquet", [{"caption": "a polyp", "text": "x"}])
    with pytest.raises(InputError, match=r"t\.parquet: no image column.*found caption, text"):
        import_dataset(workspace.database, workspace.store, "csv", tmp_path / "t.parquet", name="bad")
    assert counts(workspace) == (0, 0, 0)


def test_csv_honours_images_folder(workspace: Workspace, shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_bytes((shared_data / "gi" / "captions.csv").read_bytes())
    summary = import_dataset(workspace.database, workspace.store, "csv", tmp_path, name="gi", file_column="file",
                             text_column="caption", images_dir=shared_data / "gi", limit=5)  # fmt: skip
    assert summary.cases == 5 and summary.skipped == {"beyond --limit": 45}

