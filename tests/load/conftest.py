"""Fixtures for the load and kill tests: app server subprocesses that always end, and a seeded study.

``load_study(raters, per_rater)`` seeds a study (``tests.load.client.seed_load_study``) and hands back its
server, not started. ``app_server(data_dir, db_url)`` makes an :class:`AppServer` (``python app.py ... serve`` on a free
127.0.0.1 port) that the fixture stops in its teardown, whatever the test did. The database comes from the
``db_url`` fixture of ``tests/conftest.py`` (a SQLite file and, where ``MEDSYNTH_TEST_PG_URL`` is set, a
fresh PostgreSQL database per test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.load.client import AppServer, seed_load_study


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[Callable[..., AppServer]]:
    """Factory ``(data_dir, db_url=None, **kwargs) -> AppServer``; every server made is stopped at teardown."""
    made: list[AppServer] = []

    def make(data_dir: Path, db_url: str | None = None, **kwargs: object) -> AppServer:
        server = AppServer(data_dir, db_url, log_path=tmp_path / f"server-{len(made)}.log", **kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@dataclass(frozen=True)
class LoadStudy:
    """A seeded load study: the database, the raters' link tokens, and its (not yet started) server."""

    db_url: str
    tokens: list[str]
    server: AppServer


@pytest.fixture
def load_study(
    db_url: str, tmp_path: Path, shared_data: Path, app_server: Callable[..., AppServer]
) -> Callable[[int, int], LoadStudy]:
    """Factory ``(raters, per_rater) -> LoadStudy`` on the test's database (SQLite, then PostgreSQL)."""

    def make(raters: int, per_rater: int) -> LoadStudy:
        data_dir = tmp_path / "data"
        tokens = seed_load_study(data_dir, shared_data, raters=raters, per_rater=per_rater, db_url=db_url)
        return LoadStudy(db_url, tokens, app_server(data_dir, db_url))

    return make
