"""The comparison run: train the contenders, generate for held-out prompts, score quality and cost, report.

``python app.py compare CONFIG.toml`` calls :func:`run_comparison`. One TOML config names a dataset and
how its held-out prompts are chosen, the contenders (MSDM trained from a named config, LoRA fine-tunes
of named bases, any registered model), the generation settings, the metrics and optionally the blinded
study. The run is a list of stages, in this order::

    split                      held-out and training cases
    train:<c>                  MSDM or LoRA training, then the model is registered   (trained contenders)
    generate:<c>               images for every held-out case, recorded in the database
    cost:<c>                   parameters, FLOPs per image, seconds and peak memory per image
    metrics                    FD / KID / CMMD of each contender against the real held-out images, alignment
    report                     report.csv and report.html, side by side
    study                      the blinded study of those images                     (with a [study] table)

Every finished stage is written to ``manifest.json`` in the output folder and to the database's stage cache
(``compare_stages``, :mod:`db.stages`), with a fingerprint of everything it depends on. A rerun skips a
stage whose fingerprint is unchanged; a changed setting redoes that stage and every stage after it that
depends on it. Inside a stage, training resumes from its last checkpoint and generation from the images
already recorded, so an interrupted run loses at most one checkpoint interval. See ``docs/compare.md``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import logging
import random
import time
import tomllib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from analysis.features import load_extractor, parse_extractor_spec
from db.errors import InputError
from db.stages import find_stage, record_stage

if TYPE_CHECKING:
    from db.session import Database
    from db.workspace import Workspace
    from generation.pipelines import PipelineCache

log = logging.getLogger(__name__)

ContenderKind = Literal["msdm", "lora", "registered"]
CONTENDER_KINDS: tuple[str, ...] = ("msdm", "lora", "registered")
MANIFEST_FILE = "manifest.json"
Progress = Callable[[str], None]

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


# ---------------------------------------------------------------------------------------------- config


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
        return contender.model if contender.kind == "registered" else f"{self.name}-{contender.name}"  # type: ignore[return-value]

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
    """Parse and check a comparison config (TOML); every problem is a ``ValueError`` naming the key.

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


# ---------------------------------------------------------------------------------------------- extractors
# Feature extractors come from the one registry, analysis.features.load_extractor / parse_extractor_spec.


# ---------------------------------------------------------------------------------------------- manifest


def fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (sorted keys): what a stage depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Manifest:
    """The stage record of one comparison: ``manifest.json`` in the output folder plus the ``compare_stages`` table."""

    path: Path
    database: Database
    comparison: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: Path, database: Database, comparison: str) -> Manifest:
        path = out_dir / MANIFEST_FILE
        stages = json.loads(path.read_text(encoding="utf-8")).get("stages", {}) if path.is_file() else {}
        return cls(path, database, comparison, stages)

    def done(self, stage: str, stage_fingerprint: str) -> dict[str, Any] | None:
        """The outputs of ``stage`` if it finished with this fingerprint (manifest, else the database)."""
        entry = self.stages.get(stage)
        if entry and entry.get("status") == "done" and entry.get("fingerprint") == stage_fingerprint:
            return entry["outputs"]
        outputs = find_stage(self.database, self.comparison, stage, stage_fingerprint)
        if outputs is not None:
            self.stages[stage] = {"status": "done", "fingerprint": stage_fingerprint, "outputs": outputs}
            self._write()
        return outputs

    def record(self, stage: str, stage_fingerprint: str, outputs: dict[str, Any], started: float) -> None:
        """Write a finished stage to the manifest and the database's stage cache."""
        seconds = time.perf_counter() - started
        entry = {
            "status": "done",
            "fingerprint": stage_fingerprint,
            "seconds": seconds,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "outputs": outputs,
        }
        self.stages[stage] = entry
        self._write()
        record_stage(self.database, self.comparison, stage, stage_fingerprint, outputs, seconds=seconds)
        log.info("comparison %s: stage %s done in %.1f s", self.comparison, stage, seconds)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        data = {"comparison": self.comparison, "stages": self.stages}
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.path)


# ---------------------------------------------------------------------------------------------- result


@dataclass
class ComparisonResult:
    """What :func:`run_comparison` did and wrote."""

    name: str
    out_dir: Path
    manifest: Path
    report_csv: Path
    report_html: Path
    rows: list[dict[str, Any]]
    stages_run: list[str]
    stages_skipped: list[str]
    study: str | None = None


# ---------------------------------------------------------------------------------------------- stages


def choose_split(
    case_groups: Mapping[int, str], split_ids: Sequence[int] | None, config: SplitConfig
) -> dict[str, Any]:
    """Held-out and training case ids, split by leakage group (image, or patient where known).

    ``case_groups`` maps each case id to its group (:func:`db.generated.case_groups`): MEDVQA-GI writes 7-14
    prompts for one image, so a split of prompts would put the held-out images in training. Whole groups are
    drawn (with the seed) until ``held_out`` cases are held out; with a split value, training cases that share
    a group with a held-out case are dropped. The returned ``audit`` counts the overlap (always 0), the
    held-out groups and the training cases dropped for sharing a group.

    Raises
    ------
    InputError
        When too few cases remain on either side.
    """
    ids = sorted(case_groups)
    members: dict[str, list[int]] = {}
    for case_id in ids:
        members.setdefault(case_groups[case_id], []).append(case_id)
    if split_ids is not None:
        held = sorted(split_ids)
    else:
        assert config.held_out is not None
        if config.held_out >= len(ids):
            raise InputError(f"held_out = {config.held_out} leaves no training case among {len(ids)} cases")
        order = sorted(members)
        random.Random(f"medsynth-compare-split|{config.seed}").shuffle(order)
        held = []
        for group in order:
            if len(held) >= config.held_out:
                break
            held.extend(members[group])
        held.sort()
    chosen = set(held)
    held_groups = {case_groups[i] for i in held}
    not_held = [i for i in ids if i not in chosen]
    train = [i for i in not_held if case_groups[i] not in held_groups]
    dropped = len(not_held) - len(train)
    if config.train_limit is not None:
        train = train[: config.train_limit]
    if len(held) < 2:
        raise InputError(f"only {len(held)} held-out case(s): the metrics need at least 2")
    if not train:
        raise InputError("no training cases left after the held-out split (every group is held out)")
    overlap = len(held_groups & {case_groups[i] for i in train})
    audit = {
        "held_out_cases": len(held),
        "held_out_groups": len(held_groups),
        "train_cases": len(train),
        "train_groups": len({case_groups[i] for i in train}),
        "train_cases_dropped_sharing_a_group": dropped,
        "overlap_groups": overlap,
    }
    return {"held_out": held, "train": train, "audit": audit}


def _generation_config(settings: dict[str, Any]) -> Any:
    from generation.batch import GenerationConfig

    settings = dict(settings)
    extra = {}
    if "max_sequence_length" in settings:
        extra["max_sequence_length"] = settings.pop("max_sequence_length")
    return GenerationConfig(**settings, call_kwargs=extra)


def _register(workspace: Workspace, name: str, kind: str, source: str, parameters: dict[str, Any]) -> None:
    from db.generated import register_model

    with workspace.database.session() as session:
        register_model(session, name, kind=kind, source=source, parameters=parameters, replace=True)


def _train(
    workspace: Workspace,
    config: CompareConfig,
    contender: ContenderConfig,
    train_ids: list[int],
    out: Path,
    device: str,
    bars: bool = False,
) -> dict[str, Any]:
    """Train one contender into ``out/models/<name>`` (resuming) and register it; the stage's outputs.
    ``bars`` shows training progress bars (on from the command line: stages run for hours)."""
    from generation.lora_train import LoraTrainConfig, allow_mixed_precision, dataset_examples, train_lora
    from generation.msdm.pipeline import model_kind_for
    from generation.pipelines import build_spec

    examples = dataset_examples(workspace, config.dataset, case_ids=train_ids)
    folder = out / "models" / contender.name
    name = config.model_name(contender)
    if contender.kind == "lora":
        assert contender.base is not None
        settings = LoraTrainConfig(
            base=contender.base, out_dir=folder, dataset=config.dataset, resume=True, device=device, **contender.train
        )
        result = train_lora(settings, examples, progress=bars)
        kind = model_kind_for(contender.base)  # an MSDM base keeps its own sampler, steps and guidance
        spec = build_spec(name, kind, contender.base, lora=[str(folder)])
        _register(workspace, name, kind, contender.base, spec.parameters())
        steps = settings.steps
        return {
            "model": name,
            "folder": str(folder),
            "train_seconds": result.wall_time_s,
            "device_hours": result.device_hours,
            "trainable_parameters": result.trainable_parameters,
            "train_steps": steps,
            "step_flops": result.step_flops,
            "train_flops": result.step_flops * steps if result.step_flops else None,
            "train_device": result.device,
            "loss_before": result.eval_loss_before,
            "loss_after": result.eval_loss_after,
        }
    from generation.msdm.config import get_config
    from generation.msdm.train import train_msdm

    msdm = dataclasses.replace(get_config(contender.config), **contender.train)
    on_cuda = device != "cpu" and _cuda_available()
    allow_mixed_precision(msdm.mixed_precision if on_cuda else "no")
    # The folder carries its text encoder (with its attention-mask setting), so plain diffusers loads it as is.
    trained = train_msdm(msdm, examples, folder, resume=True, include_text_encoder=True, progress=bars)
    meta = json.loads((folder / "msdm.json").read_text(encoding="utf-8"))
    counts = meta.get("parameters", {})
    _register(workspace, name, "msdm", str(folder), {})
    return {
        "model": name,
        "folder": str(folder),
        "train_seconds": trained.wall_time_s,
        "device_hours": trained.wall_time_s / 3600.0,
        "trainable_parameters": int(counts.get("vae", 0)) + int(counts.get("unet", 0)),
        "train_steps": msdm.unet_steps,
        "vae_steps": msdm.vae_steps,
        "step_flops": None,
        "train_flops": None,
        "train_device": "cuda" if on_cuda else "cpu",
    }


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _held_out_cases(workspace: Workspace, config: CompareConfig, held: list[int]) -> list[Any]:
    from db.generated import dataset_cases

    with workspace.database.session() as session:
        chosen = set(held)
        return [c for c in dataset_cases(session, config.dataset) if c.id in chosen]


def _model_row(workspace: Workspace, name: str) -> tuple[int, str, Any]:
    from db.generated import get_model
    from generation.pipelines import ModelSpec

    with workspace.database.session() as session:
        row = get_model(session, name)
        kind = getattr(row.kind, "value", row.kind)
        return row.id, str(kind), (ModelSpec.from_model(row) if kind != "folder" else None)


def _generate(
    workspace: Workspace,
    config: CompareConfig,
    contender: ContenderConfig,
    cases: list[Any],
    cache: PipelineCache,
    device: str,
    bars: bool = False,
) -> dict[str, Any]:
    from db.generated import existing_seeds
    from generation.batch import DbImageSink, run_generation

    model_id, _, spec = _model_row(workspace, config.model_name(contender))
    if spec is None:  # images made elsewhere: they must be there already
        with workspace.database.session() as session:
            have = {c for c, _ in existing_seeds(session, model_id, [c.id for c in cases])}
        missing = [c.key for c in cases if c.id not in have]
        if missing:
            raise InputError(
                f"contender {contender.name!r} is the image folder model {config.model_name(contender)!r}, which has "
                f"no images for {len(missing)} held-out case(s) (e.g. {missing[0]!r}); import them first"
            )
        return {"model": config.model_name(contender), "generated": 0, "skipped": len(cases), "params": None}
    loaded = cache.get(spec, device)
    sink = DbImageSink(workspace.database, workspace.store, model_id)
    report = run_generation(loaded, cases, _generation_config(config.generation_for(contender)), sink, progress=bars)
    return {
        "model": config.model_name(contender),
        "generated": report.generated,
        "skipped": report.skipped,
        "params": dataclasses.asdict(report.params),
    }


def _cost(
    workspace: Workspace,
    config: CompareConfig,
    contender: ContenderConfig,
    cases: list[Any],
    cache: PipelineCache,
    device: str,
) -> dict[str, Any]:
    from generation.batch import resolve_params
    from generation.cost import count_parameters, generation_timing, pipeline_flops_per_image

    model_id, _, spec = _model_row(workspace, config.model_name(contender))
    timing = dataclasses.asdict(generation_timing(workspace.database, model_id, [c.id for c in cases]))
    if spec is None:
        return {"parameters": None, "flops_per_image": None, "flops_by_module": {}, **timing}
    loaded = cache.get(spec, device)
    params = resolve_params(loaded, _generation_config(config.generation_for(contender)))
    flops = pipeline_flops_per_image(loaded.pipe, params, cases[0].prompt, loaded.device)
    return {
        "parameters": count_parameters(loaded.pipe),
        "flops_per_image": flops.total,
        "flops_by_module": flops.by_module,
        **timing,
    }


def _images(workspace: Workspace, model_id: int, case_ids: list[int]) -> list[tuple[int, Any]]:
    from db.generated import generated_shas

    with workspace.database.session() as session:
        rows = generated_shas(session, model_id, case_ids)
    return [(case_id, workspace.store.open(sha)) for case_id, sha in rows]


def _real_images(workspace: Workspace, cases: list[Any]) -> list[Any]:
    """The distinct real images of ``cases`` (one per image, however many prompts share it)."""
    from db.generated import case_image_shas

    with workspace.database.session() as session:
        shas = case_image_shas(session, [c.id for c in cases])
    distinct = list(dict.fromkeys(shas[c.id] for c in cases))
    return [workspace.store.open(sha) for sha in distinct]


def _metrics(workspace: Workspace, config: CompareConfig, cases: list[Any], out: Path) -> dict[str, Any]:
    """FD/KID/CMMD of every contender against the real held-out images (equal N), and alignment."""
    import pandas as pd

    from analysis.metrics import alignment_metric, compare_models

    settings = config.metrics
    extractor = load_extractor(settings.extractor)
    prompts = {c.id: c.prompt for c in cases}
    ids = [c.id for c in cases]
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        real = extractor(_real_images(workspace, cases))
        generated = {}
        for contender in config.contenders:
            model_id, _, _ = _model_row(workspace, config.model_name(contender))
            generated[contender.name] = _images(workspace, model_id, ids)
        feats = {name: extractor([image for _, image in images]) for name, images in generated.items()}
        table = compare_models(
            extractor, real, feats, seed=settings.seed, n_boot=settings.n_boot, metrics=list(settings.metrics)  # type: ignore[arg-type]
        )
        rows = table.to_dict("records")
        if settings.alignment:
            encoder = load_extractor(settings.alignment)
            if not callable(getattr(encoder, "embed_texts", None)):
                raise InputError(f"metrics.alignment {settings.alignment!r} is not a dual (image-text) encoder")
            for name, images in generated.items():
                result = alignment_metric(encoder, [im for _, im in images], [prompts[c] for c, _ in images])
                rows.append({"model": name, **result.to_row()})
        caught = sorted({str(w.message) for w in seen})
    path = out / "metrics.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return {
        "csv": str(path),
        "extractor": extractor.name,
        "weights_sha256": extractor.weights_sha256,
        "preprocess": extractor.preprocess.describe(),
        "alignment": settings.alignment,
        "warnings": caught,
        "rows": json.loads(pd.DataFrame(rows).to_json(orient="records")),
    }


# ---------------------------------------------------------------------------------------------- report


def _present(value: Any) -> bool:
    """Neither ``None`` nor NaN."""
    return value is not None and value == value


def report_rows(config: CompareConfig, outputs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per contender: quality (every metric with its extractor) and cost, side by side."""
    metric_rows = outputs["metrics"]["rows"]
    rows = []
    for contender in config.contenders:
        train = outputs.get(f"train:{contender.name}") or {}
        cost = outputs[f"cost:{contender.name}"]
        row: dict[str, Any] = {
            "contender": contender.name,
            "kind": contender.kind,
            "model": config.model_name(contender),
            "base": contender.base or (contender.config if contender.kind == "msdm" else ""),
        }
        for metric in metric_rows:
            if metric["model"] == contender.name:
                row[metric["metric"]] = metric["value"]
                if _present(metric.get("ci_low")):
                    row[f"{metric['metric']}_ci"] = f"{metric['ci_low']:.4g} to {metric['ci_high']:.4g}"
                row["n_generated"] = metric.get("n_a")
                if _present(metric.get("n_b")):
                    row["n_real"] = metric["n_b"]
        params = cost.get("parameters") or {}
        peak = cost.get("peak_memory_bytes")
        row |= {
            "parameters": params.get("total"),
            "trainable_parameters": train.get("trainable_parameters"),
            "train_steps": train.get("train_steps"),
            "train_hours": train["train_seconds"] / 3600.0 if train.get("train_seconds") is not None else None,
            "train_device_hours": train.get("device_hours"),
            "train_device": train.get("train_device"),
            "train_flops": train.get("train_flops"),
            "seconds_per_image": cost.get("seconds_per_image"),
            "peak_memory_mib": peak / 2**20 if peak is not None else None,
            "peak_memory_kind": cost.get("peak_memory_kind"),
            "flops_per_image": cost.get("flops_per_image"),
            "generation_device": cost.get("device"),
        }
        rows.append(row)
    return rows


def _thumbnail(image: Any, size: int = 96) -> str:
    copy = image.convert("RGB")
    copy.thumbnail((size, size))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: Any) -> str:
    if not _present(value):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:.3e}" if abs(value) >= 1e9 else f"{value:,}"
    return html.escape(str(value))


def render_html(
    config: CompareConfig,
    rows: list[dict[str, Any]],
    metrics: dict[str, Any],
    samples: list[tuple[str, Any, dict[str, Any]]],
) -> str:
    """The side-by-side report: settings, the quality + cost table, notes and one sample per prompt."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    notes = [
        f"Feature extractor: {metrics['extractor']} (weights sha256 {metrics['weights_sha256'][:12]}); "
        f"preprocessing: {metrics['preprocess']}.",
        "Every contender is scored against the same real held-out images at the same N of generated images.",
        "FLOPs are counted by torch.utils.flop_counter for one image (text encoding, every denoising step, "
        "VAE decode); seconds and peak memory are medians/maxima of the recorded generations.",
    ]
    if "random" in metrics["extractor"]:
        notes.append("This extractor has random weights: a pipeline check, not a reportable quality figure.")
    if metrics.get("alignment"):
        notes.append(f"Alignment: mean image-prompt cosine similarity with {metrics['alignment']}.")
    notes += [f"Warning: {w}" for w in metrics.get("warnings", [])]
    grid_head = "<th>prompt</th><th>real</th>" + "".join(f"<th>{html.escape(r['contender'])}</th>" for r in rows)
    grid = ""
    for prompt, real, by_contender in samples:
        cells = "".join(
            f'<td><img src="{_thumbnail(by_contender[r["contender"]])}" alt=""></td>'
            if r["contender"] in by_contender
            else "<td>&ndash;</td>"
            for r in rows
        )
        grid += f'<tr><td>{html.escape(prompt)}</td><td><img src="{_thumbnail(real)}" alt=""></td>{cells}</tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(config.name)}: comparison</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}
img{{image-rendering:pixelated;width:96px}}</style></head><body>
<h1>Comparison {html.escape(config.name)}</h1>
<p>Dataset <b>{html.escape(config.dataset)}</b>; {len(samples)} of the held-out prompts shown below.</p>
<h2>Quality and cost</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Notes</h2><ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>
<h2>Samples</h2>
<table><thead><tr>{grid_head}</tr></thead><tbody>{grid}</tbody></table>
</body></html>
"""


def _report(
    workspace: Workspace, config: CompareConfig, outputs: dict[str, dict[str, Any]], cases: list[Any], out: Path
) -> dict[str, Any]:
    import pandas as pd

    rows = report_rows(config, outputs)
    csv_path, html_path = out / "report.csv", out / "report.html"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    shown = cases[:4]
    real = _real_images(workspace, shown)
    samples = []
    for case, real_image in zip(shown, real, strict=True):
        firsts = {}
        for contender in config.contenders:
            model_id, _, _ = _model_row(workspace, config.model_name(contender))
            images = _images(workspace, model_id, [case.id])
            if images:
                firsts[contender.name] = images[0][1]
        samples.append((case.prompt, real_image, firsts))
    html_path.write_text(render_html(config, rows, outputs["metrics"], samples), encoding="utf-8")
    return {"csv": str(csv_path), "html": str(html_path), "rows": rows}


def study_config_text(config: CompareConfig, held_out_keys: Sequence[str]) -> str:
    """The TOML of the blinded study of the comparison's images (``db.studies`` format), drawn only from
    the held-out cases (models may also hold images of training cases)."""
    study = dict(config.study or {})
    values: dict[str, Any] = {
        "name": study.pop("name", f"{config.name}-study"),
        "seed": study.pop("seed", config.split.seed),
        "datasets": [config.dataset],
        "models": [config.model_name(c) for c in config.contenders],
        "cases_per_model": study.pop("cases_per_model", len(held_out_keys)),
        "cases": sorted(held_out_keys),
    }
    # Enough rater slots that a case's models go to different raters (no real image recurs for a rater) while
    # every contender is rated on every held-out case.
    models, per_item = len(values["models"]), int(study.get("raters_per_item", 1))
    values["rater_slots"] = study.pop("rater_slots", models * per_item)
    display = study.pop("display", None)
    values |= study
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    if display:
        lines += ["", "[display]", *(f"{key} = {json.dumps(value)}" for key, value in display.items())]
    return "\n".join(lines) + "\n"


def _study(workspace: Workspace, config: CompareConfig, held_out_keys: Sequence[str]) -> dict[str, Any]:
    from db.errors import NotFoundError
    from db.studies import create_study, get_study

    text = study_config_text(config, held_out_keys)
    name = tomllib.loads(text)["name"]
    with workspace.database.session() as session:
        try:
            get_study(session, name)
            return {"study": name, "created": False}
        except NotFoundError:
            pass
        summary = create_study(session, workspace.store, text, source=f"comparison {config.name}")
    return {"study": name, "created": True, "items": summary.items, "config": text}


# ---------------------------------------------------------------------------------------------- the run


def resolve_out_dir(workspace: Workspace, config: CompareConfig, config_path: Path | None) -> Path:
    """``out_dir`` relative to the config file, or ``<data dir>/compare/<name>``."""
    if config.out_dir:
        path = Path(config.out_dir).expanduser()
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        return path
    return Path(workspace.settings.data_dir) / "compare" / config.name


def run_comparison(
    workspace: Workspace, config_path: str | Path, *, progress: Progress | None = None
) -> ComparisonResult:
    """``app.py compare CONFIG.toml``: run (or resume) every stage of the comparison and write the report.

    Parameters
    ----------
    workspace
        A ``db.workspace.Workspace``.
    config_path
        The TOML config (see :func:`parse_compare_config`).
    progress
        Called with one line per stage (default: silent).

    Returns
    -------
    ComparisonResult

    Raises
    ------
    ValueError
        For a bad config, an unknown dataset split, too few cases, or a folder model without images.
    db.errors.NotFoundError
        For an unknown dataset or registered model.
    """
    from db.generated import case_groups, dataset_cases
    from generation.pipelines import PipelineCache

    path = Path(config_path)
    if not path.is_file():
        raise InputError(f"comparison config {path} does not exist")
    config = parse_compare_config(path.read_text(encoding="utf-8"), source=str(path))
    say = progress or (lambda _line: None)
    bars = progress is not None  # the command line shows progress bars for every long stage
    out = resolve_out_dir(workspace, config, path)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.open(out, workspace.database, config.name)
    ran: list[str] = []
    skipped: list[str] = []
    outputs: dict[str, dict[str, Any]] = {}
    prints: dict[str, str] = {}

    def stage(key: str, depends: Sequence[Any], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        stage_print = fingerprint(key, *depends)
        prints[key] = stage_print
        found = manifest.done(key, stage_print)
        if found is not None:
            skipped.append(key)
            say(f"{key}: done before, skipped")
            outputs[key] = found
            return found
        say(f"{key}: running")
        started = time.perf_counter()
        result = run()
        manifest.record(key, stage_print, result, started)
        ran.append(key)
        say(f"{key}: done in {time.perf_counter() - started:.1f} s")
        outputs[key] = result
        return result

    def split() -> dict[str, Any]:
        with workspace.database.session() as session:
            everything = case_groups(session, config.dataset)
            split_ids = None
            if config.split.split is not None:
                split_ids = [c.id for c in dataset_cases(session, config.dataset, split=config.split.split)]
                if not split_ids:
                    raise InputError(f"dataset {config.dataset!r} has no cases with split {config.split.split!r}")
        result = choose_split(everything, split_ids, config.split)
        audit = result["audit"]
        say(
            f"split by image: {audit['held_out_cases']} held-out cases ({audit['held_out_groups']} images), "
            f"{audit['train_cases']} training cases ({audit['train_groups']} images); overlap "
            f"{audit['overlap_groups']}; {audit['train_cases_dropped_sharing_a_group']} training cases dropped "
            "for sharing an image with a held-out case"
        )
        return result

    chosen = stage("split", ["by-group-v2", config.dataset, dataclasses.asdict(config.split)], split)
    cases = _held_out_cases(workspace, config, chosen["held_out"])
    cache = PipelineCache(capacity=1)
    device = config.device
    for contender in config.contenders:
        upstream: list[Any] = [prints["split"], dataclasses.asdict(contender)]
        if contender.kind != "registered":
            stage(
                f"train:{contender.name}",
                upstream,
                partial(_train, workspace, config, contender, chosen["train"], out, device, bars),
            )
            upstream.append(prints[f"train:{contender.name}"])
        gen_key = f"generate:{contender.name}"
        settings = config.generation_for(contender)
        stage(
            gen_key,
            [*upstream, settings],
            partial(_generate, workspace, config, contender, cases, cache, device, bars),
        )
        stage(
            f"cost:{contender.name}",
            [prints[gen_key]],
            partial(_cost, workspace, config, contender, cases, cache, device),
        )
    cache.clear()
    generated = [prints[f"generate:{c.name}"] for c in config.contenders]
    stage("metrics", [generated, dataclasses.asdict(config.metrics)], lambda: _metrics(workspace, config, cases, out))
    costs = [prints[f"cost:{c.name}"] for c in config.contenders]
    report = stage("report", [prints["metrics"], costs], lambda: _report(workspace, config, outputs, cases, out))
    study_name = None
    if config.study is not None:
        made = stage("study", [generated, config.study], lambda: _study(workspace, config, [c.key for c in cases]))
        study_name = made["study"]
    return ComparisonResult(
        name=config.name,
        out_dir=out,
        manifest=manifest.path,
        report_csv=Path(report["csv"]),
        report_html=Path(report["html"]),
        rows=report["rows"],
        stages_run=ran,
        stages_skipped=skipped,
        study=study_name,
    )
