"""Throw-away PostgreSQL databases for tests (the server is named by ``MEDSYNTH_TEST_PG_URL``)."""

from __future__ import annotations

PG_ADMIN_URL_ENV = "MEDSYNTH_TEST_PG_URL"


def fresh_postgres_url(admin_url: str, name: str) -> str:
    """Create an empty database ``name`` on the server of ``admin_url`` and return its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres(admin_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
