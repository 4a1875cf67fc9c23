"""Bad input gets one clear message naming the problem, and nothing is half-imported."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from db.errors import InputError, MedSynthError
from db.importers import import_dataset, import_generated
from db.models import Case, Dataset, ImageBlob
from db.workspace import Workspace


def png_bytes(size: tuple[int, int] = (32, 32), colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path, rows: list[tuple[str, str]], files: dict[str, bytes], header: str = "file_name,text"
                ) -> Path:  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    lines = [header] + [f"{f},{t}" for f, t in rows]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def nothing_written(ws: Workspace) -> bool:
    with ws.database.session() as s:
        return not any(s.scalar(select(func.count()).select_from(t)) for t in (Dataset, Case, ImageBlob))


def good(n: int = 3) -> tuple[list[tuple[str, str]], dict[str, bytes]]:
    return [(f"ok{i}.png", f"caption {i}") for i in range(n)], {f"ok{i}.png": png_bytes(colour=f"#{i:02x}0000")
                                                                   for i in range(n)}  # fmt: skip


def bomb_png(tmp: Path) -> bytes:
    # A 12,000 x 12,000 grey PNG compresses to a few hundred kB but decodes to 144 MP.
    path = tmp / "bomb.png"
    Image.new("L", (12_000, 12_000)).save(path, optimize=True)
    return path.read_bytes()


CASES: dict[str, tuple[object, str]] = {
    "corrupt": (b"\xff\xd8\xff\xe0 this is not really a jpeg", "not an image|truncated or unreadable"),
    "zero_bytes": (b"", "empty file"),
    "text_file": (b"hello, world\n", "not an image"),
    "truncated_png": (png_bytes((300, 300), "blue")[:200], "truncated|not an image|unreadable"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_image_names_file_and_writes_nothing(workspace: Workspace, tmp_path: Path, kind: str) -> None:
    data, message = CASES[kind]
    rows, files = good()
    rows.append(("bad.jpg", "bad one"))
    files["bad.jpg"] = data  # type: ignore[assignment]
    folder = make_folder(tmp_path / "ds", rows, files)
    with pytest.raises(InputError, match=message) as info:
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    assert "bad.jpg" in str(info.value)
    assert nothing_written(workspace)


def test_pixel_limit_and_decompression_bomb(workspace: Workspace, tmp_path: Path) -> None:
    rows, files = good()
    rows.append(("huge.png", "too big"))
    files["huge.png"] = bomb_png(tmp_path)
    folder = make_folder(tmp_path / "ds", rows, files)
    with pytest.raises(InputError, match=r"huge\.png.*12000x12000.*over the limit"):
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    with pytest.raises(InputError, match="over the limit of 100"):
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x", max_pixels=100)
    assert nothing_written(workspace)


@pytest.mark.parametrize(
    ("name", "message"),
    [("../outside.png", "escapes the dataset folder"), ("/etc/passwd", "absolute path"),
     ("sub/../../outside.png", "escapes")],
)  # fmt: skip
def test_path_traversal_refused(workspace: Workspace, tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "outside.png").write_bytes(png_bytes())
    rows, files = good()
    rows.append((name, "sneaky"))
    folder = make_folder(tmp_path / "ds", rows, files)
    with pytest.raises(InputError, match=message):
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    assert nothing_written(workspace)


def test_symlink_out_of_dataset_refused(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(png_bytes())
    rows, files = good()
    folder = make_folder(tmp_path / "ds", [*rows, ("link.png", "via symlink")], files)
    os.symlink(tmp_path / "secret.png", folder / "link.png")
    with pytest.raises(InputError, match="escapes the dataset folder"):
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    assert nothing_written(workspace)


def test_missing_column_and_wrong_delimiter(workspace: Workspace, tmp_path: Path) -> None:
    rows, files = good()
    folder = make_folder(tmp_path / "a", rows, files, header="file_name,caption")
    with pytest.raises(InputError, match=r"metadata\.csv, line 1: missing column\(s\) text"):
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    semi = tmp_path / "b"
    semi.mkdir()
    (semi / "metadata.csv").write_text("file_name;text\nok0.png;a\n")
    with pytest.raises(InputError, match="delimiter"):
        import_dataset(workspace.database, workspace.store, "csv", semi, name="x")
    assert nothing_written(workspace)


def test_empty_caption_and_bad_encoding(workspace: Workspace, tmp_path: Path) -> None:
    rows, files = good()
    rows[1] = (rows[1][0], "  ")
    folder = make_folder(tmp_path / "a", rows, files)
    with pytest.raises(InputError, match="line 3: empty caption"):
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    latin = tmp_path / "b"
    make_folder(latin, [], good()[1])
    (latin / "metadata.csv").write_bytes("file_name,text\nok0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="line 2: bad encoding"):
        import_dataset(workspace.database, workspace.store, "csv", latin, name="x")
    assert nothing_written(workspace)


def test_duplicate_ids_and_missing_file(workspace: Workspace, tmp_path: Path) -> None:
    rows, files = good()
    folder = make_folder(tmp_path / "a", [*rows, rows[0]], files)
    with pytest.raises(InputError, match=r"line 5: duplicate id 'ok0\.png'"):
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    folder = make_folder(tmp_path / "b", [*rows, ("gone.png", "missing")], files)
    with pytest.raises(InputError, match=r"1 of 4 images listed are missing.*gone\.png"):
        import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    assert nothing_written(workspace)


def test_hostile_text_is_stored_verbatim_not_interpreted(workspace: Workspace, tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script> Robert'); DROP TABLE cases;--"
    rows, files = good(1)
    folder = tmp_path / "ds"
    make_folder(folder, [], files)
    import csv as _csv

    with (folder / "metadata.csv").open("w", newline="") as fh:
        w = _csv.writer(fh)
        w.writerow(["file_name", "text"])
        w.writerow([rows[0][0], hostile])
    import_dataset(workspace.database, workspace.store, "csv", folder, name="x")
    with workspace.database.session() as s:
        assert s.scalar(select(Case.prompt)) == hostile


def test_unknown_names(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown format"):
        import_dataset(workspace.database, workspace.store, "nifti", tmp_path, name="x")
    with pytest.raises(InputError, match="not found"):
        import_dataset(workspace.database, workspace.store, "csv", tmp_path / "nope", name="x")
    with pytest.raises(MedSynthError, match="no dataset called 'nope'"):
        manifest = tmp_path / "m"
        manifest.mkdir()
        (manifest / "manifest.csv").write_text("file,case,seed\na.png,a,1\n")
        import_generated(workspace.database, workspace.store, manifest, dataset="nope", model="m")
