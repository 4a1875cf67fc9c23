"""Rater page speed as the rater sees it: submit to next pair fully visible, in Chromium, with many raters.

Builds the throw-away workspace the tests use (real GI samples, two transform "models"), serves it, and
drives 1, 8 and 32 Chromium pages at once (a browser context, cookie and personal link per rater; several
pages share one Chromium process, ``--pages-per-browser``). Each page answers by keyboard, waits as a rater
looks at the pair, then the clock runs in the page from the Submit click until the next pair is fully
visible: its images decoded and shown, its form blank and ready for keys (the page's own readiness signal,
``window.msReadyFor``); ``dom`` is the part until the next pair's markup is in the page (server round trip
plus Gradio's update). The next pair's images are prefetched while the rater answers.

Beside it, in the same run: the server time of the submit handler (store + next pair + render), and the
floor, a bare Gradio echo app (one button, one textbox, the same queue settings) clicked in the same
number of pages at once, timed from click to the echoed text in the page.

Figures printed (milliseconds, p50 / p95 / mean), per number of raters (target: browser p95 <= 150 ms at 32
raters, server p95 <= 30 ms), with the load average of the machine (the browsers share its cores).

Run: ``python benchmarks/rater_browser.py --raters 1,8,32 --pairs 10``; quick: ``--quick`` (1, 8 and 32
raters, 3 pairs each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from evalapp import rater_view, server  # noqa: E402

SERVER_MS: list[float] = []
LOCK = threading.Lock()
KEYS = ("4", "3", "2", "5", "l", "4")
THINK_MS = 400  # a rater looks at the pair before submitting: the prefetch has time to land
# Submit, then [ms until the next pair's markup is in the page, ms until it is fully visible and ready].
SUBMIT_TO_VISIBLE = """async () => {
  const before = window.msReadyFor;
  const display = () => {
    const h = document.querySelector('#ms-header .ms-head');
    return h ? h.getAttribute('data-display') : '';
  };
  const shown = display();
  const t0 = performance.now();
  let dom = null;
  document.getElementById('ms-submit').click();
  await new Promise((done) => {
    const check = () => {
      if (dom === null && display() !== shown) dom = performance.now() - t0;
      if (window.msReadyFor !== before || document.querySelector('.ms-status-done')) done();
      else setTimeout(check, 1);
    };
    check();
  });
  const total = performance.now() - t0;
  return [dom === null ? total : dom, total];
}"""
ECHO_ROUND_TRIP = """async () => {
  const out = () => document.querySelector('#echo-out textarea, #echo-out input');
  const before = out().value;
  const t0 = performance.now();
  document.querySelector('#echo-go').click();
  await new Promise((done) => {
    const check = () => (out().value !== before ? done() : setTimeout(check, 1));
    check();
  });
  return performance.now() - t0;
}"""


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0-1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<14} n=0"
    return (
        f"{name:<14} n={len(values):4d}  p50={pct(values, 0.5):7.1f}  p95={pct(values, 0.95):7.1f}  "
        f"mean={statistics.fmean(values):7.1f}"
    )


def timed_submit() -> None:
    """Wrap the submit handler to record its server time (before the app is built, which binds it)."""
    original = rater_view.handle_submit

    def handle_submit(request: gr.Request, token: str, *values: Any) -> list[Any]:  # Gradio injects by type
        start = time.perf_counter()
        try:
            return original(request, token, *values)
        finally:
            with LOCK:
                SERVER_MS.append((time.perf_counter() - start) * 1000)

    rater_view.handle_submit = handle_submit  # type: ignore[assignment]


def start_echo() -> tuple[uvicorn.Server, str]:
    """A bare Gradio echo app (a button echoing a counter into a textbox), queued as the rater page is."""
    with gr.Blocks(analytics_enabled=False) as blocks:
        out = gr.Textbox("0", elem_id="echo-out")

        def echo(value: str) -> str:
            return str(int(value or 0) + 1)

        gr.Button("Echo", elem_id="echo-go").click(
            echo,
            out,
            out,
            api_visibility="private",
            concurrency_id="echo",
            concurrency_limit=rater_view.RATER_CONCURRENCY,
            show_progress="hidden",
        )
    blocks.queue(api_open=False, default_concurrency_limit=4, max_size=512)
    app = gr.mount_gradio_app(FastAPI(), blocks, path="/", ssr_mode=False, footer_links=[], mcp_server=False)
    port = server.free_port()
    echo = uvicorn.Server(server.uvicorn_config(app, "127.0.0.1", port))
    threading.Thread(target=echo.run, name="echo-server", daemon=True).start()
    while not echo.started:
        time.sleep(0.05)
    return echo, f"http://127.0.0.1:{port}/"


async def open_page(browser: Any, url: str, ready: str, opening: asyncio.Semaphore) -> Any:
    """A fresh context and page at ``url``, opened a few at a time (32 page loads at once on two busy cores
    time out), once ``ready`` (a JS expression) holds."""
    async with opening:
        context = await browser.new_context(viewport={"width": 1440, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(180_000)
        await page.goto(url)
        await page.wait_for_function(ready)
    return page


async def one_rater(page: Any, pairs: int, start: asyncio.Event, dom: list[float], out: list[float]) -> None:
    await page.keyboard.press("Enter")  # close the start screen
    await start.wait()
    for _ in range(pairs):
        for key in KEYS:
            await page.keyboard.press(key)
        await page.wait_for_function("document.querySelectorAll('#ms-form input[type=radio]:checked').length === 6")
        await page.wait_for_timeout(THINK_MS)
        to_dom, total = await page.evaluate(SUBMIT_TO_VISIBLE)
        dom.append(to_dom)
        out.append(total)
    await page.context.close()


async def one_echo(page: Any, clicks: int, start: asyncio.Event, out: list[float]) -> None:
    await start.wait()
    for _ in range(clicks):
        await page.wait_for_timeout(THINK_MS)
        out.append(await page.evaluate(ECHO_ROUND_TRIP))
    await page.context.close()


async def run(links: list[str], pairs: int, per_browser: int, echo_url: str) -> tuple[list[float], ...]:
    """Every rater at once, then as many echo pages at once; returns (dom, visible, echo) milliseconds.
    The pages are opened first; the clocks run once all are open."""
    from playwright.async_api import async_playwright

    sys.path.insert(0, str(ROOT / "tests" / "evalapp"))
    import conftest as fixtures  # type: ignore[import-not-found]

    dom: list[float] = []
    visible: list[float] = []
    echo: list[float] = []
    opening = asyncio.Semaphore(4)
    async with async_playwright() as pw:
        n_browsers = max(1, -(-len(links) // per_browser))
        browsers = [
            await pw.chromium.launch(executable_path=str(fixtures.CHROMIUM), headless=True, args=fixtures.CHROMIUM_ARGS)
            for _ in range(n_browsers)
        ]
        on = [browsers[n % n_browsers] for n in range(len(links))]
        pages = await asyncio.gather(
            *(open_page(b, link, "window.msReadyFor", opening) for b, link in zip(on, links, strict=True))
        )
        start = asyncio.Event()
        rating = asyncio.gather(*(one_rater(page, pairs, start, dom, visible) for page in pages))
        start.set()
        await rating
        pages = await asyncio.gather(
            *(open_page(b, echo_url, "!!document.querySelector('#echo-go')", opening) for b in on)
        )
        start = asyncio.Event()
        echoing = asyncio.gather(*(one_echo(page, pairs, start, echo) for page in pages))
        start.set()
        await echoing
        for browser in browsers:
            await browser.close()
    return dom, visible, echo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", default="1,8,32", help="comma-separated numbers of raters at once")
    parser.add_argument("--pairs", type=int, default=10, help="pairs each rater submits (at most 10)")
    parser.add_argument("--pages-per-browser", type=int, default=8, help="rater pages sharing one Chromium")
    parser.add_argument("--quick", action="store_true", help="1, 8 and 32 raters, 3 pairs each")
    args = parser.parse_args()
    counts = [1, 8, 32] if args.quick else [int(n) for n in args.raters.split(",")]
    pairs = 3 if args.quick else min(args.pairs, 10)
    sys.path.insert(0, str(ROOT / "tests" / "evalapp"))
    import conftest as fixtures  # type: ignore[import-not-found]  # the tests' workspace builder

    tmp = Path(tempfile.mkdtemp(prefix="medsynth-browser-bench-"))
    ws, _ = fixtures._build_workspace(tmp, ROOT.parent / "shared" / "data")
    timed_submit()
    running = server.start_server(server.AppContext(workspace=ws))
    echo_server, echo_url = start_echo()
    env = fixtures.AppEnv(workspace=ws, server=running, data_dir=tmp, case_keys=[])
    print(
        f"submit to next pair fully visible (Chromium, 1440x900), {pairs} pairs per rater, {THINK_MS} ms looking "
        f"before each submit, {args.pages_per_browser} pages per browser; {os.cpu_count()} CPUs; milliseconds"
    )
    for count in counts:
        SERVER_MS.clear()
        links = [env.add_rater(fixtures.STUDY).link for _ in range(count)]
        load_before = os.getloadavg()[0]
        dom, visible, echo = asyncio.run(run(links, pairs, args.pages_per_browser, echo_url))
        print(f"--- {count} rater(s) at once (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})")
        print(line("browser", visible))
        print(line("  of which dom", dom))
        print(line("server", SERVER_MS))
        print(line("echo (floor)", echo))
    echo_server.should_exit = True
    running.stop()
    ws.close()


if __name__ == "__main__":
    main()
