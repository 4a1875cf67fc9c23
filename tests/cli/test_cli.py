"""The foundation's done-when flow through the command line, and one-line errors for user mistakes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import ImageFilter, ImageOps

from app import main

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(tmp_path / "data"), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def make_generated(shared: Path, out: Path, transform) -> Path:  # type: ignore[no-untyped-def]
    from PIL import Image

    out.mkdir(parents=True)
    rows = list(csv.DictReader((shared / "gi" / "captions.csv").open()))[:8]
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "case", "seed"])
        for n, r in enumerate(rows):
            with Image.open(shared / "gi" / r["file"]) as img:
                transform(img.convert("RGB").resize((96, 96))).save(out / f"img{n}.png")
            w.writerow([f"img{n}.png", r["file"], 100 + n])
    return out


def test_done_when_flow(capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_data: Path) -> None:
    code, out, _ = run(capsys, tmp_path, "import", "csv", str(shared_data / "gi"), "--name", "gi-samples",
                       "--file-column", "file", "--text-column", "caption")  # fmt: skip
    assert code == 0 and "imported 50 cases" in out
    for model, fn in (("blurred", lambda im: im.filter(ImageFilter.GaussianBlur(2))), ("mirrored", ImageOps.mirror)):
        folder = make_generated(shared_data, tmp_path / model, fn)
        code, out, err = run(capsys, tmp_path, "import", "generated", str(folder), "--dataset", "gi-samples",
                             "--model", model)  # fmt: skip
        assert code == 0, err
        assert "recorded 8 generated images" in out
    code, out, _ = run(capsys, tmp_path, "datasets")
    assert "gi-samples" in out and "50 cases" in out
    config = tmp_path / "study.toml"
    config.write_text('name = "cli-study"\nseed = 5\ndatasets = ["gi-samples"]\nmodels = ["blurred", "mirrored"]\n'
                      "cases_per_model = 4\nraters_per_item = 1\n")  # fmt: skip
    code, out, err = run(capsys, tmp_path, "study", "create", str(config))
    assert code == 0, err
    # one rater reads both models, so each model gets its own cases (no real image twice): 4 + 4 of the 8
    assert "8 items" in out
    code, out, _ = run(capsys, tmp_path, "rater", "add", "--study", "cli-study", "--name", "Dr A",
                       "--specialty", "gastroenterology", "--years", "7")  # fmt: skip
    assert code == 0 and "?rater=" in out
    code, out, _ = run(capsys, tmp_path, "rater", "list", "--study", "cli-study")
    assert "Dr A" in out and "8" in out
    code, out, _ = run(capsys, tmp_path, "study", "show", "cli-study")
    assert code == 0 and "blurred" in out
    code, out, _ = run(capsys, tmp_path, "export", "--study", "cli-study", "--out", str(tmp_path / "exp"),
                       "--format", "parquet")  # fmt: skip
    assert code == 0
    assert pd.read_parquet(tmp_path / "exp" / "items.parquet").shape[0] == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "csv", "/nonexistent/folder", "--name", "x"], "error: /nonexistent/folder: not found"),
        (["study", "show", "nope"], "error: no study called 'nope'"),
        (["export", "--study", "nope", "--out", "x"], "error: no study called 'nope'"),
        (["rater", "add", "--study", "nope", "--name", "a", "--specialty", "radiology"], "error: no study"),
        (["import", "generated", "/tmp", "--dataset", "d"], "needs --dataset NAME and --model NAME"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
                                  message: str) -> None:  # fmt: skip
    code, _out, err = run(capsys, tmp_path, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_no_traceback_from_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "app.py", "--data-dir", str(tmp_path), "study", "create", str(tmp_path / "missing.toml")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "missing.toml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_on_every_level() -> None:
    for args in ([], ["import"], ["study"], ["study", "create"], ["rater", "add"], ["export"]):
        with pytest.raises(SystemExit) as info:
            main([*args, "--help"])
        assert info.value.code == 0


def test_models_add_and_generate_with_a_tiny_diffusers_pipeline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_data: Path
) -> None:
    from generation.testing import save_tiny_pipeline

    folder = save_tiny_pipeline("sd", tmp_path / "tiny-sd")
    code, _, err = run(capsys, tmp_path, "import", "csv", str(shared_data / "gi"), "--name", "gi",
                       "--file-column", "file", "--text-column", "caption", "--limit", "4")  # fmt: skip
    assert code == 0, err
    code, out, err = run(capsys, tmp_path, "models", "add", "tiny-sd", "--kind", "diffusers", "--source", str(folder))
    assert code == 0, err
    code, out, err = run(capsys, tmp_path, "generate", "--dataset", "gi", "--model", "tiny-sd", "--per-case", "2",
                         "--steps", "2", "--seed", "3", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    assert "generated 8 images (0 already there)" in out
    code, out, err = run(capsys, tmp_path, "generate", "--dataset", "gi", "--model", "tiny-sd", "--per-case", "2",
                         "--steps", "2", "--seed", "3", "--device", "cpu")  # fmt: skip
    assert "generated 0 images (8 already there)" in out  # resumable: nothing redone
    code, out, _ = run(capsys, tmp_path, "models", "list")
    assert "tiny-sd" in out and "8 images" in out
    code, _, err = run(capsys, tmp_path, "models", "add", "x", "--kind", "diffusers", "--source", str(tmp_path / "no"))
    assert code == 2 and err.startswith("error:")
    code, _, err = run(capsys, tmp_path, "generate", "--dataset", "gi", "--model", "nope")
    assert code == 2 and "no model called 'nope'" in err
