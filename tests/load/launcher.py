"""A launcher that forks ``python app.py ...`` processes from one interpreter that has already imported the app.

Each ``python app.py serve`` spends about 5 s importing Gradio and the app before it opens the database; the
kill test restarts its server four times per backend. The launcher pays that import once per test process:
it imports the modules named on its command line, then, for each request, forks a child that does what
``python app.py ARGS`` does after its imports (``app.main(ARGS)``, in its own session, with the request's
working directory, environment and log file) and exits with its status. The child is a separate process
with its own process group, so ``os.killpg(pid, SIGKILL)`` kills it exactly as it kills a server started
from the command line, and nothing of it survives in the launcher.

Forking is safe here because the launcher never starts a thread (checked before every fork). Protocol, one
JSON object per line: the test writes ``{"argv": [...], "cwd": ..., "env": {...}, "log": path}`` and reads
``{"pid": N}`` at once, then ``{"exit": N, "code": C}`` when that child ends (``C`` as ``Popen.returncode``:
negative for a signal). End of input ends the launcher.

Run as ``python tests/load/launcher.py MODULE...`` (see :class:`tests.load.client.Launcher`).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _send(message: dict[str, Any]) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())  # unbuffered: a child never inherits pending output


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become ``python app.py ARGS`` and exit with its status (never returns)."""
    code = 1
    try:
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        import app

        code = app.main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the child reports everything to its log, as the interpreter would
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def main(modules: list[str]) -> int:
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    for name in modules:
        importlib.import_module(name)
    _send({"ready": True})
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        _reap()
        if not readable:
            continue
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return 0
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            if threading.active_count() != 1:
                raise RuntimeError(f"the launcher has threads {threading.enumerate()}: forking would be unsafe")
            pid = os.fork()
            if pid == 0:
                _run_child(request)
            _send({"pid": pid})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
