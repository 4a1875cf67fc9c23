"""The reading room in a real browser: no scrolling at 1440x900 and 1920x1080, large images, the dim-room
theme kept by the rater with WCAG AA text contrast in both themes, instructions before the first pair,
a full-resolution view at native pixels, and a phone layout with swipeable images.

These check what the browser draws from the page the server sends, which is the same on every database, so
they run on the SQLite app only; every test that stores or reads answers through the browser (rater flow,
binding, head-to-head, practice, blinding) runs on SQLite and on PostgreSQL."""

# ruff: noqa: E501  (the in-page scripts are kept on one line each)
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from db.media import zoom_size
from db.models import ImageBlob, Study
from db.studies import create_study, served_side
from evalapp import rater_view
from evalapp.media_routes import read_image_token
from evalapp.rater_view import Screen, ScreenKind

pytestmark = [pytest.mark.browser, pytest.mark.slow]
#: the app on SQLite only: what these tests check does not depend on the database (see the docstring)
SQLITE_APP = pytest.mark.parametrize("app_env", ["sqlite"], indirect=True)
INSTRUCTED = "instructed-study"
OWN_INSTRUCTIONS = "Judge the mucosa and vessels; ignore the black corners."

IN_VIEW = """() => {
  const h = window.innerHeight, w = window.innerWidth;
  const inside = (e) => { const b = e.getBoundingClientRect(); return b.top >= 0 && b.left >= 0 && b.bottom <= h && b.right <= w; };
  const qs = [...document.querySelectorAll('#ms-form .ms-q')];
  const frames = [...document.querySelectorAll('.ms-frame')];
  return {
    scroll: document.scrollingElement.scrollHeight - h,
    questions: qs.length, outside: qs.filter((q) => !inside(q)).map((q) => q.id),
    submit: inside(document.getElementById('ms-submit')),
    frames: frames.map((f) => [inside(f), Math.round(f.getBoundingClientRect().width), Math.round(f.getBoundingClientRect().height)]),
  };
}"""

# WCAG 2.x contrast of every visible text element against the colour actually behind it.
CONTRAST = """() => {
  const parse = (c) => { const m = c.match(/[\\d.]+/g) || [0, 0, 0, 0]; return [+m[0], +m[1], +m[2], m.length > 3 ? +m[3] : 1]; };
  const over = (top, under) => top.slice(0, 3).map((v, i) => v * top[3] + under[i] * (1 - top[3])).concat([1]);
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor); if (c[3] > 0) layers.push(c); if (c[3] >= 1) break; }
    let colour = [255, 255, 255, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }; return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const out = [];
  for (const el of document.querySelectorAll('#ms-form *, #ms-status *')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length || getComputedStyle(el).visibility === 'hidden') continue;
    const bg = background(el);
    const fg = over(parse(getComputedStyle(el).color), bg);
    out.push([el.tagName + '.' + String(el.className).slice(0, 30) + ' ' + el.textContent.trim().slice(0, 24), +ratio(fg, bg).toFixed(2), lum(bg)]);
  }
  return out;
}"""


def _instructed_study(app_env: Any) -> None:
    with app_env.workspace.database.session() as session:
        if session.scalar(select(Study.id).where(Study.name == INSTRUCTED)) is not None:
            return
        models = '"Zephyrine-Diffusion-7", "Quokkanet-GAN-3"'
        create_study(
            session,
            app_env.workspace.store,
            f'name = "{INSTRUCTED}"\nseed = 3\ndatasets = ["gi-leakcheck-set"]\nmodels = [{models}]\n'
            "cases_per_model = 2\nraters_per_item = 1\nrater_slots = 1\n"
            f'title = "Polyp study"\ninstructions = "{OWN_INSTRUCTIONS}"\n[display]\nsize = 384\nfit = "square"\n',
        )


@SQLITE_APP
@pytest.mark.parametrize("size", [(1440, 900), (1920, 1080)])
def test_everything_fits_without_scrolling(app_env: Any, open_rater_page: Any, size: tuple[int, int]) -> None:
    rater = app_env.add_rater("browser-study")
    view = open_rater_page(rater.link, *size)
    view.wait_pair(1, 4)
    seen = view.page.evaluate(IN_VIEW)
    assert seen["scroll"] <= 0, seen
    assert seen["questions"] == 9 and seen["outside"] == [] and seen["submit"], seen
    assert [f[0] for f in seen["frames"]] == [True, True], seen
    widths = [f[1] for f in seen["frames"]]
    assert widths[0] == widths[1] and all(f[1] == f[2] for f in seen["frames"])  # equal squares
    assert widths[0] >= (600 if size[0] == 1920 else 480), seen


@SQLITE_APP
def test_instructions_come_first_and_reopen_with_question_mark(app_env: Any, open_rater_page: Any) -> None:
    _instructed_study(app_env)
    rater = app_env.add_rater(INSTRUCTED)
    view = open_rater_page(rater.link, 1440, 900)
    page = view.page
    intro = page.locator("#ms-intro")
    intro.wait_for(state="visible")
    text = intro.inner_text()
    assert OWN_INSTRUCTIONS in text and "Exactly one of the two images is real" in text
    for anchor in ("Clearly artificial", "Indistinguishable from real", "Does not match", "Fully matches", "Certain"):
        assert anchor in text
    assert "which image is generated" in text and "submit" in text  # the keys
    page.keyboard.press("4")  # a key pressed on the start screen answers nothing
    assert page.locator("#ms-form input[type=radio]:checked").count() == 0
    page.keyboard.press("Enter")
    intro.wait_for(state="hidden")
    page.keyboard.press("?")
    intro.wait_for(state="visible")
    page.keyboard.press("Escape")
    intro.wait_for(state="hidden")
    view.answer()
    view.submit()
    view.wait_pair(2, 4)
    assert not intro.is_visible()  # not shown again between pairs
    page.reload()
    view.wait_pair(2, 4)
    assert not intro.is_visible()  # nor after a reload once the rater has started


@SQLITE_APP
def test_theme_toggle_is_kept_and_text_contrast_meets_wcag_aa(app_env: Any, open_rater_page: Any) -> None:
    rater = app_env.add_rater("browser-study")
    view = open_rater_page(rater.link, 1440, 900)
    page = view.page
    view.wait_pair(1, 4)
    view.submit()  # the "please answer" highlights and message are checked too
    page.locator(".ms-q.ms-missing").first.wait_for()
    dark_now = page.evaluate("document.body.classList.contains('ms-dark')")
    assert not dark_now  # a GI study starts light
    results = {"light": page.evaluate(CONTRAST)}
    page.keyboard.press("t")
    page.wait_for_function("document.body.classList.contains('ms-dark')")
    page.wait_for_timeout(500)  # let colour transitions finish
    results["dark"] = page.evaluate(CONTRAST)
    for theme, rows in results.items():
        assert len(rows) > 20, theme
        low = [r for r in rows if r[1] < 4.5]
        assert low == [], (theme, low)
    # the dim room: no white panels behind text, missing-answer highlights stay dark
    assert max(r[2] for r in results["dark"]) < 0.08, [r for r in results["dark"] if r[2] >= 0.08]
    missing_bg = page.evaluate("getComputedStyle(document.querySelector('.ms-q.ms-missing')).backgroundColor")
    assert sum(int(v) for v in missing_bg[missing_bg.index("(") + 1 : -1].split(",")[:3]) < 150, missing_bg
    page.reload()  # the rater's choice is kept
    view.wait_pair(1, 4)
    assert page.evaluate("document.body.classList.contains('ms-dark')")
    page.keyboard.press("t")
    page.wait_for_function("document.body.classList.contains('ms-light')")
    page.reload()
    view.wait_pair(1, 4)
    assert page.evaluate("document.body.classList.contains('ms-light')")


def test_radiology_pairs_default_to_the_dark_room_with_window_level() -> None:
    screen = Screen(ScreenKind.PAIR, title="Chest", prompt="p", number=1, total=2, domain="radiology")
    assert 'data-grey="1"' in rater_view.header_html(screen)
    assert 'data-grey="0"' in rater_view.header_html(Screen(ScreenKind.PAIR, title="GI", domain="gi"))


# The zoom view's image drawn onto a canvas at its own size: its decoded pixels (RGB) at the given points.
READ_PIXELS = """(points) => { const i = document.querySelector('#ms-zoom img'); const c = document.createElement('canvas');
  c.width = i.naturalWidth; c.height = i.naturalHeight; const g = c.getContext('2d'); g.drawImage(i, 0, 0);
  return points.map(([x, y]) => Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3))); }"""


def _zoomed_side(app_env: Any, src: str) -> tuple[str, int, dict[str, tuple[int, int]]]:
    """(image shown, the pair's common zoom size, native size of both sides) for a zoom URL ``/m/<token>``."""
    ref = read_image_token(src.rsplit("/", 1)[-1])
    assert ref is not None and ref.zoom, src
    with app_env.workspace.database.session() as session:
        found = served_side(session, ref.rater_id, ref.position, ref.side)
        assert found is not None
        sizes = {sha: (b.width, b.height) for sha in found.pair if (b := session.get(ImageBlob, sha)) is not None}
    return found.sha256, zoom_size(list(sizes.values()), "square"), sizes


@SQLITE_APP
def test_full_resolution_view_shows_native_pixels_and_names_the_side(app_env: Any, open_rater_page: Any) -> None:
    rater = app_env.add_rater("browser-study")
    view = open_rater_page(rater.link, 1920, 1080)
    page = view.page
    view.wait_pair(1, 4)
    page.keyboard.press("]")
    page.wait_for_function(
        "document.querySelector('#ms-zoom img') && document.querySelector('#ms-zoom img').naturalWidth > 0"
    )
    state = page.locator(".ms-zoom-state")
    assert state.inner_text().startswith("Right image · 100%")
    sha, common, sizes = _zoomed_side(app_env, page.get_attribute("#ms-zoom img", "src") or "")
    if min(sizes[sha]) != common:  # the right side is the larger one, downscaled: check the left side's pixels
        page.keyboard.press("[")
        page.wait_for_function("document.querySelector('.ms-zoom-state').innerText.startsWith('Left image')")
        sha, common, sizes = _zoomed_side(app_env, page.get_attribute("#ms-zoom img", "src") or "")
    native = page.evaluate(
        "(() => { const i = document.querySelector('#ms-zoom img'); const b = i.getBoundingClientRect();"
        " return [i.naturalWidth, b.width * devicePixelRatio]; })()"
    )
    # the zoom copy is the pair's common native size, and at 100% one image pixel is one device pixel
    assert native[0] == common and abs(native[1] - native[0]) < 1, (native, common)
    width, height = sizes[sha]
    assert min(width, height) == common  # this side is shown at its native resolution: its own pixels
    original = app_env.workspace.store.open(sha).convert("RGB")
    left, top = (width - common) // 2, (height - common) // 2
    points = [(0, 0), (common - 1, common - 1), (common // 2, common // 3), (17, common - 5), (common - 9, 23)]
    shown = page.evaluate(READ_PIXELS, points)
    assert shown == [list(original.getpixel((x + left, y + top))) for x, y in points]  # type: ignore[arg-type]
    assert page.eval_on_selector("#ms-zoom img", "e => e.style.imageRendering") == ""
    page.keyboard.press("+")
    assert "125%" in state.inner_text()
    assert page.eval_on_selector("#ms-zoom img", "e => e.style.imageRendering") == "pixelated"
    shown_side = "Left" if state.inner_text().startswith("Left") else "Right"
    page.keyboard.press(" ")  # flicker: the other side at the same zoom
    assert state.inner_text().startswith(f"{'Right' if shown_side == 'Left' else 'Left'} image · 125%")
    page.keyboard.press("x")  # side by side, equal zoom
    assert page.locator("#ms-zoom img").count() == 2 and "Both images" in state.inner_text()
    transforms = page.eval_on_selector_all("#ms-zoom img", "els => els.map(e => e.style.transform)")
    assert transforms[0] == transforms[1]
    box = page.locator(".ms-zoom-stage").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 200, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 260, box["y"] + 230)
    page.mouse.up()
    assert "translate(60px, 30px)" in page.eval_on_selector("#ms-zoom img", "e => e.style.transform")
    page.keyboard.press("Escape")
    assert page.locator("#ms-zoom").count() == 0


@SQLITE_APP
def test_phone_layout_swipes_between_images_with_a_sticky_question_sheet(browser: Any, app_env: Any) -> None:
    rater = app_env.add_rater("browser-study")
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(rater.link)
        page.wait_for_function("window.msReadyFor && document.querySelector('#ms-progress')")
        page.keyboard.press("Enter")  # close the start screen
        layout = page.evaluate(
            """() => { const pair = document.querySelector('.ms-pair'); const f = [...document.querySelectorAll('.ms-frame')];
              const panel = document.querySelector('.ms-panel');
              return { swipe: pair.scrollWidth > pair.clientWidth + 100, snap: getComputedStyle(pair).scrollSnapType,
                       widths: f.map((x) => x.getBoundingClientRect().width), sticky: getComputedStyle(panel).position,
                       keys: getComputedStyle(document.getElementById('ms-keys')).display,
                       submitVisible: document.getElementById('ms-submit').getClientRects().length > 0 }; }"""
        )
        assert layout["swipe"] and "x" in layout["snap"], layout
        assert all(w >= 340 for w in layout["widths"]), layout
        assert layout["sticky"] == "sticky" and layout["keys"] == "none" and layout["submitVisible"], layout
    finally:
        context.close()


@SQLITE_APP
def test_window_level_applies_equally_to_both_images_on_grey_scale_pairs(app_env: Any, open_rater_page: Any) -> None:
    rater = app_env.add_rater("browser-study")
    view = open_rater_page(rater.link, 1440, 900)
    page = view.page
    view.wait_pair(1, 4)
    assert not page.locator(".ms-wl-group").is_visible()  # colour (GI) pairs get no window/level tools
    page.evaluate("document.querySelector('.ms-head').setAttribute('data-grey', '1')")  # as a radiology pair
    page.locator(".ms-wl[data-wl='contrast']").click()
    filters = page.eval_on_selector_all(".ms-img", "els => els.map(e => e.style.filter)")
    assert filters[0] == filters[1] and "contrast(2" in filters[0]
    box = page.locator("#ms-img-left .ms-img").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down(button="right")
    page.mouse.move(box["x"] + 180, box["y"] + 60)
    page.mouse.up(button="right")
    after = page.eval_on_selector_all(".ms-img", "els => els.map(e => e.style.filter)")
    assert after[0] == after[1] and after[0] != filters[0]  # dragged: both images changed alike
    page.keyboard.press("[")
    assert page.eval_on_selector("#ms-zoom img", "e => e.style.filter") == after[0]  # and the full view too
