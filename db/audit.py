"""The audit log: who did what in the coordinator console, and when (``audit_log`` table, append-only).

Entries name the action, its target (a study, a rater's name, a job id) and small details. They never hold
a token, a personal link, a cookie or a password: :func:`record_action` drops any detail whose key names one
and refuses a target that looks like a link.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from db.models import AuditEntry

if TYPE_CHECKING:
    from db.session import Database

log = logging.getLogger(__name__)

#: detail keys that are never stored (substrings, case-insensitive)
SECRET_KEYS = ("token", "password", "secret", "cookie", "link", "hash")
MAX_TARGET_CHARS = 300


@dataclass(frozen=True)
class AuditRecord:
    """One audited action."""

    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


def _clean(details: dict[str, Any] | None) -> dict[str, Any]:
    """``details`` without secrets, values as short text (numbers and booleans kept).

    >>> _clean({"study": "pilot", "token": "abc", "new_link": "http://x/?rater=abc", "n": 3})
    {'study': 'pilot', 'n': 3}
    """
    kept: dict[str, Any] = {}
    for key, value in (details or {}).items():
        if any(word in key.lower() for word in SECRET_KEYS):
            continue
        kept[key] = value if isinstance(value, int | float | bool | type(None)) else str(value)[:MAX_TARGET_CHARS]
    return kept


def record_action(
    database: Database,
    action: str,
    *,
    actor: str = "coordinator",
    target: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    """Append one coordinator action to the audit log (secrets in ``details`` are dropped)."""
    text = str(target)[:MAX_TARGET_CHARS]
    if "rater=" in text:  # a personal link carries a token
        raise ValueError("an audit target must not be a personal link")
    with database.session() as session:
        session.add(AuditEntry(actor=actor[:120], action=action[:64], target=text, details=_clean(details)))
    log.info("audit: %s %s %s", actor, action, text)


def recent_actions(database: Database, *, limit: int = 50) -> list[AuditRecord]:
    """The latest audited actions, newest first."""
    with database.session() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit))
        return [AuditRecord(r.at, r.actor, r.action, r.target, dict(r.details or {})) for r in rows]
