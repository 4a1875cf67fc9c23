"""Study building: deterministic from config + seed, balanced, routed; ratings idempotent; exports tidy."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from db.errors import AccessDenied, ConflictError, InputError, NotFoundError
from db.export import RATING_COLUMNS, export_study, ratings_frame
from db.models import Assignment, Case, GeneratedImage, ItemKind, Rater, Rating, StudyItem
from db.raters import add_rater, rater_by_token, revoke_rater
from db.ratings import SubmitStatus, next_pair, submit_rating
from db.studies import create_study, parse_study_config
from db.workspace import Workspace

from .conftest import STUDY_TOML

ANSWERS = {"realism_left": 4, "realism_right": 2, "accuracy_left": 3, "accuracy_right": 3,
           "which_generated": "right", "confidence": 4}  # fmt: skip


def build(ws: Workspace, toml: str = STUDY_TOML, raters: int = 3) -> list:  # type: ignore[type-arg]
    with ws.database.session() as s:
        create_study(s, ws.store, toml)
    with ws.database.session() as s:
        return [add_rater(s, "pilot", f"Dr {i}", "gastroenterology", 3 + i) for i in range(raters)]


def snapshot(ws: Workspace) -> list[tuple]:  # type: ignore[type-arg]
    with ws.database.session() as s:
        rows = s.execute(
            select(StudyItem.kind, StudyItem.case_id, StudyItem.model_id, StudyItem.generated_side,
                   Rater.name, Assignment.position)
            .join(Assignment, Assignment.item_id == StudyItem.id).join(Rater, Assignment.rater_id == Rater.id)
            .order_by(Rater.name, Assignment.position)
        ).all()  # fmt: skip
    return [tuple(r) for r in rows]


def test_same_config_and_seed_give_the_same_study(gi_workspace: Workspace, tmp_path: Path) -> None:
    build(gi_workspace)
    first = snapshot(gi_workspace)
    with gi_workspace.database.session() as s:
        s.execute(StudyItem.__table__.delete())  # drop and rebuild from scratch
        from db.models import Study

        s.execute(Rater.__table__.delete())
        s.execute(Study.__table__.delete())
    build(gi_workspace)
    assert snapshot(gi_workspace) == first
    other = STUDY_TOML.replace("seed = 11", "seed = 12").replace('"pilot"', '"pilot2"')
    with gi_workspace.database.session() as s:
        create_study(s, gi_workspace.store, other)
        a = [tuple(r) for r in s.execute(select(StudyItem.case_id, StudyItem.generated_side)
                                         .join(StudyItem.study).where(StudyItem.study.has(name="pilot")))]  # fmt: skip
        b = [tuple(r) for r in s.execute(select(StudyItem.case_id, StudyItem.generated_side)
                                         .where(StudyItem.study.has(name="pilot2")))]  # fmt: skip
    assert sorted(a) != sorted(b)


def test_balance_overlap_attention_and_repeats(gi_workspace: Workspace) -> None:
    raters = build(gi_workspace)
    with gi_workspace.database.session() as s:
        items = list(s.scalars(select(StudyItem)))
        normal = [i for i in items if i.kind == ItemKind.NORMAL]
        assert len(normal) == 24
        for model_id in {i.model_id for i in normal}:
            sides = [i.generated_side.value for i in normal if i.model_id == model_id]
            assert sides.count("left") == sides.count("right") == 6
        assert sum(i.kind == ItemKind.ATTENTION for i in items) == round(0.1 * 24)
        repeats = [i for i in items if i.kind == ItemKind.REPEAT]
        assert len(repeats) == round(0.1 * 24)
        # Overlap K = 2 over 3 slots: every non-repeat item is read by exactly 2 raters.
        counts = dict(s.execute(select(Assignment.item_id, func.count()).group_by(Assignment.item_id)).all())
        assert all(counts[i.id] == 2 for i in items if i.kind != ItemKind.REPEAT)
        # Each repeat goes to the raters of its original, after the original in their order.
        for rep in repeats:
            for a in s.scalars(select(Assignment).where(Assignment.item_id == rep.id)):
                orig = s.scalar(select(Assignment).where(Assignment.item_id == rep.repeat_of_id,
                                                         Assignment.rater_id == a.rater_id))  # fmt: skip
                assert orig is not None and orig.position < a.position
        # Models balanced per rater.
        for r in raters:
            per_model = s.execute(select(StudyItem.model_id, func.count()).join(Assignment)
                                  .where(Assignment.rater.has(name=r.name), StudyItem.kind == ItemKind.NORMAL)
                                  .group_by(StudyItem.model_id)).all()  # fmt: skip
            n = [c for _, c in per_model]
            assert max(n) - min(n) <= 1


def test_specialty_routing(gi_workspace: Workspace, shared_data: Path) -> None:
    toml = STUDY_TOML.replace("attention_fraction = 0.1", "specialty_routing = true")
    with gi_workspace.database.session() as s:
        create_study(s, gi_workspace.store, toml)
    with gi_workspace.database.session() as s:
        gi = add_rater(s, "pilot", "Gastro", "gastroenterology")
        rad = add_rater(s, "pilot", "Radio", "radiology")
    assert gi.assignments > 0 and rad.assignments == 0  # the study holds only GI items


@pytest.mark.parametrize(
    ("patch", "message"),
    [('seed = 11', "missing key 'seed'"), ("cases_per_model = 12", "missing key 'cases_per_model'"),
     ('models = ["blur", "mirror"]', "missing key 'models'")],
)  # fmt: skip
def test_config_errors(patch: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_study_config(STUDY_TOML.replace(patch, ""))


@pytest.mark.parametrize(
    ("text", "message"),
    [("name = ", "invalid TOML"), (STUDY_TOML + "colour = 1\n", "unknown key"),
     (STUDY_TOML.replace("12", "-3"), "cases_per_model"), (STUDY_TOML.replace("0.1", "7.5", 1), "attention_fraction"),
     (STUDY_TOML.replace("rater_slots = 3", "rater_slots = 1"), "rater_slots")],
)  # fmt: skip
def test_malformed_configs(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_study_config(text)


def test_unknown_dataset_model_and_too_few_images(gi_workspace: Workspace) -> None:
    with gi_workspace.database.session() as s:
        with pytest.raises(NotFoundError, match="dataset 'nope'"):
            create_study(s, gi_workspace.store, STUDY_TOML.replace('["gi"]', '["nope"]'))
        with pytest.raises(NotFoundError, match="model 'nope'"):
            create_study(s, gi_workspace.store, STUDY_TOML.replace('"mirror"', '"nope"'))
        with pytest.raises(InputError, match="fewer than cases_per_model"):
            create_study(s, gi_workspace.store, STUDY_TOML.replace("12", "30"))
    build(gi_workspace, raters=0)
    with gi_workspace.database.session() as s, pytest.raises(ConflictError):
        create_study(s, gi_workspace.store, STUDY_TOML)


def rate_next(ws: Workspace, token: str, submission: str | None = None):  # type: ignore[no-untyped-def]
    with ws.database.session() as s:
        rater = rater_by_token(s, token)
        pair = next_pair(s, rater)
        rater_id = rater.id
    sid = submission or uuid.uuid4().hex
    return pair, submit_rating(ws.database, rater_id, pair.item_public_id, sid, ANSWERS)


def test_idempotent_submission_and_resume(gi_workspace: Workspace) -> None:
    raters = build(gi_workspace)
    token = raters[0].token
    pair, first = rate_next(gi_workspace, token, "same-id")
    assert first.status == SubmitStatus.STORED
    with gi_workspace.database.session() as s:
        rater_id = rater_by_token(s, token).id
    again = submit_rating(gi_workspace.database, rater_id, pair.item_public_id, "same-id", ANSWERS)
    assert again.status == SubmitStatus.DUPLICATE and again.rating_id == first.rating_id
    other_tab = submit_rating(gi_workspace.database, rater_id, pair.item_public_id, "another-id", ANSWERS)
    assert other_tab.status == SubmitStatus.ALREADY_RATED
    with gi_workspace.database.session() as s:
        assert s.scalar(select(func.count(Rating.id))) == 1
        nxt = next_pair(s, rater_by_token(s, token))
    assert nxt.item_public_id != pair.item_public_id and nxt.done == 1


def test_concurrent_double_submit_stores_once(gi_workspace: Workspace) -> None:
    raters = build(gi_workspace)
    with gi_workspace.database.session() as s:
        rater = rater_by_token(s, raters[1].token)
        pair = next_pair(s, rater)
        rid = rater.id
    results = []

    def go() -> None:
        results.append(submit_rating(gi_workspace.database, rid, pair.item_public_id, "dbl", ANSWERS))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in results).count(SubmitStatus.STORED) == 1
    assert len({r.rating_id for r in results}) == 1
    with gi_workspace.database.session() as s:
        assert s.scalar(select(func.count(Rating.id))) == 1


def test_rights_and_validation(gi_workspace: Workspace) -> None:
    a, b, _ = build(gi_workspace)
    with gi_workspace.database.session() as s:
        pair_a = next_pair(s, rater_by_token(s, a.token))
        rater_b = rater_by_token(s, b.token).id
        items_b = {i.item.public_id for i in rater_by_token(s, b.token).assignments}
    if pair_a.item_public_id not in items_b:
        with pytest.raises(AccessDenied):
            submit_rating(gi_workspace.database, rater_b, pair_a.item_public_id, "x", ANSWERS)
    with pytest.raises(InputError, match="missing: which_generated"):
        submit_rating(gi_workspace.database, rater_b, next(iter(items_b)), "y",
                      {k: v for k, v in ANSWERS.items() if k != "which_generated"})  # fmt: skip
    with pytest.raises(InputError, match="outside 1-5"):
        submit_rating(gi_workspace.database, rater_b, next(iter(items_b)), "z", {**ANSWERS, "confidence": 9})
    with gi_workspace.database.session() as s:
        revoke_rater(s, "pilot", "Dr 0")
    with gi_workspace.database.session() as s:
        assert rater_by_token(s, a.token) is None
        assert rater_by_token(s, "not-a-token") is None and rater_by_token(s, "") is None


def test_cannot_assess_needs_only_reason(gi_workspace: Workspace) -> None:
    raters = build(gi_workspace)
    with gi_workspace.database.session() as s:
        rater = rater_by_token(s, raters[2].token)
        pair = next_pair(s, rater)
        rid = rater.id
    with pytest.raises(InputError, match="missing: cannot_assess_reason"):
        submit_rating(gi_workspace.database, rid, pair.item_public_id, "c1", {"cannot_assess": True})
    res = submit_rating(gi_workspace.database, rid, pair.item_public_id, "c2",
                        {"cannot_assess": True, "cannot_assess_reason": "image too dark"})  # fmt: skip
    assert res.status == SubmitStatus.STORED


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_export_opens_in_pandas(gi_workspace: Workspace, tmp_path: Path, fmt: str) -> None:
    raters = build(gi_workspace)
    for _ in range(3):
        rate_next(gi_workspace, raters[0].token)
    with gi_workspace.database.session() as s:
        result = export_study(s, "pilot", tmp_path / "out", fmt)
        frame = ratings_frame(s, "pilot")
    assert result.ratings == 3
    reader = {"csv": pd.read_csv, "parquet": pd.read_parquet, "json": pd.read_json}[fmt]
    back = reader(tmp_path / "out" / f"ratings.{fmt}")
    assert list(back.columns) == RATING_COLUMNS and len(back) == 3
    assert (back["realism_generated"] == frame["realism_generated"].astype(int).to_numpy()).all()
    gen_right = frame["generated_side"] == "right"
    assert (frame.loc[gen_right, "realism_generated"] == 2).all() and (
        frame.loc[~gen_right, "realism_generated"] == 4
    ).all()
    assert (frame["correct"] == gen_right).all()
    assert back["study_config_sha256"].nunique() == 1
    for table in ("items", "raters", "models"):
        assert len(reader(tmp_path / "out" / f"{table}.{fmt}")) > 0
    assert (tmp_path / "out" / "study_config.toml").read_text() == STUDY_TOML


def test_study_restricted_to_listed_cases(gi_workspace: Workspace) -> None:
    with gi_workspace.database.session() as s:
        keys = sorted(set(s.scalars(select(Case.key).join(GeneratedImage, GeneratedImage.case_id == Case.id))))[:8]
    toml = STUDY_TOML.replace("cases_per_model = 12", "cases_per_model = 4") + f"cases = {keys!r}\n".replace("'", '"')
    with gi_workspace.database.session() as s:
        create_study(s, gi_workspace.store, toml)
        used = {i.case.key for i in s.scalars(select(StudyItem))}
    assert used <= set(keys) and len(used) >= 4


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), True, "3.5", 2.5, "", [3]])
def test_scale_answers_refuse_non_integers(bad: object) -> None:
    from db.questions import DEFAULT_QUESTIONS

    with pytest.raises(InputError, match="realism_left"):
        DEFAULT_QUESTIONS.validate({**ANSWERS, "realism_left": bad})


def readme_config() -> str:
    """The README's example study config, pointed at the fixture's dataset and models."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("## Study config (TOML)", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    return block.replace('["gi-samples"]', '["gi"]').replace('["blurred", "mirrored"]', '["blur", "mirror"]')


def real_images_per_rater(ws: Workspace) -> list[list[str]]:
    with ws.database.session() as s:
        rows = s.execute(select(Assignment.rater_id, StudyItem.real_sha256, StudyItem.kind)
                         .join(StudyItem, Assignment.item_id == StudyItem.id)
                         .order_by(Assignment.rater_id, Assignment.position)).all()  # fmt: skip
    per: dict[int, list[str]] = {}
    for rater_id, sha, kind in rows:
        if kind == ItemKind.NORMAL:
            per.setdefault(rater_id, []).append(sha)
    return list(per.values())


def test_readme_config_is_balanced_and_check_says_so(gi_workspace: Workspace) -> None:
    from db.studies import check_study

    config = readme_config()
    assert 'models = ["blur", "mirror"]' in config and "rater_slots = 4" in config
    with gi_workspace.database.session() as s:
        summary = create_study(s, gi_workspace.store, config)
    text = summary.describe()
    assert "balanced: yes" in text and "NOT BALANCED" not in text
    assert "real-image recurrences (same real image in two normal pairs, or before its pair): 0" in text
    with gi_workspace.database.session() as s:
        for i in range(4):
            add_rater(s, "gi-pilot", f"Dr {i}", "gastroenterology")
    with gi_workspace.database.session() as s:
        report = check_study(s, "gi-pilot")
        per_rater = s.execute(select(Assignment.rater_id, StudyItem.model_id, func.count())
                              .join(StudyItem, Assignment.item_id == StudyItem.id)
                              .where(StudyItem.kind == ItemKind.NORMAL)
                              .group_by(Assignment.rater_id, StudyItem.model_id)).all()  # fmt: skip
    assert "NOT BALANCED" not in report and "as stored, 4 all rater(s)" in report
    counts: dict[int, list[int]] = {}
    for rater_id, _, n in per_rater:
        counts.setdefault(rater_id, []).append(n)
    assert len(counts) == 4 and all(len(c) == 2 and max(c) - min(c) <= 1 for c in counts.values())
    for shas in real_images_per_rater(gi_workspace):
        assert len(shas) == len(set(shas))  # no real image in two normal pairs of one rater


def test_check_shows_the_imbalance_of_a_study_made_by_the_old_builder(gi_workspace: Workspace) -> None:
    from db.models import Study
    from db.studies import check_study

    with gi_workspace.database.session() as s:
        create_study(s, gi_workspace.store, readme_config())
        study = s.scalar(select(Study))
        study.config = {k: v for k, v in study.config.items() if k != "design_version"}  # as stored before
    with gi_workspace.database.session() as s:
        for i in range(4):
            add_rater(s, "gi-pilot", f"Dr {i}", "gastroenterology")
    with gi_workspace.database.session() as s:
        report = check_study(s, "gi-pilot")
    assert "legacy round-robin" in report and "NOT BALANCED" in report
    assert "reads the models [" in report


def test_every_served_copy_is_rendered_when_the_study_is_created(gi_workspace: Workspace) -> None:
    from db.media import zoom_size
    from db.models import ImageBlob

    with gi_workspace.database.session() as s:
        summary = create_study(s, gi_workspace.store, STUDY_TOML)
        items = list(s.scalars(select(StudyItem)))
        native = {b.sha256: (b.width, b.height) for b in s.scalars(select(ImageBlob))}
    assert summary.rendered > 0
    for item in items:
        pair = (item.real_sha256, item.generated_sha256)
        common = zoom_size([native[sha] for sha in pair], "square")
        for sha in pair:
            for size in (512, common):
                assert gi_workspace.store.served_path(sha, size=size, fit="square").exists()


def test_specialty_routing_is_balanced_within_each_specialty(gi_workspace: Workspace, shared_data: Path) -> None:
    import csv

    from db.importers import import_dataset, import_generated

    from .conftest import TRANSFORMS, write_generated

    ws = gi_workspace
    import_dataset(ws.database, ws.store, "csv", shared_data / "radiology" / "captions.csv", name="rad",
                   domain="radiology", file_column="file", text_column="caption")  # fmt: skip
    names = [r["file"] for r in csv.DictReader((shared_data / "radiology" / "captions.csv").open())][:24]
    for model, fn in TRANSFORMS.items():
        made = write_generated(shared_data / "radiology", Path(str(ws.store.root)) / f"gen-rad-{model}", names, fn)
        import_generated(ws.database, ws.store, made, dataset="rad", model=model)
    toml = (STUDY_TOML.replace('["gi"]', '["gi", "rad"]')
            .replace("attention_fraction = 0.1", "specialty_routing = true")
            .replace("rater_slots = 3", "rater_slots = 4"))  # fmt: skip
    with ws.database.session() as s:
        create_study(s, ws.store, toml)
    with ws.database.session() as s:
        for i in range(4):
            add_rater(s, "pilot", f"G{i}", "gastroenterology")
            add_rater(s, "pilot", f"R{i}", "radiology")
    with ws.database.session() as s:
        rows = s.execute(select(Rater.specialty, Rater.id, StudyItem.domain, StudyItem.model_id, StudyItem.kind)
                         .join(Assignment, Assignment.rater_id == Rater.id)
                         .join(StudyItem, Assignment.item_id == StudyItem.id)).all()  # fmt: skip
    per: dict[int, dict[int, int]] = {}
    for specialty, rater_id, domain, model_id, kind in rows:
        assert domain.value == {"gastroenterology": "gi", "radiology": "radiology"}[specialty.value]
        if kind == ItemKind.NORMAL:
            per.setdefault(rater_id, {}).setdefault(model_id, 0)
            per[rater_id][model_id] += 1
    assert len(per) == 8
    for counts in per.values():
        assert len(counts) == 2 and max(counts.values()) - min(counts.values()) <= 1
    for shas in real_images_per_rater(ws):
        assert len(shas) == len(set(shas))


def test_unbalanceable_numbers_are_refused_naming_them(gi_workspace: Workspace) -> None:
    bad = STUDY_TOML.replace("rater_slots = 3", 'rater_slots = 3\ndesign = "split-plot"')
    with gi_workspace.database.session() as s, pytest.raises(InputError, match="set rater_slots to 2 or 4"):
        create_study(s, gi_workspace.store, bad)
    too_many = STUDY_TOML.replace("cases_per_model = 12", "cases_per_model = 13")  # 2 x 13 own cases > 24
    with gi_workspace.database.session() as s, pytest.raises(InputError, match="raise rater_slots to 4"):
        create_study(s, gi_workspace.store, too_many)
