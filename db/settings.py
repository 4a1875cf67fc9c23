"""Where MedSynth keeps its data: the database URL and the data folder (media store, exports)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db.session import Database

DEFAULT_DATA_DIR = "./medsynth-data"


@dataclass(frozen=True)
class Settings:
    """Resolved locations. ``db_url`` defaults to a SQLite file inside ``data_dir``."""

    data_dir: Path
    db_url: str

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @classmethod
    def resolve(cls, db_url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> Settings:
        """Resolve from explicit values, then ``MEDSYNTH_DB`` / ``MEDSYNTH_DATA``, then the defaults."""
        data = Path(data_dir or os.environ.get("MEDSYNTH_DATA") or DEFAULT_DATA_DIR).expanduser().resolve()
        url = db_url or os.environ.get("MEDSYNTH_DB") or f"sqlite:///{data / 'medsynth.sqlite3'}"
        return cls(data_dir=data, db_url=url)


# ------------------------------------------------------------------------------------------ stored settings
# Key/value settings kept in the database (``app_settings``): the cookie-signing secret, the coordinator
# password's Argon2 hash and the live-demo switch. Every read and write of that table is here.

SECRET_SETTING = "session_secret"
PASSWORD_SETTING = "coordinator_password_hash"
DEMO_SETTING = "live_demo_open"
#: the address `serve` last ran at: `rater add` / `rater link` print links with it
PUBLIC_URL_SETTING = "public_base_url"
PASSWORD_ENV = "MEDSYNTH_COORDINATOR_PASSWORD"
MIN_PASSWORD_CHARS = 8


def get_setting(database: Database, key: str) -> str | None:
    """The stored value of ``key`` (None if unset)."""
    from db.models import AppSetting

    with database.session() as session:
        row = session.get(AppSetting, key)
        return row.value if row is not None else None


def set_setting(database: Database, key: str, value: str) -> None:
    """Store ``value`` under ``key`` (replacing any earlier value)."""
    from db.models import AppSetting

    with database.session() as session:
        row = session.get(AppSetting, key)
        if row is None:
            session.add(AppSetting(key=key, value=value))
        else:
            row.value = value


def load_or_create_secret(database: Database) -> bytes:
    """The app's cookie-signing key, created once and kept in the database so cookies survive restarts."""
    import secrets

    from db.models import AppSetting

    with database.session() as session:
        row = session.get(AppSetting, SECRET_SETTING)
        if row is None:
            row = AppSetting(key=SECRET_SETTING, value=secrets.token_hex(32))
            session.add(row)
        return bytes.fromhex(row.value)


def coordinator_password_hash(database: Database) -> str | None:
    """The stored Argon2 hash of the coordinator password (None if none was set)."""
    return get_setting(database, PASSWORD_SETTING) or None


def set_coordinator_password(database: Database, password: str) -> None:
    """Store an Argon2 hash of the coordinator password (replacing any earlier one).

    Raises
    ------
    InputError
        If the password is shorter than ``MIN_PASSWORD_CHARS``.
    """
    from argon2 import PasswordHasher

    from db.errors import InputError

    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise InputError(f"the coordinator password must have at least {MIN_PASSWORD_CHARS} characters")
    set_setting(database, PASSWORD_SETTING, PasswordHasher().hash(password))


def demo_is_open(database: Database) -> bool:
    """Whether the coordinator leaves the live demo open (the default)."""
    return get_setting(database, DEMO_SETTING) != "0"


def set_demo_open(database: Database, is_open: bool) -> None:
    """Open or close the live demo for everyone."""
    set_setting(database, DEMO_SETTING, "1" if is_open else "0")
