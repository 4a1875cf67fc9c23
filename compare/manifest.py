"""The stage cache of a comparison: ``manifest.json`` in its output folder plus the database's ``compare_stages``.

A stage is done when either record holds it with the same fingerprint (a sha256 of everything it depends on);
the database half is :mod:`db.stages` (no query here), so a lost manifest does not redo finished work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db.stages import find_stage, record_stage

if TYPE_CHECKING:
    from db.session import Database

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"


def fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (sorted keys): what a stage depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Manifest:
    """The stage record of one comparison: ``manifest.json`` in the output folder plus the ``compare_stages`` table."""

    path: Path
    database: Database
    comparison: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: Path, database: Database, comparison: str) -> Manifest:
        path = out_dir / MANIFEST_FILE
        stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {}) if path.is_file() else {}
        return cls(path, database, comparison, stages)

    def done(self, stage: str, stage_fingerprint: str) -> dict[str, Any] | None:
        """The outputs of ``stage`` if it finished with this fingerprint (manifest, else the database)."""
        entry = self.stages.get(stage)
        if entry and entry.get("status") == "done" and entry.get("fingerprint") == stage_fingerprint:
            return entry["outputs"]
        outputs = find_stage(self.database, self.comparison, stage, stage_fingerprint)
        if outputs is not None:
            self.stages[stage] = {"status": "done", "fingerprint": stage_fingerprint, "outputs": outputs}
            self._write()
        return outputs

    def record(self, stage: str, stage_fingerprint: str, outputs: dict[str, Any], started: float) -> None:
        """Write a finished stage to the manifest and the database's stage cache."""
        seconds = time.perf_counter() - started
        entry = {
            "status": "done",
            "fingerprint": stage_fingerprint,
            "seconds": seconds,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "outputs": outputs,
        }
        self.stages[stage] = entry
        self._write()
        record_stage(self.database, self.comparison, stage, stage_fingerprint, outputs, seconds=seconds)
        log.info("comparison %s: stage %s done in %.1f s", self.comparison, stage, seconds)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        data = {"comparison": self.comparison, "stages": self.stages}
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.path)
