"""The practice block in the rater view: practice pairs first with feedback, then the study without it."""

# ruff: noqa: E501  (the in-page scripts are kept on one line each)

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from db.export import ratings_frame
from db.models import Assignment, ItemKind, Rating, Study, StudyItem
from db.studies import create_study
from evalapp import rater_view
from evalapp.auth import Identity, Role
from evalapp.rater_view import ScreenKind

PRACTICE_STUDY = "practice-study"
ANSWERS = {"realism_left": 4, "accuracy_left": 3, "realism_right": 2, "accuracy_right": 5,
           "which_generated": "left", "confidence": 4}  # fmt: skip


def practice_study(app_env: Any) -> str:
    """One real pair per model (each model on its own case), two practice pairs from the 6 other cases."""
    with app_env.workspace.database.session() as session:
        if session.scalar(select(Study.id).where(Study.name == PRACTICE_STUDY)) is None:
            models = '"Zephyrine-Diffusion-7", "Quokkanet-GAN-3"'
            create_study(
                session,
                app_env.workspace.store,
                f'name = "{PRACTICE_STUDY}"\nseed = 4\ndatasets = ["gi-leakcheck-set"]\nmodels = [{models}]\n'
                "cases_per_model = 1\nraters_per_item = 1\nrater_slots = 1\npractice_pairs = 2\n"
                'title = "Practice study"\n[display]\nsize = 384\nfit = "square"\n',
            )
    return PRACTICE_STUDY


def generated_side_at(app_env: Any, rater_pk: int, position: int) -> str:
    with app_env.workspace.database.session() as session:
        side = session.scalar(
            select(StudyItem.generated_side)
            .join(Assignment, Assignment.item_id == StudyItem.id)
            .where(Assignment.rater_id == rater_pk, Assignment.position == position)
        )
    return str(side.value)


def flags(app_env: Any, rater_pk: int) -> list[bool]:
    """Per stored rating of the rater, in order: whether it is flagged practice."""
    with app_env.workspace.database.session() as session:
        kinds = session.scalars(
            select(StudyItem.kind).join(Rating, Rating.item_id == StudyItem.id).where(Rating.rater_id == rater_pk)
            .order_by(Rating.id)
        )  # fmt: skip
        return [k == ItemKind.PRACTICE for k in kinds]


def test_practice_feedback_then_the_study_without_it(app_env: Any, leak_scanner: Any) -> None:
    rater = app_env.add_rater(practice_study(app_env))
    db = app_env.workspace.database
    who = Identity(Role.RATER, rater.rater_pk)
    screen = rater_view.show_next(db, rater.rater_pk)
    assert 'data-first="1"' in rater_view.intro_html(screen) and "The first 2 pairs are practice" in (
        rater_view.intro_html(screen)
    )
    for number in (1, 2):
        assert screen.kind == ScreenKind.PAIR and screen.practice_number == number
        assert f"Practice pair {number} of 2" in rater_view.header_html(screen) and screen.done == 0
        page = rater_view.header_html(screen) + rater_view.image_html(screen, "left") + rater_view.image_html(screen, "right")
        assert leak_scanner.scan_dom(page) == []  # a practice pair is blinded like a real one until answered
        position = rater_view.read_display_token(screen.display_token).position  # type: ignore[union-attr]
        outcome = rater_view.submit(db, who, screen.display_token, ANSWERS, answered_for=screen.display_id)
        feedback = outcome.screen
        assert feedback is not None and feedback.kind == ScreenKind.FEEDBACK
        side = generated_side_at(app_env, rater.rater_pk, position)
        assert feedback.feedback_generated == side and f"The generated image was the {side} image" in feedback.message
        assert ("correct" if side == "left" else "not correct") in feedback.message
        assert ("last practice pair" in feedback.message) == (number == 2)
        shown = rater_view.status_html(feedback)
        assert f"{side.title()} image: <b>generated</b>" in shown and shown.count("<img") == 2
        label = "Start the study (Enter)" if number == 2 else "Continue (Enter)"
        assert rater_view.resume_update(feedback)["value"] == label
        screen = rater_view.show_next(db, rater.rater_pk)  # Continue (or a refresh)
    assert screen.kind == ScreenKind.PAIR and screen.practice_number == 0 and (screen.number, screen.total) == (1, 2)
    assert 'data-first="0"' in rater_view.intro_html(screen)  # no start screen again after the practice
    outcome = rater_view.submit(db, who, screen.display_token, ANSWERS, answered_for=screen.display_id)
    assert outcome.screen is not None and outcome.screen.kind == ScreenKind.PAIR and outcome.screen.number == 2
    assert "generated image was" not in outcome.screen.notice
    assert flags(app_env, rater.rater_pk) == [True, True, False]


FEEDBACK_WATCH = """() => { window.msFeedbackSeen = false;
  new MutationObserver(() => { if (document.querySelector('#ms-feedback')) window.msFeedbackSeen = true; })
    .observe(document.body, { subtree: true, childList: true }); }"""


def wait_label(page: Any, label: str) -> None:
    page.wait_for_function(
        """([label]) => { const p = document.querySelector('#ms-progress');
            const imgs = [...document.querySelectorAll('.ms-img')];
            return p && p.textContent.trim() === label && imgs.length === 2
              && imgs.every(i => i.complete && i.naturalWidth > 0) && window.msReadyFor === imgs[0].getAttribute('src'); }""",
        arg=[label],
        timeout=20_000,
    )


@pytest.mark.browser
@pytest.mark.slow
def test_rater_does_the_practice_with_feedback_then_the_study(app_env: Any, open_rater_page: Any) -> None:
    rater = app_env.add_rater(practice_study(app_env))
    view = open_rater_page(rater.link, 1440, 900)
    page = view.page
    intro = page.locator("#ms-intro")
    intro.wait_for(state="visible")  # the instructions come before the practice
    assert "The first 2 pairs are practice" in intro.inner_text()
    page.keyboard.press("Enter")
    intro.wait_for(state="hidden")
    for number in (1, 2):
        wait_label(page, f"Practice pair {number} of 2")
        if number == 2:  # a refresh during the practice resumes it, without the start screen
            page.reload()
            wait_label(page, "Practice pair 2 of 2")
            assert not intro.is_visible()
        view.answer()
        view.submit()
        feedback = page.locator("#ms-feedback")
        feedback.wait_for(state="visible")
        side = generated_side_at(app_env, rater.rater_pk, number - 3)
        assert f"The generated image was the {side} image" in feedback.inner_text()
        assert feedback.get_attribute("data-generated") == side
        page.wait_for_function(
            "[...document.querySelectorAll('#ms-feedback img')].filter(i => i.complete && i.naturalWidth > 0).length === 2"
        )
        button = page.locator("#ms-resume")
        assert button.is_visible() and ("Start the study" if number == 2 else "Continue") in button.inner_text()
        assert "last practice pair" in feedback.inner_text() or number == 1
        page.keyboard.press("Enter")
    view.wait_pair(1, 2)  # the study, its own progress: practice is not counted in it
    assert not intro.is_visible()
    page.evaluate(FEEDBACK_WATCH)
    view.answer()
    view.submit()
    view.wait_pair(2, 2)
    assert page.evaluate("window.msFeedbackSeen") is False and page.locator("#ms-feedback").count() == 0
    assert flags(app_env, rater.rater_pk) == [True, True, False]
    with app_env.workspace.database.session() as session:
        exported = ratings_frame(session, PRACTICE_STUDY, practice=True)
        analysed = ratings_frame(session, PRACTICE_STUDY)
    mine = exported[exported["rater"] == rater.public_id]
    assert list(mine["practice"]) == [True, True, False] and list(mine["position"]) == [-2, -1, 0]
    assert not analysed["practice"].any() and rater.public_id in set(analysed["rater"])
