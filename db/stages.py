"""Compare's stage cache: a finished stage's fingerprint and outputs, so a rerun of a comparison skips it.

Its own table (``compare_stages``), not finished rows in ``jobs``: the console lists only real jobs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import CompareStage, utcnow

if TYPE_CHECKING:
    from db.session import Database


def _row(session: Session, comparison: str, stage: str, fingerprint: str) -> CompareStage | None:
    return session.scalar(
        select(CompareStage).where(
            CompareStage.comparison == comparison, CompareStage.stage == stage, CompareStage.fingerprint == fingerprint
        )
    )


def find_stage(database: Database, comparison: str, stage: str, fingerprint: str) -> dict[str, Any] | None:
    """The outputs of ``stage`` of ``comparison`` if it finished with this ``fingerprint``, else None."""
    with database.session() as session:
        row = _row(session, comparison, stage, fingerprint)
        return dict(row.outputs) if row is not None else None


def record_stage(
    database: Database, comparison: str, stage: str, fingerprint: str, outputs: dict[str, Any], *, seconds: float
) -> None:
    """Record a finished stage (a rerun with the same fingerprint replaces the earlier outputs)."""
    plain = json.loads(json.dumps(outputs, default=str))  # paths and numbers as JSON can store them
    with database.session() as session:
        row = _row(session, comparison, stage, fingerprint)
        if row is None:
            session.add(CompareStage(comparison=comparison, stage=stage, fingerprint=fingerprint, outputs=plain,
                                     seconds=seconds, finished_at=utcnow()))  # fmt: skip
        else:
            row.outputs, row.seconds, row.finished_at = plain, seconds, utcnow()
