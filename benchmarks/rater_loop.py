"""Rater loop speed: server time of submit + next pair with many raters at once on SQLite.

Builds a throw-away workspace (real GI samples, two transform "models", one study), adds ``--raters``
raters, and has each submit ``--per-rater`` ratings concurrently through Gradio's queue (gradio_client, one
client and session cookie per rater). In the same run and app it measures a bare Gradio echo handler.

Figures printed (milliseconds):

* ``handler``: server time of submit + next pair (identity check, store, next pair, render), ``--raters``
  raters at once, admitted as Gradio's queue admits them (``RATER_CONCURRENCY`` at a time);
* with ``--through-gradio``: ``gradio submit`` / ``gradio echo``, round trips through Gradio's queue as a
  client sees them, and their p95 ratio (target <= 2x).

Run: ``python benchmarks/rater_loop.py --raters 32 --per-rater 12`` (on 2 cores: ``taskset -c 0,1``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402

from db.questions import DEFAULT_QUESTIONS  # noqa: E402
from evalapp import rater_view, server  # noqa: E402
from evalapp.auth import COOKIE_NAME  # noqa: E402

ANSWERS = [4, 3, 2, 5, "left", 4, "", False, ""]
HANDLER_MS: list[float] = []
LOCK = threading.Lock()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0-1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<15} n={len(values):5d}  p50={pct(values, 0.5):7.1f}  p95={pct(values, 0.95):7.1f}  "
        f"p99={pct(values, 0.99):7.1f}  mean={statistics.fmean(values):7.1f}"
    )


def bench_blocks() -> gr.Blocks:
    """Public endpoints for the benchmark only: ``/echo`` and ``/rate`` (the real submit handler)."""
    with gr.Blocks() as blocks:
        text, out = gr.Textbox(), gr.Textbox()

        def echo(value: str) -> str:
            return value

        def rate(request: gr.Request, token: str) -> str:
            start = time.perf_counter()
            if not token:
                updates = rater_view.handle_load(request)
            else:
                updates = rater_view.handle_submit(request, token, *ANSWERS, "1000", "")
            elapsed = (time.perf_counter() - start) * 1000
            if token:
                with LOCK:
                    HANDLER_MS.append(elapsed)
            return updates[5 + len(DEFAULT_QUESTIONS.questions)]

        gr.Button().click(echo, text, out, api_name="echo", concurrency_limit=rater_view.RATER_CONCURRENCY)
        gr.Button().click(rate, text, out, api_name="rate", concurrency_limit=rater_view.RATER_CONCURRENCY)
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raters", type=int, default=32)
    parser.add_argument("--per-rater", type=int, default=12)
    parser.add_argument(
        "--through-gradio",
        action="store_true",
        help="also time round trips through Gradio's queue with gradio_client (heavy on the client side)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "evalapp"))
    import conftest as fixtures  # the same workspace builder the tests use

    from db.studies import create_study

    tmp = Path(tempfile.mkdtemp(prefix="medsynth-bench-"))
    t0 = time.perf_counter()
    ws, _ = fixtures._build_workspace(tmp, ROOT.parent / "shared" / "data")
    # one rater slot reads every item, so each model has its own cases (no real image twice per rater)
    per_model = fixtures.N_CASES // 2
    with ws.database.session() as session:
        create_study(session, ws.store, fixtures.study_toml("bench", per_model, repeat=0.5))
    print(f"workspace built in {time.perf_counter() - t0:.1f} s")

    ctx = server.AppContext(workspace=ws)
    original = server.build_app

    def build_with_bench(c: server.AppContext) -> Any:
        app = original(c)
        inner = app.app  # the FastAPI app inside the session middleware (and the Gradio guard)
        while not hasattr(inner, "router"):
            inner = inner.app
        bench = bench_blocks()
        bench.queue(api_open=False)
        gr.mount_gradio_app(inner, bench, path="/bench", ssr_mode=False, footer_links=[])
        inner.router.routes.insert(0, inner.router.routes.pop())  # before the catch-all "/" mount
        return app

    server.build_app = build_with_bench  # type: ignore[assignment]
    t0 = time.perf_counter()
    running = server.start_server(ctx)
    print(f"server started in {time.perf_counter() - t0:.1f} s at {running.url}")

    from gradio_client import Client

    env = fixtures.AppEnv(workspace=ws, server=running, data_dir=tmp, case_keys=[])
    raters = [env.add_rater("bench") for _ in range(args.raters)]
    n_items = per_model * 2 + per_model  # normal + repeats
    per_rater = min(args.per_rater, n_items // (2 if args.through_gradio else 1))
    n_ratings = per_rater * len(raters)
    gate = threading.Semaphore(rater_view.RATER_CONCURRENCY)  # as Gradio's queue admits rater events

    def direct_loop(rater: Any) -> None:
        request = fixtures.fake_request(env.cookie(rater.token))
        with gate:
            token = rater_view.handle_load(request)[5 + len(DEFAULT_QUESTIONS.questions)]
        for _ in range(per_rater):
            with gate:
                start = time.perf_counter()
                updates = rater_view.handle_submit(request, token, *ANSWERS, "1000", "")
                elapsed = (time.perf_counter() - start) * 1000
            token = updates[5 + len(DEFAULT_QUESTIONS.questions)]
            with LOCK:
                HANDLER_MS.append(elapsed)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(raters)) as pool:
        list(pool.map(direct_loop, raters))
    wall = time.perf_counter() - t0
    print(f"{len(raters)} raters at once x {per_rater} ratings: {n_ratings / wall:.1f} ratings/s")
    print(summary("handler", HANDLER_MS))
    print(f"handler p95 = {pct(HANDLER_MS, 0.95):.1f} ms (target <= 30)")

    if args.through_gradio:
        HANDLER_MS.clear()
        raters = [env.add_rater("bench") for _ in range(args.raters)]
        clients = [
            Client(
                running.url + "/bench/",
                headers={"Cookie": f"{COOKIE_NAME}={env.cookie(r.token)}"},
                verbose=False,
                max_workers=1,
                httpx_kwargs={"timeout": 120},
            )
            for r in raters
        ]
        submit_ms: list[float] = []
        echo_ms: list[float] = []

        def rater_loop(client: Any) -> None:
            token = client.predict("", api_name="/rate")
            for _ in range(per_rater):
                start = time.perf_counter()
                client.predict("ping", api_name="/echo")
                mid = time.perf_counter()
                token = client.predict(token, api_name="/rate")
                end = time.perf_counter()
                with LOCK:
                    echo_ms.append((mid - start) * 1000)
                    submit_ms.append((end - mid) * 1000)

        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            list(pool.map(rater_loop, clients))
        print(summary("handler", HANDLER_MS))
        print(summary("gradio submit", submit_ms))
        print(summary("gradio echo", echo_ms))
        ratio = pct(submit_ms, 0.95) / pct(echo_ms, 0.95)
        print(f"submit/echo round-trip p95 ratio = {ratio:.2f} (target <= 2)")
    running.stop()
    ws.close()


if __name__ == "__main__":
    main()
