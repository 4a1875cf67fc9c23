"""The embedded demo: built once from the procedural data and an MSDM folder, reused on every later start.

The demo MSDM here is a randomly initialised tiny MSDM (same architecture and text encoder as the committed
demo model, which another engineer trains), so the test exercises the real build: procedural data ->
csv import -> two registered models -> seeded generation through ``generation.batch`` -> study -> rater.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from db.models import Dataset, GeneratedImage, Model, Rater, Study, StudyItem
from db.raters import rater_by_token
from db.studies import study_config
from db.workspace import Workspace
from evalapp.auth import PASSWORD_ENV, verify_coordinator_password
from generation.demo_study import (
    DEMO_DATASETS,
    DEMO_H2H_STUDY,
    DEMO_MODELS,
    DEMO_RATER,
    DEMO_STUDY,
    DemoInfo,
    ensure_demo,
)

N_PER_DOMAIN = 3


@pytest.fixture(scope="module")
def msdm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from generation.msdm.config import tiny_config
    from generation.msdm.pipeline import build_pipeline, save_msdm_pipeline

    torch.set_num_threads(1)
    cfg = tiny_config().model
    folder = tmp_path_factory.mktemp("demo-msdm") / "model"
    save_msdm_pipeline(build_pipeline(cfg, seed=3), folder, cfg, include_text_encoder=False)
    return folder


@pytest.fixture(scope="module")
def built(msdm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, DemoInfo, list[str]]]:
    ws = Workspace.open(None, tmp_path_factory.mktemp("demo-ws") / "data")
    lines: list[str] = []
    info = ensure_demo(ws, lines.append, model_dir=msdm_dir, n_per_domain=N_PER_DOMAIN, device="cpu")
    yield ws, info, lines
    ws.close()


def counts(ws: Workspace) -> dict[str, int]:
    with ws.database.session() as session:
        return {
            table.__name__: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in (Dataset, Model, GeneratedImage, Study, StudyItem, Rater)
        }


def test_first_start_builds_a_two_model_study(built: tuple[Workspace, DemoInfo, list[str]]) -> None:
    ws, info, lines = built
    assert info.built and info.study == DEMO_STUDY and info.rater_name == DEMO_RATER
    assert any("generated" in line for line in lines) and any("imported" in line for line in lines)
    with ws.database.session() as session:
        datasets = {d.name: d.domain.value for d in session.scalars(select(Dataset))}
        assert datasets == {name: dom.value for name, _, dom in DEMO_DATASETS}
        models = {m.name: m for m in session.scalars(select(Model))}
        assert set(models) == {name for name, _ in DEMO_MODELS} and all(m.kind == "msdm" for m in models.values())
        for name, steps in DEMO_MODELS:
            rows = list(session.scalars(select(GeneratedImage).where(GeneratedImage.model_id == models[name].id)))
            assert len(rows) == 2 * N_PER_DOMAIN and {r.steps for r in rows} == {steps}
        study = session.scalar(select(Study).where(Study.name == DEMO_STUDY))
        assert study is not None
        cfg = study_config(study)
        assert cfg.models == [name for name, _ in DEMO_MODELS] and cfg.cases_per_model == N_PER_DOMAIN
        per_model = {
            m: session.scalar(
                select(func.count())
                .select_from(StudyItem)
                .where(StudyItem.study_id == study.id, StudyItem.model_id == models[m].id, StudyItem.kind == "normal")
            )
            for m in models
        }
        assert set(per_model.values()) == {N_PER_DOMAIN}
        rater = rater_by_token(session, info.rater_token)
        assert rater is not None and rater.name == DEMO_RATER and rater.assignments
    assert info.coordinator_password and verify_coordinator_password(ws.database, info.coordinator_password)
    text = info.describe("http://127.0.0.1:7860")
    assert f"http://127.0.0.1:7860/?rater={info.rater_token}" in text and info.coordinator_password in text
    assert f"http://127.0.0.1:7860/?rater={info.h2h_rater_token}" in text and DEMO_H2H_STUDY in text


def test_first_start_builds_a_head_to_head_study_of_the_two_demo_models(
    built: tuple[Workspace, DemoInfo, list[str]],
) -> None:
    from db.ratings import next_pair

    ws, info, lines = built
    assert any(DEMO_H2H_STUDY in line for line in lines)
    with ws.database.session() as session:
        study = session.scalar(select(Study).where(Study.name == DEMO_H2H_STUDY))
        assert study is not None
        cfg = study_config(study)
        assert cfg.kind == "head-to-head" and cfg.reference and cfg.models == [name for name, _ in DEMO_MODELS]
        items = list(session.scalars(select(StudyItem).where(StudyItem.study_id == study.id)))
        demo_ids = set(session.scalars(select(Model.id).where(Model.name.in_(cfg.models))))
        assert len(items) == max(2, N_PER_DOMAIN // 2) == cfg.cases_per_model
        assert all({it.model_id, it.second_model_id} == demo_ids for it in items)
        assert len({it.case_id for it in items}) == len(items)  # each pair on its own prompt
        # reachable like the demo study: the demo rater's own link opens this study's pairs
        rater = rater_by_token(session, info.h2h_rater_token)
        assert rater is not None and rater.name == DEMO_RATER and rater.study_id == study.id
        assert len(rater.assignments) == len(items)
        pair = next_pair(session, rater)
        assert pair is not None and pair.kind == "head-to-head" and pair.reference
        assert rater_by_token(session, info.rater_token).study.name == DEMO_STUDY  # type: ignore[union-attr]


def test_later_starts_reuse_it(built: tuple[Workspace, DemoInfo, list[str]], msdm_dir: Path) -> None:
    ws, first, _ = built
    before = counts(ws)
    lines: list[str] = []
    again = ensure_demo(ws, lines.append, model_dir=msdm_dir, n_per_domain=N_PER_DOMAIN, device="cpu")
    assert not again.built and lines == [] and counts(ws) == before
    assert again.rater_token != first.rater_token and again.h2h_rater_token != first.h2h_rater_token
    with ws.database.session() as session:
        assert rater_by_token(session, first.rater_token) is None  # re-issued: the old link stops
        assert rater_by_token(session, again.rater_token) is not None
        assert rater_by_token(session, first.h2h_rater_token) is None
        assert rater_by_token(session, again.h2h_rater_token) is not None
    assert again.coordinator_password is None and "already set" in again.password_source
    assert verify_coordinator_password(ws.database, first.coordinator_password or "")
    assert "already set" in again.describe("http://x")


def test_a_later_start_reuses_it_without_importing_torch(
    built: tuple[Workspace, DemoInfo, list[str]], msdm_dir: Path
) -> None:
    """``python app.py`` on a built demo: only the first build needs the demo pipeline (torch, diffusers,
    transformers); importing it made every later start 9 s slower."""
    import subprocess
    import sys

    ws, _, _ = built
    code = (
        "import sys\n"
        "from db.workspace import Workspace\n"
        "from generation.demo_study import ensure_demo\n"
        f"ws = Workspace.open({ws.settings.db_url!r}, {str(ws.settings.data_dir)!r})\n"
        f"info = ensure_demo(ws, print, model_dir={str(msdm_dir)!r}, n_per_domain={N_PER_DOMAIN}, device='cpu')\n"
        "print(info.built, [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False []"


def test_password_from_the_environment_is_not_replaced(
    built: tuple[Workspace, DemoInfo, list[str]], msdm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, first, _ = built
    monkeypatch.setenv(PASSWORD_ENV, "from-the-environment")
    info = ensure_demo(ws, model_dir=msdm_dir, n_per_domain=N_PER_DOMAIN, device="cpu")
    assert info.coordinator_password is None and PASSWORD_ENV in info.password_source
    assert verify_coordinator_password(ws.database, first.coordinator_password or "")


def test_a_demo_built_before_head_to_head_gains_it_on_the_next_start(
    built: tuple[Workspace, DemoInfo, list[str]], msdm_dir: Path
) -> None:
    ws, _, _ = built
    with ws.database.session() as session:  # a demo made by an older version: no head-to-head study yet
        study = session.scalar(select(Study).where(Study.name == DEMO_H2H_STUDY))
        session.delete(study)
    before = counts(ws)
    lines: list[str] = []
    info = ensure_demo(ws, lines.append, model_dir=msdm_dir, n_per_domain=N_PER_DOMAIN, device="cpu")
    assert not info.built and any(DEMO_H2H_STUDY in line for line in lines)
    assert not any("generated" in line for line in lines)  # the demo models' images are reused
    after = counts(ws)
    assert after["Study"] == before["Study"] + 1 and after["GeneratedImage"] == before["GeneratedImage"]
    with ws.database.session() as session:
        rater = rater_by_token(session, info.h2h_rater_token)
        assert rater is not None and rater.study.name == DEMO_H2H_STUDY and rater.assignments


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    ws = Workspace.open(None, tmp_path / "data")
    try:
        with pytest.raises(ValueError, match="demo model is missing"):
            ensure_demo(ws, model_dir=tmp_path / "nowhere", n_per_domain=N_PER_DOMAIN)
        with pytest.raises(ValueError, match="at least 2 cases"):
            ensure_demo(ws, model_dir=tmp_path, n_per_domain=1)
        assert counts(ws)["Study"] == 0
    finally:
        ws.close()
