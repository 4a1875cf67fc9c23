"""Blinded studies built deterministically from a TOML config and a seed.

The same config and seed give the same pairs, the same left/right sides and the same per-rater order.
Items are dealt to rater slots by a reader design (:mod:`db.designs`): ``balanced`` (default; every item
read by K slots, every slot reads every model equally often), ``crossed`` or ``split-plot``. No slot sees
one real image in two normal pairs: a case's models go to different slots, or, when there are fewer slots
than models x K, each model gets its own cases. Sides are balanced per model and within every slot.
Attention items (the generated side replaced by obvious noise) and repeated items (for intra-rater
reliability) go to the raters of their base item and are placed after it. Every served copy is rendered
when the study is created, so no image arrives faster for having been shown before.

Example config::

    name = "gi-pilot"
    seed = 7
    datasets = ["gi-samples"]
    models = ["msdm-tiny", "sd-lora"]
    cases_per_model = 20
    raters_per_item = 2        # overlap K
    rater_slots = 4            # raters expected; item i goes to K of these slots
    design = "balanced"        # or "crossed" (every slot reads every item) or "split-plot"
    attention_fraction = 0.05
    repeat_fraction = 0.05
    specialty_routing = false  # true: radiologists get radiology items, gastroenterologists GI items
    split = "test"             # optional: only cases of this split
    cases = ["a.jpg", "b.jpg"] # optional: only these case keys (e.g. a comparison's held-out prompts)
    copies = "exclude"         # generated images a memorization audit flagged: "exclude" or "keep" (marked)
    practice_pairs = 0         # practice pairs from outside the study, first, with feedback (db.practice)

    [display]
    size = 512
    fit = "square"             # or "contain"
    window = "lung"            # optional: lung, mediastinum, bone, brain, abdomen (high-depth images, e.g. CT)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import secrets
import threading
import tomllib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from db.adaptive import ADAPTIVE, check_assignment_keys, planned_quota
from db.designs import (
    DESIGN_VERSION,
    DesignAudit,
    DesignKind,
    SlotItem,
    Unit,
    assign_slots,
    audit_slots,
    check_design_numbers,
    choose_sides,
    effective_k,
    needs_own_cases,
    order_slot,
    pick_bases,
    seeded_rng,
)
from db.errors import ConflictError, InputError, NotFoundError
from db.imaging import WINDOW_PRESETS
from db.importers import ensure_image_rows
from db.media import MediaStore, pair_is_grey, zoom_size
from db.memorization import copy_filter
from db.models import (
    Assignment,
    Case,
    Dataset,
    Domain,
    GeneratedImage,
    ImageBlob,
    ItemKind,
    Model,
    Rater,
    Side,
    Specialty,
    Study,
    StudyItem,
    StudyStatus,
)
from db.practice import draw_practice, practice_assignments, practice_items_for

logger = logging.getLogger(__name__)

MAX_CASES_PER_MODEL = 100_000
MAX_PRACTICE_PAIRS = 50
ROUTING = {Specialty.GASTROENTEROLOGY: "gi", Specialty.RADIOLOGY: "radiology"}


@dataclass(frozen=True)
class DisplayConfig:
    """How images are fitted for raters (both sides identically)."""

    size: int = 512
    fit: str = "square"
    window: str | None = None  # a db.imaging.WINDOW_PRESETS name for high-depth images (e.g. CT); None: the file's


@dataclass(frozen=True)
class StudyConfig:
    """A study as configured; stored verbatim with its sha256."""

    name: str
    seed: int
    datasets: list[str]
    models: list[str]
    cases_per_model: int
    raters_per_item: int = 1
    rater_slots: int = 0
    design: str = DesignKind.BALANCED.value
    attention_fraction: float = 0.0
    repeat_fraction: float = 0.0
    specialty_routing: bool = False
    display: DisplayConfig = field(default_factory=DisplayConfig)
    title: str = ""
    instructions: str = ""
    cases: list[str] = field(default_factory=list)
    split: str = ""
    copies: str = "exclude"
    kind: str = "real-vs-generated"  #: or "head-to-head" (db.head_to_head: two models' images of one case)
    reference: bool = False  #: head-to-head: show the real image above the pair
    practice_pairs: int = 0  #: practice pairs (from outside the study, with feedback) before the first real pair
    #: head-to-head: "balanced" (the fixed plan, default) or "adaptive" (db.adaptive: drawn at request time)
    assignment: str = "balanced"
    items_per_rater: int = 0  #: adaptive: each rater's number of pairs (0: as many as a balanced slot reads)

    @property
    def slots(self) -> int:
        return self.rater_slots or self.raters_per_item

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require(table: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    if key not in table:
        raise InputError(f"missing key {key!r}", path=source)
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InputError(f"{key!r} has the wrong type ({type(value).__name__})", path=source)
    return value


def parse_study_config(text: str, *, source: str = "study config") -> StudyConfig:
    """Parse and check a TOML study config; every problem is a clear :class:`InputError`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML: {exc}", path=source) from None
    known = {f for f in StudyConfig.__dataclass_fields__}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", path=source)
    name = _require(raw, "name", str, source).strip()
    if not name or len(name) > 200:
        raise InputError("'name' must be 1-200 characters", path=source)
    seed = _require(raw, "seed", int, source)
    if not 0 <= seed < 2**63:
        raise InputError("'seed' must be between 0 and 2**63-1", path=source)
    datasets = _require(raw, "datasets", list, source)
    models = _require(raw, "models", list, source)
    for key, values in (("datasets", datasets), ("models", models)):
        if not values or not all(isinstance(v, str) and v for v in values):
            raise InputError(f"{key!r} must be a non-empty list of names", path=source)
        if len(set(values)) != len(values):
            raise InputError(f"{key!r} lists a name twice", path=source)
    per_model = _require(raw, "cases_per_model", int, source)
    if not 1 <= per_model <= MAX_CASES_PER_MODEL:
        raise InputError(f"'cases_per_model' must be 1-{MAX_CASES_PER_MODEL}, got {per_model}", path=source)
    k = raw.get("raters_per_item", 1)
    slots = raw.get("rater_slots", 0)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise InputError("'raters_per_item' must be a whole number 1-1000", path=source)
    if not isinstance(slots, int) or isinstance(slots, bool) or not (slots == 0 or k <= slots <= 10_000):
        raise InputError(
            "'rater_slots' must be 0 (= raters_per_item) or between raters_per_item and 10000", path=source
        )
    design = raw.get("design", DesignKind.BALANCED.value)
    if design not in {d.value for d in DesignKind}:
        raise InputError(f"'design' must be one of {', '.join(d.value for d in DesignKind)}", path=source)
    check_design_numbers(DesignKind(design), k, slots or k, source=source)
    fractions = {}
    for key in ("attention_fraction", "repeat_fraction"):
        value = raw.get(key, 0.0)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 0.5:
            raise InputError(f"{key!r} must be a number between 0 and 0.5", path=source)
        fractions[key] = float(value)
    routing = raw.get("specialty_routing", False)
    if not isinstance(routing, bool):
        raise InputError("'specialty_routing' must be true or false", path=source)
    display_raw = raw.get("display", {})
    if not isinstance(display_raw, dict) or set(display_raw) - {"size", "fit", "window"}:
        raise InputError("[display] takes only 'size', 'fit' and 'window'", path=source)
    window = display_raw.get("window")
    if window is not None and window not in WINDOW_PRESETS:
        raise InputError(f"display.window must be one of {', '.join(WINDOW_PRESETS)}", path=source)
    size = display_raw.get("size", 512)
    fit = display_raw.get("fit", "square")
    if not isinstance(size, int) or isinstance(size, bool) or not 64 <= size <= 2048:
        raise InputError("display.size must be 64-2048 pixels", path=source)
    if fit not in ("square", "contain"):
        raise InputError("display.fit must be 'square' or 'contain'", path=source)
    title = raw.get("title", "")
    instructions = raw.get("instructions", "")
    split = raw.get("split", "")
    if not isinstance(title, str) or not isinstance(instructions, str) or not isinstance(split, str):
        raise InputError("'title', 'instructions' and 'split' must be text", path=source)
    cases = raw.get("cases", [])
    if not isinstance(cases, list) or not all(isinstance(c, str) and c for c in cases):
        raise InputError("'cases' must be a list of case keys", path=source)
    copies = raw.get("copies", "exclude")
    if copies not in ("exclude", "keep"):
        raise InputError("'copies' must be 'exclude' or 'keep'", path=source)
    kind = raw.get("kind", "real-vs-generated")
    if kind not in ("real-vs-generated", "head-to-head"):
        raise InputError("'kind' must be real-vs-generated or head-to-head", path=source)
    reference = raw.get("reference", False)
    if not isinstance(reference, bool):
        raise InputError("'reference' must be true or false", path=source)
    practice = raw.get("practice_pairs", 0)
    if not isinstance(practice, int) or isinstance(practice, bool) or not 0 <= practice <= MAX_PRACTICE_PAIRS:
        raise InputError(
            f"'practice_pairs' must be a whole number 0-{MAX_PRACTICE_PAIRS} (0: no practice), got {practice!r}",
            path=source,
        )
    if practice and kind == "head-to-head":
        raise InputError(
            f"'practice_pairs' = {practice}: practice pairs are not available for head-to-head studies yet; "
            "set practice_pairs = 0",
            path=source,
        )
    assignment, items_per_rater = check_assignment_keys(raw, kind, source)
    return StudyConfig(
        name=name,
        seed=seed,
        datasets=list(datasets),
        models=list(models),
        cases_per_model=per_model,
        raters_per_item=k,
        rater_slots=slots,
        design=design,
        attention_fraction=fractions["attention_fraction"],
        repeat_fraction=fractions["repeat_fraction"],
        specialty_routing=routing,
        display=DisplayConfig(size=size, fit=fit, window=window),
        title=title,
        instructions=instructions,
        cases=list(cases),
        split=split,
        copies=copies,
        kind=kind,
        reference=reference,
        practice_pairs=practice,
        assignment=assignment,
        items_per_rater=items_per_rater,
    )


_rng = seeded_rng


def _public_id(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(16))


def attention_image(width: int, height: int, seed: int) -> Image.Image:
    """A deliberately broken image: coarse colour noise that any attentive rater recognises."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    return Image.fromarray(blocks, "RGB").resize((width, height), Image.Resampling.NEAREST)


@dataclass
class StudySummary:
    """What ``study create`` built, with the audit of its design."""

    name: str
    items: int
    per_model: dict[str, int]
    attention: int
    repeats: int
    config_sha256: str
    audits: list[DesignAudit] = field(default_factory=list)
    own_cases: bool = False
    rendered: int = 0
    copies: str = ""
    practice: int = 0  #: practice pairs (outside the study's items; not counted in ``items``)

    def describe(self) -> str:
        models = ", ".join(f"{m}: {n}" for m, n in self.per_model.items())
        lines = [
            f"study {self.name!r}: {self.items} items ({models}; {self.attention} attention, "
            f"{self.repeats} repeats), config sha256 {self.config_sha256[:12]}",
            "cases: " + ("each model has its own cases" if self.own_cases else "every model is shown the same cases")
            + "; a rater sees each real image in one normal pair at most",
            f"served copies rendered now: {self.rendered}",
        ]  # fmt: skip
        if self.copies:
            lines.append(self.copies)
        if self.practice:
            lines.append(
                f"practice: {self.practice} pairs from cases outside the study, shown to every rater first, "
                "with feedback; their answers are flagged and never analysed"
            )
        lines.extend(a.describe() for a in self.audits)
        return "\n".join(lines)


def _domain_quota(available: dict[Domain, int], total: int) -> dict[Domain, int] | None:
    """How many of ``total`` cases to take from each domain: proportional to what is available (largest
    remainder, capped by it); None when there are not enough."""
    have = sum(available.values())
    if have < total:
        return None
    quota = {d: total * n // have for d, n in available.items()}
    order = sorted(available, key=lambda d: (-(total * available[d] / have - quota[d]), d.value))
    while sum(quota.values()) < total:
        for d in order:
            if quota[d] < available[d] and sum(quota.values()) < total:
                quota[d] += 1
    return quota


def _draw_cases(
    cfg: StudyConfig,
    models: list[Model],
    pools: list[dict[int, tuple[Case, GeneratedImage]]],
    domains: dict[int, Domain],
    own: bool,
    source: str,
) -> list[list[tuple[Case, GeneratedImage]]]:
    """Each model's cases in rank order: the same cases for every model, or (``own``) disjoint ones dealt
    round-robin from domain-sorted draws, so every model gets the domains in equal numbers (within 1)."""
    common = sorted(set.intersection(*(set(p) for p in pools)))
    groups = len(models) if own else 1
    by_domain: dict[Domain, list[int]] = defaultdict(list)
    for case_id in common:
        by_domain[domains[pools[0][case_id][0].dataset_id]].append(case_id)
    needed = cfg.cases_per_model * groups
    quota = _domain_quota({d: len(ids) for d, ids in by_domain.items()}, needed)
    if quota is None:
        why = (
            f" x {groups} models (= {needed}): each model needs its own cases when rater_slots < models x "
            f"raters_per_item ({cfg.slots} < {len(models)} x {cfg.raters_per_item}) or the design is crossed"
            if own
            else ""
        )
        raise InputError(
            f"the models {', '.join(m.name for m in models)} have generated images for {len(common)} cases of "
            f"{', '.join(cfg.datasets)} in common, fewer than cases_per_model = {cfg.cases_per_model}{why}; "
            "generate more, lower cases_per_model"
            + (f", or raise rater_slots to {len(models) * cfg.raters_per_item}" if own else ""),
            path=source,
        )
    rng = _rng(cfg.seed, "cases")
    drawn = [cid for d in sorted(by_domain, key=lambda d: d.value) for cid in rng.sample(by_domain[d], quota[d])]
    chosen = [drawn[j::groups] for j in range(groups)] if own else [drawn] * len(models)
    order = list(range(cfg.cases_per_model))
    rng.shuffle(order)
    return [[pool[ids[r]] for r in order] for pool, ids in zip(pools, chosen, strict=True)]


def study_inputs(session: Session, cfg: StudyConfig) -> tuple[list[Dataset], list[Model]]:
    """The config's datasets and models, in its order; refuses a taken study name or an unknown name."""
    if session.scalar(select(Study).where(Study.name == cfg.name)) is not None:
        raise ConflictError(f"study {cfg.name!r} already exists")
    datasets = []
    for name in cfg.datasets:
        ds = session.scalar(select(Dataset).where(Dataset.name == name))
        if ds is None:
            raise NotFoundError(f"study config names dataset {name!r}, which is not imported")
        datasets.append(ds)
    models = []
    for name in cfg.models:
        m = session.scalar(select(Model).where(Model.name == name))
        if m is None:
            raise NotFoundError(f"study config names model {name!r}, which is not registered")
        models.append(m)
    return datasets, models


def create_study(
    session: Session, store: MediaStore, config_text: str, *, source: str = "study config"
) -> StudySummary:
    """Build a study's items from its config and render every copy it will serve (raters and their
    assignments come with ``add_rater``). Refuses a design that cannot be balanced, naming the numbers."""
    cfg = parse_study_config(config_text, source=source)
    if cfg.kind == "head-to-head":
        from db.head_to_head_study import create_head_to_head

        return create_head_to_head(session, store, cfg, config_text, source=source)
    datasets, models = study_inputs(session, cfg)
    dataset_ids = [d.id for d in datasets]
    domains = {d.id: d.domain for d in datasets}
    kind = DesignKind(cfg.design)
    own = needs_own_cases(kind, len(models), effective_k(kind, cfg.raters_per_item, cfg.slots), cfg.slots)

    copies = copy_filter(session, models, cfg.copies)  # generated images a memorization audit flagged
    pools: list[dict[int, tuple[Case, GeneratedImage]]] = []
    for m in models:
        query = (
            select(GeneratedImage, Case)
            .join(Case, GeneratedImage.case_id == Case.id)
            .where(GeneratedImage.model_id == m.id, Case.dataset_id.in_(dataset_ids))
            .order_by(Case.id, GeneratedImage.seed)
        )
        if cfg.cases:
            query = query.where(Case.key.in_(cfg.cases))
        if cfg.split:
            query = query.where(Case.split == cfg.split)
        by_case: dict[int, tuple[Case, GeneratedImage]] = {}
        for gen, case in copies.apply(m.name, session.execute(query).all()):
            by_case.setdefault(case.id, (case, gen))
        if len(by_case) < cfg.cases_per_model:
            raise InputError(
                f"model {m.name!r} has generated images for {len(by_case)} cases of {', '.join(cfg.datasets)}, "
                f"fewer than cases_per_model = {cfg.cases_per_model}; generate more or lower the number"
                + (f" ({copies.describe()})" if copies.flagged else ""),
                path=source,
            )
        pools.append(by_case)
    per_model_items = _draw_cases(cfg, models, pools, domains, own, source)

    study = Study(
        name=cfg.name,
        config_text=config_text,
        config_sha256=hashlib.sha256(config_text.encode()).hexdigest(),
        config={
            **cfg.to_dict(),
            "design_version": DESIGN_VERSION,
            "memorization": copies.record(gen.id for items in per_model_items for _case, gen in items),
        },
        seed=cfg.seed,
    )
    session.add(study)
    session.flush()
    id_rng = _rng(cfg.seed, "public-ids", secrets.token_hex(8))  # ids are opaque, not derivable

    normal: list[StudyItem] = []
    for rank in range(cfg.cases_per_model):
        for m, items in zip(models, per_model_items, strict=True):
            case, gen = items[rank]
            normal.append(
                StudyItem(
                    study_id=study.id,
                    public_id=_public_id(id_rng),
                    kind=ItemKind.NORMAL,
                    case_id=case.id,
                    model_id=m.id,
                    generated_image_id=gen.id,
                    real_sha256=case.image_sha256,
                    generated_sha256=gen.image_sha256,
                    generated_side=Side.LEFT,  # set below, from the design
                    domain=domains[case.dataset_id],
                )
            )
    session.add_all(normal)
    session.flush()

    # Sides, attention and repeat bases follow the design of every rater group the item belongs to.
    units = _units(normal)
    memberships: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for group_key, group in _groups(cfg, normal).items():
        for item_id, slots in _plan(study, cfg, group, group_key).items():
            memberships[item_id].extend((group_key, s) for s in slots)
    left = choose_sides(units, memberships, (cfg.seed, "sides"))
    for item in normal:
        item.generated_side = Side.LEFT if left[item.id] else Side.RIGHT
    by_id = {it.id: it for it in normal}

    n_attention = round(cfg.attention_fraction * len(normal))
    attention: list[StudyItem] = []
    for j, key in enumerate(pick_bases(units, memberships, n_attention, (cfg.seed, "attention"))):
        base = by_id[key]
        src = store.open(base.generated_sha256)
        info = store.put_image(attention_image(src.width, src.height, cfg.seed * 1000 + j), source="attention")
        ensure_image_rows(session, [info])
        attention.append(
            StudyItem(
                study_id=study.id,
                public_id=_public_id(id_rng),
                kind=ItemKind.ATTENTION,
                case_id=base.case_id,
                model_id=base.model_id,
                generated_image_id=None,
                real_sha256=base.real_sha256,
                generated_sha256=info.sha256,
                generated_side=base.generated_side,
                domain=base.domain,
            )
        )
    session.add_all(attention)
    session.flush()
    n_repeat = round(cfg.repeat_fraction * len(normal))
    repeats = [
        StudyItem(
            study_id=study.id,
            public_id=_public_id(id_rng),
            kind=ItemKind.REPEAT,
            case_id=o.case_id,
            model_id=o.model_id,
            generated_image_id=o.generated_image_id,
            real_sha256=o.real_sha256,
            generated_sha256=o.generated_sha256,
            generated_side=o.generated_side,
            repeat_of_id=o.id,
            domain=o.domain,
        )
        for o in (by_id[key] for key in pick_bases(units, memberships, n_repeat, (cfg.seed, "repeats")))
    ]
    session.add_all(repeats)
    session.flush()
    practice = draw_practice(
        session, study, n=cfg.practice_pairs, seed=cfg.seed, models=models, dataset_ids=dataset_ids,
        domains=domains, flagged=copies.flagged, public_id=lambda: _public_id(id_rng), source=source,
    )  # fmt: skip
    audits = plan_audits(session, study)
    problems = [f"{a.label}: {p}" for a in audits for p in a.problems]
    if problems:
        raise InputError(
            f"the {cfg.design} design cannot be balanced with {len(models)} models, cases_per_model = "
            f"{cfg.cases_per_model}, raters_per_item = {cfg.raters_per_item}, rater_slots = {cfg.slots} "
            f"({'; '.join(problems)}); change rater_slots or make cases_per_model x raters_per_item a multiple "
            f"of rater_slots",
            path=source,
        )
    rendered = prerender_study(session, store, study)
    return StudySummary(
        name=cfg.name,
        items=len(normal) + len(attention) + len(repeats),
        per_model={m.name: cfg.cases_per_model for m in models},
        attention=len(attention),
        repeats=len(repeats),
        config_sha256=study.config_sha256,
        audits=audits,
        own_cases=own,
        rendered=rendered,
        copies=copies.describe(),
        practice=len(practice),
    )


def get_study(session: Session, name: str) -> Study:
    """The study called ``name`` or :class:`NotFoundError`."""
    study = session.scalar(select(Study).where(Study.name == name))
    if study is None:
        raise NotFoundError(f"no study called {name!r} (python app.py study list)")
    return study


def study_config(study: Study) -> StudyConfig:
    """The parsed config of a stored study."""
    return parse_study_config(study.config_text, source=f"study {study.name}")


def _is_legacy(study: Study) -> bool:
    """Studies made before reader designs were dealt round-robin (and keep that for later raters)."""
    return not (study.config or {}).get("design_version")


def _units(normal: list[StudyItem]) -> list[Unit]:
    ranks: dict[int, int] = defaultdict(int)
    units = []
    for it in sorted(normal, key=lambda i: i.id):
        units.append(Unit(it.id, it.real_sha256, str(it.model_id), ranks[it.model_id]))
        ranks[it.model_id] += 1
    return units


def _groups(cfg: StudyConfig, normal: list[StudyItem]) -> dict[str, list[StudyItem]]:
    """The normal items of each rater group (routing key): all, plus one per domain when routing."""
    groups = {"all": list(normal)}
    if cfg.specialty_routing:
        for key in ROUTING.values():
            groups[key] = [i for i in normal if i.domain.value == key]
    return groups


def _plan(study: Study, cfg: StudyConfig, normal: list[StudyItem], routing_key: str) -> dict[int, tuple[int, ...]]:
    """The slots reading each normal item of one rater group."""
    units = _units(normal)
    models = list(dict.fromkeys(u.model for u in units))
    kind = DesignKind(cfg.design)
    k = effective_k(kind, cfg.raters_per_item, cfg.slots)
    return assign_slots(units, kind=kind, k=k, slots=cfg.slots, models=models, seed=(study.seed, "design", routing_key))


def _base_of(item: StudyItem, normal_by_pair: dict[tuple[int, int], int]) -> int | None:
    if item.kind == ItemKind.REPEAT:
        return item.repeat_of_id
    if item.kind == ItemKind.ATTENTION:
        return normal_by_pair.get((item.case_id, item.model_id))
    return None


def _slot_item(item: StudyItem, base: int | None) -> SlotItem:
    return SlotItem(
        item.id, item.kind.value, str(item.model_id), item.real_sha256, item.generated_side == Side.LEFT, base
    )


def items_for_slot(
    study: Study,
    items: list[StudyItem],
    slot: int,
    cfg: StudyConfig,
    routing_key: str,
) -> list[StudyItem]:
    """The items a rater in ``slot`` reads, in their deterministic order (followers after their base)."""
    if _is_legacy(study):
        return _legacy_items_for_slot(study, items, slot, cfg, routing_key)
    normal = [i for i in items if i.kind == ItemKind.NORMAL]
    plan = _plan(study, cfg, normal, routing_key)
    mine = {item_id for item_id, slots in plan.items() if slot in slots}
    normal_by_pair = {(i.case_id, i.model_id): i.id for i in normal}
    by_id = {i.id: i for i in items}
    chosen = []
    for it in items:
        base = _base_of(it, normal_by_pair)
        if (it.id in mine) or (base is not None and base in mine):
            chosen.append(_slot_item(it, base))
    ordered = order_slot(chosen, (study.seed, "order", routing_key, slot))
    return [by_id[s.key] for s in ordered]


def _legacy_items_for_slot(
    study: Study, items: list[StudyItem], slot: int, cfg: StudyConfig, routing_key: str
) -> list[StudyItem]:
    """The round-robin dealing of studies made before reader designs (kept so they stay reproducible;
    ``study check`` shows its imbalance)."""
    base = sorted((i for i in items if i.kind != ItemKind.REPEAT), key=lambda i: i.id)
    k, slots = cfg.raters_per_item, cfg.slots
    mine = [it for n, it in enumerate(base) if (slot - n * k) % slots < k]
    mine_ids = {it.id for it in mine}
    repeats = [i for i in items if i.kind == ItemKind.REPEAT and i.repeat_of_id in mine_ids]
    rng = _rng(study.seed, "order", routing_key, slot)
    rng.shuffle(mine)
    position = {it.id: n for n, it in enumerate(mine)}
    ordered = list(mine)
    for rep in sorted(repeats, key=lambda i: i.id):
        after = position[rep.repeat_of_id]  # type: ignore[index]
        at = rng.randint(min(after + max(len(mine) // 4, 1), len(ordered)), len(ordered))
        ordered.insert(at, rep)
    return ordered


def _study_items(session: Session, study: Study) -> list[StudyItem]:
    """The study's own items in id order: every kind but practice (db.practice)."""
    return list(
        session.scalars(
            select(StudyItem)
            .where(StudyItem.study_id == study.id, StudyItem.kind != ItemKind.PRACTICE)
            .order_by(StudyItem.id)
        )
    )


def _routing_items(session: Session, study: Study, cfg: StudyConfig) -> dict[str, list[StudyItem]]:
    items = _study_items(session, study)
    groups = {"all": items}
    if cfg.specialty_routing:
        for key in ROUTING.values():
            groups[key] = [i for i in items if i.domain.value == key]
    return groups


def _model_names(session: Session, study: Study) -> dict[str, str]:
    rows = session.execute(
        select(Model.id, Model.name)
        .join(StudyItem, StudyItem.model_id == Model.id)
        .where(StudyItem.study_id == study.id)
    ).all()
    return {str(i): name for i, name in rows}


def _named(items: list[SlotItem], names: dict[str, str]) -> list[SlotItem]:
    return [SlotItem(i.key, i.kind, names.get(i.model, i.model), i.case, i.generated_left, i.base) for i in items]


def _audit_lists(
    session: Session,
    study: Study,
    cfg: StudyConfig,
    lists: list[list[StudyItem]],
    items: list[StudyItem],
    label: str,
    replicates: int | None = 1,
) -> DesignAudit:
    """Audit slot lists; ``replicates``: how many times the slots are filled (None: not a whole number of
    times yet, so reads per item are not checked)."""
    names = _model_names(session, study)
    normal = [i for i in items if i.kind == ItemKind.NORMAL]
    normal_by_pair = {(i.case_id, i.model_id): i.id for i in normal}
    models = [
        names.get(str(mid), str(mid)) for mid in dict.fromkeys(i.model_id for i in sorted(normal, key=lambda i: i.id))
    ]
    kind = DesignKind(cfg.design) if not _is_legacy(study) else "legacy round-robin"
    k = effective_k(DesignKind(cfg.design), cfg.raters_per_item, cfg.slots) * (replicates or 1)
    slot_lists = [_named([_slot_item(i, _base_of(i, normal_by_pair)) for i in lst], names) for lst in lists]
    return audit_slots(
        slot_lists,
        kind=str(kind),
        k=k,
        models=models,
        label=label,
        all_normal=[i.id for i in normal],
        check_reads=replicates is not None,
    )


def plan_audits(session: Session, study: Study) -> list[DesignAudit]:
    """The audit of the planned design of every rater group (one list per slot)."""
    cfg = study_config(study)
    audits = []
    for key, items in _routing_items(session, study, cfg).items():
        if not items:
            continue
        lists = [items_for_slot(study, items, slot, cfg, key) for slot in range(cfg.slots)]
        audits.append(_audit_lists(session, study, cfg, lists, items, f"planned, {key} raters"))
    return audits


def stored_audits(session: Session, study: Study) -> list[DesignAudit]:
    """The audit of the assignments actually stored for the study's raters, per rater group."""
    cfg = study_config(study)
    raters = list(session.scalars(select(Rater).where(Rater.study_id == study.id).order_by(Rater.id)))
    groups: dict[str, list[Rater]] = defaultdict(list)
    for r in raters:
        groups[ROUTING.get(r.specialty, "all") if cfg.specialty_routing else "all"].append(r)
    routed = _routing_items(session, study, cfg)
    audits = []
    for key, members in groups.items():
        lists = [
            list(
                session.scalars(
                    select(StudyItem)
                    .join(Assignment, Assignment.item_id == StudyItem.id)
                    .where(Assignment.rater_id == r.id, StudyItem.kind != ItemKind.PRACTICE)
                    .order_by(Assignment.position)
                )
            )
            for r in members
        ]
        filled, partial = divmod(len(members), cfg.slots)
        label = f"as stored, {len(members)} {key} rater(s)"
        if partial:
            label += f"; {partial} of {cfg.slots} slots of the last round filled, reads per item not checked"
        replicates = None if partial else filled
        audits.append(_audit_lists(session, study, cfg, lists, routed[key], label, replicates))
    return audits


def check_study(session: Session, name: str) -> str:
    """The design audit of a stored study (planned slots, and the raters' stored assignments)."""
    study = get_study(session, name)
    cfg = study_config(study)
    if cfg.kind == "head-to-head":
        from db.head_to_head_study import check_head_to_head

        return check_head_to_head(session, study, cfg)
    head = f"study {study.name!r}: design {cfg.design if not _is_legacy(study) else 'legacy round-robin'}"
    if _is_legacy(study):
        head += " (made before balanced designs; later raters keep its dealing)"
    parts = [head] + [a.describe() for a in plan_audits(session, study)]
    parts += [a.describe() for a in stored_audits(session, study)]
    return "\n".join(parts)


def pair_zoom_sizes(session: Session, study_id: int, fit: str) -> dict[tuple[str, str], int]:
    """The zoom copy size of every pair of a study, keyed by its two shown images (generated, other side):
    :func:`db.media.zoom_size` of their native sizes (one query)."""
    gen_blob, other_blob = aliased(ImageBlob), aliased(ImageBlob)
    other = func.coalesce(StudyItem.second_sha256, StudyItem.real_sha256)
    rows = session.execute(
        select(StudyItem.generated_sha256, other, gen_blob.width, gen_blob.height, other_blob.width, other_blob.height)
        .join(gen_blob, gen_blob.sha256 == StudyItem.generated_sha256)
        .join(other_blob, other_blob.sha256 == other)
        .where(StudyItem.study_id == study_id)
    ).all()
    return {(g, o): zoom_size([(gw, gh), (ow, oh)], fit) for g, o, gw, gh, ow, oh in rows}  # type: ignore[arg-type]


def prerender_study(session: Session, store: MediaStore, study: Study) -> int:
    """Render every copy the study will serve (both sides at the display size, and both shown sides of each
    pair at the pair's common zoom size); returns how many were rendered now (kept copies are left as they are)."""
    cfg = study_config(study)
    rows = session.execute(
        select(
            StudyItem.real_sha256, StudyItem.generated_sha256, StudyItem.domain, ImageBlob.mode,
            StudyItem.second_sha256,
        )
        .join(ImageBlob, ImageBlob.sha256 == StudyItem.real_sha256)
        .where(StudyItem.study_id == study.id)
    ).all()  # fmt: skip
    fit = cfg.display.fit
    zooms = pair_zoom_sizes(session, study.id, fit)
    sizes: dict[tuple[str, bool], list[int]] = defaultdict(list)  # every size of each image, to decode it once
    for real, generated, domain, mode, second in rows:
        grey = pair_is_grey(domain.value, mode)
        shown = (generated, real if second is None else second)
        stored = (real, generated) if second is None else (real, generated, second)
        for sha in stored:
            sizes[(sha, grey)].append(cfg.display.size)
        for sha in shown:
            sizes[(sha, grey)].append(zooms[shown])
    rendered = 0
    for (sha, grey), wanted in sizes.items():
        rendered += store.render_served_sizes(
            sha, wanted, fit=fit, grey=grey, window=cfg.display.window  # type: ignore[arg-type]
        )  # fmt: skip
    return rendered


def prerender_open_studies(session: Session, store: MediaStore) -> int:
    """Render the missing served copies of every open study (e.g. made before the current encoding)."""
    studies = list(session.scalars(select(Study).where(Study.status == StudyStatus.OPEN)))
    return sum(prerender_study(session, store, s) for s in studies)


def prerender_in_background(database: Any, store: MediaStore) -> threading.Thread:
    """Start :func:`prerender_open_studies` in a daemon thread (the server keeps answering meanwhile)."""

    def run() -> None:
        try:
            with database.session() as session:
                n = prerender_open_studies(session, store)
            if n:
                logger.info("rendered %d served copies that were missing", n)
        except Exception:  # a broken image must not stop the server; it is logged loudly
            logger.exception("pre-rendering served copies failed")

    thread = threading.Thread(target=run, name="prerender", daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class ServedSide:
    """What the image route needs to serve one side of a rater's pair."""

    sha256: str
    grey: bool
    study_id: int
    config_text: str
    #: the pair's two shown images (generated, other side): their native sizes set the zoom copy's size
    pair: tuple[str, str] = ("", "")


def served_side(session: Session, rater_id: int, position: int, side: Side | None) -> ServedSide | None:
    """The image on ``side`` of the pair at ``position`` in the rater's list (None when there is none).

    ``side`` None: the real image shown as the reference above a head-to-head pair, only where the study
    says ``reference = true`` (never the real side of a real-vs-generated pair by another name)."""
    row = session.execute(
        select(
            StudyItem.real_sha256,
            StudyItem.generated_sha256,
            StudyItem.generated_side,
            StudyItem.domain,
            ImageBlob.mode,
            Study.id,
            Study.config_text,
            StudyItem.second_sha256,
        )
        .select_from(Assignment)
        .join(StudyItem, Assignment.item_id == StudyItem.id)
        .join(ImageBlob, ImageBlob.sha256 == StudyItem.real_sha256)
        .join(Rater, Assignment.rater_id == Rater.id)
        .join(Study, Rater.study_id == Study.id)
        .where(Assignment.rater_id == rater_id, Assignment.position == position)
    ).first()
    if row is None:
        return None
    real, generated, generated_side, domain, mode, study_id, config_text, second = row
    if side is None:
        if second is None or not shows_reference(config_text):
            return None
        return ServedSide(real, pair_is_grey(domain.value, mode), study_id, config_text, (real, real))
    other = real if second is None else second
    sha = generated if side == generated_side else other
    return ServedSide(sha, pair_is_grey(domain.value, mode), study_id, config_text, (generated, other))


def native_sizes(session: Session, shas: tuple[str, ...]) -> list[tuple[int, int]]:
    """(width, height) of stored images, as imported (their native pixel size)."""
    rows = session.execute(select(ImageBlob.width, ImageBlob.height).where(ImageBlob.sha256.in_(shas))).all()
    return [(w, h) for w, h in rows]


@functools.lru_cache(maxsize=256)
def display_of(config_text: str) -> DisplayConfig:
    """The display settings of a study config (cached: a study's config never changes)."""
    return parse_study_config(config_text).display


@functools.lru_cache(maxsize=256)
def shows_reference(config_text: str) -> bool:
    """Whether a head-to-head study shows the real image above its pairs (cached like :func:`display_of`)."""
    return parse_study_config(config_text).reference


def served_bytes(
    database: Any, store: MediaStore, rater_id: int, position: int, side: Side | None, *, zoom: bool = False
) -> bytes | None:
    """The bytes ``GET /m/...`` serves for one side of a rater's pair (None when there is no such pair):
    the kept, pre-rendered copy fitted to the study's display square, or for ``zoom`` to the pair's common
    zoom size (:func:`db.media.zoom_size` of both shown sides' native sizes). ``side`` None: the
    head-to-head reference image (see :func:`served_side`)."""
    with database.session() as session:
        found = served_side(session, rater_id, position, side)
        sizes = native_sizes(session, found.pair) if found is not None and zoom else []
    if found is None:
        return None
    display = display_of(found.config_text)
    size = zoom_size(sizes, display.fit) if zoom else display.size  # type: ignore[arg-type]
    return store.served_copy(
        found.sha256, size=size, fit=display.fit, grey=found.grey, window=display.window  # type: ignore[arg-type]
    )  # fmt: skip


@dataclass(frozen=True)
class ServedPair:
    """One pair of a study as served to one rater (for the blinding audit)."""

    rater_id: int
    position: int
    left_sha256: str
    right_sha256: str
    real_left: bool
    grey: bool


def served_pairs(session: Session, name: str) -> tuple[list[ServedPair], DisplayConfig]:
    """Every pair of the study as its raters are served it, in rater and position order (practice pairs,
    from outside the study, are left out)."""
    study = get_study(session, name)
    rows = session.execute(
        select(
            Assignment.rater_id,
            Assignment.position,
            StudyItem.real_sha256,
            StudyItem.generated_sha256,
            StudyItem.generated_side,
            StudyItem.domain,
            ImageBlob.mode,
            StudyItem.second_sha256,
        )
        .join(StudyItem, Assignment.item_id == StudyItem.id)
        .join(ImageBlob, ImageBlob.sha256 == StudyItem.real_sha256)
        .join(Rater, Assignment.rater_id == Rater.id)
        .where(Rater.study_id == study.id, StudyItem.kind != ItemKind.PRACTICE)  # practice: outside the study
        .order_by(Assignment.rater_id, Assignment.position)
    ).all()
    pairs = []
    for rater_id, position, real, generated, generated_side, domain, mode, second in rows:
        real = real if second is None else second  # head-to-head: the second model's image, not the reference
        real_left = generated_side == Side.RIGHT
        left, right = (real, generated) if real_left else (generated, real)
        pairs.append(ServedPair(rater_id, position, left, right, real_left, pair_is_grey(domain.value, mode)))
    return pairs, study_config(study).display


def assign_rater(session: Session, study: Study, rater: Rater) -> int:
    """Create the rater's assignments; returns how many."""
    cfg = study_config(study)
    items = _study_items(session, study)
    routing_key = "all"
    if cfg.specialty_routing and rater.specialty in ROUTING:
        routing_key = ROUTING[rater.specialty]
        items = [i for i in items if i.domain.value == routing_key]
    peers = (
        session.scalar(
            select(func.count())
            .select_from(Rater)
            .where(
                Rater.study_id == study.id,
                Rater.id < rater.id,
                Rater.specialty.in_(_same_group(cfg, rater.specialty)),
            )
        )
        or 0
    )
    slot = peers % cfg.slots
    if cfg.kind == "head-to-head":
        from db.head_to_head_study import h2h_items_for_slot

        if cfg.assignment == ADAPTIVE:  # pairs are drawn when the rater asks (db.adaptive.draw_if_adaptive)
            return planned_quota(study.config, len(items))
        ordered = h2h_items_for_slot(session, study, items, slot, cfg)
    else:
        ordered = items_for_slot(study, items, slot, cfg, routing_key)
    session.add_all(Assignment(rater_id=rater.id, item_id=it.id, position=n) for n, it in enumerate(ordered))
    if cfg.practice_pairs:  # before the first real pair, at negative positions (not counted here)
        session.add_all(practice_assignments(rater.id, practice_items_for(session, study, routing_key)))
    return len(ordered)


def _same_group(cfg: StudyConfig, specialty: Specialty) -> list[Specialty]:
    if not cfg.specialty_routing or specialty not in ROUTING:
        return [s for s in Specialty if not cfg.specialty_routing or s not in ROUTING]
    return [specialty]
