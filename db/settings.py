"""Where MedSynth keeps its data: the database URL and the data folder (media store, exports)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = "./medsynth-data"


@dataclass(frozen=True)
class Settings:
    """Resolved locations. ``db_url`` defaults to a SQLite file inside ``data_dir``."""

    data_dir: Path
    db_url: str

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @classmethod
    def resolve(cls, db_url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> Settings:
        """Resolve from explicit values, then ``MEDSYNTH_DB`` / ``MEDSYNTH_DATA``, then the defaults."""
        data = Path(data_dir or os.environ.get("MEDSYNTH_DATA") or DEFAULT_DATA_DIR).expanduser().resolve()
        url = db_url or os.environ.get("MEDSYNTH_DB") or f"sqlite:///{data / 'medsynth.sqlite3'}"
        return cls(data_dir=data, db_url=url)
