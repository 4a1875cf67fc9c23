"""Fixtures for the load and kill tests: app server subprocesses that always end, and a seeded study.

``load_study(raters, per_rater)`` seeds a study (``tests.load.client.seed_load_study``) and hands back its
server, not started. ``app_server(data_dir, db_url)`` makes an :class:`AppServer` (``python app.py ... serve`` on a free
127.0.0.1 port, forked from the session's :class:`Launcher` unless ``forked=False``) that the fixture stops in
its teardown, whatever the test did. The database comes from the
``db_url`` fixture of ``tests/conftest.py`` (a SQLite file and, where ``MEDSYNTH_TEST_PG_URL`` is set, a
fresh PostgreSQL database per test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.load.client import AppServer, Launcher, seed_load_study


@pytest.fixture(scope="session")
def launchers() -> Iterator[Callable[[Sequence[str]], Launcher]]:
    """``launchers(modules)``: one :class:`~tests.load.client.Launcher` per module list and test process. The
    kill tests fork their servers and generation runs from them, so each restart skips 5-8 s of imports (the
    load test starts ``python app.py serve`` as a user does)."""
    made: dict[tuple[str, ...], Launcher] = {}

    def get(modules: Sequence[str]) -> Launcher:
        if tuple(modules) not in made:
            made[tuple(modules)] = Launcher(modules)
        return made[tuple(modules)]

    yield get
    for launcher in made.values():
        launcher.close()


@pytest.fixture
def app_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., AppServer]]:
    """Factory ``(data_dir, db_url=None, forked=True, **kwargs) -> AppServer``: forked from the launcher, or
    with ``forked=False`` started as ``python app.py ...`` in a new interpreter. Every server made is stopped
    at teardown."""
    made: list[AppServer] = []

    def make(data_dir: Path, db_url: str | None = None, forked: bool = True, **kwargs: object) -> AppServer:
        if forked:
            kwargs["launcher"] = request.getfixturevalue("launchers")(Launcher.SERVE)
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
    """Factory ``(raters, per_rater, forked=True) -> LoadStudy`` on the test's database (SQLite, then
    PostgreSQL); ``forked`` as in ``app_server``."""

    def make(raters: int, per_rater: int, forked: bool = True) -> LoadStudy:
        data_dir = tmp_path / "data"
        tokens = seed_load_study(data_dir, shared_data, raters=raters, per_rater=per_rater, db_url=db_url)
        return LoadStudy(db_url, tokens, app_server(data_dir, db_url, forked=forked))

    return make
