"""Only user-fixable errors (MedSynthError) become one ``error:`` line; a bad database URL and an
unreachable hub are such errors; a bug keeps its traceback."""

from __future__ import annotations

import pytest

import app
from db.errors import NetworkError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nope://x", "error: cannot open database nope://x: "),
        ("postgresql+psycopg://u:hunter22@127.0.0.1:1/x", "error: cannot connect to database postgresql+psycopg://u:***@"),
    ],
)
def test_a_bad_db_url_is_one_line(url: str, expected: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert app.main(["--db", url, "--data-dir", str(tmp_path), "datasets"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1 and "hunter22" not in err and "Traceback" not in err


def test_an_uncached_hub_id_offline_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from generation.pipelines import build_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkError):
        build_spec("hub-model", "diffusers", "medsynth-tests/not-in-any-cache")
    args = ["--data-dir", str(tmp_path), "models", "add", "m", "--kind", "diffusers", "--source", "medsynth-tests/nope"]
    assert app.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: hub model 'medsynth-tests/nope' is not in the local Hugging Face cache and the hub")
    assert err.count("\n") == 1


def test_network_errors_from_libraries_are_one_line_and_bugs_raise(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(_args: object) -> int:
        try:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        except OSError as exc:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from exc

    monkeypatch.setattr(app, "cmd_datasets", offline)
    assert app.main(["--data-dir", str(tmp_path), "datasets"]) == 2
    assert capsys.readouterr().err.startswith("error: the network is unreachable")

    def bug(_args: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(app, "cmd_datasets", bug)
    with pytest.raises(KeyError, match="a bug"):
        app.main(["--data-dir", str(tmp_path), "datasets"])
