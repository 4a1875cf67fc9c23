"""A workspace: the settings, the opened database and the media store, together."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from db.errors import MedSynthError
from db.media import MediaStore
from db.session import Database, open_database
from db.settings import Settings


@dataclass
class Workspace:
    """Everything a command or the app needs to reach stored data."""

    settings: Settings
    database: Database
    store: MediaStore

    @classmethod
    def open(cls, db_url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> Workspace:
        """Resolve settings, create the data folder, open (and upgrade) the database."""
        settings = Settings.resolve(db_url, data_dir)
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MedSynthError(f"cannot create the data folder {settings.data_dir}: {exc.strerror}") from None
        try:  # a real write: os.access says yes to root even on a read-only mount
            with tempfile.NamedTemporaryFile(dir=settings.data_dir, prefix=".write-probe-"):
                pass
        except OSError as exc:
            raise MedSynthError(
                f"cannot write to the data folder {settings.data_dir} ({exc.strerror or exc}); "
                "choose another with --data-dir"
            ) from None
        store = MediaStore(settings.media_dir)
        store.sweep_temporary()
        return cls(settings=settings, database=open_database(settings.db_url), store=store)

    def close(self) -> None:
        self.database.dispose()
