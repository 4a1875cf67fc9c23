"""Every input of the bad-input corpus gets a clear error naming the problem, and nothing is written.

Parsers are also fuzzed with hypothesis: any text is either accepted or refused with an ``InputError``,
never another exception.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import func, select

from db.errors import InputError, MedSynthError
from db.importers import import_dataset, import_generated
from db.models import Case, Dataset, GeneratedImage, ImageBlob, Study
from db.questions import DEFAULT_QUESTIONS
from db.studies import create_study, parse_study_config
from db.workspace import Workspace

HERE = Path(__file__).resolve().parent
CORPUS = tomllib.loads((HERE / "corpus.toml").read_text())


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus written by make_corpus.py into a temporary folder."""
    from tests.bad_inputs.make_corpus import main as make_corpus

    return make_corpus(tmp_path_factory.mktemp("bad-inputs") / "cases")


def test_corpus_is_complete(corpus: Path) -> None:
    on_disk = {p.name for p in corpus.iterdir() if p.is_dir()}
    assert on_disk == set(CORPUS), "corpus.toml and make_corpus.py disagree"
    assert len(CORPUS) >= 30


@pytest.fixture
def ws(tmp_path: Path):  # type: ignore[no-untyped-def]
    workspace = Workspace.open(f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path / "data")
    yield workspace
    workspace.close()


def counts(ws: Workspace) -> tuple[int, ...]:
    with ws.database.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) or 0
                     for t in (Dataset, Case, ImageBlob, GeneratedImage, Study))  # fmt: skip


def prepare_dataset(ws: Workspace, tmp_path: Path) -> None:
    """The dataset 'ds' (cases ok0.png, ok1.png) and model 'm' with one image, for manifests and studies."""
    root = tmp_path / "ds"
    root.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (16, 16), colour).save(root / f"ok{i}.png")
    (root / "metadata.csv").write_text("file_name,text\nok0.png,a\nok1.png,b\n")
    import_dataset(ws.database, ws.store, "csv", root, name="ds")
    gen = tmp_path / "gen"
    gen.mkdir()
    Image.new("RGB", (16, 16), "green").save(gen / "g.png")
    (gen / "manifest.csv").write_text("file,case,seed\ng.png,ok0.png,1\n")
    import_generated(ws.database, ws.store, gen, dataset="ds", model="m")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_input(name: str, corpus: Path, ws: Workspace, tmp_path: Path) -> None:
    spec = CORPUS[name]
    case_dir = tmp_path / name
    shutil.copytree(corpus / name, case_dir)
    fmt = spec["format"]
    if fmt in ("generated", "study"):
        prepare_dataset(ws, tmp_path)
    before = counts(ws)
    with pytest.raises(MedSynthError) as info:
        if fmt == "generated":
            import_generated(ws.database, ws.store, case_dir, dataset="ds", model="m")
        elif fmt == "study":
            with ws.database.session() as s:
                create_study(s, ws.store, (case_dir / "study.toml").read_text(), source="study.toml")
        else:
            path = case_dir / spec["listing"] if "listing" in spec else case_dir
            import_dataset(ws.database, ws.store, fmt, path, name="bad")
    message = str(info.value)
    assert re.search(spec["error"], message), f"{name}: {message!r} does not match {spec['error']!r}"
    assert "\n" not in message and len(message) < 600
    assert counts(ws) == before, f"{name}: something was written"


ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(max_examples=150, deadline=None)
@given(ANY_TEXT)
def test_study_config_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(InputError):
        parse_study_config(text)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from([*DEFAULT_QUESTIONS.keys(), "extra"]),
                       st.one_of(st.none(), st.integers(-3, 9), st.floats(allow_nan=True), st.text(max_size=20),
                                 st.booleans())))  # fmt: skip
def test_answer_validation_never_crashes(answers: dict[str, object]) -> None:
    try:
        clean = DEFAULT_QUESTIONS.validate(answers)
    except InputError:
        return
    for key in ("realism_left", "realism_right", "accuracy_left", "accuracy_right", "confidence"):
        assert clean[key] is None or 1 <= clean[key] <= 5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_listing_bytes_never_crash_the_importer(tmp_path: Path, data: bytes) -> None:
    root = tmp_path / "fuzz"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    (root / "metadata.csv").write_bytes(b"file_name,text\n" + data)
    ws = Workspace.open(f"sqlite:///{root / 'db.sqlite3'}", root / "data")
    try:
        import_dataset(ws.database, ws.store, "csv", root, name="fuzz")
    except MedSynthError:
        pass
    finally:
        ws.close()
