"""Start-up time of ``python app.py``: from the command to the first HTTP 200 of the rater page.

    python benchmarks/startup.py [--repeats 3] [--no-demo-build] [--db postgresql+psycopg://...]

Cases, each in a fresh data folder under a temporary directory, on 127.0.0.1 and a free port:

* ``cold, --no-demo``: first start (the database is created and migrated);
* ``warm, --no-demo``: a later start on the same data;
* ``first run, demo build``: ``python app.py serve`` as a new user runs it: the demo study is built
  (procedural data, the demo model generates every case on CPU) before the server answers;
* ``warm, demo``: a later start with the demo already built.

Prints one line per case (median and range of ``--repeats`` starts; the demo build runs once). Figures
are read off, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this folder would come first on sys.path and its analysis.py would shadow the package.
sys.path[:] = [str(_ROOT), *(p for p in sys.path if Path(p or ".").resolve() != _ROOT / "benchmarks")]

from tests.load.client import AppServer  # noqa: E402


@dataclass(frozen=True)
class StartupFigure:
    """Seconds to the first HTTP 200 for one case."""

    case: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def describe(self) -> str:
        spread = f" (min {min(self.seconds):.1f}, max {max(self.seconds):.1f}, n={len(self.seconds)})"
        return f"{self.case:<26} {self.median:7.1f} s" + (spread if len(self.seconds) > 1 else "")


def time_start(data_dir: Path, *, demo: bool, db_url: str | None = None, timeout_s: float = 1800.0) -> float:
    """Seconds from launching ``python app.py serve`` to its first HTTP 200 on ``/``; the server is then stopped."""
    with AppServer(data_dir, db_url, demo=demo, log_path=data_dir.parent / f"{data_dir.name}.log") as server:
        return server.start(timeout_s=timeout_s)


def measure_startup(
    root: Path, *, repeats: int = 3, demo_build: bool = True, db_url: str | None = None
) -> list[StartupFigure]:
    """Time the start-up cases (see the module docstring) under ``root``.

    With ``db_url`` (PostgreSQL) the cold case reuses one database: only the first start creates the
    schema, so ``cold`` then has one sample.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    cold = [time_start(root / f"cold-{n}", demo=False, db_url=db_url) for n in range(1 if db_url else repeats)]
    warm = [time_start(root / "cold-0", demo=False, db_url=db_url) for _ in range(repeats)]
    figures = [StartupFigure("cold, --no-demo", cold), StartupFigure("warm, --no-demo", warm)]
    if demo_build and db_url is None:
        built = [time_start(root / "demo", demo=True)]
        again = [time_start(root / "demo", demo=True) for _ in range(repeats)]
        figures += [StartupFigure("first run, demo build", built), StartupFigure("warm, demo", again)]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-demo-build", action="store_true", help="skip the demo cases (the build takes minutes)")
    parser.add_argument("--db", default=None, help="time against this database URL instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsynth-startup-") as tmp:
        figures = measure_startup(Path(tmp), repeats=args.repeats, demo_build=not args.no_demo_build, db_url=args.db)
    print("python app.py serve -> first HTTP 200 on / (127.0.0.1)")
    for figure in figures:
        print(figure.describe())


if __name__ == "__main__":
    main()
