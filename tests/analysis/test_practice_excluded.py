"""Practice answers (``practice_pairs``) never reach an analysis: planting them changes no number.

Every analysis reads the study through ``db.export.ratings_frame`` (the blinding audit through
``db.studies.served_pairs``); both leave practice pairs out. Each consumer is checked on a real study:
numbers before the raters answer their practice pairs == numbers after (with answers chosen to move them).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from analysis.agreement import agreement_table, intra_rater_reliability
from analysis.blinding import audit_blinding, served_fetch
from analysis.mrmc import mrmc_from_ratings
from analysis.report import ReportConfig, compute_report
from analysis.scores import model_scores
from analysis.study_report import compute_study_report
from analysis.turing import headline, turing_test
from db.export import ratings_frame
from db.importers import import_dataset, import_generated
from db.models import Assignment, ItemKind, Rater, Side, StudyItem
from db.raters import add_rater
from db.ratings import submit_rating
from db.studies import ServedPair, create_study
from db.workspace import Workspace
from tests.db.conftest import TRANSFORMS, write_generated

# crossed (MRMC needs it): each model its own 5 cases, so 24 - 10 = 14 fixture cases stay outside
TOML = """
name = "pilot"
seed = 3
datasets = ["gi"]
models = ["blur", "mirror"]
cases_per_model = 5
design = "crossed"
raters_per_item = 3
rater_slots = 3
attention_fraction = 0.2
repeat_fraction = 0.2
practice_pairs = 4
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Workspace]:
    """Three raters who answered every real pair (seeded answers); their practice pairs are still open."""
    tmp = tmp_path_factory.mktemp("practice-analysis")
    ws = Workspace.open(None, tmp / "data")
    import_dataset(ws.database, ws.store, "csv", shared_data / "gi", name="gi", domain="gi",
                   file_column="file", text_column="caption")  # fmt: skip
    names = [r["file"] for r in csv.DictReader((shared_data / "gi" / "captions.csv").open())][:24]
    for model, fn in TRANSFORMS.items():
        made = write_generated(shared_data / "gi", tmp / model, names, fn)
        import_generated(ws.database, ws.store, made, dataset="gi", model=model)
    with ws.database.session() as s:
        create_study(s, ws.store, TOML)
    with ws.database.session() as s:
        for i in range(3):
            add_rater(s, "pilot", f"Dr {i}", "gastroenterology", 2 + 5 * i)
    rng = np.random.default_rng(0)
    for rater_id, item in open_pairs(ws, practice=False):
        r = rng.integers(1, 6, size=5)
        answers = {"realism_left": int(r[0]), "realism_right": int(r[1]), "accuracy_left": int(r[2]),
                   "accuracy_right": int(r[3]), "confidence": int(r[4]),
                   "which_generated": "left" if rng.random() < 0.6 else "right"}  # fmt: skip
        submit_rating(ws.database, rater_id, item, uuid.uuid4().hex, answers)
    yield ws
    ws.close()


def open_pairs(ws: Workspace, *, practice: bool) -> list[tuple[int, str]]:
    """(rater id, item public id) of every practice (or real) assignment."""
    kind = StudyItem.kind == ItemKind.PRACTICE if practice else StudyItem.kind != ItemKind.PRACTICE
    with ws.database.session() as s:
        rows = s.execute(
            select(Rater.id, StudyItem.public_id).join(Assignment, Assignment.rater_id == Rater.id)
            .join(StudyItem, Assignment.item_id == StudyItem.id).where(kind).order_by(Rater.id, Assignment.position)
        ).all()  # fmt: skip
    return [(int(r), str(p)) for r, p in rows]


def plant_practice(ws: Workspace) -> None:
    """Answer every practice pair, always the extreme way (realism 1 / 5, "left", certain)."""
    pairs = open_pairs(ws, practice=True)
    assert len(pairs) == 3 * 4
    for rater_id, item in pairs:
        answers = {"realism_left": 1, "realism_right": 5, "accuracy_left": 1, "accuracy_right": 5,
                   "confidence": 5, "which_generated": "left"}  # fmt: skip
        submit_rating(ws.database, rater_id, item, uuid.uuid4().hex, answers)


def frame(ws: Workspace) -> pd.DataFrame:
    with ws.database.session() as s:
        return ratings_frame(s, "pilot")


def numbers(ws: Workspace) -> dict[str, object]:
    """Every consumer's output on the study as analysis reads it."""
    ratings = frame(ws)
    turing = turing_test(ratings)
    fetched: list[ServedPair] = []
    served = served_fetch(ws)

    def fetch(pair: ServedPair, side: Side) -> bytes:
        fetched.append(pair)
        return served(pair, side)

    blinding = audit_blinding(ws, "pilot", fetch=fetch)
    report = compute_study_report(ws, "pilot", config=ReportConfig(n_resamples=40))
    return {
        "ratings": ratings,
        "turing": turing.tables(),
        "headline": headline(ratings),
        "agreement": agreement_table(ratings, n_resamples=40),
        "intra": intra_rater_reliability(ratings),
        "scores": model_scores(ratings, n_resamples=40),
        "mrmc": mrmc_from_ratings(ratings).tables(),
        # bytes, sizes and mode are fixed; time to first byte and arrival order vary from run to run
        "blinding": blinding[blinding["observable"].isin(["bytes", "width", "height", "mode"])],
        "blinding_pairs": sorted((p.rater_id, p.position) for p in fetched),
        "report": [(s.title, s.notes, {k: t for k, t in s.tables.items()}) for s in report.sections]
        + [report.summary, report.methods],
    }


def same(a: object, b: object, where: str) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)  # type: ignore[arg-type]
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{n}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN == NaN here


@pytest.fixture(scope="module")
def before_after(study: Workspace) -> tuple[dict[str, object], dict[str, object], pd.DataFrame]:
    """Every consumer's numbers before and after the practice answers are planted, and the export frame."""
    before = numbers(study)
    plant_practice(study)
    with study.database.session() as s:
        flagged = ratings_frame(s, "pilot", practice=True)
    return before, numbers(study), flagged


CONSUMERS = ["ratings", "turing", "headline", "agreement", "intra", "scores", "mrmc", "blinding", "blinding_pairs",
             "report"]  # fmt: skip


@pytest.mark.parametrize("consumer", CONSUMERS)
def test_planting_practice_answers_changes_no_analysis(before_after: tuple, consumer: str) -> None:  # type: ignore[type-arg]
    before, after, flagged = before_after
    assert set(before) == set(CONSUMERS)
    assert int(flagged["practice"].sum()) == 12  # they are stored (and exported), flagged
    same(before[consumer], after[consumer], consumer)


def test_a_report_of_the_exported_table_leaves_practice_out(before_after: tuple) -> None:  # type: ignore[type-arg]
    """An exported ratings table (practice rows flagged) gives the report of the analysed one."""
    _before, after, flagged = before_after
    config = ReportConfig(n_resamples=40)
    exported = compute_report(flagged, title="t", stamp={}, config=config)
    analysed = compute_report(after["ratings"], title="t", stamp={}, config=config)  # type: ignore[arg-type]
    assert flagged["practice"].any() and exported.stamp["n_ratings"] == analysed.stamp["n_ratings"]
    same([(s.title, s.tables) for s in exported.sections], [(s.title, s.tables) for s in analysed.sections], "report")
    assert exported.summary == analysed.summary


def test_the_check_has_teeth(before_after: tuple) -> None:  # type: ignore[type-arg]
    """The same practice answers, taken as real pairs, would move the numbers; the audit sees no practice."""
    before, _after, flagged = before_after
    assert all(position >= 0 for _rater, position in before["blinding_pairs"]) and before["blinding_pairs"]
    leaked = flagged.assign(item_kind=flagged["item_kind"].replace("practice", "normal"))
    assert not headline(leaked).equals(before["headline"])
    assert not mrmc_from_ratings(flagged).tables()["auc_by_test"].equals(before["mrmc"]["auc_by_test"])  # type: ignore[index]
