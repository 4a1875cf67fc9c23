"""Rater page speed as the rater sees it: submit to next pair fully visible, in Chromium, with many raters.

Builds the throw-away workspace the tests use (real GI samples, two transform "models"), serves it, and
drives ``--raters`` Chromium pages at once (one browser context, cookie and personal link per rater).
Each page answers by keyboard, then the clock runs in the page from the Submit click until the next
pair is fully visible: its images decoded and shown, its form blank and ready for keys (the page's own
readiness signal, ``window.msReadyFor``). The next pair's images are prefetched while the rater answers,
so the wait is the server round trip plus rendering. Beside it, the server time of the submit handler
(store + next pair + render) in the same run.

Figures printed (milliseconds): ``browser`` submit-to-visible and ``server`` handler time, p50/p95, per
number of raters (target: browser p95 <= 150 ms at 32 raters, server p95 <= 30 ms).

Run: ``python benchmarks/rater_browser.py --raters 1,8,32 --pairs 10``; quick: ``--quick`` (1 and 2 raters,
3 pairs each).
"""

from __future__ import annotations

import argparse
import asyncio
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

from evalapp import rater_view, server  # noqa: E402

SERVER_MS: list[float] = []
LOCK = threading.Lock()
KEYS = ("4", "3", "2", "5", "l", "4")
SUBMIT_TO_VISIBLE = """async () => {
  const before = window.msReadyFor;
  const t0 = performance.now();
  document.getElementById('ms-submit').click();
  await new Promise((done) => {
    const check = () => (window.msReadyFor !== before || document.querySelector('.ms-status-done')
      ? done() : setTimeout(check, 2));
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
        return f"{name:<9} n=0"
    return (
        f"{name:<9} n={len(values):4d}  p50={pct(values, 0.5):7.1f}  p95={pct(values, 0.95):7.1f}  "
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


async def one_rater(browser: Any, link: str, pairs: int, out: list[float]) -> None:
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await context.new_page()
    await page.goto(link)
    await page.wait_for_function("window.msReadyFor", timeout=60_000)
    await page.keyboard.press("Enter")  # close the start screen
    for _ in range(pairs):
        for key in KEYS:
            await page.keyboard.press(key)
        await page.wait_for_function("document.querySelectorAll('#ms-form input[type=radio]:checked').length === 6")
        await page.wait_for_timeout(150)  # a rater looks before submitting: the prefetch has time to land
        out.append(await page.evaluate(SUBMIT_TO_VISIBLE))
    await context.close()


async def run(links: list[str], pairs: int) -> list[float]:
    from playwright.async_api import async_playwright

    sys.path.insert(0, str(ROOT / "tests" / "evalapp"))
    import conftest as fixtures  # type: ignore[import-not-found]

    out: list[float] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(fixtures.CHROMIUM), headless=True, args=fixtures.CHROMIUM_ARGS
        )
        await asyncio.gather(*(one_rater(browser, link, pairs, out) for link in links))
        await browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", default="1,8,32", help="comma-separated numbers of raters at once")
    parser.add_argument("--pairs", type=int, default=10, help="pairs each rater submits (at most 10)")
    parser.add_argument("--quick", action="store_true", help="1 and 2 raters, 3 pairs each")
    args = parser.parse_args()
    counts = [1, 2] if args.quick else [int(n) for n in args.raters.split(",")]
    pairs = 3 if args.quick else min(args.pairs, 10)
    sys.path.insert(0, str(ROOT / "tests" / "evalapp"))
    import conftest as fixtures  # type: ignore[import-not-found]  # the tests' workspace builder

    tmp = Path(tempfile.mkdtemp(prefix="medsynth-browser-bench-"))
    ws, _ = fixtures._build_workspace(tmp, ROOT.parent / "shared" / "data")
    timed_submit()
    running = server.start_server(server.AppContext(workspace=ws, views=()))
    env = fixtures.AppEnv(workspace=ws, server=running, data_dir=tmp, case_keys=[])
    print(f"submit to next pair fully visible (Chromium, 1440x900), {pairs} pairs per rater; milliseconds")
    for count in counts:
        SERVER_MS.clear()
        links = [env.add_rater(fixtures.STUDY).link for _ in range(count)]
        browser_ms = asyncio.run(run(links, pairs))
        print(f"--- {count} rater(s) at once")
        print(line("browser", browser_ms))
        print(line("server", SERVER_MS))
    running.stop()
    ws.close()


if __name__ == "__main__":
    main()
