"""Coordinator lock-out under a password-guessing attack: does a correct sign-in still get through quickly?

Starts the app on a throw-away SQLite workspace, measures a correct coordinator sign-in and a Refresh
(through Gradio's queue, as the browser makes them), then starts ``--attackers`` clients, each on its own
loopback address (127.0.0.2, ...), in a separate process, sending wrong passwords as fast as they are
answered for ``--seconds``, and measures the same two calls again while they hammer.

Printed: seconds for the sign-in and the Refresh, before and repeatedly during the attack (issue 13's
target: each within 2 s during the attack; unguarded, they took 139 s and 48.5 s), and per attacker how
many of its passwords were checked and how many requests were refused with 429. The first seconds of an
attack are the slowest: each new address gets three password checks (argon2, about 0.1-1 s of CPU each)
before it backs off; after that an attacker costs one check per back-off period (1, 2, 4 ... 60 s).

Run: ``python benchmarks/lockout.py`` (quick: ``--seconds 10``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.workspace import Workspace  # noqa: E402
from evalapp import auth  # noqa: E402
from evalapp.server import AppContext, start_server  # noqa: E402

PASSWORD = "benchmark-coordinator-password"
ATTACK = r"""
import json, sys, threading, time
import httpx
url, cookie, fn, seconds, n_attackers = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
stats = [{"checked": 0, "refused": 0} for _ in range(n_attackers)]
def attack(n):
    client = httpx.Client(base_url=url, headers={"Cookie": f"medsynth_session={cookie}"}, timeout=120,
                          transport=httpx.HTTPTransport(local_address=f"127.0.0.{n + 2}"))
    body = {"data": ["wrong-password"], "fn_index": fn, "session_hash": f"attacker{n}", "event_data": None}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = client.post("/coordinator/gradio_api/queue/join", json=body)
        stats[n]["refused" if got.status_code == 429 else "checked"] += 1
        time.sleep(0.02)
threads = [threading.Thread(target=attack, args=(n,)) for n in range(n_attackers)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(stats))
"""


def call(client: httpx.Client, fn: int, data: list[object]) -> dict[str, object]:
    """One queued event on /coordinator, read to completion; returns Gradio's completion message."""
    session = secrets.token_hex(8)
    body = {"data": data, "fn_index": fn, "session_hash": session, "event_data": None}
    joined = client.post("/coordinator/gradio_api/queue/join", json=body)
    joined.raise_for_status()
    with client.stream("GET", "/coordinator/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise RuntimeError("the event stream ended early")


def timed(url: str, signin: int, refresh: int) -> tuple[float, float]:
    """Seconds for a correct sign-in in a fresh browser session, then one Refresh."""
    with httpx.Client(base_url=url, timeout=300) as client:
        client.get("/coordinator/")  # the page load sets the session cookie
        started = time.perf_counter()
        out = call(client, signin, [PASSWORD])
        signin_s = time.perf_counter() - started
        assert out.get("success") and out["output"]["data"][1].get("visible") is True, out  # type: ignore[index]
        started = time.perf_counter()
        assert call(client, refresh, [None]).get("success")
        return signin_s, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attackers", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the attack lasts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsynth-lockout-") as tmp:
        ws = Workspace.open(None, Path(tmp) / "data")
        auth.set_coordinator_password(ws.database, PASSWORD)
        running = start_server(AppContext(workspace=ws, views=("coordinator",)))
        try:
            config = httpx.get(f"{running.url}/coordinator/config", timeout=60).json()
            fns = {d.get("api_name"): d["id"] for d in config["dependencies"]}
            signin, refresh = fns["coordinator_signin"], fns["coord_refresh"]
            before = timed(running.url, signin, refresh)
            cookie = httpx.get(f"{running.url}/coordinator/", timeout=60).cookies[auth.COOKIE_NAME]
            argv = [running.url, cookie, str(signin), str(args.seconds), str(args.attackers)]
            attack = subprocess.Popen(
                [sys.executable, "-c", ATTACK, *argv],
                stdout=subprocess.PIPE,
                text=True,
            )
            started = time.monotonic()
            during = []  # (seconds into the attack, sign-in s, refresh s), repeated while it lasts
            while time.monotonic() - started < args.seconds - 1:
                at = time.monotonic() - started
                during.append((at, *timed(running.url, signin, refresh)))
                time.sleep(1.0)
            stats = json.loads(attack.communicate(timeout=args.seconds + 300)[0])
        finally:
            running.stop()
            ws.close()
    print(f"{'':28}{'sign-in s':>10}{'refresh s':>10}")
    print(f"{'before the attack':28}{before[0]:10.2f}{before[1]:10.2f}")
    for at, signin_s, refresh_s in during:
        print(f"{f'{args.attackers} attackers, at {at:4.1f} s':28}{signin_s:10.2f}{refresh_s:10.2f}")
    checked, refused = [s["checked"] for s in stats], [s["refused"] for s in stats]
    print("per attacker: passwords checked", checked, "refused (429)", refused)


if __name__ == "__main__":
    main()
