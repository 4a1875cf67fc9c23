"""Exports that open anywhere: CSV with a UTF-8 BOM (Excel shows "Dr Åsa"), study.json with the MedSynth
version/commit and export time, and each real image's licence and attribution (ROCO v1, CC BY) in items."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
from PIL import Image, ImageFilter

from db.export import export_study
from db.importers import import_dataset, import_generated
from db.raters import add_rater
from db.studies import create_study
from db.workspace import Workspace

from .test_import import roco_v1_layout

STUDY = """
name = "roco-pilot"
seed = 3
datasets = ["roco"]
models = ["blur", "sharp"]
cases_per_model = 4
"""


def test_export_has_bom_version_and_licences(workspace: Workspace, shared_data: Path, tmp_path: Path) -> None:
    folder, prov = roco_v1_layout(shared_data, tmp_path, by_roco_id=True)
    import_dataset(workspace.database, workspace.store, "roco", folder, name="roco")
    for model, filt in (("blur", ImageFilter.GaussianBlur(2)), ("sharp", ImageFilter.SHARPEN)):
        out = tmp_path / model
        out.mkdir()
        with (out / "manifest.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "case", "seed"])
            for r in prov[:10]:
                with Image.open(folder / "images" / f"{r['roco_id']}.jpg") as im:
                    im.convert("RGB").resize((96, 96)).filter(filt).save(out / f"{r['roco_id']}.png")
                w.writerow([f"{r['roco_id']}.png", r["roco_id"], 1])
        import_generated(workspace.database, workspace.store, out, dataset="roco", model=model)
    with workspace.database.session() as s:
        create_study(s, workspace.store, STUDY)
    with workspace.database.session() as s:
        add_rater(s, "roco-pilot", "Dr Åsa Ørsted", "radiology", 7)
    with workspace.database.session() as s:
        export_study(s, "roco-pilot", tmp_path / "out", "csv")
    raw = (tmp_path / "out" / "raters.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and "Dr Åsa Ørsted".encode() in raw
    assert pd.read_csv(tmp_path / "out" / "raters.csv")["rater_name"].tolist() == ["Dr Åsa Ørsted"]
    items = pd.read_csv(tmp_path / "out" / "items.csv")
    licence = {r["roco_id"]: r["license"] for r in prov}
    assert len(items) > 0 and (items["license"] == items["case"].map(licence)).all()
    assert items["attribution"].str.contains(r"PMC\d+").all()
    meta = json.loads((tmp_path / "out" / "study.json").read_text(encoding="utf-8"))
    assert meta["medsynth"]["version"] == "0.1.0"
    assert meta["exported_at"].endswith("Z") and meta["exported_at"][:2] == "20"
    with workspace.database.session() as s:
        export_study(s, "roco-pilot", tmp_path / "plain", "csv", bom=False)
    assert (tmp_path / "plain" / "raters.csv").read_bytes().startswith(b"study,")
