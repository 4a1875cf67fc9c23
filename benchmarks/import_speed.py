"""Import speed: a Kvasir-VQA style ``metadata.csv`` of N rows over D distinct JPEGs (many questions per image).

    python benchmarks/import_speed.py [--rows 20000] [--distinct 2000] [--workers 2] [--quick]

The JPEGs are made from the 40 real MEDVQA-GI images in ../shared/data/gi at their native size (each a
different crop, so every file is distinct), written to a temporary folder, then imported with the
``kvasir-vqa`` reader into a fresh SQLite workspace. Prints seconds, rows/s and images/s.
Target (reported, not asserted): 20,000 rows / 2,000 distinct JPEGs in <= 60 s on 2 cores.
``--quick``: 2,000 rows over 200 images.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.importers import import_dataset
from db.workspace import Workspace

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_layout(root: Path, rows: int, distinct: int) -> None:
    gi = SHARED / "gi"
    sources = sorted(p for p in gi.glob("cl*.jpg"))
    prompts = [r["prompt"] for r in csv.DictReader((gi / "prompts_per_image.csv").open())]
    (root / "images").mkdir(parents=True)
    opened = [Image.open(p).convert("RGB") for p in sources]
    for i in range(distinct):
        img = opened[i % len(opened)]
        dx, dy = 1 + (i // len(opened)) % 40, 1 + (i // len(opened)) // 40
        img.crop((dx, dy, img.width - 1, img.height - 1)).save(root / "images" / f"img{i:05d}.jpg", quality=90)
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "question", "answer", "img_id"])
        for n in range(rows):
            w.writerow(["hyperkvasir", prompts[n % len(prompts)], "yes", f"img{n % distinct:05d}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--distinct", type=int, default=2_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2,000 rows over 200 images")
    args = ap.parse_args()
    rows, distinct = (2_000, 200) if args.quick else (args.rows, args.distinct)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "kvasir-vqa"
        t0 = time.perf_counter()
        make_layout(root, rows, distinct)
        setup = time.perf_counter() - t0
        ws = Workspace.open(f"sqlite:///{Path(tmp) / 'db.sqlite3'}", Path(tmp) / "data")
        t0 = time.perf_counter()
        summary = import_dataset(ws.database, ws.store, "kvasir-vqa", root, name="bench", workers=args.workers)
        seconds = time.perf_counter() - t0
        ws.close()
    print(summary.describe())
    print(json.dumps({"rows": rows, "distinct_images": distinct, "workers": args.workers,
                      "setup_s": round(setup, 1), "import_s": round(seconds, 2),
                      "rows_per_s": round(rows / seconds), "images_per_s": round(distinct / seconds, 1),
                      "target": "20,000 rows / 2,000 JPEGs <= 60 s on 2 cores"}))  # fmt: skip


if __name__ == "__main__":
    main()
