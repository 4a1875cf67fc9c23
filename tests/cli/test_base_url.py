"""Rater links printed by the command line use the address the app is really served at."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import ImageOps

from app import build_parser
from db.settings import PUBLIC_URL_SETTING, set_setting
from db.workspace import Workspace
from tests.cli.test_cli import make_generated, run


def test_rater_add_uses_the_served_address(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDSYNTH_BASE_URL", raising=False)
    run(capsys, tmp_path, "import", "csv", str(shared_data / "gi"), "--name", "gi", "--file-column", "file",
        "--text-column", "caption", "--limit", "8")  # fmt: skip
    folder = make_generated(shared_data, tmp_path / "mirrored", ImageOps.mirror)
    run(capsys, tmp_path, "import", "generated", str(folder), "--dataset", "gi", "--model", "mirrored")
    config = tmp_path / "study.toml"
    config.write_text('name = "s"\nseed = 1\ndatasets = ["gi"]\nmodels = ["mirrored"]\ncases_per_model = 2\n')
    assert run(capsys, tmp_path, "study", "create", str(config))[0] == 0
    add = ("rater", "add", "--study", "s", "--specialty", "other", "--name")
    code, out, err = run(capsys, tmp_path, *add, "Dr Default")
    assert code == 0 and "http://127.0.0.1:7860/?rater=" in out, err
    # `serve --port 8000 --base-url https://study.example.org` stores its public address for later links
    args = build_parser().parse_args(["serve", "--port", "8000", "--base-url", "https://study.example.org"])
    assert args.root_url == "https://study.example.org"
    ws = Workspace.open(None, tmp_path / "data")
    set_setting(ws.database, PUBLIC_URL_SETTING, "https://study.example.org")
    ws.close()
    code, out, _ = run(capsys, tmp_path, *add, "Dr Served")
    assert code == 0 and "https://study.example.org/?rater=" in out
    code, out, _ = run(capsys, tmp_path, *add, "Dr Override", "--base-url", "http://10.0.0.5:9000")
    assert code == 0 and "http://10.0.0.5:9000/?rater=" in out
