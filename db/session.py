"""Engines and sessions: SQLite (WAL, foreign keys, busy timeout) by default, any SQLAlchemy URL otherwise.

``open_database`` upgrades the schema to the newest Alembic revision, so an older database file is
brought up to date when it is opened.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 15_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite files get WAL, ``foreign_keys=ON`` and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates it on an empty database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


@dataclass
class Database:
    """An opened, up-to-date database: an engine and a session factory."""

    engine: Engine
    sessionmaker: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self.sessionmaker() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _shown(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a malformed URL)"


def open_database(url: str, *, upgrade: bool = True) -> Database:
    """Open ``url``, upgrade its schema, and return a :class:`Database`.

    Raises
    ------
    DatabaseUnavailable
        For a malformed URL, a missing driver, or a server that refuses or does not answer.
    """
    try:
        engine = make_engine(url)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError, OSError) as exc:  # bad URL, driver or folder
        raise DatabaseUnavailable(f"cannot open database {_shown(url)}: {exc}") from exc
    if upgrade:
        try:
            upgrade_schema(engine)
        except (OperationalError, InterfaceError) as exc:  # the server is down, refuses us, or the file is unusable
            engine.dispose()
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise DatabaseUnavailable(f"cannot connect to database {_shown(url)}: {reason}") from exc
    log.info("opened database %s", _shown(url))
    return Database(engine=engine, sessionmaker=sessionmaker(engine, expire_on_commit=False))
