"""Blinding: nothing that tells real from generated reaches a rater's page, URLs, network or Gradio API.

The leak scan looks for every identifying string of the workspace (model names, dataset names, case keys
and file names, sha256 digests and prefixes, seeds, item ids) and for side markers on image elements. It is
shown to catch planted leaks, both in handler output and live in the browser, so it cannot pass vacuously.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from db.media import zoom_size
from db.models import Assignment, ImageBlob, ItemKind, Side, Study, StudyItem
from evalapp import auth, rater_view
from evalapp.rater_view import read_display_token

SRC = re.compile(r'src="([^"]+)"')
ZOOM = re.compile(r'data-zoom="([^"]+)"')
PNG_ALLOWED_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
TOKEN_INDEX = 5 + 9  # status, form, header, left, right, nine questions, then the display token


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return chunks


def test_scanner_catches_planted_leaks(app_env: Any, leak_scanner: Any) -> None:
    rater = app_env.add_rater()
    updates = rater_view.handle_load(app_env.request(app_env.cookie(rater.token)))
    page = "".join(str(u) for u in updates[:5])
    assert leak_scanner.scan_dom(page) == []
    model, sha_prefix = "Zephyrine-Diffusion-7", next(m for m in leak_scanner.markers if len(m) == 10)
    key = next(k for k in app_env.case_keys)
    planted = {
        "model name in text": page.replace("Left image</span>", f"Left image {model}</span>"),
        "hash prefix in JSON": page + f'{{"x": "{sha_prefix}"}}',
        "file name in a data attribute": page.replace('draggable="false"', f'data-file="{key}"'),
        "side marker attribute": page.replace('alt="Left image"', 'alt="Left image" data-kind="real"'),
        "side word in a caption": page.replace("Left image</span>", "Left image (synthetic)</span>"),
        "hash in an image URL": SRC.sub(f'src="/m/{sha_prefix}.png"', page, count=1),
        "extra field in an image token": SRC.sub(
            'src="/m/' + auth.sign({"k": "img", "sha": "x"}, auth.config().secret_key) + '"', page, count=1
        ),
    }
    for what, text in planted.items():
        assert leak_scanner.scan_dom(text), f"the scan missed a planted leak: {what}"


def test_served_images_follow_the_study_sides_without_metadata(app_env: Any) -> None:
    rater = app_env.add_rater()
    cookie = app_env.cookie(rater.token)
    request = app_env.request(cookie)
    store, db = app_env.workspace.store, app_env.workspace.database
    updates = rater_view.handle_load(request)
    seen_urls: set[str] = set()
    shown_shas: list[str] = []
    with httpx.Client(timeout=30, cookies={auth.COOKIE_NAME: cookie}) as client:
        for _ in range(3):
            display = read_display_token(updates[TOKEN_INDEX])
            assert display is not None
            with db.session() as session:
                item = session.scalar(
                    select(StudyItem)
                    .join(Assignment, Assignment.item_id == StudyItem.id)
                    .where(Assignment.rater_id == rater.rater_pk, Assignment.position == display.position)
                )
                assert item is not None
                expected = {s: item.sha256_on(s) for s in Side}
                blobs = [session.get(ImageBlob, sha) for sha in expected.values()]
                common = zoom_size([(b.width, b.height) for b in blobs if b is not None], "square")
            zoom_headers = []
            for side, html_text in ((Side.LEFT, updates[3]), (Side.RIGHT, updates[4])):
                src, zoom = SRC.search(html_text).group(1), ZOOM.search(html_text).group(1)  # type: ignore[union-attr]
                seen_urls |= {src, zoom}
                response = client.get(app_env.url + src)
                assert response.status_code == 200
                headers = {k.lower() for k in response.headers}
                assert not headers & {"etag", "last-modified", "content-disposition"}
                assert "no-store" in response.headers["cache-control"]
                assert response.content == store.served_copy(expected[side], size=384, fit="square")
                assert set(png_chunks(response.content)) <= PNG_ALLOWED_CHUNKS
                assert response.content[25] == 2  # PNG colour type RGB for every image: no grey/colour tell
                big = client.get(app_env.url + zoom)
                assert big.status_code == 200 and big.content[16:24] == struct.pack(">II", common, common)
                assert "no-store" in big.headers["cache-control"]
                zoom_headers.append((len(big.content), big.content[:33]))
                assert set(png_chunks(big.content)) <= PNG_ALLOWED_CHUNKS
                shown_shas.append(expected[side])
            assert zoom_headers[0] == zoom_headers[1]  # both zoom copies: same size, header and byte length
            reload = rater_view.handle_load(request)  # the same pair shown again gets new names
            assert SRC.search(reload[3]).group(1) not in seen_urls  # type: ignore[union-attr]
            updates = rater_view.handle_submit(
                request, updates[TOKEN_INDEX], 3, 3, 3, 3, "left", 3, "", False, "", "", ""
            )
    assert len(seen_urls) == 12  # every display and side under its own name


def test_sides_are_balanced_and_recorded(app_env: Any) -> None:
    with app_env.workspace.database.session() as session:
        study = session.scalar(select(Study).where(Study.name == "pilot-study"))
        items = list(session.scalars(select(StudyItem).where(StudyItem.study_id == study.id)))  # type: ignore[union-attr]
    normal = [i for i in items if i.kind == ItemKind.NORMAL]
    for model_id in {i.model_id for i in normal}:
        sides = Counter(i.generated_side for i in normal if i.model_id == model_id)
        assert abs(sides[Side.LEFT] - sides[Side.RIGHT]) <= 1


def test_config_and_api_of_every_mount_carry_no_markers(app_env: Any, leak_scanner: Any) -> None:
    rater = app_env.add_rater()
    cookies = {auth.COOKIE_NAME: app_env.cookie(rater.token)}
    mounts = [""] + [p for p in ("/coordinator", "/demo") if _mounted(app_env.url + p)]
    found: list[str] = []
    with httpx.Client(timeout=30, cookies=cookies, follow_redirects=True) as client:
        for mount in mounts:
            for path in ("/", "/config", "/gradio_api/info"):
                response = client.get(app_env.url + mount + path)
                found += leak_scanner.scan_text(response.text, mount + path)
                found += leak_scanner.scan_text(str(response.headers), mount + path + " headers")
    assert found == []


# Copies every streamed response body the page reads through fetch (Gradio's event stream), as received.
TEE_STREAMS = """
window.__msStreams = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (...args) => {
  const response = await realFetch(...args);
  if (!response.body) return response;
  const [mine, theirs] = response.body.tee();
  const reader = theirs.getReader();
  const decoder = new TextDecoder();
  (async () => {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      window.__msStreams.push(decoder.decode(value, { stream: true }));
    }
  })();
  return new Response(mine, { status: response.status, statusText: response.statusText, headers: response.headers });
};
"""


def _mounted(url: str) -> bool:
    with httpx.Client(timeout=30, follow_redirects=True) as client:
        return client.get(url + "/config").status_code == 200


@pytest.mark.browser
@pytest.mark.slow
def test_whole_rater_session_in_the_browser_leaks_nothing(
    app_env: Any, open_rater_page: Any, leak_scanner: Any, network_log: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rater = app_env.add_rater()
    view = open_rater_page(rater.link, 1920, 1080)
    page = view.page
    log = network_log(page)
    bodies, image_headers = log.bodies, log.image_headers
    page.add_init_script(TEE_STREAMS)
    page.reload()
    doms: list[str] = []
    total = 10
    for number in range(1, total + 1):
        view.wait_pair(number, total)
        doms.append(page.content())
        view.answer()
        view.submit()
    view.wait_text("You have rated every pair")
    doms.append(page.content())
    for extra in ("/config", "/gradio_api/info"):
        response = page.request.get(app_env.url + extra)
        bodies.append((extra, response.text()))

    assert len(bodies) > 20 and len(image_headers) >= 2 * total
    # the handlers' outputs themselves (Gradio's event stream) were captured, not only static files
    streamed = page.evaluate("window.__msStreams.join('')")
    bodies.append(("event stream", streamed))
    assert streamed.count("ms-figure ms-left") >= total
    found = [f for url, text in bodies for f in leak_scanner.scan_text(text, url)]
    found += [f for n, dom in enumerate(doms) for f in leak_scanner.scan_dom(dom, f"dom {n + 1}")]
    assert found == []
    for headers in image_headers:
        assert not set(headers) & {"etag", "last-modified", "content-disposition"}
        assert "no-store" in headers.get("cache-control", "")

    # The same scan on a page with a planted leak must fail: it is not vacuous.
    original = rater_view.image_html
    key = app_env.case_keys[0]

    def leaky(screen: Any, side: str) -> str:
        return original(screen, side).replace('draggable="false"', f'draggable="false" data-source="{key}"')

    monkeypatch.setattr(rater_view, "image_html", leaky)
    other = app_env.add_rater()
    leaky_view = open_rater_page(other.link)
    leaky_view.wait_pair(1, total)
    assert any(key in f for f in leak_scanner.scan_dom(leaky_view.page.content()))
