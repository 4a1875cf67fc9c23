"""Blinded studies built deterministically from a TOML config and a seed.

The same config and seed give the same pairs, the same left/right sides and the same per-rater order.
Sides are balanced within each model; items are interleaved by model so every rater sees the models in
balance; attention items (the generated side replaced by obvious noise) and repeated items (for intra-rater
reliability, dealt to the same raters as their originals and placed after them) are mixed in.

Example config::

    name = "gi-pilot"
    seed = 7
    datasets = ["gi-samples"]
    models = ["msdm-tiny", "sd-lora"]
    cases_per_model = 20
    raters_per_item = 2        # overlap K
    rater_slots = 4            # raters expected; item i goes to K of these slots
    attention_fraction = 0.05
    repeat_fraction = 0.05
    specialty_routing = false  # true: radiologists get radiology items, gastroenterologists GI items
    split = "test"             # optional: only cases of this split
    cases = ["a.jpg", "b.jpg"] # optional: only these case keys (e.g. a comparison's held-out prompts)
    copies = "exclude"         # generated images a memorization audit flagged: "exclude" or "keep" (marked)

    [display]
    size = 512
    fit = "square"             # or "contain"
"""

from __future__ import annotations

import hashlib
import random
import secrets
import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import ConflictError, InputError, NotFoundError
from db.importers import ensure_image_rows
from db.media import MediaStore
from db.memorization import copy_filter
from db.models import (
    Assignment,
    Case,
    Dataset,
    GeneratedImage,
    ItemKind,
    Model,
    Rater,
    Side,
    Specialty,
    Study,
    StudyItem,
)

MAX_CASES_PER_MODEL = 100_000
ROUTING = {Specialty.GASTROENTEROLOGY: "gi", Specialty.RADIOLOGY: "radiology"}


@dataclass(frozen=True)
class DisplayConfig:
    """How images are fitted for raters (both sides identically)."""

    size: int = 512
    fit: str = "square"


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
    attention_fraction: float = 0.0
    repeat_fraction: float = 0.0
    specialty_routing: bool = False
    display: DisplayConfig = field(default_factory=DisplayConfig)
    title: str = ""
    instructions: str = ""
    cases: list[str] = field(default_factory=list)
    split: str = ""
    copies: str = "exclude"

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
    if not isinstance(display_raw, dict) or set(display_raw) - {"size", "fit"}:
        raise InputError("[display] takes only 'size' and 'fit'", path=source)
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
    return StudyConfig(
        name=name,
        seed=seed,
        datasets=list(datasets),
        models=list(models),
        cases_per_model=per_model,
        raters_per_item=k,
        rater_slots=slots,
        attention_fraction=fractions["attention_fraction"],
        repeat_fraction=fractions["repeat_fraction"],
        specialty_routing=routing,
        display=DisplayConfig(size=size, fit=fit),
        title=title,
        instructions=instructions,
        cases=list(cases),
        split=split,
        copies=copies,
    )


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _public_id(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(16))


def attention_image(width: int, height: int, seed: int) -> Image.Image:
    """A deliberately broken image: coarse colour noise that any attentive rater recognises."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    return Image.fromarray(blocks, "RGB").resize((width, height), Image.Resampling.NEAREST)


@dataclass
class StudySummary:
    """What ``study create`` built."""

    name: str
    items: int
    per_model: dict[str, int]
    attention: int
    repeats: int
    config_sha256: str
    copies: str = ""

    def describe(self) -> str:
        models = ", ".join(f"{m}: {n}" for m, n in self.per_model.items())
        return (
            f"study {self.name!r}: {self.items} items ({models}; {self.attention} attention, "
            f"{self.repeats} repeats), config sha256 {self.config_sha256[:12]}"
            + (f"; {self.copies}" if self.copies else "")
        )


def create_study(
    session: Session, store: MediaStore, config_text: str, *, source: str = "study config"
) -> StudySummary:
    """Build a study's items from its config (raters and their assignments come with ``add_rater``)."""
    cfg = parse_study_config(config_text, source=source)
    if session.scalar(select(Study).where(Study.name == cfg.name)) is not None:
        raise ConflictError(f"study {cfg.name!r} already exists")
    datasets = []
    for name in cfg.datasets:
        ds = session.scalar(select(Dataset).where(Dataset.name == name))
        if ds is None:
            raise NotFoundError(f"study config names dataset {name!r}, which is not imported")
        datasets.append(ds)
    dataset_ids = [d.id for d in datasets]
    models: list[Model] = []
    for name in cfg.models:
        m = session.scalar(select(Model).where(Model.name == name))
        if m is None:
            raise NotFoundError(f"study config names model {name!r}, which is not registered")
        models.append(m)

    copies = copy_filter(session, models, cfg.copies)  # memorization audit (issue 20)
    per_model_items: list[list[tuple[Case, GeneratedImage]]] = []
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
        rows = copies.apply(m.name, session.execute(query).all())
        by_case: dict[int, tuple[Case, GeneratedImage]] = {}
        for gen, case in rows:
            by_case.setdefault(case.id, (case, gen))
        pool = [by_case[k] for k in sorted(by_case)]
        if len(pool) < cfg.cases_per_model:
            raise InputError(
                f"model {m.name!r} has generated images for {len(pool)} cases of {', '.join(cfg.datasets)}, "
                f"fewer than cases_per_model = {cfg.cases_per_model}; generate more or lower the number"
                + (f" ({copies.describe()})" if copies.flagged else ""),
                path=source,
            )
        chosen = _rng(cfg.seed, "cases", m.name).sample(pool, cfg.cases_per_model)
        per_model_items.append(chosen)

    study = Study(
        name=cfg.name,
        config_text=config_text,
        config_sha256=hashlib.sha256(config_text.encode()).hexdigest(),
        config=cfg.to_dict() | {"memorization": copies.record(g.id for ch in per_model_items for _c, g in ch)},
        seed=cfg.seed,
    )
    session.add(study)
    session.flush()
    id_rng = _rng(cfg.seed, "public-ids", secrets.token_hex(8))  # ids are opaque, not derivable

    # Balanced sides per model: half left, half right, in a seeded order.
    normal: list[StudyItem] = []
    sided: list[list[tuple[Case, GeneratedImage, Side]]] = []
    for m, chosen in zip(models, per_model_items, strict=True):
        sides = [Side.LEFT, Side.RIGHT] * (len(chosen) // 2 + 1)
        sides = sides[: len(chosen)]
        _rng(cfg.seed, "sides", m.name).shuffle(sides)
        sided.append([(c, g, s) for (c, g), s in zip(chosen, sides, strict=True)])
    # Interleave models round-robin so every slice of the list is balanced across models.
    domains = {d.id: d.domain for d in datasets}
    for rank in range(cfg.cases_per_model):
        for m, items in zip(models, sided, strict=True):
            case, gen, side = items[rank]
            item = StudyItem(
                study_id=study.id,
                public_id=_public_id(id_rng),
                kind=ItemKind.NORMAL,
                case_id=case.id,
                model_id=m.id,
                generated_image_id=gen.id,
                real_sha256=case.image_sha256,
                generated_sha256=gen.image_sha256,
                generated_side=side,
                domain=domains[case.dataset_id],
            )
            normal.append(item)
    session.add_all(normal)

    n_attention = round(cfg.attention_fraction * len(normal))
    attention: list[StudyItem] = []
    for j, base in enumerate(_rng(cfg.seed, "attention").sample(normal, n_attention)):
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
        for o in _rng(cfg.seed, "repeats").sample(normal, n_repeat)
    ]
    session.add_all(repeats)
    session.flush()
    return StudySummary(
        name=cfg.name,
        items=len(normal) + len(attention) + len(repeats),
        per_model={m.name: cfg.cases_per_model for m in models},
        attention=len(attention),
        repeats=len(repeats),
        config_sha256=study.config_sha256,
        copies=copies.describe(),
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


def items_for_slot(
    study: Study,
    items: list[StudyItem],
    slot: int,
    cfg: StudyConfig,
    routing_key: str,
) -> list[StudyItem]:
    """The items a rater in ``slot`` reads, in their deterministic order (repeats after their originals)."""
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


def assign_rater(session: Session, study: Study, rater: Rater) -> int:
    """Create the rater's assignments; returns how many."""
    cfg = study_config(study)
    items = list(session.scalars(select(StudyItem).where(StudyItem.study_id == study.id)))
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
    ordered = items_for_slot(study, items, slot, cfg, routing_key)
    session.add_all(Assignment(rater_id=rater.id, item_id=it.id, position=n) for n, it in enumerate(ordered))
    return len(ordered)


def _same_group(cfg: StudyConfig, specialty: Specialty) -> list[Specialty]:
    if not cfg.specialty_routing or specialty not in ROUTING:
        return [s for s in Specialty if not cfg.specialty_routing or s not in ROUTING]
    return [specialty]
