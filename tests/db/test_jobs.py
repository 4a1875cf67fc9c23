"""The app's jobs: every kind is registered before serving, so a report queued before a restart runs after it;
the live demo lane never waits behind batch work; compare's stage cache is its own table, not jobs rows."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from app import build_worker
from db.jobs import DbJobStore, JobStatus, list_jobs
from db.raters import add_rater, rater_by_token
from db.ratings import next_pair, submit_rating
from db.stages import find_stage, record_stage
from db.studies import create_study
from db.workspace import Workspace
from tests.db.conftest import STUDY_TOML


def _rate_everything(ws: Workspace) -> None:
    with ws.database.session() as s:
        create_study(s, ws.store, STUDY_TOML)
    with ws.database.session() as s:
        tokens = [add_rater(s, "pilot", f"Dr {i}", "gastroenterology", 3 + i).token for i in range(3)]
    rng = np.random.default_rng(0)
    for token in tokens:
        while True:
            with ws.database.session() as s:
                rater = rater_by_token(s, token)
                pair, rid = next_pair(s, rater), rater.id
            if pair is None:
                break
            r = rng.integers(1, 6, size=5)
            answers = {"realism_left": int(r[0]), "realism_right": int(r[1]), "accuracy_left": int(r[2]),
                       "accuracy_right": int(r[3]), "confidence": int(r[4]),
                       "which_generated": "left" if rng.random() < 0.5 else "right"}  # fmt: skip
            submit_rating(ws.database, rid, pair.item_public_id, uuid.uuid4().hex, answers)


def test_a_report_queued_before_a_restart_runs_after_it(gi_workspace: Workspace, tmp_path: Path) -> None:
    _rate_everything(gi_workspace)
    url, data_dir = gi_workspace.settings.db_url, gi_workspace.settings.data_dir
    before = build_worker(gi_workspace)  # the server that queued the report stops before running it
    job_id = before.submit("report", {"study": "pilot", "out_dir": str(tmp_path / "report"), "resamples": 20})
    assert before.status(job_id).status == JobStatus.QUEUED
    gi_workspace.close()

    ws = Workspace.open(url, data_dir)  # the restarted server: a fresh worker on the same database
    after = build_worker(ws).start()
    try:
        job = after.wait(job_id, timeout=300)
        assert job.status == JobStatus.DONE, job.message
        assert Path(job.result["path"]).is_file() and (tmp_path / "report" / "report.html").is_file()
    finally:
        after.stop(timeout=10)
        ws.close()


def test_a_job_of_a_kind_nobody_runs_fails_at_start_instead_of_waiting_forever(workspace: Workspace) -> None:
    store = DbJobStore(workspace.database)
    orphan = store.create("retired-kind", {})
    worker = build_worker(workspace).start()
    try:
        job = store.get(orphan.id)
        assert job.status == JobStatus.FAILED and "no handler" in job.message
    finally:
        worker.stop(timeout=10)


def test_compare_stage_cache_is_its_own_table(workspace: Workspace) -> None:
    record_stage(workspace.database, "cmp", "train:a", "f" * 64, {"adapter": "/x"}, seconds=1.5)
    record_stage(workspace.database, "cmp", "train:a", "f" * 64, {"adapter": "/y"}, seconds=2.0)  # a rerun
    assert find_stage(workspace.database, "cmp", "train:a", "f" * 64) == {"adapter": "/y"}
    assert find_stage(workspace.database, "cmp", "train:a", "0" * 64) is None
    with workspace.database.session() as session:
        assert list_jobs(session) == []  # nothing for the console's job list


def test_upgrade_moves_compare_rows_out_of_jobs(db_url: str) -> None:
    """Databases written before 0003 kept compare's stage cache as finished jobs rows: the upgrade moves them."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from db.session import MIGRATIONS_DIR, make_engine, open_database

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = make_engine(db_url)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0002")
        insert = text(
            "INSERT INTO jobs (kind, params, status, progress, message, result, created_at, finished_at) "
            "VALUES (:kind, :params, 'done', 1.0, '', :result, '2026-11-28 10:00:00', '2026-11-28 10:00:00')"
        )
        connection.execute(insert, {"kind": "compare", "params": '{"comparison": "c", "stage": "split", '
                                    '"fingerprint": "abc"}', "result": '{"held_out": [1, 2]}'})  # fmt: skip
        connection.execute(insert, {"kind": "generate", "params": "{}", "result": "{}"})
    engine.dispose()
    database = open_database(db_url)
    try:
        assert find_stage(database, "c", "split", "abc") == {"held_out": [1, 2]}
        with database.session() as session:
            assert [job.kind for job in list_jobs(session)] == ["generate"]  # the real job stays
    finally:
        database.dispose()


def test_a_server_start_registers_every_job_without_importing_torch_or_scipy(tmp_path: Path) -> None:
    """The worker a server builds (every handler registered) leaves torch, diffusers and scipy to the first job
    that needs them: importing them cost a server start 3.3 s of its 12 s (now 5 s, mostly Gradio, which
    imports none of them and is left out here to keep the check short)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import app\n"
        "from db.workspace import Workspace\n"
        f"ws = Workspace.open('sqlite:///{tmp_path / 'w.sqlite3'}', {str(tmp_path / 'data')!r})\n"
        "worker = app.build_worker(ws)\n"
        "print(sorted(worker.handlers))\n"
        "print([m for m in ('torch', 'diffusers', 'transformers', 'scipy') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    kinds, heavy = out.stdout.strip().splitlines()
    assert kinds == "['compare', 'demo', 'generate', 'report']"
    assert heavy == "[]"
