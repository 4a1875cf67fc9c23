"""Answers are bound to their pair: fast typing from the instant a pair appears stores every answer under the
question and pair it was meant for; answers given for another display are refused; stale highlights clear;
a second tab on a rated pair is told so, shown the stored answers, and the export counts the conflict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.export import export_study
from db.models import Assignment, Rating
from db.questions import DEFAULT_QUESTIONS
from evalapp import rater_view

N_PAIRS = 20
KEY_GAP_MS = 30
FULL = {
    "realism_left": 4,
    "accuracy_left": 3,
    "realism_right": 2,
    "accuracy_right": 5,
    "which_generated": "right",
    "confidence": 4,
}
TOKEN_INDEX = 5 + len(DEFAULT_QUESTIONS.questions)


def intended(n: int) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Keys for pair ``n`` (0-based) and the answers they mean: every pair differs from its neighbours."""
    values = [1 + (n + k) % 5 for k in range(5)]
    side = "l" if n % 2 else "r"
    keys = (str(values[0]), str(values[1]), str(values[2]), str(values[3]), side, str(values[4]))
    answers = {
        "realism_left": values[0],
        "accuracy_left": values[1],
        "realism_right": values[2],
        "accuracy_right": values[3],
        "which_generated": "left" if side == "l" else "right",
        "confidence": values[4],
    }
    return keys, answers


def stored(app_env: Any, rater_pk: int) -> list[tuple[int, dict[str, Any]]]:
    """(position, answers) of the rater's ratings, in pair order."""
    with app_env.workspace.database.session() as session:
        rows = session.execute(
            select(Assignment.position, Rating.answers)
            .join(Assignment, Rating.assignment_id == Assignment.id)
            .where(Rating.rater_id == rater_pk)
            .order_by(Assignment.position)
        ).all()
    return [(int(p), dict(a)) for p, a in rows]


@pytest.mark.browser
@pytest.mark.slow
def test_fast_typing_from_the_instant_a_pair_appears_stores_every_answer_where_meant(
    app_env: Any, open_rater_page: Any
) -> None:
    typed = 0
    while typed < N_PAIRS:  # the fixture study's raters have 10 pairs each: as many raters as needed
        rater = app_env.add_rater("pilot-study")
        view = open_rater_page(rater.link, 1440, 900)
        page = view.page
        page.wait_for_function("document.querySelector('#ms-progress')", polling="raf")
        total = int(view.progress().split(" of ")[1])
        if hasattr(view, "close_instructions"):
            view.wait_pair(1, total)  # closes the start screen; later pairs are typed into as they appear
        for n in range(total):
            page.wait_for_function(
                "([label]) => document.querySelector('#ms-progress')?.textContent.trim() === label",
                arg=[f"Pair {n + 1} of {total}"],
                polling="raf",
                timeout=20_000,
            )
            keys, _ = intended(typed + n)
            for key in (*keys, "Enter"):
                page.keyboard.press(key)
                page.wait_for_timeout(KEY_GAP_MS)
        view.wait_text("You have rated every pair")
        rows = stored(app_env, rater.rater_pk)
        assert len(rows) == total
        wrong = [
            (typed + n + 1, {k: answers.get(k) for k in expected}, expected)
            for n, ((_, answers), (_, expected)) in enumerate(
                zip(rows, [intended(typed + i) for i in range(total)], strict=True)
            )
            if {k: answers.get(k) for k in expected} != expected
        ]
        assert wrong == []
        typed += total


@pytest.mark.browser
@pytest.mark.slow
def test_stale_highlights_clear_as_answers_arrive(app_env: Any, open_rater_page: Any) -> None:
    rater = app_env.add_rater("browser-study")
    view = open_rater_page(rater.link, 1920, 1080)
    page = view.page
    view.wait_pair(1, 4)
    view.submit()
    page.locator(".ms-q.ms-missing").first.wait_for()
    assert page.locator(".ms-q.ms-missing").count() == 6
    view.answer(("4", "3"))
    page.wait_for_function("document.querySelectorAll('.ms-q.ms-missing').length === 4")
    assert page.locator("#q-realism_left.ms-missing").count() == 0
    view.answer(("2", "5", "l", "4"))
    page.wait_for_function("document.querySelectorAll('.ms-q.ms-missing').length === 0")
    assert "Please answer" not in page.locator("#ms-message").inner_text()


def test_answers_given_for_another_display_are_refused(app_env: Any) -> None:
    rater = app_env.add_rater()
    request = app_env.request(app_env.cookie(rater.token))
    first = rater_view.handle_load(request)
    token = first[TOKEN_INDEX]
    display = rater_view.read_display_token(token)
    assert display is not None and f'data-display="{display.nonce}"' in first[2]
    values = [FULL.get(q.key) for q in DEFAULT_QUESTIONS.questions]
    for answered_for in ("another-display", ""):
        updates = rater_view.handle_submit(request, token, *values, "", "", answered_for)
        assert "given for another pair" in updates[-2] and "Pair 1 of" in updates[2]
        assert updates[TOKEN_INDEX] != token  # shown again under a new display: the form is blank
        assert stored(app_env, rater.rater_pk) == []
    updates = rater_view.handle_submit(request, token, *values, "", "", display.nonce)
    assert "Pair 2 of" in updates[2]
    assert next(a for _, a in stored(app_env, rater.rater_pk))["realism_left"] == 4


def test_a_second_tab_is_told_the_pair_was_rated_and_shown_the_stored_answers(app_env: Any, tmp_path: Path) -> None:
    rater = app_env.add_rater()
    cookie = app_env.cookie(rater.token)
    tab1, tab2 = app_env.request(cookie), app_env.request(cookie)
    token1 = rater_view.handle_load(tab1)[TOKEN_INDEX]
    token2 = rater_view.handle_load(tab2)[TOKEN_INDEX]  # both tabs show pair 1
    values1 = [{**FULL, "realism_left": 1}.get(q.key) for q in DEFAULT_QUESTIONS.questions]
    values2 = [{**FULL, "realism_left": 5}.get(q.key) for q in DEFAULT_QUESTIONS.questions]
    one = rater_view.handle_submit(tab1, token1, *values1, "", "", rater_view.read_display_token(token1).nonce)  # type: ignore[union-attr]
    assert "already rated" not in one[-2]
    two = rater_view.handle_submit(tab2, token2, *values2, "", "", rater_view.read_display_token(token2).nonce)  # type: ignore[union-attr]
    assert "already rated in another tab or window" in two[-2]
    assert "Realism of the left image: 1 (Clearly artificial)" in two[-2]
    assert "Pair 2 of" in two[2]  # moves on, having said so
    rows = stored(app_env, rater.rater_pk)
    assert len(rows) == 1 and rows[0][1]["realism_left"] == 1
    again = rater_view.handle_submit(tab2, token2, *values2, "", "", rater_view.read_display_token(token2).nonce)  # type: ignore[union-attr]
    assert "already rated in another tab or window" in again[-2]  # a retry is told again, counted once
    with app_env.workspace.database.session() as session:
        export_study(session, "pilot-study", tmp_path)
    meta = json.loads((tmp_path / "study.json").read_text())
    assert meta["rating_conflicts"] >= 1
    with app_env.workspace.database.session() as session:
        from db.models import RatingConflict

        conflicts = list(session.scalars(select(RatingConflict).where(RatingConflict.rater_id == rater.rater_pk)))
    assert len(conflicts) == 1 and conflicts[0].answers["realism_left"] == 5
