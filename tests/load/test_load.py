"""Concurrent raters through the real HTTP interface of ``python app.py``: every acknowledged rating is
stored exactly once, on SQLite and on PostgreSQL.

CI runs 8 raters x 20 pairs per backend; ``python benchmarks/run_all.py --only load --raters 32
--per-rater 100`` runs the full 32 x 100 with the same client and the same check. Timings are printed by
the benchmark, never asserted here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from db.models import Rating
from db.session import open_database
from tests.load.client import Behaviour, RaterLog, check_exactly_once, run_raters

RATERS = 8
PER_RATER = 20
MISBEHAVE = Behaviour(double_submit=0.15, retry=0.1, refresh=0.1, stale_tab=0.3, fetch_images=0.1)


@pytest.mark.slow
def test_every_acknowledged_rating_is_stored_exactly_once(load_study: Callable[[int, int], Any]) -> None:
    study = load_study(RATERS, PER_RATER, forked=False)  # the server as a user starts it: python app.py serve
    db_url = study.db_url
    study.server.start()
    logs = run_raters(study.server.url, [RaterLog(t) for t in study.tokens], seed=7, behaviour=MISBEHAVE)

    assert check_exactly_once(db_url, logs, complete=True) == []
    # The misbehaviours really happened, so the check above covers them.
    did = sum((log.did for log in logs), Counter())
    assert min(did[k] for k in ("double_submit", "retry", "refresh", "stale_tab", "fetch_images")) > 0, did
    acks = [a for log in logs for a in log.acks]
    assert len(acks) > RATERS * PER_RATER  # double submits and stale tabs were acknowledged too
    assert len({(a.rater, a.position) for a in acks}) == RATERS * PER_RATER
    assert not any(log.interrupted for log in logs)

    # Positive control: the same check reports a lost rating and an altered one.
    database = open_database(db_url, upgrade=False)
    try:
        with database.session() as session:
            first, second = session.scalars(select(Rating.id).order_by(Rating.id).limit(2)).all()
            session.execute(delete(Rating).where(Rating.id == first))
            session.execute(update(Rating).where(Rating.id == second).values(answers={"confidence": 9}))
    finally:
        database.dispose()
    problems = check_exactly_once(db_url, logs, complete=True)
    assert any("is missing" in p for p in problems), problems
    assert any("stored {" in p for p in problems), problems
