"""Shared pytest fixtures: offline environment, paths to the real samples, a fresh data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pg import PG_ADMIN_URL_ENV, drop_postgres, fresh_postgres_url

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `-n 2` each worker (and each app process it starts) gets one core's worth of math threads: two
    # workers with two threads each on two cores would contend (torch's and BLAS's threads spin while they wait).
    for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real GI / radiology / MRMC samples, read in place (never copied into the repo)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real samples not found at {SHARED_DATA}; the checkout must sit beside shared/")
    return SHARED_DATA


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh, empty database: a SQLite file, and (where ``MEDSYNTH_TEST_PG_URL`` names a server, as in
    CI) a new PostgreSQL database per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'medsynth.sqlite3'}"
        return
    admin = os.environ.get(PG_ADMIN_URL_ENV)
    if not admin:
        pytest.skip(f"PostgreSQL variant: set {PG_ADMIN_URL_ENV} (.ci/run starts a server and sets it)")
    import uuid

    name = f"medsynth_test_{uuid.uuid4().hex[:12]}"
    yield fresh_postgres_url(admin, name)
    drop_postgres(admin, name)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of the live app on one backend (``app_env[sqlite]``, ``app_env[postgresql]``) runs on one
    pytest-xdist worker (``-n 2 --dist loadgroup``), in the order a serial run has: the app, its data and its
    browser are built once per backend. Runs before xdist reads the groups; a run without ``-n`` ignores them."""
    for item in items:
        params = getattr(item, "callspec", None)
        backend = params.params.get("app_env") if params is not None else None
        if backend is not None:
            item.add_marker(pytest.mark.xdist_group(f"app_env-{backend}"))


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_slow_first(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` outside the app groups (server kills, load, training) come first, so that xdist
    hands them out first and no worker is left running a long test alone at the end. Runs after pytest has
    grouped the tests by parametrised session fixtures; the order within each part is kept."""
    def in_app_group(item: pytest.Item) -> bool:
        group = item.get_closest_marker("xdist_group")
        return group is not None and str(group.args[0] if group.args else "").startswith("app_env-")

    slow = [i for i in items if i.get_closest_marker("slow") and not in_app_group(i)]
    if slow:
        chosen = set(map(id, slow))
        items[:] = slow + [i for i in items if id(i) not in chosen]
