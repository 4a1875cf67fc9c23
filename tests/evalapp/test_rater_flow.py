"""The rater loop without a browser: refusal, missing answers, idempotent submit, rights, resume, login."""

from __future__ import annotations

import logging
import re
from typing import Any

import gradio as gr
import httpx
import pytest
from sqlalchemy import select

from db.models import Rating
from db.questions import DEFAULT_QUESTIONS
from db.raters import reissue_token, revoke_rater
from evalapp import auth, rater_view
from evalapp.auth import REFUSAL, Role
from evalapp.server import AppContext, RedactQueryFilter, start_server

FULL = {
    "realism_left": 4,
    "accuracy_left": 3,
    "realism_right": 2,
    "accuracy_right": 5,
    "which_generated": "right",
    "confidence": 4,
    "comment": "",
    "cannot_assess": False,
    "cannot_assess_reason": "",
}
N_FORM = 5  # status, form, header, left, right come before the questions in the outputs


def form_values(answers: dict) -> list:
    return [answers.get(q.key) for q in DEFAULT_QUESTIONS.questions]


def token_of(updates: list) -> str:
    return updates[N_FORM + len(DEFAULT_QUESTIONS.questions)]


def header_of(updates: list) -> str:
    return updates[2]


def ratings_of(env: Any, rater: Any) -> list[Rating]:
    with env.workspace.database.session() as session:
        return list(session.scalars(select(Rating).where(Rating.rater_id == rater.rater_pk)))


def visible(update: dict) -> bool:
    return bool(update.get("visible"))


def test_personal_link_sets_cookie_and_drops_the_token_from_the_url(app_env: Any) -> None:
    rater = app_env.add_rater()
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        response = client.get(rater.link)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    assert rater.token not in response.headers["location"]
    set_cookie = response.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie.replace("Lax", "lax")
    assert rater.token not in set_cookie
    who = auth.identify(app_env.request(response.cookies[auth.COOKIE_NAME]))
    assert who == auth.Identity(Role.RATER, rater.rater_pk)


@pytest.mark.parametrize("case", ["none", "wrong", "revoked", "reissued", "forged"])
def test_refused_politely_and_nothing_else(app_env: Any, case: str) -> None:
    rater = app_env.add_rater()
    cookie: str | None
    if case == "none":
        cookie = app_env.cookie()
    elif case == "wrong":
        cookie = app_env.cookie(rater.token[:-3] + "xyz")
    elif case == "forged":  # a cookie made with another key
        good = app_env.cookie(rater.token)
        cookie = good.split(".")[0] + "." + "A" * 43
    else:
        cookie = app_env.cookie(rater.token)  # valid first, then the link is revoked or replaced
        with app_env.workspace.database.session() as session:
            if case == "revoked":
                revoke_rater(session, "pilot-study", rater.public_id)
            else:
                reissue_token(session, "pilot-study", rater.public_id)
    updates = rater_view.handle_load(app_env.request(cookie))
    status, form = updates[0], updates[1]
    assert visible(status) and REFUSAL in status["value"]
    assert not visible(form)
    assert header_of(updates) == "" and updates[3] == "" and updates[4] == "" and token_of(updates) == ""
    with pytest.raises(gr.Error):
        rater_view.handle_pause(app_env.request(cookie))
    with pytest.raises(gr.Error):
        rater_view.handle_submit(app_env.request(cookie), "x", *form_values(FULL), "", "")
    if case == "revoked":  # the revoked link itself is refused too
        assert auth.identify(app_env.request(app_env.cookie(rater.token))).role == Role.ANONYMOUS


def test_submit_refused_until_required_answers_given(app_env: Any) -> None:
    rater = app_env.add_rater()
    request = app_env.request(app_env.cookie(rater.token))
    first = rater_view.handle_load(request)
    token = token_of(first)
    partial = {**FULL, "accuracy_left": None, "which_generated": None}
    updates = rater_view.handle_submit(request, token, *form_values(partial), "900", "")
    message = updates[-2]
    assert "Accuracy of the left image to the prompt" in message and "Which image is generated?" in message
    assert "Realism of the left image" not in message
    questions = DEFAULT_QUESTIONS.questions
    marks = {q.key: u.get("elem_classes", []) for q, u in zip(questions, updates[N_FORM:], strict=False)}
    assert "ms-missing" in marks["accuracy_left"] and "ms-missing" in marks["which_generated"]
    assert "ms-missing" not in marks["realism_left"]
    assert ratings_of(app_env, rater) == []
    # "cannot assess" needs only its reason
    cannot = {"cannot_assess": True}
    updates = rater_view.handle_submit(request, token, *form_values(cannot), "", "")
    assert "Why can this pair not be assessed?" in updates[-2]
    cannot["cannot_assess_reason"] = "image too dark"
    updates = rater_view.handle_submit(request, token, *form_values(cannot), "", "")
    assert "Pair 2 of" in header_of(updates)
    [stored] = ratings_of(app_env, rater)
    assert stored.answers["cannot_assess"] is True and stored.answers["realism_left"] is None


def test_double_submit_and_retry_store_one_rating(app_env: Any) -> None:
    rater = app_env.add_rater()
    request = app_env.request(app_env.cookie(rater.token))
    token = token_of(rater_view.handle_load(request))
    one = rater_view.handle_submit(request, token, *form_values(FULL), "1234", "2026-01-01T00:00:00Z")
    two = rater_view.handle_submit(request, token, *form_values(FULL), "1300", "2026-01-01T00:00:01Z")
    assert "Pair 2 of" in header_of(one) and "Pair 2 of" in header_of(two)
    [stored] = ratings_of(app_env, rater)
    assert stored.response_ms_client == 1234.0
    assert stored.response_ms_server is not None and stored.response_ms_server >= 0
    assert stored.answers["which_generated"] == "right"
    # a page refresh shows the next pair; the old token still only repeats the stored rating
    again = rater_view.handle_load(request)
    assert "Pair 2 of" in header_of(again)
    rater_view.handle_submit(request, token, *form_values({**FULL, "confidence": 1}), "", "")
    assert len(ratings_of(app_env, rater)) == 1


def test_a_rater_cannot_submit_or_view_for_another(app_env: Any) -> None:
    alice, bob = app_env.add_rater(), app_env.add_rater()
    alice_req = app_env.request(app_env.cookie(alice.token))
    bob_cookie = app_env.cookie(bob.token)
    shown = rater_view.handle_load(alice_req)
    alice_token = token_of(shown)
    with pytest.raises(gr.Error):
        rater_view.handle_submit(app_env.request(bob_cookie), alice_token, *form_values(FULL), "", "")
    tampered = alice_token.replace(alice_token[5], "A" if alice_token[5] != "A" else "B", 1)
    with pytest.raises(gr.Error):
        rater_view.handle_submit(alice_req, tampered, *form_values(FULL), "", "")
    with pytest.raises(gr.Error):  # an image token is not a display token
        image_token = re.search(r'src="/m/([^"]+)"', shown[3]).group(1)  # type: ignore[union-attr]
        rater_view.handle_submit(alice_req, image_token, *form_values(FULL), "", "")
    assert ratings_of(app_env, alice) == [] and ratings_of(app_env, bob) == []
    src = re.search(r'src="([^"]+)"', shown[3]).group(1)  # type: ignore[union-attr]
    with httpx.Client(timeout=30) as client:
        assert client.get(app_env.url + src, cookies={auth.COOKIE_NAME: bob_cookie}).status_code == 404
        assert client.get(app_env.url + src).status_code == 404
        ok = client.get(app_env.url + src, cookies={auth.COOKIE_NAME: app_env.cookie(alice.token)})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"


def test_pause_then_resume_after_a_server_restart(app_env: Any) -> None:
    rater = app_env.add_rater()
    cookie = app_env.cookie(rater.token)
    request = app_env.request(cookie)
    token = token_of(rater_view.handle_load(request))
    after_one = rater_view.handle_submit(request, token, *form_values(FULL), "", "")
    rater_view.handle_submit(request, token_of(after_one), *form_values(FULL), "", "")
    paused = rater_view.handle_pause(request)
    assert not visible(paused[1]) and "Paused after 2 of 10 pairs" in paused[0]["value"]
    assert visible(paused[-1])  # the resume button
    # a second server on the same workspace (as after a restart): the same cookie resumes at pair 3
    second = start_server(AppContext(workspace=app_env.workspace, login_failure_delay_s=0.01))
    try:
        with httpx.Client(timeout=30) as client:
            page = client.get(second.url + "/", cookies={auth.COOKIE_NAME: cookie})
        assert page.status_code == 200 and "set-cookie" not in page.headers  # the cookie is still valid
        resumed = rater_view.handle_load(request)
        assert "Pair 3 of 10" in header_of(resumed)
        assert token_of(resumed) != token
    finally:
        second.stop()
        auth.configure(app_env.workspace.database, app_env.ctx.secret_key, login_failure_delay_s=0.01)


def test_thank_you_at_the_end(app_env: Any) -> None:
    rater = app_env.add_rater("browser-study")
    request = app_env.request(app_env.cookie(rater.token))
    updates = rater_view.handle_load(request)
    seen = []
    shown = visible(updates[1])
    while shown:
        seen.append(re.search(r"Pair (\d+) of (\d+)", header_of(updates)).groups())  # type: ignore[union-attr]
        updates = rater_view.handle_submit(request, token_of(updates), *form_values(FULL), "", "")
        shown = updates[1].get("visible", shown)  # a next pair leaves the form as the page has it
        if shown:  # only the pair and the blank answers are sent: no status, visibility or class updates
            assert updates[0] == updates[1] == updates[-1] == {"__type__": "update"}
            blanks = updates[N_FORM : N_FORM + len(DEFAULT_QUESTIONS.questions)]
            assert all(set(u) == {"__type__", "value"} for u in blanks)
    assert seen == [(str(n), "4") for n in range(1, 5)]
    assert "Thank you" in updates[0]["value"]
    assert len(ratings_of(app_env, rater)) == 4


def test_coordinator_login(app_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    request = app_env.request(app_env.cookie())
    assert auth.identify(request).role == Role.ANONYMOUS
    assert not auth.coordinator_login(request, "wrong password")
    assert not auth.coordinator_login(app_env.request(None), app_env.coordinator_password)  # no session cookie
    assert auth.coordinator_login(request, app_env.coordinator_password)
    assert auth.require_coordinator(request).role == Role.COORDINATOR
    with pytest.raises(gr.Error):
        auth.require_rater(request)
    auth.coordinator_logout(request)
    assert auth.identify(request).role == Role.ANONYMOUS
    monkeypatch.setenv(auth.PASSWORD_ENV, "from-the-environment")
    assert auth.verify_coordinator_password(app_env.workspace.database, "from-the-environment")
    assert not auth.verify_coordinator_password(app_env.workspace.database, "from-the-environment!")
    with pytest.raises(ValueError, match="at least 8"):
        auth.set_coordinator_password(app_env.workspace.database, "short")


def test_tokens_never_reach_the_access_log() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/?rater=SECRET-TOKEN", "1.1", 303), None,
    )  # fmt: skip
    RedactQueryFilter().filter(record)
    assert "SECRET-TOKEN" not in record.getMessage() and '"GET / HTTP/1.1"' in record.getMessage()


def test_rater_handlers_are_hidden_from_the_api_page(app_env: Any) -> None:
    with httpx.Client(timeout=30) as client:
        info = client.get(app_env.url + "/gradio_api/info").json()
    assert info.get("named_endpoints", {}) == {}
