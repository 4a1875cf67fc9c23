"""A rater completes a study in a real browser, by keyboard only: refresh midway, pause, double submit."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.models import Rating

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOTS = Path("/tmp/medsynth-shots")


def ratings(app_env: Any, rater_pk: int) -> list[Rating]:
    with app_env.workspace.database.session() as session:
        return list(session.scalars(select(Rating).where(Rating.rater_id == rater_pk).order_by(Rating.id)))


def test_rater_completes_a_study_by_keyboard(app_env: Any, open_rater_page: Any, tmp_path: Path) -> None:
    rater = app_env.add_rater("browser-study")
    view = open_rater_page(rater.link)
    page = view.page
    view.wait_pair(1, 4)
    assert page.url.rstrip("/") == app_env.url and rater.token not in page.url  # the token left the URL bar
    assert page.locator("#ms-keys").is_visible() and "Enter" in page.locator("#ms-keys").inner_text()

    view.answer(("4", "3", "2"))  # part of pair 1, then a screenshot of the layout at 1366x768
    shot = tmp_path / "rater-1366x768.png"
    page.screenshot(path=str(shot))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SHOTS / shot.name)
    page.screenshot(path=str(SHOTS / "rater-1366x768-full.png"), full_page=True)
    view.answer(("5", "l", "4"))
    checked = page.eval_on_selector_all("#ms-form input[type=radio]:checked", "els => els.map(e => e.value)")
    assert len(checked) == 6
    view.submit()
    view.wait_pair(2, 4)
    assert page.locator("#ms-form input[type=radio]:checked").count() == 0  # a blank form for the next pair

    view.answer()
    view.submit()
    view.wait_pair(3, 4)
    page.reload()  # refresh midway: the rater continues at the next unrated pair
    view.wait_pair(3, 4)
    assert len(ratings(app_env, rater.rater_pk)) == 2

    view.submit()  # nothing answered: refused, every required question highlighted
    page.locator(".ms-missing").first.wait_for()
    assert page.locator(".ms-q.ms-missing").count() == 6
    assert "Please answer" in page.locator("#ms-message").inner_text()
    assert len(ratings(app_env, rater.rater_pk)) == 2

    page.keyboard.press("p")  # pause, then resume by keyboard
    view.wait_text("Paused after 2 of 4 pairs")
    assert not page.locator("#ms-form").is_visible()
    page.keyboard.press("Enter")
    view.wait_pair(3, 4)
    assert page.locator(".ms-q.ms-missing").count() == 0

    page.keyboard.press("]")  # full-size view of the right image, closed with Esc
    page.locator("#ms-zoom img").wait_for()
    page.wait_for_function("document.querySelector('#ms-zoom img').naturalWidth > 0")
    page.keyboard.press("Escape")
    assert page.locator("#ms-zoom").count() == 0
    view.answer()
    view.submit()
    view.wait_pair(4, 4)

    view.answer(("1", "1", "5", "5", "r", "5"))
    page.keyboard.press("c")
    page.keyboard.type("sharp, convincing mucosa")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")  # a double submit: Enter twice and a click on the button
    page.keyboard.press("Enter")
    page.evaluate("() => document.getElementById('ms-submit') && document.getElementById('ms-submit').click()")
    view.wait_text("You have rated every pair")

    stored = ratings(app_env, rater.rater_pk)
    assert len(stored) == 4 and len({r.assignment_id for r in stored}) == 4
    last = stored[-1].answers
    assert last["which_generated"] == "right" and last["realism_left"] == 1 and last["confidence"] == 5
    assert last["comment"] == "sharp, convincing mucosa"
    assert stored[0].answers["realism_left"] == 4 and stored[0].answers["which_generated"] == "left"
    assert all(r.response_ms_client is not None and r.response_ms_client > 0 for r in stored)
    assert all(r.response_ms_server is not None and r.response_ms_server > 0 for r in stored)
    page.reload()  # the thank-you screen stays
    view.wait_text("You have rated every pair")
