"""Every MedSynth benchmark in one run, printed as one table (the figures of ``docs/benchmarks.md``).

    python benchmarks/run_all.py --quick                 # small modes: a few minutes on 2 cores
    python benchmarks/run_all.py                         # full modes (tens of minutes)
    python benchmarks/run_all.py --only load --raters 32 --per-rater 100    # the full load run alone

Sections (``--only`` picks some):

* ``rater_http``: raters submitting through the real HTTP interface of ``python app.py serve`` (a
  subprocess on 127.0.0.1, Gradio's queue protocol, see ``tests/load/client.py``), at each concurrency of
  ``--raters`` (default 1, 8, 32), on SQLite and on PostgreSQL. Per submission: the server time of submit
  + next pair (the handler's duration as Gradio reports it) and the round trip a client sees, p50/p95/p99,
  beside the round trip of a bare Gradio echo handler served the same way (same queue settings, its own
  process) and measured in the same run: the ratio app/echo is the figure;
* ``load``: ``max(--raters)`` raters x ``--per-rater`` pairs with random double submits, retries,
  refreshes and stale tabs, then the exactly-once check against the database (SQLite and PostgreSQL);
* ``startup``: ``python app.py`` to the first HTTP 200, cold, warm, and the first run with the demo build
  (``benchmarks/startup.py``);
* ``scripts``: the other benchmark scripts in their small (``--quick``) or default modes, with their
  headline lines: ``rater_loop.py`` (the handler in-process), ``analysis.py``, ``mrmc.py``, ``metrics.py``,
  ``generation_speed.py``, ``generation_cost.py``, ``adherence.py``.

PostgreSQL rows need an admin URL (``--pg-url`` or ``$MEDSYNTH_TEST_PG_URL``); a fresh database is created
for the run and dropped after it. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this folder would come first on sys.path and its analysis.py would shadow the package.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks")]

from tests.load.client import (  # noqa: E402
    HOST,
    AppServer,
    Behaviour,
    RaterLog,
    app_env,
    check_exactly_once,
    endpoints,
    free_port,
    percentiles,
    queue_call,
    run_raters,
    seed_load_study,
)

Section = Literal["rater_http", "load", "startup", "scripts"]
SECTIONS: tuple[Section, ...] = ("rater_http", "load", "startup", "scripts")
SHARED_DATA = ROOT.parent / "shared" / "data"
CLEAN = Behaviour(double_submit=0.0, retry=0.0, refresh=0.0, stale_tab=0.0, fetch_images=0.0)
MISBEHAVE = Behaviour(double_submit=0.1, retry=0.1, refresh=0.1, stale_tab=0.3, fetch_images=0.05)


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    section: str
    figure: str
    value: str


@dataclass
class Table:
    """The rows gathered so far, and the detailed output of each script."""

    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, section: str, figure: str, value: str) -> None:
        self.rows.append(Row(section, figure, value))
        print(f"  {section} | {figure} | {value}", flush=True)

    def markdown(self) -> str:
        widths = [
            max([len(h), *(len(getattr(r, a)) for r in self.rows)])
            for h, a in (("section", "section"), ("figure", "figure"), ("value", "value"))
        ]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [line(("section", "figure", "value")), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        return "\n".join(out + [line((r.section, r.figure, r.value)) for r in self.rows])


def ms3(values: Sequence[float]) -> str:
    """p50 / p95 / p99 of seconds, in milliseconds."""
    return " / ".join(f"{v * 1000:.0f}" for v in percentiles(values)) + " ms"


# ----------------------------------------------------------------------------------------------- backends


@contextmanager
def backend_url(backend: str, workdir: Path, pg_admin: str | None) -> Iterator[str | None]:
    """A fresh database URL for ``backend`` (None when PostgreSQL has no admin URL)."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'medsynth.sqlite3'}"
        return
    if not pg_admin:
        yield None
        return
    from tests.pg import drop_postgres, fresh_postgres_url  # the tests' own helpers

    name = f"medsynth_bench_{uuid.uuid4().hex[:12]}"
    url = fresh_postgres_url(pg_admin, name)
    try:
        yield url
    finally:
        drop_postgres(pg_admin, name)


# ----------------------------------------------------------------------------------------------- echo


def serve_echo(port: int) -> None:
    """A bare Gradio echo handler, mounted and queued as the rater page is (``evalapp.server._mount``)."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    from evalapp.rater_view import RATER_CONCURRENCY
    from evalapp.server import uvicorn_config

    with gr.Blocks(analytics_enabled=False) as blocks:
        text, out = gr.Textbox(), gr.Textbox()

        def echo(value: str) -> str:
            return value

        gr.Button().click(
            echo,
            text,
            out,
            api_name="echo",
            api_visibility="private",
            concurrency_id="echo",
            concurrency_limit=RATER_CONCURRENCY,
            show_progress="hidden",
        )
    blocks.queue(api_open=False, default_concurrency_limit=4, max_size=512)
    app = gr.mount_gradio_app(FastAPI(), blocks, path="/", ssr_mode=False, footer_links=[], mcp_server=False)
    uvicorn.Server(uvicorn_config(app, HOST, port)).run()


@contextmanager
def echo_server(workdir: Path) -> Iterator[str]:
    """The echo server as a subprocess on a free 127.0.0.1 port; always stopped on exit."""
    import httpx

    port = free_port()
    log = open(workdir / "echo.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, __file__, "--echo-server", str(port)],
        cwd=ROOT,
        env=app_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the echo server did not start: {(workdir / 'echo.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/config", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def echo_round_trips(url: str, clients: int, calls: int) -> list[float]:
    """Round trips (s) of ``clients`` clients at once, each making ``calls`` echo calls through the queue."""
    import httpx

    def one(n: int) -> list[float]:
        with httpx.Client(base_url=url, timeout=120) as client:
            fn = endpoints(client)["echo"]
            times = []
            for k in range(calls):
                done = queue_call(client, fn, [f"ping {n} {k}"])
                if done is None or not done.success or done.data != [f"ping {n} {k}"]:
                    raise RuntimeError(f"the echo handler answered {done}")
                times.append(done.round_trip_s)
            return times

    with ThreadPoolExecutor(clients) as pool:
        return [t for ts in pool.map(one, range(clients)) for t in ts]


# ----------------------------------------------------------------------------------------------- sections


def bench_rater_http(table: Table, workdir: Path, levels: Sequence[int], per_rater: int, pg_admin: str | None) -> None:
    """Submit + next pair through ``python app.py serve`` at each concurrency, beside the echo handler."""
    with echo_server(workdir) as echo_url:
        for backend in ("sqlite", "postgresql"):
            folder = workdir / f"http-{backend}"
            folder.mkdir()
            with backend_url(backend, folder, pg_admin) as db_url:
                if db_url is None:
                    table.add("rater_http", f"{backend}", "skipped: give --pg-url or set MEDSYNTH_TEST_PG_URL")
                    continue
                tokens = seed_load_study(
                    folder / "data", SHARED_DATA, raters=sum(levels) + 1, per_rater=per_rater, db_url=db_url
                )
                with AppServer(folder / "data", db_url, log_path=folder / "server.log") as server:
                    server.start()
                    # Warm-up, not timed: first requests pay for lazy imports and cold caches on both servers.
                    run_raters(server.url, [RaterLog(tokens[-1])], behaviour=CLEAN, max_ratings=3)
                    echo_round_trips(echo_url, 2, 3)
                    used = 0
                    for level in levels:
                        logs = [RaterLog(t) for t in tokens[used : used + level]]
                        used += level
                        echo = echo_round_trips(echo_url, level, per_rater)
                        started = time.perf_counter()
                        run_raters(server.url, logs, seed=level, behaviour=CLEAN)
                        wall = time.perf_counter() - started
                        submit = [t for log in logs for t in log.submit_s]
                        handler = [t for log in logs for t in log.submit_handler_s]
                        problems = check_exactly_once(db_url, logs, complete=True)
                        label = f"{backend}, {level} rater{'s' if level > 1 else ''}"
                        table.add("rater_http", f"{label}: submit+next, server", ms3(handler))
                        table.add("rater_http", f"{label}: submit+next, round trip", ms3(submit))
                        table.add("rater_http", f"{label}: echo, round trip", ms3(echo))
                        p_app, p_echo = percentiles(submit, (50, 95)), percentiles(echo, (50, 95))
                        table.add(
                            "rater_http",
                            f"{label}: round trip / echo (p50, p95)",
                            f"{p_app[0] / p_echo[0]:.1f}x, {p_app[1] / p_echo[1]:.1f}x",
                        )
                        table.add(
                            "rater_http",
                            f"{label}: throughput",
                            f"{len(submit) / wall:.1f} ratings/s; exactly once: "
                            + ("ok" if not problems else f"{len(problems)} problems: {problems[:3]}"),
                        )


def bench_load(table: Table, workdir: Path, raters: int, per_rater: int, pg_admin: str | None) -> None:
    """``raters`` misbehaving raters x ``per_rater`` pairs, then the exactly-once check."""
    for backend in ("sqlite", "postgresql"):
        folder = workdir / f"load-{backend}"
        folder.mkdir()
        with backend_url(backend, folder, pg_admin) as db_url:
            if db_url is None:
                table.add("load", backend, "skipped: give --pg-url or set MEDSYNTH_TEST_PG_URL")
                continue
            tokens = seed_load_study(folder / "data", SHARED_DATA, raters=raters, per_rater=per_rater, db_url=db_url)
            with AppServer(folder / "data", db_url, log_path=folder / "server.log") as server:
                server.start()
                started = time.perf_counter()
                logs = run_raters(server.url, [RaterLog(t) for t in tokens], seed=1, behaviour=MISBEHAVE)
                wall = time.perf_counter() - started
            problems = check_exactly_once(db_url, logs, complete=True)
            acks = sum(len(log.acks) for log in logs)
            events = sum(log.events for log in logs)
            verdict = "every acknowledged rating stored exactly once" if not problems else f"FAILED: {problems[:5]}"
            table.add(
                "load",
                f"{backend}, {raters} raters x {per_rater} pairs",
                f"{verdict} ({acks} acks, {events} events, {wall:.0f} s)",
            )
            submit = [t for log in logs for t in log.submit_s]
            table.add("load", f"{backend}: submit+next round trip under load", ms3(submit))


def bench_startup(table: Table, workdir: Path, repeats: int, demo_build: bool, pg_admin: str | None) -> None:
    """``python app.py`` to the first HTTP 200 (see ``benchmarks/startup.py``)."""
    from benchmarks.startup import measure_startup

    for figure in measure_startup(workdir / "startup-sqlite", repeats=repeats, demo_build=demo_build):
        table.add("startup", f"sqlite, {figure.case}", figure.describe()[26:].strip())
    if pg_admin:
        with backend_url("postgresql", workdir, pg_admin) as db_url:
            for figure in measure_startup(workdir / "startup-pg", repeats=repeats, db_url=db_url):
                table.add("startup", f"postgresql, {figure.case}", figure.describe()[26:].strip())


@dataclass(frozen=True)
class Script:
    """A benchmark script, its small and default arguments, and which output lines are its headline."""

    name: str
    quick: tuple[str, ...]
    full: tuple[str, ...]
    headline: str  # regex over output lines


SCRIPTS: tuple[Script, ...] = (
    Script(
        "rater_loop.py",
        ("--raters", "8", "--per-rater", "4"),
        ("--raters", "32", "--per-rater", "12"),
        r"handler |ratings/s",
    ),
    Script(
        "analysis.py",
        ("--raters", "10", "--items", "500", "--resamples", "100", "--repeats", "1", "--skip-frechet"),
        (),
        r"report|alpha|frechet",
    ),
    Script("mrmc.py", ("--readers", "10", "--cases", "200", "--tests", "2", "--repeats", "1"), (), r"or_analysis"),
    Script("metrics.py", ("--n", "1000", "--dim", "256"), (), r"speed-up|KID|CMMD"),
    Script("generation_speed.py", ("--images", "4", "--batch-sizes", "1,4"), (), r"^\s*batch|^\s+\d+\s+\d"),
    Script("generation_cost.py", ("--skip-timing",), (), r"== MSDM|TFLOPs/image|images/s"),
    Script("adherence.py", ("--n-per-domain", "4", "--no-ddim"), (), r"findings|DPM|classifier|shuffled|DDIM"),
)


def run_scripts(table: Table, quick: bool, names: Sequence[str] | None, timeout_s: float) -> None:
    """Run each script as a subprocess; its headline lines go into the table, all output into the details."""
    for script in SCRIPTS:
        if names and script.name.removesuffix(".py") not in names:
            continue
        args = script.quick if quick else script.full
        command = [sys.executable, str(ROOT / "benchmarks" / script.name), *args]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=app_env(), capture_output=True, text=True, timeout=timeout_s)
            output, status = done.stdout + done.stderr, f"exit {done.returncode}"
        except subprocess.TimeoutExpired as exc:
            output, status = str(exc.stdout or "") + str(exc.stderr or ""), f"timed out after {timeout_s:.0f} s"
        seconds = time.perf_counter() - started
        shown = " ".join(a for a in args) or "(defaults)"
        table.add("scripts", f"{script.name} {shown}", f"{status}, {seconds:.0f} s")
        pattern = re.compile(script.headline)
        for line in output.splitlines():
            if pattern.search(line) and not line.startswith(("[transformers]", "Traceback")):
                table.add("scripts", f"  {script.name}", re.sub(r"\s+", " ", line.strip()))
        table.details.append(f"==== {' '.join(command[1:])} ({status}, {seconds:.0f} s)\n{output.rstrip()}")


# ----------------------------------------------------------------------------------------------- main


def parse_levels(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--raters takes whole numbers separated by commas, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"--raters needs at least one count >= 1, got {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="small modes (a few minutes on 2 cores)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--scripts", nargs="+", help="with the scripts section: only these (e.g. mrmc analysis)")
    parser.add_argument("--raters", type=parse_levels, default=None, help="concurrent raters, e.g. 1,8,32")
    parser.add_argument("--per-rater", type=int, default=None, help="pairs per rater (even, <= 100)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("MEDSYNTH_TEST_PG_URL"),
        help="PostgreSQL admin URL (default $MEDSYNTH_TEST_PG_URL); rows skipped without one",
    )
    parser.add_argument("--repeats", type=int, default=None, help="start-ups per case (default 3; quick 1)")
    parser.add_argument("--no-demo-build", action="store_true", help="skip the demo-build start-up cases")
    parser.add_argument("--script-timeout", type=float, default=3600.0)
    parser.add_argument("--details", action="store_true", help="print every script's full output after the table")
    parser.add_argument("--echo-server", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.echo_server is not None:
        serve_echo(args.echo_server)
        return 0
    levels = args.raters or [1, 8, 32]
    per_rater = args.per_rater or (6 if args.quick else 100)
    sections = args.only or list(SECTIONS)
    table = Table()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medsynth-bench-") as tmp:
        workdir = Path(tmp)
        if "rater_http" in sections:
            bench_rater_http(table, workdir, levels, per_rater, args.pg_url)
        if "load" in sections:
            bench_load(table, workdir, max(levels), per_rater, args.pg_url)
        if "startup" in sections:
            bench_startup(table, workdir, args.repeats or (1 if args.quick else 3), not args.no_demo_build, args.pg_url)
        if "scripts" in sections:
            run_scripts(table, args.quick, args.scripts, args.script_timeout)
    print(
        f"\nMedSynth benchmarks ({'quick' if args.quick else 'full'}; {os.cpu_count()} CPUs; "
        f"{time.perf_counter() - started:.0f} s; {time.strftime('%Y-%m-%d %H:%M')})\n"
    )
    print(table.markdown())
    if args.details:
        print("\n" + "\n\n".join(table.details))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
