"""Fixtures for the load and kill tests: app server subprocesses that always end, and a seeded study.

``app_server(data_dir, db_url)`` makes an :class:`AppServer` (``python app.py ... serve`` on a free
127.0.0.1 port) that the fixture stops in its teardown, whatever the test did. The database comes from the
``db_url`` fixture of ``tests/conftest.py`` (a SQLite file and, where ``MEDSYNTH_TEST_PG_URL`` is set, a
fresh PostgreSQL database per test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.load.client import AppServer


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
