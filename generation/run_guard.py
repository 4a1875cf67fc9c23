"""Guards for long training runs: one writer per output folder, and resume only with the same settings.

A run that takes days must fail in seconds when it cannot succeed, and a resumed run must continue the
same experiment: :func:`out_dir_lock` refuses a second process writing into the same ``--out``, and
:func:`check_resume_settings` compares the settings a checkpoint was made with to the current ones and
names every key that differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from db.errors import InputError

logger = logging.getLogger(__name__)

SETTINGS_FILE = "run_settings.json"


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 of the settings as canonical JSON (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def check_resume_settings(folder: Path, settings: Mapping[str, Any]) -> None:
    """Record ``settings`` in ``folder`` on a fresh start; on resume, refuse if they differ.

    Raises
    ------
    InputError
        Naming each setting that differs from the one the checkpoints were made with.
    """
    path = folder / SETTINGS_FILE
    current = _canonical(settings)
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
        if changed:
            details = "; ".join(f"{k}: {before.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise InputError(
                f"the checkpoints in {folder} were made with other settings ({details}); resume with the same "
                "settings, train into another --out, or start over without --resume"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextmanager
def out_dir_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` for the block; a second holder fails at once.

    Raises
    ------
    InputError
        When another process is writing into ``out_dir``.
    """
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / ".medsynth.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise InputError(f"{out_dir} is being written by {holder}; wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        logger.debug("locked %s", out_dir)
        yield
    finally:
        os.close(fd)  # closing releases the lock
