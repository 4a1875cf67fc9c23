"""Seeded batch generation: seeds, batch invariance, resuming, the multi-process split, recording, worker."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from db.jobs import DbJobStore, JobStatus, Lane, MemoryJobStore, Worker
from generation.batch import (
    MAX_SEED,
    DbImageSink,
    GenerationConfig,
    MemorySink,
    WorkItem,
    case_seeds,
    derive_seed,
    drop_done,
    generate_for_dataset,
    generate_images,
    plan_work,
    resolve_params,
    run_generation,
    split_work,
)
from generation.pipelines import LoadedPipeline, PipelineCache, build_spec, load_pipeline
from generation.worker import register_generation_jobs
from tests.generation.conftest import SIZES


@dataclass(frozen=True)
class Case:
    id: int
    key: str
    prompt: str


CASES = [Case(1, "gi/001", "a small polyp"), Case(2, "gi/002", "normal colon"), Case(3, "rad/9", "chest x-ray")]


@pytest.fixture(scope="module")
def folders(tiny_pipeline_folders: dict[str, Path]) -> dict[str, Path]:
    return tiny_pipeline_folders


@pytest.fixture(scope="module")
def loaded(folders: dict[str, Path]) -> dict[str, LoadedPipeline]:
    return {f: load_pipeline(build_spec(f"tiny-{f}", "diffusers", str(folders[f])), device="cpu") for f in SIZES}


def config(family: str, **overrides: object) -> GenerationConfig:
    extra = {"max_sequence_length": 16} if family == "flux" else {}
    base: dict[str, object] = {"steps": 2, "height": SIZES[family], "width": SIZES[family], "call_kwargs": extra}
    base.update(overrides)
    return GenerationConfig(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- seeds


def test_seeds_are_deterministic_distinct_and_stable_under_more_images() -> None:
    assert derive_seed(0, "gi/001", 0) == derive_seed(0, "gi/001", 0)
    four = case_seeds(42, "gi/001", 4)
    assert case_seeds(42, "gi/001", 2) == four[:2]  # --per-case 2 -> 4 keeps the first two images
    assert len(set(four)) == 4 and all(0 <= s <= MAX_SEED for s in four)
    assert four != case_seeds(43, "gi/001", 4)  # base seed matters
    assert four != case_seeds(42, "gi/002", 4)  # case key matters
    # order of cases does not matter: the seed of (case, index) is the same in any plan
    forward = {(w.case_key, w.index): w.seed for w in plan_work(CASES, 3, 7)}
    backward = {(w.case_key, w.index): w.seed for w in plan_work(CASES[::-1], 3, 7)}
    assert forward == backward


@settings(max_examples=25, deadline=None)
@given(keys=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique=True))
def test_seeds_fit_a_signed_32_bit_column(keys: list[str]) -> None:
    for key in keys:
        for seed in case_seeds(2**40, key, 3):
            assert 0 <= seed < 2**31


# ---------------------------------------------------------------------------------------------- splitting


@settings(max_examples=50, deadline=None)
@given(
    n_items=st.integers(min_value=0, max_value=60),
    n_proc=st.integers(min_value=1, max_value=9),
)
def test_split_covers_everything_once(n_items: int, n_proc: int) -> None:
    items = [WorkItem(i // 3, f"k{i // 3}", "p", i % 3, i) for i in range(n_items)]
    shares = [split_work(items, rank, n_proc) for rank in range(n_proc)]
    flat = [item for share in shares for item in share]
    assert len(flat) == len(items)  # no duplicates ...
    assert set(flat) == set(items)  # ... and nothing left out
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


def test_split_rejects_bad_ranks() -> None:
    with pytest.raises(ValueError, match="process_index 2 is outside"):
        split_work([], 2, 2)
    with pytest.raises(ValueError, match="num_processes must be at least 1"):
        split_work([], 0, 0)


def test_processes_sharing_a_sink_make_each_image_once(loaded: dict[str, LoadedPipeline]) -> None:
    sink = MemorySink()
    cfg = config("sd", per_case=3, seed=3, batch_size=2)
    reports = [run_generation(loaded["sd"], CASES, cfg, sink, process_index=r, num_processes=2, progress=False)
               for r in range(2)]  # fmt: skip
    assert sum(r.generated for r in reports) == 9
    expected = {(w.case_id, w.seed) for w in plan_work(CASES, 3, 3)}
    assert sorted((r.case_id, r.seed) for r in sink.records) == sorted(expected)


# ---------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("family", list(SIZES))
def test_batch_size_does_not_change_images(loaded: dict[str, LoadedPipeline], family: str) -> None:
    lp = loaded[family]
    params = resolve_params(lp, config(family))
    prompts, seeds = ["a small polyp", "normal colon", "chest x-ray", "a small polyp"], [11, 12, 13, 14]
    together = generate_images(lp.pipe, prompts, seeds, params, lp.device, output_type="np")
    pairs = zip(prompts, seeds, strict=True)
    alone = np.concatenate([generate_images(lp.pipe, [p], [s], params, lp.device, output_type="np") for p, s in pairs])
    # same noise per image; only float rounding of batched matmuls may differ (far below one 8-bit level)
    assert np.abs(together - alone).max() < 1e-4
    assert np.abs(np.round(together * 255) - np.round(alone * 255)).max() <= 1
    again = generate_images(lp.pipe, prompts, seeds, params, lp.device, output_type="np")
    np.testing.assert_array_equal(together, again)  # same seed, batch and device: bit-identical
    assert not np.allclose(together[0], together[3])  # same prompt, other seed: another image


@pytest.mark.parametrize("family", list(SIZES))
def test_run_is_resumable_and_records_everything(loaded: dict[str, LoadedPipeline], family: str) -> None:
    sink = MemorySink()
    first = run_generation(loaded[family], CASES, config(family, per_case=2, seed=5, batch_size=4), sink,
                           progress=False)  # fmt: skip
    assert (first.planned, first.skipped, first.generated) == (6, 0, 6)
    again = run_generation(loaded[family], CASES, config(family, per_case=2, seed=5), sink, progress=False)
    assert (again.skipped, again.generated) == (6, 0)
    more = run_generation(loaded[family], CASES, config(family, per_case=3, seed=5), sink, progress=False)
    assert (more.skipped, more.generated) == (6, 3)
    assert sorted((r.case_id, r.seed) for r in sink.records) == sorted(
        (w.case_id, w.seed) for w in plan_work(CASES, 3, 5)
    )
    rec = sink.records[0]
    assert rec.image.size == (SIZES[family], SIZES[family]) and rec.steps == 2
    assert rec.device == "cpu" and rec.seconds > 0 and rec.peak_memory_bytes > 0
    p = rec.parameters
    assert p["prompt"] == "a small polyp" and p["case_key"] == "gi/001" and p["index"] == 0 and p["base_seed"] == 5
    assert p["height"] == p["width"] == SIZES[family] and p["batch_size"] == 4 and p["dtype"] == "fp32"
    assert p["scheduler"] and p["pipeline"] and p["seed_scheme"] == "medsynth-seed-v1"
    assert p["peak_memory_kind"] == "cpu_rss"


def test_recorded_image_is_what_the_seed_makes(loaded: dict[str, LoadedPipeline]) -> None:
    sink = MemorySink()
    run_generation(loaded["sd"], CASES[:1], config("sd", seed=9, batch_size=1), sink, progress=False)
    (rec,) = sink.records
    params = resolve_params(loaded["sd"], config("sd", seed=9))
    (image,) = generate_images(loaded["sd"].pipe, [rec.parameters["prompt"]], [rec.seed], params, loaded["sd"].device)
    assert np.array_equal(np.asarray(image), np.asarray(rec.image))


def test_stop_request_ends_the_run_cleanly(loaded: dict[str, LoadedPipeline]) -> None:
    sink, calls = MemorySink(), []
    report = run_generation(loaded["sd"], CASES, config("sd", per_case=2, batch_size=2), sink, progress=False,
                            on_progress=lambda done, total: calls.append((done, total)),
                            should_stop=lambda: len(calls) >= 1)  # fmt: skip
    assert report.stopped and report.generated == 2 and len(sink.records) == 2
    assert calls == [(2, 6)]


def test_step_callbacks_run_but_are_not_recorded(loaded: dict[str, LoadedPipeline]) -> None:
    steps_seen: list[int] = []

    def on_step(_pipe, step, _timestep, tensors):  # type: ignore[no-untyped-def]
        steps_seen.append(step)
        return tensors

    sink = MemorySink()
    cfg = config("sd", call_kwargs={"callback_on_step_end": on_step})
    run_generation(loaded["sd"], CASES[:1], cfg, sink, progress=False)
    assert steps_seen == [0, 1]
    assert sink.records[0].parameters["call_kwargs"] == {}  # JSON-safe: the callable is left out


def test_config_from_job_params() -> None:
    params = {"per_case": 3, "steps": None, "guidance": 2.5, "dataset": "gi", "call_kwargs": None}
    assert GenerationConfig.from_params(params) == GenerationConfig(per_case=3, guidance=2.5)
    assert GenerationConfig.from_params(params, batch_size=1).batch_size == 1


def test_drop_done() -> None:
    items = plan_work(CASES, 2, 0)
    assert drop_done(items, {(items[0].case_id, items[0].seed)}) == items[1:]


# ---------------------------------------------------------------------------------------------- database


@pytest.fixture
def gi_workspace(tmp_path: Path, shared_data: Path, folders: dict[str, Path]):
    from db.generated import register_model
    from db.importers import import_dataset
    from db.workspace import Workspace

    ws = Workspace.open(f"sqlite:///{tmp_path / 'medsynth.sqlite3'}", tmp_path / "data")
    import_dataset(ws.database, ws.store, "csv", shared_data / "gi", name="gi", domain="gi",
                   file_column="file", text_column="caption", limit=2)  # fmt: skip
    spec = build_spec("tiny-sd", "diffusers", str(folders["sd"]))
    with ws.database.session() as session:
        register_model(session, spec.name, kind=spec.kind, source=spec.source, parameters=spec.parameters())
    yield ws
    ws.close()


def test_generate_for_dataset_records_in_the_database_and_resumes(gi_workspace) -> None:
    from sqlalchemy import select

    from db.models import GeneratedImage

    cfg = GenerationConfig(per_case=2, seed=1, steps=2, batch_size=3)
    report = generate_for_dataset(gi_workspace, "gi", "tiny-sd", cfg, device="cpu", progress=False)
    assert (report.planned, report.generated) == (4, 4)
    with gi_workspace.database.session() as session:
        rows = session.scalars(select(GeneratedImage)).all()
        assert len(rows) == 4
        for row in rows:
            assert row.steps == 2 and row.guidance == 7.5 and row.device == "cpu"
            assert row.seconds and row.seconds > 0 and row.peak_memory_bytes and row.peak_memory_bytes > 0
            assert row.parameters["case_key"] == row.case.key and row.parameters["prompt"] == row.case.prompt
            with gi_workspace.store.open(row.image_sha256) as img:
                assert img.size == (32, 32)
    again = generate_for_dataset(gi_workspace, "gi", "tiny-sd", cfg, device="cpu", progress=False)
    assert (again.skipped, again.generated) == (4, 0)
    sink = DbImageSink(gi_workspace.database, gi_workspace.store, rows[0].model_id)
    assert len(sink.done([row.case_id for row in rows])) == 4


def test_unknown_model_or_dataset_is_named(gi_workspace) -> None:
    from db.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no model called 'ghost'"):
        generate_for_dataset(gi_workspace, "gi", "ghost", GenerationConfig(), device="cpu")
    with pytest.raises(NotFoundError, match="no dataset called 'nope'"):
        generate_for_dataset(gi_workspace, "nope", "tiny-sd", GenerationConfig(), device="cpu")


# ---------------------------------------------------------------------------------------------- worker


def test_worker_runs_jobs_off_thread_with_progress_and_failures() -> None:
    seen_threads: list[str] = []
    release = threading.Event()

    def count(params, ctx):  # type: ignore[no-untyped-def]
        seen_threads.append(threading.current_thread().name)
        release.wait(5)
        for done in range(1, params["n"] + 1):
            ctx.report(done, params["n"])
        return {"counted": params["n"]}

    def boom(params, ctx):  # type: ignore[no-untyped-def]
        raise ValueError("height=33 px is not a multiple")

    worker = Worker(MemoryJobStore()).register("count", count).register("boom", boom).start()
    try:
        first = worker.submit("count", {"n": 3})
        queued = worker.submit("count", {"n": 1})
        assert worker.cancel(queued).status == JobStatus.CANCELLED  # still queued behind the first
        failing = worker.submit("boom")
        release.set()
        done = worker.wait(first, timeout=10)
        assert done.status == JobStatus.DONE and done.progress == 1.0 and done.result == {"counted": 3}
        failed = worker.wait(failing, timeout=10)
        assert failed.status == JobStatus.FAILED and "ValueError: height=33" in failed.message
        assert worker.status(queued).status == JobStatus.CANCELLED
        assert seen_threads == ["medsynth-worker-batch"]  # ran on the worker thread, not the caller's
        with pytest.raises(KeyError, match="unknown job kind 'train'"):
            worker.submit("train")
    finally:
        worker.stop(timeout=10)


def test_worker_generates_through_the_db_job_table(gi_workspace) -> None:
    from db.models import Job

    cache = PipelineCache(capacity=1)
    worker = Worker(DbJobStore(gi_workspace.database), workspace=gi_workspace)
    register_generation_jobs(worker, cache)
    worker.start()
    try:
        params = {"dataset": "gi", "model": "tiny-sd", "per_case": 1, "steps": 2, "device": "cpu"}
        job = worker.wait(worker.submit("generate", params), timeout=60)
        assert job.status == JobStatus.DONE, job.message
        assert job.result["generated"] == 2 and job.progress == 1.0
        demo = worker.wait(worker.submit("demo", {"model": "tiny-sd", "prompt": "a polyp", "steps": 2}), timeout=60)
        assert demo.status == JobStatus.DONE, demo.message
        with gi_workspace.store.open(demo.result["sha256"]) as img:
            assert isinstance(img, Image.Image) and img.size == (32, 32)
        assert len(cache.loaded_keys()) == 1  # the demo reused the warm pipeline
        with gi_workspace.database.session() as session:
            row = session.get(Job, job.id)
            assert row is not None and row.status.value == "done" and row.result["generated"] == 2
    finally:
        worker.stop(timeout=10)


def test_a_demo_request_completes_while_a_batch_generation_runs(gi_workspace) -> None:
    """The live lane has its own thread: a demo image is made while a batch generation holds the batch lane."""
    from generation.worker import generate_handler

    cache = PipelineCache(capacity=1)
    worker = Worker(DbJobStore(gi_workspace.database), workspace=gi_workspace)
    shared = register_generation_jobs(worker, cache)
    release, holding = threading.Event(), threading.Event()
    generate = generate_handler(shared)

    def long_generation(params, ctx):  # type: ignore[no-untyped-def]
        holding.set()  # a real generation that takes as long as the test wants
        release.wait(60)
        return generate(params, ctx)

    worker.register("long-generate", long_generation, Lane.BATCH).start()
    try:
        params = {"dataset": "gi", "model": "tiny-sd", "per_case": 1, "steps": 2, "device": "cpu"}
        batch = worker.submit("long-generate", params)
        queued_behind = worker.submit("generate", params)
        assert holding.wait(30)
        demo = worker.wait(worker.submit("demo", {"model": "tiny-sd", "prompt": "a polyp", "steps": 2}), timeout=60)
        assert demo.status == JobStatus.DONE, demo.message
        assert worker.status(batch).status == JobStatus.RUNNING  # the batch job was still running
        assert worker.status(queued_behind).status == JobStatus.QUEUED  # batch jobs run one at a time
        release.set()
        assert worker.wait(batch, timeout=60).status == JobStatus.DONE
        assert worker.wait(queued_behind, timeout=60).status == JobStatus.DONE
    finally:
        release.set()
        worker.stop(timeout=30)


def test_worker_restart_fails_interrupted_jobs_and_runs_queued(tmp_path: Path) -> None:
    store = MemoryJobStore()
    interrupted = store.create("count", {})
    store.update(interrupted.id, status=JobStatus.RUNNING)
    waiting = store.create("count", {})
    worker = Worker(store).register("count", lambda params, ctx: {"ok": True}).start()
    try:
        assert worker.wait(waiting.id, timeout=10).status == JobStatus.DONE
        assert store.get(interrupted.id).status == JobStatus.FAILED
    finally:
        worker.stop(timeout=10)


def test_two_workers_on_one_database_share_jobs_without_duplicates(tmp_path: Path) -> None:
    """Several servers on one database: each job runs once, and a live server's running job survives
    another server's restart (only stale jobs are failed)."""
    import threading
    from datetime import timedelta

    from db.models import Job
    from db.workspace import Workspace

    ws = Workspace.open(f"sqlite:///{tmp_path / 'jobs.sqlite3'}", tmp_path / "data")
    runs: list[int] = []
    lock = threading.Lock()

    def count(params: dict, ctx: object) -> dict:
        with lock:
            runs.append(params["n"])
        return {}

    store = DbJobStore(ws.database)
    alive = store.create("count", {"n": -1})
    assert store.claim(alive.id, "other-server") and not store.claim(alive.id, "third-server")
    stale = store.create("count", {"n": -2})
    assert store.claim(stale.id, "dead-server")
    with ws.database.session() as session:
        session.get(Job, stale.id).heartbeat_at -= timedelta(hours=1)
    ids = [store.create("count", {"n": n}).id for n in range(12)]
    workers = [Worker(DbJobStore(ws.database)).register("count", count).start() for _ in range(2)]
    try:
        for job_id in ids:
            assert workers[0].wait(job_id, timeout=30).status == JobStatus.DONE
        assert sorted(runs) == list(range(12))  # each job ran exactly once
        assert store.get(alive.id).status == JobStatus.RUNNING  # the live server's job is untouched
        assert store.get(stale.id).status == JobStatus.FAILED
    finally:
        for worker in workers:
            worker.stop(timeout=10)
        ws.close()
