"""The rater view for head-to-head studies: two models' images of one prompt, which is more realistic and
which matches the prompt better (left / right / no difference), the real image above them as a reference
when the study shows one; served, bound to their display and stored like every other pair."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from db.head_to_head import HEAD_TO_HEAD_QUESTIONS
from db.models import Assignment, Model, Rating, Side, StudyItem
from db.questions import DEFAULT_QUESTIONS
from db.studies import create_study
from evalapp import rater_view
from evalapp.media_routes import image_token, image_url

N_DEFAULT = len(DEFAULT_QUESTIONS.questions)
TOKEN_INDEX = 5 + N_DEFAULT  # status, form, header, left, right, the default set's questions, the token
EXTRA_KEYS = [q.key for q in rater_view.EXTRA_QUESTIONS]
REF_INDEX = TOKEN_INDEX + 1 + len(EXTRA_KEYS)  # after the token: the preferences, the reference, the keys
SRC = re.compile(r'src="([^"]+)"')
WITH_REFERENCE = "h2h-with-reference"
WITHOUT_REFERENCE = "h2h-no-reference"
N_ITEMS = 3
FIXTURE_MODELS = ("Zephyrine-Diffusion-7", "Quokkanet-GAN-3")  # conftest's two models and dataset
FIXTURE_DATASET = "gi-leakcheck-set"


def h2h_toml(name: str, models: list[str], dataset: str, *, reference: bool, per_pair: int) -> str:
    quoted = ", ".join(f'"{m}"' for m in models)
    return (
        f'name = "{name}"\nkind = "head-to-head"\nreference = {str(reference).lower()}\nseed = 5\n'
        f'datasets = ["{dataset}"]\nmodels = [{quoted}]\ncases_per_model = {per_pair}\n'
        "raters_per_item = 1\nrater_slots = 1\nattention_fraction = 0.0\nrepeat_fraction = 0.0\n"
        'title = "Which image is better?"\n[display]\nsize = 384\nfit = "square"\n'
    )


@pytest.fixture(scope="module")
def h2h_studies(app_env: Any) -> Iterator[dict[str, int]]:
    """Two head-to-head studies of the fixture's two models: with and without the reference image."""
    models, dataset = list(FIXTURE_MODELS), FIXTURE_DATASET  # other tests register more models
    with app_env.workspace.database.session() as session:
        create_study(
            session,
            app_env.workspace.store,
            h2h_toml(WITH_REFERENCE, models, dataset, reference=True, per_pair=N_ITEMS),
        )
        create_study(
            session, app_env.workspace.store, h2h_toml(WITHOUT_REFERENCE, models, dataset, reference=False, per_pair=2)
        )
    yield {WITH_REFERENCE: N_ITEMS, WITHOUT_REFERENCE: 2}


def form_updates(updates: list[Any]) -> dict[str, Any]:
    """Each question component's update, by key."""
    comps = [*updates[5:TOKEN_INDEX], *updates[TOKEN_INDEX + 1 : TOKEN_INDEX + 1 + len(EXTRA_KEYS)]]
    return dict(zip(rater_view.FORM_KEYS, comps, strict=True))


def visible_keys(updates: list[Any]) -> set[str]:
    """The keys of the question components a screen shows."""
    return {key for key, u in form_updates(updates).items() if u.get("visible")}


def h2h_values(answers: dict[str, Any], answered_for: str = "") -> list[Any]:
    """Submit inputs after the token: the default set's (blank), client ms/time/display, the preferences."""
    default = [answers.get(q.key) for q in DEFAULT_QUESTIONS.questions]
    return [*default, "800", "", answered_for, *[answers.get(k) for k in EXTRA_KEYS]]


@dataclass(frozen=True)
class Shown:
    item_id: int
    left_model: int
    right_model: int


def item_at(app_env: Any, rater_pk: int, position: int) -> Shown:
    with app_env.workspace.database.session() as session:
        item = session.scalar(
            select(StudyItem)
            .join(Assignment, Assignment.item_id == StudyItem.id)
            .where(Assignment.rater_id == rater_pk, Assignment.position == position)
        )
        assert item is not None and item.second_model_id is not None
        first_left = item.generated_side == Side.LEFT
        left, right = (item.model_id, item.second_model_id) if first_left else (item.second_model_id, item.model_id)
        return Shown(item.id, left, right)


def stored_ratings(app_env: Any, rater_pk: int) -> list[tuple[int, int, dict[str, Any]]]:
    """(position, item id, answers) of the rater's ratings, in pair order."""
    with app_env.workspace.database.session() as session:
        rows = session.execute(
            select(Assignment.position, Rating.item_id, Rating.answers)
            .join(Assignment, Rating.assignment_id == Assignment.id)
            .where(Rating.rater_id == rater_pk)
            .order_by(Assignment.position)
        ).all()
    return [(int(p), int(i), dict(a)) for p, i, a in rows]


def display_nonce(token: str) -> str:
    display = rater_view.read_display_token(token)
    assert display is not None
    return display.nonce


def token_payload(url: str) -> dict[str, Any]:
    raw = url.rsplit("/", 1)[1].split(".", 1)[0]
    return dict(json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))))


def test_a_head_to_head_pair_shows_its_own_questions_and_the_reference(
    app_env: Any, h2h_studies: dict[str, int], leak_scanner: Any
) -> None:
    rater = app_env.add_rater(WITH_REFERENCE)
    cookie = app_env.cookie(rater.token)
    updates = rater_view.handle_load(app_env.request(cookie))
    assert "Pair 1 of 3" in updates[2] and 'data-kind="head-to-head"' in updates[2]
    assert visible_keys(updates) == set(HEAD_TO_HEAD_QUESTIONS.keys())
    assert (
        "(optional)" in form_updates(updates)["realism_left"]["label"]
    )  # the shared component takes the head-to-head label
    intro = updates[0]["value"]
    assert "both generated by a computer" in intro and "no difference" in intro and "Reference (real)" in intro
    assert "L / R / E" in updates[REF_INDEX + 1] and "which image is generated" not in updates[REF_INDEX + 1]
    left, right = (SRC.search(updates[i]).group(1) for i in (3, 4))  # type: ignore[union-attr]
    reference = SRC.search(updates[REF_INDEX]).group(1)  # type: ignore[union-attr]
    assert "Reference (real)" in updates[REF_INDEX]
    # the reference is one more per-display name of the same length, served alike, never cached
    assert len({len(left), len(right), len(reference)}) == 1 and len({left, right, reference}) == 3
    assert token_payload(reference)["s"] == "x" and set(token_payload(reference)) == set(token_payload(left))
    with httpx.Client(base_url=app_env.url, timeout=30) as client:
        headers = app_env.gradio_headers(cookie)
        got = {name: client.get(url, headers=headers) for name, url in (("l", left), ("r", right), ("x", reference))}
        assert all(r.status_code == 200 and "no-store" in r.headers["cache-control"] for r in got.values())
        assert len({len(r.content) for r in got.values()}) == 1  # equal byte length: nothing told by size
        assert client.get(reference).status_code == 404  # only this rater's cookie opens it
    # the next pair's three images are named for prefetching, the reference among them
    assert len(re.search(r'data-next="([^"]*)"', updates[2]).group(1).split()) == 3  # type: ignore[union-attr]
    text = " ".join(str(u) for u in updates)
    assert leak_scanner.scan_text(text, "handler output") == []


def test_no_reference_where_the_study_shows_none_and_never_for_a_real_vs_generated_pair(
    app_env: Any, h2h_studies: dict[str, int]
) -> None:
    plain = app_env.add_rater(WITHOUT_REFERENCE)
    cookie = app_env.cookie(plain.token)
    updates = rater_view.handle_load(app_env.request(cookie))
    assert "Pair 1 of 2" in updates[2] and updates[REF_INDEX] == ""
    assert "Reference (real)" not in updates[0]["value"]
    assert len(re.search(r'data-next="([^"]*)"', updates[2]).group(1).split()) == 2  # type: ignore[union-attr]
    rvg = app_env.add_rater("browser-study")
    rvg_cookie = app_env.cookie(rvg.token)
    rvg_updates = rater_view.handle_load(app_env.request(rvg_cookie))
    assert visible_keys(rvg_updates) == set(DEFAULT_QUESTIONS.keys()) and rvg_updates[REF_INDEX] == ""
    assert "L / R" in rvg_updates[REF_INDEX + 1] and "no difference" not in rvg_updates[REF_INDEX + 1]
    with httpx.Client(base_url=app_env.url, timeout=30) as client:
        for login, who in ((plain, cookie), (rvg, rvg_cookie)):
            forged = image_url(image_token(login.rater_pk, 0, None))  # a reference name the page never got
            positive = image_url(image_token(login.rater_pk, 0, Side.LEFT))
            headers = app_env.gradio_headers(who)
            assert client.get(positive, headers=headers).status_code == 200  # positive control
            assert client.get(forged, headers=headers).status_code == 404  # never the real image by another name


def test_preferences_are_stored_bound_to_their_display_and_conflicts_handled(
    app_env: Any, h2h_studies: dict[str, int]
) -> None:
    rater = app_env.add_rater(WITH_REFERENCE)
    request = app_env.request(app_env.cookie(rater.token))
    updates = rater_view.handle_load(request)
    token = updates[TOKEN_INDEX]
    nonce = display_nonce(token)

    # real-vs-generated answers on a head-to-head pair: the preferences are missing, nothing is stored
    rvg_answers = {"realism_left": 3, "accuracy_left": 3, "realism_right": 3, "accuracy_right": 3,
                   "which_generated": "left", "confidence": 3}  # fmt: skip
    kept = rater_view.handle_submit(request, token, *h2h_values(rvg_answers, nonce))
    assert "Which image is more realistic?" in kept[-2] and "Which image matches the prompt better?" in kept[-2]
    marks = form_updates(kept)
    assert all("ms-missing" in marks[k]["elem_classes"] for k in EXTRA_KEYS)
    assert not any("ms-missing" in u["elem_classes"] for k, u in marks.items() if k not in EXTRA_KEYS)
    assert stored_ratings(app_env, rater.rater_pk) == []

    # answers given for another display are refused
    tie = {"prefer_realism": "tie", "prefer_prompt": "left", "realism_left": 2}
    refused = rater_view.handle_submit(request, token, *h2h_values(tie, "another-display"))
    assert "given for another pair" in refused[-2] and stored_ratings(app_env, rater.rater_pk) == []
    token = refused[TOKEN_INDEX]
    nonce = display_nonce(token)

    first = item_at(app_env, rater.rater_pk, 0)
    after = rater_view.handle_submit(request, token, *h2h_values(tie, nonce))
    assert "Pair 2 of 3" in after[2]
    # a second tab on the rated pair is told so and shown the stored answers, in words; one rating kept
    again = rater_view.handle_submit(
        request, token, *h2h_values({"prefer_realism": "right", "prefer_prompt": "right"}, nonce)
    )
    assert "Pair 2 of 3" in again[2]
    rows = stored_ratings(app_env, rater.rater_pk)
    assert len(rows) == 1 and rows[0][1] == first.item_id
    answers = rows[0][2]
    assert answers["prefer_realism"] == "tie" and answers["prefer_prompt"] == "left" and answers["realism_left"] == 2
    assert answers["realism_right"] is None and "which_generated" not in answers
    other_tab = app_env.request(app_env.cookie(rater.token))
    tab2 = rater_view.handle_load(other_tab)
    token2 = tab2[TOKEN_INDEX]
    nonce2 = display_nonce(token2)
    next_nonce = display_nonce(after[TOKEN_INDEX])
    rater_view.handle_submit(
        request, after[TOKEN_INDEX], *h2h_values({"prefer_realism": "left", "prefer_prompt": "left"}, next_nonce)
    )
    conflict = rater_view.handle_submit(
        other_tab, token2, *h2h_values({"prefer_realism": "right", "prefer_prompt": "tie"}, nonce2)
    )
    assert "already rated in another tab or window" in conflict[-2]
    assert "Which image is more realistic?: Left image" in conflict[-2]
    rows = stored_ratings(app_env, rater.rater_pk)
    assert len(rows) == 2 and rows[1][2]["prefer_realism"] == "left"


# ----------------------------------------------------------------------------------------------- browser

#: (keys, the answers they mean) per pair: a left/right, a tie on both with the optional realism, and the
#: third typed before its pair has loaded (queued, replayed on its first question, Enter included)
KEYBOARD_PLAN: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("l", "r"), {"prefer_realism": "left", "prefer_prompt": "right", "realism_left": None}),
    (("e", "e", "4", "2"), {"prefer_realism": "tie", "prefer_prompt": "tie", "realism_left": 4, "realism_right": 2}),
    (("r", "e", "Enter"), {"prefer_realism": "right", "prefer_prompt": "tie", "realism_right": None}),
)
REFERENCE_CAPTION = "caption 'Reference (real)'"
SHOTS = Path("/tmp/medsynth-shots")
FITS = """() => {
  const h = window.innerHeight, w = window.innerWidth;
  const inside = (e) => {
    const b = e.getBoundingClientRect();
    return b.top >= 0 && b.left >= 0 && b.bottom <= h && b.right <= w;
  };
  const qs = [...document.querySelectorAll('#ms-form .ms-q')].filter((q) => q.offsetParent !== null);
  return {
    scroll: document.scrollingElement.scrollHeight - h,
    outside: qs.filter((q) => !inside(q)).map((q) => q.id),
    submit: inside(document.getElementById('ms-submit')),
    frames: [...document.querySelectorAll('.ms-ref-frame, .ms-frame')]
      .map((f) => [inside(f), Math.round(f.getBoundingClientRect().width)]),
  };
}"""


def wait_h2h_pair(page: Any, number: int, total: int) -> None:
    """Wait until pair ``number`` is shown with its two images and the reference loaded, ready for keys."""
    page.wait_for_function(
        """([label]) => {
            const p = document.querySelector('#ms-progress');
            const imgs = [...document.querySelectorAll('.ms-img, .ms-ref-img')];
            return p && p.textContent.trim() === label && imgs.length === 3
                && imgs.every(i => i.complete && i.naturalWidth > 0)
                && window.msReadyFor === document.querySelector('.ms-img').getAttribute('src');
        }""",
        arg=[f"Pair {number} of {total}"],
        timeout=20_000,
    )


@pytest.mark.browser
@pytest.mark.slow
def test_head_to_head_pairs_rated_by_keyboard_store_the_chosen_sides_and_leak_nothing(
    app_env: Any, h2h_studies: dict[str, int], open_rater_page: Any, leak_scanner: Any, network_log: Any
) -> None:
    from db.export import ratings_frame

    rater = app_env.add_rater(WITH_REFERENCE)
    view = open_rater_page(rater.link, 1440, 900)
    page = view.page
    log = network_log(page)
    page.reload()
    total = h2h_studies[WITH_REFERENCE]
    doms: list[str] = []
    shown_positions: list[int] = []
    for number, (keys, _) in enumerate(KEYBOARD_PLAN, start=1):
        if keys[-1] != "Enter":
            wait_h2h_pair(page, number, total)
            if number == 1:  # the start screen explains the head-to-head task and its keys
                intro = page.locator("#ms-intro").inner_text()
                assert "both generated by a computer" in intro and "no difference" in intro, intro
                assert "L / R / E" in intro
            view.close_instructions()
            if number == 1:  # the reference, both images, every question and Submit fit without scrolling
                seen = page.evaluate(FITS)
                assert seen["scroll"] <= 0 and seen["outside"] == [] and seen["submit"], seen
                assert [inside for inside, _ in seen["frames"]] == [True, True, True], seen
                ref, left_w, right_w = (width for _, width in seen["frames"])
                assert left_w == right_w >= 300 and ref < left_w, seen
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "rater-h2h-1440x900.png"))
            legend = page.locator("#ms-keys").inner_text()
            assert "L / R / E" in legend and "no difference" in legend and "which image is generated" not in legend
            assert page.locator("#q-prefer_realism").is_visible() and page.locator("#q-prefer_prompt").is_visible()
            assert not page.locator("#q-which_generated").is_visible()
            assert not page.locator("#q-accuracy_left").is_visible()
            assert page.locator(".ms-ref").inner_text().strip() == "Reference (real)"
            left = page.locator("#ms-img-left .ms-img").get_attribute("data-zoom") or ""  # src: maybe prefetched
            shown_positions.append(int(token_payload(left)["p"]))
            doms.append(page.content())
        for key in keys:
            page.keyboard.press(key)
            page.wait_for_timeout(40)
        if keys[-1] != "Enter":
            page.wait_for_function(
                f"document.querySelectorAll('#ms-form input[type=radio]:checked').length === {len(keys)}",
                timeout=5_000,
            )
            page.keyboard.press("Enter")  # the next pair's keys are typed at once, while it loads
    try:
        view.wait_text("You have rated every pair")
    except Exception:  # say where it stopped
        checked = page.eval_on_selector_all("#ms-form input[type=radio]:checked", "els => els.map(e => e.value)")
        pytest.fail(f"not done: {page.locator('#ms-progress').all_inner_texts()}, answers on screen {checked}")
    doms.append(page.content())
    assert shown_positions == [0, 1]

    # stored: one rating per pair, under the item shown at that position, with the sides pressed
    rows = stored_ratings(app_env, rater.rater_pk)
    assert [p for p, _, _ in rows] == [0, 1, 2]
    with app_env.workspace.database.session() as session:
        found = session.execute(select(Model.id, Model.name).where(Model.name.in_(FIXTURE_MODELS))).tuples()
        model_ids = {name: mid for mid, name in found}
        frame = ratings_frame(session, WITH_REFERENCE)
    frame = frame[frame["rater"] == rater.public_id].sort_values("position")
    for (position, item_id, answers), (_, meant), (_, row) in zip(rows, KEYBOARD_PLAN, frame.iterrows(), strict=True):
        shown = item_at(app_env, rater.rater_pk, position)
        assert item_id == shown.item_id
        assert {shown.left_model, shown.right_model} == set(model_ids.values())  # the two models, one per side
        assert {k: answers.get(k) for k in meant} == meant
        assert (model_ids[row["model_left"]], model_ids[row["model_right"]]) == (shown.left_model, shown.right_model)
        assert row["prefer_realism"] == meant["prefer_realism"] and row["prefer_prompt"] == meant["prefer_prompt"]

    # nothing in the page, the network or the image names says which model made which image
    assert len(log.image_urls) >= 3 * total
    assert all("no-store" in headers.get("cache-control", "") for headers in log.image_headers)
    found = [f for url, text in log.bodies for f in leak_scanner.scan_text(text, url)]
    for n, dom in enumerate(doms):
        found += [f for f in leak_scanner.scan_dom(dom, f"dom {n + 1}") if not f.endswith(REFERENCE_CAPTION)]
    found += [f for url in log.image_urls for f in leak_scanner.check_image_url(url.removeprefix(app_env.url))]
    assert found == []
    assert sum(f.endswith(REFERENCE_CAPTION) for dom in doms[:2] for f in leak_scanner.scan_dom(dom)) == 2

    # on a phone the reference sits above two full-width images (swiped), none of them squeezed to nothing
    phone = open_rater_page(app_env.add_rater(WITH_REFERENCE).link, 390, 844)
    wait_h2h_pair(phone.page, 1, total)
    phone.close_instructions()
    widths = phone.page.evaluate(
        "[...document.querySelectorAll('.ms-ref-frame, .ms-frame')].map((f) => f.getBoundingClientRect().width)"
    )
    assert len(widths) == 3 and 150 <= widths[0] < widths[1] == widths[2] and widths[1] >= 330, widths


def test_the_load_client_sends_every_input_of_the_submit_event() -> None:
    from tests.load.client import N_EXTRA_INPUTS

    assert N_EXTRA_INPUTS == len(rater_view.EXTRA_QUESTIONS) == len(rater_view.FORM_KEYS) - N_DEFAULT
