"""Small named values the app keeps in the database (``app_settings``): the cookie key, the coordinator
password hash, the public URL the server was last started with."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from db.models import AppSetting

PUBLIC_URL_SETTING = "public_base_url"


def get_setting(session: Session, key: str) -> str | None:
    """The stored value of ``key``, or None."""
    row = session.get(AppSetting, key)
    return row.value if row is not None else None


def put_setting(session: Session, key: str, value: str) -> None:
    """Store ``value`` under ``key`` (replacing any earlier value)."""
    row = session.get(AppSetting, key)
    if row is None:
        session.add(AppSetting(key=key, value=value))
    else:
        row.value = value


def get_or_create_setting(session: Session, key: str, make: Callable[[], str]) -> str:
    """The value of ``key``; if there is none, ``make()`` is stored and returned."""
    value = get_setting(session, key)
    if value is None:
        value = make()
        session.add(AppSetting(key=key, value=value))
    return value
