"""Head-to-head studies in the database: built, dealt to raters in balance, served, exported."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from PIL import ImageOps
from sqlalchemy import select

from db.errors import InputError
from db.importers import import_generated
from db.models import Assignment, GeneratedImage, Model, Rater, Side, StudyItem
from db.raters import add_rater
from db.studies import check_study, create_study, parse_study_config, served_pairs, served_side
from db.workspace import Workspace

from .conftest import write_generated

H2H_TOML = """
name = "h2h"
seed = 5
kind = "head-to-head"
reference = true
datasets = ["gi"]
models = ["blur", "mirror", "flip"]
cases_per_model = 6   # cases per model pair
raters_per_item = 2
rater_slots = 4
"""


@pytest.fixture
def h2h_workspace(gi_workspace: Workspace, shared_data: Path, tmp_path: Path) -> Workspace:
    names = [r["file"] for r in csv.DictReader((shared_data / "gi" / "captions.csv").open())][:24]
    made = write_generated(shared_data / "gi", tmp_path / "gen-flip", names, ImageOps.flip)
    import_generated(gi_workspace.database, gi_workspace.store, made, dataset="gi", model="flip")
    return gi_workspace


def test_config_kind_defaults_and_is_checked() -> None:
    assert parse_study_config(H2H_TOML).kind == "head-to-head"
    assert parse_study_config(H2H_TOML.replace('kind = "head-to-head"\n', "")).kind == "real-vs-generated"
    with pytest.raises(InputError, match="'kind'"):
        parse_study_config(H2H_TOML.replace('"head-to-head"', '"tournament"'))


def test_head_to_head_study_is_balanced_per_rater_and_serves_both_models(h2h_workspace: Workspace) -> None:
    ws = h2h_workspace
    with ws.database.session() as s:
        summary = create_study(s, ws.store, H2H_TOML)
    assert summary.items == 3 * 6
    with ws.database.session() as s:
        raters = [add_rater(s, "h2h", f"Dr {i}", "gastroenterology", 5) for i in range(4)]
    with ws.database.session() as s:
        names = dict(s.execute(select(Model.id, Model.name)).tuples().all())
        items = list(s.scalars(select(StudyItem)))
        gen_case = dict(s.execute(select(GeneratedImage.id, GeneratedImage.case_id)).tuples().all())
        for it in items:  # the same case from two different models
            assert it.second_model_id is not None and it.second_model_id != it.model_id
            assert gen_case[it.generated_image_id] == gen_case[it.second_generated_image_id] == it.case_id
        pairs = Counter(frozenset((names[it.model_id], names[it.second_model_id])) for it in items)
        assert set(pairs.values()) == {6} and len(pairs) == 3
        sides = Counter((frozenset((names[it.model_id], names[it.second_model_id])), it.generated_side) for it in items)
        assert set(sides.values()) == {3}  # each pair: first model on the left half the time
        reads = Counter()
        for new in raters:
            rater = s.scalars(select(Rater).where(Rater.public_id == new.rater_id)).one()
            rows = s.execute(select(Assignment.position, StudyItem).join(StudyItem)
                             .where(Assignment.rater_id == rater.id).order_by(Assignment.position)).all()  # fmt: skip
            mine = [it for _, it in rows]
            assert len({it.case_id for it in mine}) == len(mine)  # no case (so no image) twice
            per_pair = Counter(frozenset((it.model_id, it.second_model_id)) for it in mine)
            assert set(per_pair.values()) == {3}  # 6 items x K 2 / 4 slots per pair
            reads.update(it.id for it in mine)
            for position, it in rows:  # both sides serve the two models' images, never the real one
                left = served_side(s, rater.id, position, Side.LEFT)
                right = served_side(s, rater.id, position, Side.RIGHT)
                assert left is not None and right is not None
                assert {left.sha256, right.sha256} == {it.generated_sha256, it.second_sha256}
                assert it.sha256_on(it.generated_side) == it.generated_sha256
        assert set(reads.values()) == {2}
        report = check_study(s, "h2h")
        assert "balanced: yes" in report and "NOT BALANCED" not in report and "as stored, 4 rater(s)" in report
        pairs_served, _ = served_pairs(s, "h2h")
        model_images = {it.generated_sha256 for it in items} | {it.second_sha256 for it in items}
        assert len(pairs_served) == 18 * 2
        assert all({p.left_sha256, p.right_sha256} <= model_images for p in pairs_served)


def test_head_to_head_refuses_what_it_does_not_make(h2h_workspace: Workspace) -> None:
    with h2h_workspace.database.session() as s, pytest.raises(InputError, match="attention"):
        create_study(s, h2h_workspace.store, H2H_TOML + "attention_fraction = 0.1\n")


def test_exports_carry_both_models_and_the_chosen_side(h2h_workspace: Workspace) -> None:
    import uuid

    from analysis.preference import fit_bradley_terry, preferences_from_ratings
    from db.export import RATING_COLUMNS, ratings_frame
    from db.head_to_head import HEAD_TO_HEAD_QUESTIONS
    from db.ratings import next_pair, submit_rating

    ws = h2h_workspace
    with ws.database.session() as s:
        create_study(s, ws.store, H2H_TOML)
    with ws.database.session() as s:
        new = [add_rater(s, "h2h", f"Dr {i}", "gastroenterology", 5) for i in range(4)]
    shown: dict[str, tuple[str, str]] = {}  # item -> (left model, right model) as the test rater "saw" them
    for n in new:
        with ws.database.session() as s:
            rater = s.scalars(select(Rater).where(Rater.public_id == n.rater_id)).one()
            rater_id = rater.id
        for step in range(9):
            with ws.database.session() as s:
                rater = s.get(Rater, rater_id)
                pair = next_pair(s, rater)
                assert pair is not None
                item = s.scalars(select(StudyItem).where(StudyItem.public_id == pair.item_public_id)).one()
                names = dict(s.execute(select(Model.id, Model.name)).tuples().all())
                by_sha = {item.generated_sha256: names[item.model_id], item.second_sha256: names[item.second_model_id]}
                left, right = by_sha[pair.left_sha256], by_sha[pair.right_sha256]
            shown[pair.item_public_id] = (left, right)
            if step == 0:  # the real-vs-generated questions are refused for a head-to-head pair
                default = {"realism_left": 4, "realism_right": 2, "accuracy_left": 3, "accuracy_right": 3,
                           "which_generated": "right", "confidence": 4}  # fmt: skip
                with pytest.raises(InputError, match="head-to-head study"):
                    submit_rating(ws.database, rater_id, pair.item_public_id, str(uuid.uuid4()), default)
            choice = "tie" if step % 4 == 3 else ("left" if (left == "blur") ^ (step % 3 == 0) else "right")
            answers = {"prefer_realism": choice, "prefer_prompt": "left", "realism_left": 3}
            submit_rating(ws.database, rater_id, pair.item_public_id, str(uuid.uuid4()), answers,
                          questions=HEAD_TO_HEAD_QUESTIONS)  # fmt: skip
    with ws.database.session() as s:
        frame = ratings_frame(s, "h2h")
    assert list(frame.columns) == RATING_COLUMNS and len(frame) == 36
    for row in frame.itertuples():
        assert (row.model_left, row.model_right) == shown[row.item]
        assert {row.model, row.second_model} == {row.model_left, row.model_right}
        assert row.prefer_realism in ("left", "right", "tie") and row.prefer_prompt == "left"
    records = preferences_from_ratings(frame)
    assert len(records) == 36
    fit = fit_bradley_terry(records)
    assert fit.strengths().idxmax() == "blur"  # the test raters mostly preferred blur
