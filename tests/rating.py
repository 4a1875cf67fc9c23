"""A rater working through their list in tests: the next unrated pair until there is none."""

from __future__ import annotations

from collections.abc import Iterator

from db.raters import rater_by_token
from db.ratings import PairView, next_pair
from db.session import Database


def unrated_pairs(database: Database, token: str) -> Iterator[tuple[int, PairView]]:
    """(rater id, pair) for each pair the rater of ``token`` is shown next; the caller rates it before
    asking for the following one (an unrated pair is shown again)."""
    while True:
        with database.session() as session:
            rater = rater_by_token(session, token)
            assert rater is not None, "no rater with that token"
            pair = next_pair(session, rater)
            rater_id = rater.id
        if pair is None:
            return
        yield rater_id, pair
