"""Building and dealing head-to-head studies in the database (the design itself is :mod:`db.head_to_head`).

A head-to-head item is a :class:`~db.models.StudyItem` whose ``model_id`` / ``generated_sha256`` is the first
model of the pair (shown on ``generated_side``) and whose ``second_model_id`` / ``second_sha256`` is the
second (shown on the other side); ``real_sha256`` is the case's real image, served as a reference above the
pair only when the config says ``reference = true``. Attention and repeat items are not made for
head-to-head studies yet (the config's fractions must be 0).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import defaultdict
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.adaptive import ADAPTIVE, PAIR_SPREAD, describe_adaptive
from db.designs import DESIGN_VERSION, seeded_rng
from db.errors import InputError
from db.head_to_head import HeadToHeadPlan, PairItem, allot_cases, model_pairs, plan_head_to_head
from db.media import MediaStore
from db.models import Case, GeneratedImage, ItemKind, Model, Side, Study, StudyItem

if TYPE_CHECKING:
    from db.studies import StudyConfig, StudySummary

logger = logging.getLogger(__name__)


def _pair_item(item: StudyItem, names: dict[int, str]) -> PairItem:
    first, second = names[item.model_id], names[item.second_model_id or 0]
    return PairItem(item.id, item.real_sha256, first, second, item.generated_side == Side.LEFT)


def stored_plan(study: Study, items: list[StudyItem], cfg: StudyConfig, names: dict[int, str]) -> HeadToHeadPlan:
    """The design of a stored head-to-head study (recomputed deterministically from its items and seed)."""
    pairs = [_pair_item(it, names) for it in items if it.second_model_id is not None]
    return plan_head_to_head(pairs, k=cfg.raters_per_item, slots=cfg.slots, seed=(study.seed, "h2h"))


def h2h_items_for_slot(
    session: Session, study: Study, items: list[StudyItem], slot: int, cfg: StudyConfig
) -> list[StudyItem]:
    """The items a rater in ``slot`` reads, in the design's order."""
    names = dict(session.execute(select(Model.id, Model.name)).tuples().all())
    plan = stored_plan(study, items, cfg, names)
    by_id = {it.id: it for it in items}
    return [by_id[key] for key in plan.order[slot]]


def create_head_to_head(
    session: Session, store: MediaStore, cfg: StudyConfig, config_text: str, *, source: str
) -> StudySummary:
    """Build a head-to-head study from its parsed config (``cases_per_model`` = cases per model pair)."""
    from db.studies import StudySummary, _public_id, prerender_study, study_inputs  # lazily: db.studies calls us

    if cfg.attention_fraction or cfg.repeat_fraction:
        raise InputError("head-to-head studies do not make attention or repeat items yet; set "
                         "attention_fraction and repeat_fraction to 0", path=source)  # fmt: skip
    if cfg.specialty_routing:
        raise InputError("head-to-head studies do not route by specialty yet; set specialty_routing = false",
                         path=source)  # fmt: skip
    if cfg.design != "balanced":
        raise InputError("head-to-head studies have their own design; leave 'design' at \"balanced\"", path=source)
    n_items = len(model_pairs(cfg.models)) * cfg.cases_per_model
    if cfg.items_per_rater > n_items:
        raise InputError(f"'items_per_rater' = {cfg.items_per_rater} is more than the study's {n_items} items (a "
                         "rater reads each case once)", path=source)  # fmt: skip
    datasets, found = study_inputs(session, cfg)
    domains = {d.id: d.domain for d in datasets}
    models: dict[str, Model] = {m.name: m for m in found}
    pairs = model_pairs(cfg.models)

    images: dict[str, dict[str, tuple[Case, GeneratedImage]]] = {}  # model -> case key -> (case, first image)
    for name, m in models.items():
        query = (
            select(GeneratedImage, Case)
            .join(Case, GeneratedImage.case_id == Case.id)
            .where(GeneratedImage.model_id == m.id, Case.dataset_id.in_(list(domains)))
            .order_by(Case.id, GeneratedImage.seed)
        )
        if cfg.cases:
            query = query.where(Case.key.in_(cfg.cases))
        if cfg.split:
            query = query.where(Case.split == cfg.split)
        mine: dict[str, tuple[Case, GeneratedImage]] = {}
        for gen, case in session.execute(query).all():
            mine.setdefault(f"{case.dataset_id}:{case.id}", (case, gen))
        images[name] = mine
    available = {p: sorted(set(images[p[0]]) & set(images[p[1]])) for p in pairs}
    chosen = allot_cases(available, cfg.cases_per_model, (cfg.seed, "h2h"))

    study = Study(
        name=cfg.name,
        config_text=config_text,
        config_sha256=hashlib.sha256(config_text.encode()).hexdigest(),
        config={**cfg.to_dict(), "design_version": DESIGN_VERSION},
        seed=cfg.seed,
    )
    session.add(study)
    session.flush()
    id_rng = seeded_rng(cfg.seed, "public-ids", secrets.token_hex(8))  # opaque, not derivable
    items: list[StudyItem] = []
    for first, second in pairs:
        for key in chosen[(first, second)]:
            case, gen_a = images[first][key]
            _, gen_b = images[second][key]
            items.append(
                StudyItem(
                    study_id=study.id,
                    public_id=_public_id(id_rng),
                    kind=ItemKind.NORMAL,
                    case_id=case.id,
                    model_id=models[first].id,
                    generated_image_id=gen_a.id,
                    real_sha256=case.image_sha256,
                    generated_sha256=gen_a.image_sha256,
                    generated_side=Side.LEFT,  # set below, from the design
                    domain=domains[case.dataset_id],
                    second_model_id=models[second].id,
                    second_generated_image_id=gen_b.id,
                    second_sha256=gen_b.image_sha256,
                )
            )
    session.add_all(items)
    session.flush()
    names = {m.id: name for name, m in models.items()}
    plan = stored_plan(study, items, cfg, names)
    if plan.problems:
        raise InputError(f"the head-to-head design cannot be balanced: {'; '.join(plan.problems)}", path=source)
    sides = {it.key: it.first_left for it in plan.items}
    for item in items:
        item.generated_side = Side.LEFT if sides[item.id] else Side.RIGHT
    session.flush()
    rendered = prerender_study(session, store, study)
    per_pair: dict[str, int] = defaultdict(int)
    for first, second in pairs:
        per_pair[f"{first} vs {second}"] = cfg.cases_per_model
    logger.info("head-to-head study %s: %d items, %d pairs", cfg.name, len(items), len(pairs))
    return StudySummary(
        name=cfg.name,
        items=len(items),
        per_model=dict(per_pair),
        attention=0,
        repeats=0,
        config_sha256=study.config_sha256,
        audits=[],
        own_cases=True,
        rendered=rendered,
    )


def check_head_to_head(session: Session, study: Study, cfg: StudyConfig) -> str:
    """``study check`` for a head-to-head study: the planned slots and the raters' stored lists."""
    from db.head_to_head import describe_lists
    from db.models import Assignment, Rater

    names = dict(session.execute(select(Model.id, Model.name)).tuples().all())
    items = list(session.scalars(select(StudyItem).where(StudyItem.study_id == study.id).order_by(StudyItem.id)))
    plan = stored_plan(study, items, cfg, names)
    by_key = {it.key: it for it in plan.items}
    parts = [f"study {study.name!r}: kind head-to-head, reference image {'shown' if cfg.reference else 'hidden'}"]
    adaptive = cfg.assignment == ADAPTIVE
    if adaptive:
        parts.append(describe_adaptive(session, study))
    else:
        parts.append(describe_lists([[by_key[key] for key in keys] for keys in plan.order], k=plan.k,
                                    label="planned"))  # fmt: skip
    stored = []
    for rater_id in session.scalars(select(Rater.id).where(Rater.study_id == study.id).order_by(Rater.id)):
        rows = session.scalars(
            select(StudyItem)
            .join(Assignment, Assignment.item_id == StudyItem.id)
            .where(Assignment.rater_id == rater_id)
            .order_by(Assignment.position)
        )
        stored.append([_pair_item(it, names) for it in rows if it.second_model_id is not None])
    if stored:
        label = f"{'drawn' if adaptive else 'as stored'}, {len(stored)} rater(s)"
        parts.append(describe_lists(stored, k=plan.k, label=label, spread=PAIR_SPREAD if adaptive else 1))
    return "\n".join(parts)
