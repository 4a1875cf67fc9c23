"""Adaptive head-to-head studies in the database: draws at request time under the house rules, also when
many raters ask at once (threads on SQLite), logged and exported."""

from __future__ import annotations

import threading
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from db.adaptive import PAIR_SPREAD, draws_frame
from db.errors import InputError
from db.export import export_study
from db.head_to_head import HEAD_TO_HEAD_QUESTIONS
from db.models import AdaptiveDraw, Assignment, Model, Rater, Side, StudyItem
from db.raters import add_rater
from db.ratings import next_pair, progress, submit_rating
from db.session import Database
from db.studies import check_study, create_study, get_study, prerender_study
from db.workspace import Workspace

from .test_head_to_head_study import H2H_TOML, h2h_workspace  # noqa: F401 (the fixture)

ADAPTIVE_TOML = H2H_TOML.replace('name = "h2h"', 'name = "h2h-adaptive"') + 'assignment = "adaptive"\n'
K = 2


def _rater_id(database: Database, public_id: str) -> int:
    with database.session() as s:
        return int(s.scalars(select(Rater.id).where(Rater.public_id == public_id)).one())


def _answer(database: Database, rater_id: int, item: str, n: int) -> None:
    answers = {"prefer_realism": ("left", "right", "tie")[n % 3], "prefer_prompt": "left"}
    submit_rating(database, rater_id, item, str(uuid.uuid4()), answers, questions=HEAD_TO_HEAD_QUESTIONS)


def _ask(database: Database, rater_id: int) -> str | None:
    with database.session() as s:
        rater = s.get(Rater, rater_id)
        assert rater is not None
        pair = next_pair(s, rater)
        return None if pair is None else pair.item_public_id


def _check_invariants(database: Database, study: str) -> dict[int, list[StudyItem]]:
    """Every house rule on what was drawn; returns each rater's items in position order."""
    with database.session() as s:
        study_id = get_study(s, study).id
        names = dict(s.execute(select(Model.id, Model.name)).tuples().all())
        rows = s.execute(
            select(Assignment.rater_id, StudyItem)
            .join(StudyItem, Assignment.item_id == StudyItem.id)
            .where(StudyItem.study_id == study_id)
            .order_by(Assignment.rater_id, Assignment.position)
        ).all()
        per_item = Counter(it.id for _, it in rows)
        assert max(per_item.values()) <= K  # K raters per item at most
        lists: dict[int, list[StudyItem]] = defaultdict(list)
        for rater_id, it in rows:
            lists[rater_id].append(it)
        total_items = s.scalar(select(func.count()).select_from(StudyItem).where(StudyItem.study_id == study_id))
        for items in lists.values():
            images = [sha for it in items for sha in (it.generated_sha256, it.second_sha256, it.real_sha256)]
            assert len(images) == len(set(images))  # no image (and no case) twice for one rater
            pairs = Counter(frozenset((names[it.model_id], names[it.second_model_id or 0])) for it in items)
            sides = Counter((frozenset((it.model_id, it.second_model_id)), it.generated_side) for it in items)
            for pair in {p for p, _ in sides}:  # sides balanced per rater and pair, as far as free seats allow
                assert abs(sides[(pair, Side.LEFT)] - sides[(pair, Side.RIGHT)]) <= 2
            if len(items) >= 3:  # every rater reads every pair roughly evenly
                assert max(pairs.values()) - min(pairs.get(p, 0) for p in _all_pairs(names)) <= PAIR_SPREAD + 1
        draws = s.scalar(select(func.count()).select_from(AdaptiveDraw).where(AdaptiveDraw.study_id == study_id))
        steps = list(s.scalars(select(AdaptiveDraw.step).where(AdaptiveDraw.study_id == study_id)))
        assert draws == len(rows) and len(set(steps)) == len(steps)  # one logged draw per assignment
        assert sum(per_item.values()) <= K * int(total_items or 0)
        return dict(lists)


def _all_pairs(names: dict[int, str]) -> list[frozenset[str]]:
    models = sorted(n for n in names.values() if n in ("blur", "mirror", "flip"))
    return [frozenset((a, b)) for i, a in enumerate(models) for b in models[i + 1 :]]


def test_adaptive_study_draws_at_request_time_within_the_house_rules(
    h2h_workspace: Workspace,  # noqa: F811
    tmp_path: Path,
) -> None:
    ws = h2h_workspace
    with ws.database.session() as s:
        summary = create_study(s, ws.store, ADAPTIVE_TOML)
    assert summary.items == 18 and summary.rendered > 0  # every served copy rendered at create
    with ws.database.session() as s:  # ... all of them: nothing is left to render when raters arrive
        assert prerender_study(s, ws.store, get_study(s, "h2h-adaptive")) == 0
    with ws.database.session() as s, pytest.raises(InputError, match="'items_per_rater'"):
        create_study(s, ws.store, ADAPTIVE_TOML.replace("h2h-adaptive", "too-many") + "items_per_rater = 19\n")
    with ws.database.session() as s:
        raters = [add_rater(s, "h2h-adaptive", f"Dr {i}", "gastroenterology", 5) for i in range(5)]
        assert {r.assignments for r in raters} == {9}  # 18 items x K 2 / 4 slots
        assert s.scalar(select(func.count()).select_from(Assignment)) == 0  # nothing dealt before a request
    ids = [_rater_id(ws.database, r.rater_id) for r in raters]
    first = _ask(ws.database, ids[0])
    assert first is not None and _ask(ws.database, ids[0]) == first  # a refresh gets the same pair, no new draw
    with ws.database.session() as s:
        assert s.scalar(select(func.count()).select_from(AdaptiveDraw)) == 1
        assert progress(s, ids[0]) == (0, 9)
    answered: Counter[int] = Counter()
    for n in range(60):  # the raters take turns until none has a pair left (5 raters x 9 > 18 x K: some run dry)
        rater_id = ids[n % len(ids)]
        item = _ask(ws.database, rater_id)
        if item is not None:
            _answer(ws.database, rater_id, item, n)
            answered[rater_id] += 1
    lists = _check_invariants(ws.database, "h2h-adaptive")
    assert sum(answered.values()) == 18 * K  # every seat of every item filled, none twice
    assert all(len(items) <= 9 for items in lists.values())
    with ws.database.session() as s:
        report = check_study(s, "h2h-adaptive")
        log = draws_frame(s, get_study(s, "h2h-adaptive"))
    print(report)
    assert "assignment: adaptive" in report and "draws so far: 36" in report and "NOT BALANCED" not in report
    assert list(log["step"]) == list(range(36)) and log["score"].between(0, 0.5).all()
    assert log["n_comparisons"].is_monotonic_increasing and log["n_comparisons"].iloc[-1] > 0
    with ws.database.session() as s:  # the export carries the draw log and says how pairs were assigned
        result = export_study(s, "h2h-adaptive", tmp_path / "out")
    assert "adaptive_draws.csv" in {p.name for p in result.files}
    text = (tmp_path / "out" / "adaptive_draws.csv").read_text(encoding="utf-8-sig")
    assert text.count("\n") == 36 + 1 and "estimates" in text.splitlines()[0]
    assert '"assignment": "adaptive"' in (tmp_path / "out" / "study.json").read_text()
    from analysis.report import ReportConfig
    from analysis.study_report import compute_study_report

    content = compute_study_report(ws, "h2h-adaptive", config=ReportConfig(n_resamples=20, include_mrmc=False))
    h2h = [sec for sec in content.sections if sec.title.startswith("Head-to-head")]
    assert h2h and all("assigned adaptively" in " ".join(sec.notes) for sec in h2h)


def test_concurrent_requests_never_exceed_k_and_double_requests_get_one_item(h2h_workspace: Workspace) -> None:  # noqa: F811
    ws = h2h_workspace
    with ws.database.session() as s:
        create_study(s, ws.store, ADAPTIVE_TOML)
        raters = [add_rater(s, "h2h-adaptive", f"Dr {i}", "other") for i in range(8)]
    ids = [_rater_id(ws.database, r.rater_id) for r in raters]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(ids) * 2)

    served: dict[tuple[int, int], list[str | None]] = defaultdict(list)

    def rate(rater_id: int, lane: int) -> None:
        """Lane 0 answers; lane 1 is the same rater's second tab, refreshing at the same time."""
        try:
            barrier.wait()
            for n in range(12):
                item = _ask(ws.database, rater_id)
                served[(rater_id, lane)].append(item)
                if lane == 0:
                    if item is None:
                        return
                    assert _ask(ws.database, rater_id) == item  # a refresh gets the same pair back
                    _answer(ws.database, rater_id, item, n)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=rate, args=(r, lane)) for r in ids for lane in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    lists = _check_invariants(ws.database, "h2h-adaptive")
    with ws.database.session() as s:
        public = {it.id: it.public_id for items in lists.values() for it in items}
        for rater_id in ids:  # the second tab was only ever shown the rater's own drawn pairs
            mine = {public[it.id] for it in lists.get(rater_id, [])}
            assert {i for i in served[(rater_id, 1)] if i is not None} <= mine
        assert sum(len(items) for items in lists.values()) == 18 * K  # 8 raters x 9 > 36 seats: all filled
        for rater_id in ids:  # at most one unrated (drawn, not yet answered) pair per rater
            drawn = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.rater_id == rater_id))
            done, _ = progress(s, rater_id)
            assert int(drawn or 0) - done <= 1
    with ws.database.session() as s:  # the guard itself: a second draw of a taken seat cannot be stored
        taken = s.scalars(select(AdaptiveDraw).limit(1)).one()
        readers = set(s.scalars(select(Assignment.rater_id).where(Assignment.item_id == taken.item_id)))
        other = next(r for r in ids if r not in readers)
        extra = Assignment(rater_id=other, item_id=taken.item_id, position=10_000)
        with pytest.raises(IntegrityError), s.begin_nested():
            s.add(extra)
            s.flush()
            s.add(AdaptiveDraw(study_id=taken.study_id, rater_id=other, item_id=taken.item_id,
                               assignment_id=extra.id, step=10_000, seat=taken.seat, position=10_000, pair=taken.pair,
                               score=0.0, n_comparisons=0, estimates={}))  # fmt: skip
            s.flush()
