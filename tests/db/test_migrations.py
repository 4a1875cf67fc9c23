"""Alembic: an empty database is upgraded to the newest schema; the schema matches the models."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from db.models import Base
from db.session import MIGRATIONS_DIR, make_engine, open_database


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()  # type: ignore[return-value]


def test_upgrade_from_empty_database(db_url: str) -> None:
    make_engine(db_url).connect().close()  # an empty database, as an old install would leave
    database = open_database(db_url)
    with database.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    database.dispose()
    open_database(db_url).dispose()  # opening again is a no-op upgrade


def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    database = open_database(url)
    con = sqlite3.connect(tmp_path / "old.sqlite3")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    database.dispose()


def test_foreign_keys_enforced(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'fk.sqlite3'}")
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


def test_database_at_an_older_revision_is_upgraded_on_open(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import inspect

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = make_engine(db_url)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")  # what an install of the first release left
    assert "owner" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    engine.dispose()
    database = open_database(db_url)
    with database.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    assert {"owner", "heartbeat_at"} <= {c["name"] for c in inspect(database.engine).get_columns("jobs")}
    database.dispose()


def test_head_to_head_columns_downgrade_and_upgrade(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import inspect

    url = f"sqlite:///{tmp_path / 'h2h.sqlite3'}"
    open_database(url).dispose()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = make_engine(url)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0004")  # to just before the head-to-head migration (0005)
    assert "second_sha256" not in {c["name"] for c in inspect(engine).get_columns("study_items")}
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
    assert "second_sha256" in {c["name"] for c in inspect(engine).get_columns("study_items")}
    engine.dispose()
