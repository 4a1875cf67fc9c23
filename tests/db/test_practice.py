"""The practice block (``practice_pairs``): config, items from outside the study, order, feedback, flags."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from db.errors import InputError
from db.export import export_study, raters_frame, ratings_frame
from db.media import zoom_size
from db.models import Assignment, ImageBlob, ItemKind, Rater, StudyItem
from db.practice import practice_feedback, practice_progress
from db.progress import list_studies, model_progress, rater_progress
from db.raters import add_rater, rater_by_token
from db.ratings import next_pair, progress, submit_rating
from db.studies import check_study, create_study, get_study, parse_study_config, served_pairs
from db.workspace import Workspace
from tests.rating import unrated_pairs

# 2 models x K 2 = 4 slots: both models are shown the same 6 cases, so 24 - 6 = 18 fixture cases stay outside
PRACTICE_TOML = """
name = "pilot"
seed = 5
datasets = ["gi"]
models = ["blur", "mirror"]
cases_per_model = 6
raters_per_item = 2
rater_slots = 4
practice_pairs = 3
"""
ANSWERS = {"realism_left": 4, "realism_right": 2, "accuracy_left": 3, "accuracy_right": 3,
           "which_generated": "right", "confidence": 4}  # fmt: skip


def test_config_default_and_errors() -> None:
    assert parse_study_config(PRACTICE_TOML.replace("practice_pairs = 3", "")).practice_pairs == 0
    assert parse_study_config(PRACTICE_TOML).practice_pairs == 3
    with pytest.raises(InputError, match=r"'practice_pairs' must be a whole number 0-50 .*got -2"):
        parse_study_config(PRACTICE_TOML.replace("= 3", "= -2"))
    for bad in ("true", "1.5", '"3"', "51"):
        with pytest.raises(InputError, match="'practice_pairs'"):
            parse_study_config(PRACTICE_TOML.replace("= 3", f"= {bad}"))
    h2h = PRACTICE_TOML + 'kind = "head-to-head"\n'
    with pytest.raises(InputError, match=r"'practice_pairs' = 3: practice pairs are not available for head-to-head"):
        parse_study_config(h2h)
    assert parse_study_config(h2h.replace("= 3", "= 0")).kind == "head-to-head"


def test_more_practice_than_outside_cases_is_refused_naming_the_numbers(gi_workspace: Workspace) -> None:
    with pytest.raises(InputError) as err, gi_workspace.database.session() as s:  # rolled back
        create_study(s, gi_workspace.store, PRACTICE_TOML.replace("= 3", "= 19"))
    assert "'practice_pairs' = 19" in str(err.value) and "only 18 case(s)" in str(err.value)
    with gi_workspace.database.session() as s:
        assert create_study(s, gi_workspace.store, PRACTICE_TOML.replace("= 3", "= 18")).practice == 18


def build(ws: Workspace, toml: str = PRACTICE_TOML, raters: int = 2) -> list[str]:
    with ws.database.session() as s:
        create_study(s, ws.store, toml)
    with ws.database.session() as s:
        return [add_rater(s, "pilot", f"Dr {i}", "gastroenterology").token for i in range(raters)]


def test_practice_items_come_from_outside_the_study_and_are_prerendered(gi_workspace: Workspace) -> None:
    build(gi_workspace, raters=0)
    with gi_workspace.database.session() as s:
        items = list(s.scalars(select(StudyItem)))
    practice = [i for i in items if i.kind == ItemKind.PRACTICE]
    real = [i for i in items if i.kind != ItemKind.PRACTICE]
    assert len(practice) == 3 and len(real) == 12
    seen = {i.case_id for i in real}, {i.real_sha256 for i in real} | {i.generated_sha256 for i in real}
    for p in practice:
        assert p.case_id not in seen[0] and not {p.real_sha256, p.generated_sha256} & seen[1]
        for sha in (p.real_sha256, p.generated_sha256):  # served through the same pre-rendered copies
            with gi_workspace.database.session() as s:
                natives = [(b.width, b.height) for b in s.scalars(select(ImageBlob).where(
                    ImageBlob.sha256.in_([p.real_sha256, p.generated_sha256])))]  # fmt: skip
            for size in (512, zoom_size(natives, "square")):
                assert gi_workspace.store.served_path(sha, size=size, fit="square").exists()
    assert len({p.case_id for p in practice}) == 3
    assert {p.generated_side.value for p in practice} == {"left", "right"}


def test_practice_comes_first_resumes_and_gives_feedback_only_for_practice(gi_workspace: Workspace) -> None:
    token = build(gi_workspace)[0]
    with gi_workspace.database.session() as s:
        rater = rater_by_token(s, token)
        rid = rater.id
        positions = sorted(s.scalars(select(Assignment.position).where(Assignment.rater_id == rid)))
        assert positions[:4] == [-3, -2, -1, 0] and progress(s, rid) == (0, len(positions) - 3)
    sides = []
    for number in (1, 2, 3):
        with gi_workspace.database.session() as s:
            pair = next_pair(s, rater_by_token(s, token))  # a fresh session each time: what a refresh does
            assert pair.practice and pair.practice_number == number and pair.practice_total == 3
            assert (pair.done, pair.rated_any) == (0, number > 1) and pair.position == number - 4
            assert progress(s, rid)[0] == 0
        submit_rating(gi_workspace.database, rid, pair.item_public_id, uuid.uuid4().hex, ANSWERS)
        with gi_workspace.database.session() as s:
            fb = practice_feedback(s, rid, pair.position)
            item = s.scalar(select(StudyItem).where(StudyItem.public_id == pair.item_public_id))
            assert fb is not None and fb.generated_side == item.generated_side.value
            assert (fb.number, fb.total, fb.last, fb.correct) == (number, 3, number == 3, fb.generated_side == "right")
            sides.append(fb.generated_side)
            assert practice_progress(s, rid) == (number, 3)
    with gi_workspace.database.session() as s:
        first = next_pair(s, rater_by_token(s, token))
        assert not first.practice and first.position == 0 and first.done == 0 and first.rated_any
    submit_rating(gi_workspace.database, rid, first.item_public_id, uuid.uuid4().hex, ANSWERS)
    with gi_workspace.database.session() as s:
        assert practice_feedback(s, rid, 0) is None  # real pairs never get feedback
        assert progress(s, rid)[0] == 1 and next_pair(s, rater_by_token(s, token)).done == 1


def rate_all(ws: Workspace, token: str, answers: dict[str, object] = ANSWERS) -> int:
    n = 0
    for rid, pair in unrated_pairs(ws.database, token):
        submit_rating(ws.database, rid, pair.item_public_id, uuid.uuid4().hex, answers)
        n += 1
    return n


def test_exports_flag_practice_and_progress_leaves_it_out(gi_workspace: Workspace, tmp_path: Path) -> None:
    tokens = build(gi_workspace)
    rated = rate_all(gi_workspace, tokens[0])
    with gi_workspace.database.session() as s:
        study = get_study(s, "pilot")
        analysed = ratings_frame(s, "pilot")
        exported = ratings_frame(s, "pilot", practice=True)
        result = export_study(s, "pilot", tmp_path / "out", "csv")
        raters = raters_frame(s, study)
        per_rater = rater_progress(s, "pilot")
        per_model = model_progress(s, "pilot")
        row = next(r for r in list_studies(s) if r.name == "pilot")
        pairs, _ = served_pairs(s, "pilot")
        mine = select(Assignment).join(Rater).where(Rater.name == "Dr 0", Assignment.position >= 0)
        n_real = len(list(s.scalars(mine)))
    assert rated == n_real + 3
    assert len(analysed) == n_real and not analysed["practice"].any() and "practice" not in set(analysed["item_kind"])
    assert len(exported) == rated and exported["practice"].sum() == 3
    assert (exported.loc[exported["practice"], "item_kind"] == "practice").all()
    back = pd.read_csv(tmp_path / "out" / "ratings.csv")
    assert back["practice"].dtype == bool and back["practice"].sum() == 3 and len(back) == rated
    assert (back.loc[back["practice"], "position"] < 0).all() and (back.loc[~back["practice"], "position"] >= 0).all()
    meta = json.loads((tmp_path / "out" / "study.json").read_text(encoding="utf-8-sig"))
    assert (meta["ratings"], meta["practice_ratings"], result.ratings) == (n_real, 3, n_real)
    assert list(raters["assigned"]) == [n_real, n_real] and list(raters["rated"]) == [n_real, 0]
    assert [(p.assigned, p.rated) for p in per_rater] == [(n_real, n_real), (n_real, 0)]
    assert sum(m.items for m in per_model) == 12 and sum(m.rated for m in per_model) == n_real
    assert (row.items, row.ratings) == (12, n_real)
    assert all(p.position >= 0 for p in pairs) and len(pairs) == 2 * n_real  # the blinding audit's pairs
    items = pd.read_csv(tmp_path / "out" / "items.csv")
    assert (items["item_kind"] == "practice").sum() == 3


def test_design_audit_is_the_same_with_and_without_practice(gi_workspace: Workspace) -> None:
    build(gi_workspace, raters=4)
    with gi_workspace.database.session() as s:
        with_practice = check_study(s, "pilot")
    assert "practice" not in with_practice
    with gi_workspace.database.session() as s:
        s.execute(Assignment.__table__.delete().where(Assignment.position < 0))
        s.execute(StudyItem.__table__.delete().where(StudyItem.kind == ItemKind.PRACTICE))
    with gi_workspace.database.session() as s:
        assert check_study(s, "pilot") == with_practice


def test_the_ratings_table_doc_names_every_column() -> None:
    from db.export import RATING_COLUMNS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "ratings-table.md").read_text()
    rows = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| ")]
    named = {name.strip() for row in rows for name in row.split(",")}
    assert set(RATING_COLUMNS) <= named, set(RATING_COLUMNS) - named


def test_with_specialty_routing_a_rater_practises_on_their_own_domain(gi_workspace: Workspace) -> None:
    with gi_workspace.database.session() as s:
        create_study(s, gi_workspace.store, PRACTICE_TOML + "specialty_routing = true\n")
    with gi_workspace.database.session() as s:
        gi = add_rater(s, "pilot", "Gastro", "gastroenterology")
        rad = add_rater(s, "pilot", "Radio", "radiology")
    with gi_workspace.database.session() as s:
        first = select(Assignment.id).join(Rater).where(Assignment.position < 0)
        practice = {name: len(s.scalars(first.where(Rater.name == name)).all()) for name in ("Gastro", "Radio")}
    assert gi.assignments > 0 and rad.assignments == 0  # a GI-only study
    assert practice == {"Gastro": 3, "Radio": 0}
