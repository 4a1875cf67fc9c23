"""Disk full or a read-only data folder: a clear error and no half-written state."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.errors import MedSynthError
from db.importers import import_dataset
from db.models import Case, Dataset, ImageBlob
from db.workspace import Workspace


def test_disk_full_during_import(workspace: Workspace, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync_fills_disk(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fills_disk)
    with pytest.raises(MedSynthError, match="cannot write to the media store.*No space left on device"):
        import_dataset(workspace.database, workspace.store, "csv", shared_data / "gi", name="gi",
                       file_column="file", text_column="caption")  # fmt: skip
    with workspace.database.session() as s:
        assert all(s.scalar(select(func.count()).select_from(t)) == 0 for t in (Dataset, Case, ImageBlob))
    leftovers = [p for p in workspace.store.root.rglob(".tmp-*")]
    assert leftovers == []  # no partial files
    monkeypatch.setattr(os, "fsync", real_fsync)
    summary = import_dataset(workspace.database, workspace.store, "csv", shared_data / "gi", name="gi",
                             file_column="file", text_column="caption")  # fmt: skip
    assert summary.cases == 50  # the retry after freeing space imports everything


def test_read_only_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(MedSynthError, match="cannot write to the data folder.*Read-only file system.*--data-dir"):
        Workspace.open(f"sqlite:///{tmp_path / 'x.sqlite3'}", tmp_path / "data")


def test_leftover_temporary_files_are_swept(tmp_path: Path) -> None:
    ws = Workspace.open(f"sqlite:///{tmp_path / 'a.sqlite3'}", tmp_path / "data")
    folder = ws.store.root / "objects" / "ab"
    folder.mkdir(parents=True)
    old, fresh = folder / ".tmp-old", folder / ".tmp-fresh"
    old.write_bytes(b"half an image")
    fresh.write_bytes(b"being written now")
    os.utime(old, (0, 0))
    ws.close()
    Workspace.open(f"sqlite:///{tmp_path / 'a.sqlite3'}", tmp_path / "data").close()
    assert not old.exists() and fresh.exists()
