"""SIGKILL under load, then restart: nothing acknowledged is lost, the database stays sound, raters resume.

* The app server (``python app.py serve``) is killed with SIGKILL three times while raters submit through
  its HTTP interface, at a random point (after a random number of new acknowledgements plus a random
  delay), and restarted on the same data each time; on SQLite and on PostgreSQL. (Each cycle costs a server
  start; three kills still hit the server mid-write on each database, the first after a fresh start and
  two after restarts on killed data, and every restart is checked for resumption and integrity.)
* Both kinds of process are forked from a :class:`~tests.load.client.Launcher` that has done their imports
  once: the child runs ``app.main`` with the same arguments, in its own process group, and is killed as a
  command-line process is. (``tests/load/test_load.py`` starts ``python app.py serve`` as a user does.)
* A ``python app.py generate`` run on a tiny pipeline is killed midway and rerun: every recorded image is
  complete (its file's sha256 is its name), no (model, case, seed) is recorded twice, the rerun makes only
  what is missing. Media files are content-addressed and written atomically (temporary name, fsync,
  rename), so a kill can at worst leave a ``.tmp-*`` file or a stored file whose row was never committed:
  neither is ever read through a row, and the rerun stores the same bytes under the same name.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.models import GeneratedImage, ImageBlob
from db.session import open_database
from tests.load.client import (
    REPO,
    Behaviour,
    Launcher,
    RaterLog,
    RaterSession,
    check_exactly_once,
    first_unrated,
    integrity_check,
    run_raters,
)

# The kill tests share their launchers (one import of the app, one of the generation stack): one process runs them.
pytestmark = pytest.mark.xdist_group("launchers")

ROUNDS = 3
RATERS = 4
PER_RATER = 24
BURST = Behaviour(double_submit=0.15, retry=0.1, refresh=0.1, stale_tab=0.3, fetch_images=0.05)
WAIT_S = 120.0


def assert_resumes_where_it_was(url: str, db_url: str, logs: list[RaterLog]) -> None:
    """Each rater's next pair is its first unrated one, after every pair it was acknowledged for."""
    for log in logs:
        expected = first_unrated(db_url, log.token)
        session = RaterSession(url, log.token)
        try:
            session.enter()
            screen, _ = session.load()
        finally:
            session.close()
        if expected is None:
            assert screen.kind == "done"
            continue
        assert screen.display is not None, screen
        assert screen.display.position == expected
        assert screen.display.number == expected + 1  # "Pair N": every earlier pair is rated
        assert all(a.position < expected for a in log.acks)


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_rating(load_study: Callable[[int, int], Any]) -> None:
    study = load_study(RATERS, PER_RATER)
    db_url, server = study.db_url, study.server
    logs = [RaterLog(t) for t in study.tokens]
    rng = random.Random(20260)
    for round_ in range(ROUNDS):
        server.start()
        if round_:
            assert_resumes_where_it_was(server.url, db_url, logs)
        before = sum(len(log.acks) for log in logs)
        stop = threading.Event()
        worker = threading.Thread(
            target=run_raters, args=(server.url, logs), kwargs={"seed": round_, "behaviour": BURST, "stop": stop}
        )
        worker.start()
        try:
            target = before + rng.randint(1, 2 * RATERS)
            deadline = time.monotonic() + WAIT_S
            while sum(len(log.acks) for log in logs) < target and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            assert worker.is_alive(), "every rater finished before the kill: the kill would not be under load"
            server.kill(signal.SIGKILL)
        finally:
            stop.set()
            worker.join(WAIT_S)
        assert not worker.is_alive()
        assert sum(len(log.acks) for log in logs) >= target, "the load stalled before the kill"
        assert any(log.interrupted for log in logs), "no rater was cut off by the kill"
        assert integrity_check(db_url) == "ok"
        assert check_exactly_once(db_url, logs) == []
        for log in logs:
            log.interrupted = False

    server.start()  # the last start: everyone resumes and finishes
    assert_resumes_where_it_was(server.url, db_url, logs)
    run_raters(server.url, logs, seed=ROUNDS, behaviour=BURST)
    server.stop()
    assert check_exactly_once(db_url, logs, complete=True) == []
    assert integrity_check(db_url) == "ok"


# ----------------------------------------------------------------------------------------------- generation

N_CASES = 12
PER_CASE = 3


def app(data_dir: Path, db_url: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "app.py"), "--data-dir", str(data_dir), "--db", db_url, *args]


def generated_rows(db_url: str) -> tuple[int, int, list[str]]:
    """(rows, distinct (model, case, seed), sha256 of every row's image)."""
    database = open_database(db_url, upgrade=False)
    try:
        with database.session() as session:
            rows = session.execute(select(GeneratedImage.model_id, GeneratedImage.case_id, GeneratedImage.seed,
                                          GeneratedImage.image_sha256)).all()  # fmt: skip
            blobs = set(session.scalars(select(ImageBlob.sha256)))  # read after the rows: a superset
    finally:
        database.dispose()
    assert {r[3] for r in rows} <= blobs, "a generated image row without its image row"
    return len(rows), len({r[:3] for r in rows}), [r[3] for r in rows]


def assert_files_complete(media: Path, shas: list[str]) -> None:
    """Each recorded image's file exists and hashes to its name; so does every other final file."""
    for sha in shas:
        path = media / "objects" / sha[:2] / sha
        assert path.is_file(), f"recorded image {sha[:12]} has no file"
    for path in (media / "objects").rglob("*"):
        if path.is_file() and not path.name.startswith(".tmp-"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"half-written {path}"


@pytest.mark.slow
def test_killed_generation_leaves_no_half_record_and_resumes(
    db_url: str, tmp_path: Path, shared_data: Path, launchers: Callable[[Sequence[str]], Launcher]
) -> None:
    from db.generated import register_model
    from db.importers import import_dataset
    from db.workspace import Workspace
    from generation.pipelines import build_spec
    from generation.testing import save_tiny_pipeline

    data_dir = tmp_path / "data"
    tiny = save_tiny_pipeline("sd", tmp_path / "tiny-sd")
    spec = build_spec("tiny", "diffusers", str(tiny))  # as `python app.py models add tiny --kind diffusers ...`
    ws = Workspace.open(db_url, data_dir)
    try:
        import_dataset(ws.database, ws.store, "csv", shared_data / "gi" / "captions.csv", name="gi", domain="gi",
                       file_column="file", text_column="caption", limit=N_CASES)  # fmt: skip
        with ws.database.session() as session:
            register_model(session, spec.name, kind=spec.kind, source=spec.source, parameters=spec.parameters())
    finally:
        ws.close()
    generate = app(data_dir, db_url, "generate", "--dataset", "gi", "--model", "tiny", "--device", "cpu",
                   "--per-case", str(PER_CASE), "--steps", "2", "--batch-size", "1")  # fmt: skip
    total = N_CASES * PER_CASE
    kill_at = random.Random(5).randint(2, total // 3)
    launcher = launchers(Launcher.GENERATE)  # forked as `python app.py generate ...`, without its 8 s of imports
    log = tmp_path / "generate.log"
    process = launcher.spawn(generate, log)
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if generated_rows(db_url)[0] >= kill_at:
                break
            time.sleep(0.02)
        assert process.poll() is None, "generation ended before the kill: " + log.read_text()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    rows, distinct, shas = generated_rows(db_url)
    assert kill_at <= rows < total and distinct == rows
    assert_files_complete(data_dir / "media", shas)
    if db_url.startswith("sqlite"):
        assert integrity_check(db_url) == "ok"

    rerun_log = tmp_path / "rerun.log"
    rerun = launcher.spawn(generate, rerun_log)
    assert rerun.wait(600) == 0, rerun_log.read_text()[-2000:]
    assert f"generated {total - rows} images ({rows} already there)" in rerun_log.read_text()
    after, distinct, shas = generated_rows(db_url)
    assert after == distinct == total
    assert_files_complete(data_dir / "media", shas)
