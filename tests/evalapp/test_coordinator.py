"""The coordinator console: the whole path through the live app, its progress reads, the demo form's checks.

A coordinator creates a study by pasting TOML, adds a rater (the link is shown and works), revokes it (the
link stops working), watches progress move when a rater submits, and downloads an export whose ratings
table is the db's own. The same path runs once in headless Chromium (``@pytest.mark.browser``), which also
saves a screenshot of the console.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select

from db.audit import recent_actions
from db.export import ratings_frame
from db.jobs import JobStatus, list_jobs
from db.models import Assignment, Model, Rating, StudyItem
from db.progress import assignment_rows, model_progress, rater_progress
from db.raters import rater_by_token
from db.ratings import submit_rating
from evalapp.demo_view import MAX_SEED, validate_demo_inputs
from tests.evalapp.conftest import COORDINATOR_PASSWORD, STUDY, AppEnv, study_toml
from tests.evalapp.test_rights import App, Browser, enumerate_app

SHOTS = Path("/tmp/medsynth-shots")


@pytest.fixture(scope="module")
def app(app_env: AppEnv) -> App:
    return enumerate_app(app_env)


@pytest.fixture(scope="module")
def coordinator(app_env: AppEnv, app: App) -> Browser:
    browser = Browser(app_env.url, app_env.cookie())
    fn = app.endpoints[("/coordinator", "coordinator_signin")].fn_index
    assert browser.call("/coordinator", fn, [COORDINATOR_PASSWORD]).data[1]["visible"] is True
    return browser


def call(app: App, browser: Browser, name: str, data: list) -> list:  # type: ignore[type-arg]
    out = browser.call("/coordinator", app.endpoints[("/coordinator", name)].fn_index, data)
    assert out.success, f"{name}: {out.error}"
    return out.data


def rate_everything(env: AppEnv, rater_pk: int, limit: int) -> None:
    """Submit ``limit`` ratings for a rater straight through db (as the rater page does)."""
    with env.workspace.database.session() as session:
        items = list(
            session.scalars(
                select(StudyItem.public_id)
                .join(Assignment, Assignment.item_id == StudyItem.id)
                .where(Assignment.rater_id == rater_pk)
                .order_by(Assignment.position)
                .limit(limit)
            )
        )
    answers = {
        "realism_left": 4, "realism_right": 2, "accuracy_left": 3, "accuracy_right": 3,
        "which_generated": "right", "confidence": 4,
    }  # fmt: skip
    for n, item in enumerate(items):
        submit_rating(env.workspace.database, rater_pk, item, f"coord-test-{rater_pk}-{n}", answers)


# ----------------------------------------------------------------------------------------------- the path


def test_create_add_revoke_progress_export(app_env: AppEnv, app: App, coordinator: Browser) -> None:
    name = "coordinator-path-study"
    created = call(app, coordinator, "coord_create_study", [study_toml(name, 2), None])
    assert "Created" in created[0] and name in created[0]
    assert name in created[1]["choices"][0] or [name, name] in created[1]["choices"], created[1]

    message, link = call(app, coordinator, "coord_add_rater", [name, "Dr Path", "gastroenterology", 7])[:2]
    assert "Dr Path" in message and link.startswith(app_env.url + "/?rater=")
    token = link.split("rater=", 1)[1]
    with app_env.workspace.database.session() as session:
        rater = rater_by_token(session, token)
        assert rater is not None and rater.name == "Dr Path"
        rater_pk, public_id = rater.id, rater.public_id

    rate_everything(app_env, rater_pk, limit=3)
    note, per_rater, per_model = call(app, coordinator, "coord_tick", [name])[:3]
    rows = {r[1]: r for r in per_rater["data"]}
    assert rows["Dr Path"][3:5] == [3, 4], rows  # rated 3 of 4 assigned
    assert "Updated" in note
    assert sum(r[2] for r in per_model["data"]) == 3

    revoked = call(app, coordinator, "coord_revoke_rater", [name, public_id])
    assert "Revoked" in revoked[0]
    with app_env.workspace.database.session() as session:
        assert rater_by_token(session, token) is None

    for fmt in ("csv", "parquet", "json"):
        files = call(app, coordinator, "coord_export", [name, fmt])[0]
        paths = [f["path"] if isinstance(f, dict) else f for f in files]
        archive = next(p for p in paths if p.endswith(".zip"))
        with app_env.workspace.database.session() as session:
            expected = ratings_frame(session, name)
        zipped = coordinator.client.get(f"/coordinator/gradio_api/file={archive}")
        assert zipped.status_code == 200, zipped.status_code
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
            names = {Path(n).name for n in zf.namelist()}
            assert {f"ratings.{fmt}", f"items.{fmt}", f"raters.{fmt}", f"models.{fmt}", "study_config.toml"} <= names
            data = zf.read(next(n for n in zf.namelist() if n.endswith(f"ratings.{fmt}")))
        reader = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": pd.read_json}[fmt]
        got = reader(io.BytesIO(data))
        assert list(got.columns) == list(expected.columns)
        assert sorted(got["item"]) == sorted(expected["item"]) and len(got) == 3

    # every action is in the audit log, which never holds the rater's token or link
    audited = [a for a in recent_actions(app_env.workspace.database, limit=200) if a.target == name]
    assert {"study.create", "rater.add", "rater.revoke", "export"} <= {a.action for a in audited}
    assert all(a.actor.startswith("coordinator@") for a in audited)
    assert token not in repr(recent_actions(app_env.workspace.database, limit=1000))


def test_bad_config_is_a_message_not_a_crash(app: App, coordinator: Browser) -> None:
    """A bad config is explained under the config field; the study list and tables are left as they were."""
    fn = app.endpoints[("/coordinator", "coord_create_study")].fn_index
    out = coordinator.call("/coordinator", fn, ['name = "x"\nseed = <script>alert(1)</script>', None])
    assert out.success and "invalid TOML" in out.data[0]
    assert "<script>" not in out.data[0]  # escaped: the message is rendered as Markdown/HTML
    assert all(o == {"__type__": "update"} for o in out.data[1:]), out.data[1:]  # tables untouched
    out = coordinator.call("/coordinator", fn, [study_toml(STUDY, 1), None])
    assert out.success and "already exists" in out.data[0]
    out = coordinator.call("/coordinator", app.endpoints[("/coordinator", "coord_add_rater")].fn_index,
                           [STUDY, "   ", "radiology", 3])  # fmt: skip
    assert out.success and out.data[0].startswith("**Not added:**") and "name" in out.data[0], out.data[0]
    assert all(o == {"__type__": "update"} for o in out.data[1:]), out.data[1:]  # raters table untouched


def test_generation_job_is_queued_and_reported(app_env: AppEnv, app: App, coordinator: Browser) -> None:
    """The console queues one job per (dataset, model); a folder model fails in the worker, not the request."""
    with app_env.workspace.database.session() as session:
        folder_model = session.scalar(select(Model.name).where(Model.kind == "folder"))
    message = call(app, coordinator, "coord_generate", [STUDY, [folder_model], "cpu", 2, 1.0, 0])[0]
    assert message.startswith("Queued job(s)")
    job_id = int(message.split()[-1].rstrip("."))
    worker = app_env.ctx.jobs()
    finished = worker.wait(job_id, timeout=60)
    assert finished.status.value == "failed" and "imported, not generated" in finished.message
    table = call(app, coordinator, "coord_tick", [STUDY])[3]
    assert any(row[0] == job_id and row[2] == "failed" for row in table["data"])


def test_jobs_table_lists_only_the_selected_studys_jobs(app_env: AppEnv, app: App, coordinator: Browser) -> None:
    """Two studies, a generation job each (and a job of no study): each study's console lists its own only."""
    other = "jobs-study-2"
    call(app, coordinator, "coord_create_study", [study_toml(other, 1), None])
    with app_env.workspace.database.session() as session:
        folder_model = session.scalar(select(Model.name).where(Model.kind == "folder"))
    ids = {}
    for name in (STUDY, other):
        message = call(app, coordinator, "coord_generate", [name, [folder_model], "cpu", "", "", ""])[0]
        ids[name] = {int(n) for n in re.findall(r"\d+", message)}
        assert ids[name], message
    worker = app_env.ctx.jobs()
    stray = worker.store.create("generate", {"dataset": "x", "model": "y"})  # a job of no study (never run)
    worker.store.update(stray.id, status=JobStatus.CANCELLED)
    for name in (STUDY, other):
        listed = {row[0] for row in call(app, coordinator, "coord_tick", [name])[3]["data"]}
        assert ids[name] <= listed, (name, listed)
        assert not listed & ids[other if name == STUDY else STUDY], (name, listed)
        assert stray.id not in listed
        with app_env.workspace.database.session() as session:
            assert all(job.params.get("study") == name for job in list_jobs(session, study=name, limit=500))
    assert call(app, coordinator, "coord_tick", [""])[3]["data"] in ([], [[]])  # no study chosen: no jobs


# ----------------------------------------------------------------------------------------------- progress reads


def test_progress_matches_the_ratings_table(app_env: AppEnv) -> None:
    """Per-rater and per-model counts equal those computed independently from the tidy ratings table."""
    study = "progress-check-study"
    with app_env.workspace.database.session() as session:
        from db.studies import create_study

        create_study(session, app_env.workspace.store, study_toml(study, 3, attention=0.2, repeat=0.2))
    a, b = app_env.add_rater(study), app_env.add_rater(study)
    rate_everything(app_env, a.rater_pk, limit=4)
    rate_everything(app_env, b.rater_pk, limit=1)
    with app_env.workspace.database.session() as session:
        ratings = ratings_frame(session, study)
        per_rater = {r.rater: r for r in rater_progress(session, study)}
        per_model = {m.model: m for m in model_progress(session, study)}
        assigned_rows = assignment_rows(session, study)
        n_assigned = {
            r: len(list(session.scalars(select(Assignment.id).where(Assignment.rater_id == pk))))
            for r, pk in ((a.public_id, a.rater_pk), (b.public_id, b.rater_pk))
        }
        n_ratings = len(list(session.scalars(select(Rating.id).join(StudyItem).where(StudyItem.study.has(name=study)))))
    assert n_ratings == len(ratings) == 5
    for rater, counts in ratings.groupby("rater").size().items():
        assert per_rater[rater].rated == counts
        assert per_rater[rater].assigned == n_assigned[rater]
    by_model = ratings.groupby("model").size().to_dict()
    for model, row in per_model.items():
        assert row.rated == by_model.get(model, 0)
    assert sum(m.assigned for m in per_model.values()) == sum(n_assigned.values()) == len(assigned_rows)
    assert sum(r.rated for r in assigned_rows) == 5


# ----------------------------------------------------------------------------------------------- demo form


def test_demo_inputs_are_checked() -> None:
    ok = validate_demo_inputs("  a polyp  ", "m", 5, 20.0, 3.5)
    assert (ok.prompt, ok.seed, ok.steps, ok.guidance) == ("a polyp", 5, 20, 3.5)
    assert validate_demo_inputs("p", "m", MAX_SEED, 100, 20).seed == 2**32 - 1
    bad = [
        ("", "m", 0, 20, 3), ("x" * 501, "m", 0, 20, 3), ("p", "", 0, 20, 3), ("p", "m", -1, 20, 3),
        ("p", "m", 2**32, 20, 3), ("p", "m", 1.5, 20, 3), ("p", "m", 0, 0, 3), ("p", "m", 0, 101, 3),
        ("p", "m", 0, 20, -0.1), ("p", "m", 0, 20, 20.5), ("p", "m", 0, 20, float("nan")), ("p\x00", "m", 0, 20, 3),
        ("p", "m", "seven", 20, 3), ("p", "m", None, 20, 3),
    ]  # fmt: skip
    for args in bad:
        with pytest.raises(ValueError):
            validate_demo_inputs(*args)


# ----------------------------------------------------------------------------------------------- browser


@pytest.mark.browser
def test_console_in_chromium(app_env: AppEnv, browser: Any, tmp_path: Path) -> None:
    """Sign in, paste a config, create the study, add a rater (link shown), export; screenshot the console."""
    from playwright.sync_api import expect

    name = "browser-created-study"
    SHOTS.mkdir(parents=True, exist_ok=True)
    # The session's one Playwright driver (tests/evalapp/conftest.py): a second sync_playwright() in the
    # same process would fail while the first is open.
    context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(f"{app_env.url}/coordinator/")
        page.get_by_label("Password").fill(COORDINATOR_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("tab", name="Raters")).to_be_visible(timeout=30_000)
        page.get_by_text("New study from a TOML config").click()
        editor = page.locator(".cm-content").first
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        editor.fill(study_toml(name, 2))
        page.get_by_role("button", name="Create study").click()
        expect(page.get_by_text(f"Created study '{name}'")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(SHOTS / "coordinator-studies.png"))

        page.get_by_role("tab", name="Raters").click()
        page.locator("#ms-rater-name textarea, #ms-rater-name input").first.fill("Dr Browser")
        page.get_by_role("button", name="Add rater").click()
        link = page.locator("#ms-link textarea, #ms-link input").first
        expect(link).to_have_value(re.compile(r"/\?rater="), timeout=30_000)
        page.screenshot(path=str(SHOTS / "coordinator-raters.png"))

        page.get_by_role("tab", name="Export").click()
        page.get_by_role("button", name="Export", exact=True).click()
        download_link = page.locator('a[href*=".zip"]').first
        expect(download_link).to_be_visible(timeout=30_000)
        with page.expect_download() as info:
            download_link.click()
        saved = tmp_path / "export.zip"  # per test: parallel workers share /tmp/medsynth-shots
        info.value.save_as(saved)
        with zipfile.ZipFile(saved) as zf:
            assert any(n.endswith("ratings.csv") for n in zf.namelist())
            assert any(n.endswith("study_config.toml") for n in zf.namelist())
        page.get_by_role("tab", name="Progress").click()
        page.wait_for_timeout(500)
        page.screenshot(path=str(SHOTS / "coordinator-console.png"))
    finally:
        context.close()
    with app_env.workspace.database.session() as session:
        assert any(r.name == "Dr Browser" for r in rater_progress(session, name))


# ----------------------------------------------------------------------------------------------- console traps


def test_empty_steps_and_guidance_queue_the_model_defaults(app_env: AppEnv, app: App, coordinator: Browser) -> None:
    from db.models import Job

    with app_env.workspace.database.session() as session:
        folder_model = session.scalar(select(Model.name).where(Model.kind == "folder"))
    message = call(app, coordinator, "coord_generate", [STUDY, [folder_model], "cpu", "", "", ""])[0]
    job_ids = [int(n) for n in re.findall(r"\d+", message)]
    assert message.startswith("Queued job(s)") and job_ids, message
    with app_env.workspace.database.session() as session:
        params = [session.get(Job, j).params for j in job_ids]  # type: ignore[union-attr]
    assert all("steps" not in p and "guidance" not in p and p["study"] == STUDY for p in params), params
    message = call(app, coordinator, "coord_generate", [STUDY, [folder_model], "cpu", "12", "2.5", "3"])[0]
    with app_env.workspace.database.session() as session:
        job = session.get(Job, int(re.findall(r"\d+", message)[0]))
        assert job is not None and (job.params["steps"], job.params["guidance"], job.params["seed"]) == (12, 2.5, 3)
    for steps, guidance, field in (("0", "", "Steps"), ("1.5", "", "Steps"), ("", "-1", "Guidance"),
                                   ("", "lots", "Guidance")):  # fmt: skip
        out = call(app, coordinator, "coord_generate", [STUDY, [folder_model], "cpu", steps, guidance, "0"])
        assert out[0].startswith("**Not queued:**") and field in out[0], out[0]
        assert out[1] == {"__type__": "update"}  # the jobs table stays


def test_report_download_belongs_to_the_selected_study(app_env: AppEnv, app: App, coordinator: Browser) -> None:
    """Two studies, two reports: each study's download is its own report (HTML + tables zip), under data/."""
    names = []
    for n in (1, 2):
        name = f"report-study-{n}"
        call(app, coordinator, "coord_create_study", [study_toml(name, 2), None])
        rater = app_env.add_rater(name)
        rate_everything(app_env, rater.rater_pk, limit=4)
        names.append(name)
    if ("/coordinator", "coord_report") not in app.endpoints:
        pytest.skip("this installation has no analysis report")
    worker = app_env.ctx.jobs()
    for name in names:
        message = call(app, coordinator, "coord_report", [name])[0]
        job = worker.wait(int(re.findall(r"job (\d+)", message)[0]), timeout=300)
        assert job.status.value == "done", job.message
    reports = app_env.data_dir / "reports"
    for name in names:
        files = call(app, coordinator, "coord_report_file", [name])[0]
        paths = [f["path"] for f in files]
        assert len(paths) == 2 and paths[0].endswith(".html") and paths[1].endswith(".zip"), paths
        page = coordinator.client.get(f"/coordinator/gradio_api/file={paths[0]}")
        assert page.status_code == 200 and name in page.text
        other = names[1 - names.index(name)]
        assert f"report: {other}" not in page.text
        tables = coordinator.client.get(f"/coordinator/gradio_api/file={paths[1]}")
        with zipfile.ZipFile(io.BytesIO(tables.content)) as zf:
            assert any(n.startswith("tables/") and n.endswith(".csv") for n in zf.namelist())
        assert (
            Browser(app_env.url, app_env.cookie()).client.get(f"/coordinator/gradio_api/file={paths[0]}").status_code
            == 403
        )
    written = sorted(p.name for p in reports.iterdir())
    assert any(n.startswith("report-study-1-") for n in written) and any(
        n.startswith("report-study-2-") for n in written
    )
