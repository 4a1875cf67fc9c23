"""A comparison's TOML config: the dataclasses and :func:`parse_compare_config`.

Every problem is a :class:`db.errors.InputError` naming the file and the key (``[split]``,
``contenders[1].kind``, ``metrics.extractor`` ...). Extractor specs are checked by the one registry,
:func:`analysis.features.parse_extractor_spec`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from analysis.features import parse_extractor_spec
from db.errors import InputError

ContenderKind = Literal["msdm", "lora", "registered"]
CONTENDER_KINDS: tuple[str, ...] = ("msdm", "lora", "registered")

#: [generation] keys (also allowed in a contender's own [contenders.generation] table).
GENERATION_KEYS: tuple[str, ...] = (
    "per_case",
    "seed",
    "steps",
    "guidance",
    "scheduler",
    "height",
    "width",
    "batch_size",
    "negative_prompt",
    "max_sequence_length",
)
#: LoRA settings a config may not set: the comparison decides them.
_LORA_FIXED = ("base", "out_dir", "dataset", "split", "resume", "device")
#: MSDM settings a config may not set.
_MSDM_FIXED = ("name", "model")
STUDY_KEYS: tuple[str, ...] = (
    "name",
    "seed",
    "cases_per_model",
    "raters_per_item",
    "rater_slots",
    "attention_fraction",
    "repeat_fraction",
    "specialty_routing",
    "title",
    "instructions",
    "display",
)


@dataclass(frozen=True)
class SplitConfig:
    """How the held-out prompts are chosen: ``held_out`` cases drawn with ``seed``, or a split value."""

    held_out: int | None = 8
    split: str | None = None
    seed: int = 0
    train_limit: int | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """Automated metrics: the feature extractor, which distances, the alignment encoder, the bootstrap."""

    extractor: str = "dinov2:facebook/dinov2-base"
    metrics: tuple[str, ...] = ("FD", "KID")
    alignment: str | None = None
    n_boot: int = 100
    seed: int = 0


@dataclass(frozen=True)
class ContenderConfig:
    """One contender: an MSDM to train, a LoRA to train on a base, or an already registered model."""

    name: str
    kind: ContenderKind
    config: str = "tiny"
    base: str | None = None
    model: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompareConfig:
    """A whole comparison (see :func:`parse_compare_config` for the TOML)."""

    name: str
    dataset: str
    contenders: tuple[ContenderConfig, ...]
    split: SplitConfig = field(default_factory=SplitConfig)
    generation: dict[str, Any] = field(default_factory=dict)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    study: dict[str, Any] | None = None
    device: str = "auto"
    out_dir: str | None = None

    def model_name(self, contender: ContenderConfig) -> str:
        """The registered model a contender generates with (trained ones: ``<comparison>-<contender>``)."""
        if contender.kind == "registered" and contender.model is not None:
            return contender.model
        return f"{self.name}-{contender.name}"

    def generation_for(self, contender: ContenderConfig) -> dict[str, Any]:
        """The global [generation] settings overridden by the contender's own."""
        return {**self.generation, **contender.generation}


def _fail(source: str, message: str) -> InputError:
    return InputError(f"{source}: {message}")


def _table(raw: Any, where: str, allowed: Sequence[str], source: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(source, f"{where} must be a table")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise _fail(source, f"unknown key(s) {', '.join(unknown)} in {where}; known: {', '.join(allowed)}")
    return dict(raw)


def _typed(table: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str, source: str) -> Any:
    value = table[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _fail(source, f"{where}.{key} must be {_kind_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise _fail(source, f"{where}.{key} must be {_kind_names(kinds)}, got {value!r}")
    return value


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false", list: "a list"}
    items = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in items)


def _check_generation(table: dict[str, Any] | None, where: str, source: str) -> dict[str, Any]:
    table = _table(table, where, GENERATION_KEYS, source)
    for key in table:
        kinds: type | tuple[type, ...] = (
            (int, float) if key == "guidance" else str if key in ("scheduler", "negative_prompt") else int
        )
        value = _typed(table, key, kinds, where, source)
        if kinds is int and value < (0 if key == "seed" else 1):
            raise _fail(source, f"{where}.{key} must be at least {0 if key == 'seed' else 1}, got {value}")
    return table


def _check_train(kind: ContenderKind, table: dict[str, Any] | None, where: str, source: str) -> dict[str, Any]:
    from generation.lora_train import LoraTrainConfig
    from generation.msdm.config import TrainConfig

    fields_ = LoraTrainConfig.__dataclass_fields__ if kind == "lora" else TrainConfig.__dataclass_fields__
    fixed = _LORA_FIXED if kind == "lora" else _MSDM_FIXED
    allowed = sorted(set(fields_) - set(fixed))
    table = _table(table, where, allowed, source)
    for key, value in table.items():
        if isinstance(value, list):
            table[key] = tuple(value)
    return table


def parse_compare_config(text: str, *, source: str = "compare config") -> CompareConfig:
    """Parse and check a comparison config (TOML); every problem is an ``InputError`` naming the file and key.

    Example::

        name = "gi-compare"
        dataset = "medvqa-gi"
        device = "auto"
        out_dir = "runs/gi-compare"          # optional; relative to the config file

        [split]
        held_out = 500                       # or: split = "test"
        seed = 0

        [generation]
        per_case = 4
        seed = 0

        [metrics]
        extractor = "dinov2:facebook/dinov2-base"
        metrics = ["FD", "KID"]
        alignment = "clip:openai/clip-vit-large-patch14"

        [[contenders]]
        name = "msdm"
        kind = "msdm"
        config = "paper"

        [[contenders]]
        name = "flux-lora"
        kind = "lora"
        base = "black-forest-labs/FLUX.1-dev"
        train = { rank = 16, steps = 4000, gradient_checkpointing = true }

        [study]
        cases_per_model = 100
        raters_per_item = 2
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, f"invalid TOML: {exc}") from None
    top = ("name", "dataset", "device", "out_dir", "split", "generation", "metrics", "contenders", "study")
    raw = _table(raw, "the config", top, source)
    for key in ("name", "dataset"):
        if key not in raw:
            raise _fail(source, f"missing key {key!r}")
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise _fail(source, f"{key!r} must be non-empty text")
    name = raw["name"].strip()
    if len(name) > 100 or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise _fail(source, "'name' must be 1-100 printable characters without slashes")
    for key in ("device", "out_dir"):
        if key in raw:
            _typed(raw, key, str, "the config", source)

    split_raw = _table(raw.get("split"), "[split]", ("held_out", "split", "seed", "train_limit"), source)
    for key in ("held_out", "seed", "train_limit"):
        if key in split_raw and _typed(split_raw, key, int, "split", source) < (0 if key == "seed" else 1):
            raise _fail(source, f"split.{key} must be at least {0 if key == 'seed' else 1}")
    if "split" in split_raw:
        _typed(split_raw, "split", str, "split", source)
        if "held_out" in split_raw:
            raise _fail(source, "[split] takes either held_out (a count drawn at random) or split (a value), not both")
        split_raw["held_out"] = None
    split = SplitConfig(**split_raw)

    generation = _check_generation(raw.get("generation"), "[generation]", source)

    metrics_raw = _table(
        raw.get("metrics"), "[metrics]", ("extractor", "metrics", "alignment", "n_boot", "seed"), source
    )
    if "metrics" in metrics_raw:
        names = _typed(metrics_raw, "metrics", list, "metrics", source)
        bad = [m for m in names if m not in ("FD", "KID", "CMMD")]
        if bad or not names:
            raise _fail(source, f"metrics.metrics must list FD, KID and/or CMMD, got {names!r}")
        metrics_raw["metrics"] = tuple(names)
    for key in ("extractor", "alignment"):
        if key in metrics_raw:
            spec = _typed(metrics_raw, key, str, "metrics", source)
            try:
                parse_extractor_spec(spec)
            except InputError as exc:
                raise _fail(source, f"metrics.{key}: {exc}") from None
    for key in ("n_boot", "seed"):
        if key in metrics_raw and _typed(metrics_raw, key, int, "metrics", source) < 0:
            raise _fail(source, f"metrics.{key} must not be negative")
    metrics = MetricsConfig(**metrics_raw)

    contenders_raw = raw.get("contenders")
    if not isinstance(contenders_raw, list) or not contenders_raw:
        raise _fail(source, "at least one [[contenders]] table is required")
    contenders: list[ContenderConfig] = []
    for k, item in enumerate(contenders_raw):
        where = f"contenders[{k}]"
        item = _table(item, where, ("name", "kind", "config", "base", "model", "train", "generation"), source)
        for key in ("name", "kind"):
            if key not in item:
                raise _fail(source, f"{where} needs {key!r}")
        cname = _typed(item, "name", str, where, source).strip()
        if not cname or any(c in cname for c in "/\\:") or len(cname) > 60:
            raise _fail(source, f"{where}.name must be 1-60 characters without slashes or colons")
        kind = item["kind"]
        if kind not in CONTENDER_KINDS:
            raise _fail(source, f"{where}.kind must be one of {', '.join(CONTENDER_KINDS)}, got {kind!r}")
        if kind == "lora" and not isinstance(item.get("base"), str):
            raise _fail(source, f"{where} (lora) needs base = a hub id or folder of the base pipeline")
        if kind == "registered" and not isinstance(item.get("model"), str):
            raise _fail(source, f"{where} (registered) needs model = the registered model's name")
        if kind == "msdm":
            from generation.msdm.config import CONFIGS

            if item.setdefault("config", "tiny") not in CONFIGS:
                raise _fail(source, f"{where}.config must be one of {', '.join(sorted(CONFIGS))}")
        if kind == "registered" and item.get("train"):
            raise _fail(source, f"{where}: a registered model is not trained; remove its train table")
        train = _check_train(kind, item.get("train"), f"{where}.train", source) if kind != "registered" else {}
        gen = _check_generation(item.get("generation"), f"{where}.generation", source)
        contenders.append(
            ContenderConfig(
                name=cname,
                kind=kind,
                config=item.get("config", "tiny"),
                base=item.get("base"),
                model=item.get("model"),
                train=train,
                generation=gen,
            )
        )
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise _fail(source, f"contender names must be unique, got {names}")

    study = None
    if "study" in raw:
        study = _table(raw["study"], "[study]", STUDY_KEYS, source)
    return CompareConfig(
        name=name,
        dataset=raw["dataset"].strip(),
        contenders=tuple(contenders),
        split=split,
        generation=generation,
        metrics=metrics,
        study=study,
        device=raw.get("device", "auto"),
        out_dir=raw.get("out_dir"),
    )
