"""The stages of a comparison: each a function of the run's :class:`StageContext` that returns its outputs (JSON).

``choose_split`` (held-out and training cases, by leakage group), ``train`` (MSDM or LoRA, then registered),
``generate`` (images for the held-out cases, recorded in the database), ``cost`` (parameters, FLOPs, seconds and
peak memory per image), ``metrics`` (FD / KID / CMMD against the real held-out images through
:func:`analysis.features.load_extractor`, and alignment) and ``study`` (the blinded study of those images).
:mod:`compare.run` orders them and caches their outputs (:mod:`compare.manifest`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import tomllib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.features import load_extractor
from compare.config import CompareConfig, ContenderConfig, SplitConfig
from db.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

    from db.generated import CaseRef
    from db.workspace import Workspace
    from generation.batch import GenerationConfig
    from generation.pipelines import ModelSpec, PipelineCache


@dataclass(frozen=True)
class StageContext:
    """What the stages of one run share: the workspace, the config, the output folder, the pipeline cache (one
    pipeline warm between a contender's generate and cost stages) and whether progress bars show (on from the
    command line: stages run for hours)."""

    workspace: Workspace
    config: CompareConfig
    out: Path
    cache: PipelineCache
    bars: bool = False


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


def split(ctx: StageContext, say: Callable[[str], None]) -> dict[str, Any]:
    """The ``split`` stage: :func:`choose_split` over the dataset's cases (a split value, or a seeded draw);
    ``say`` gets one line of its audit."""
    from db.generated import case_groups, dataset_cases

    workspace, config = ctx.workspace, ctx.config
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


def generation_config(settings: dict[str, Any]) -> GenerationConfig:
    """The batch generation settings of a [generation] table (``max_sequence_length`` goes to the pipeline call)."""
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


def train(ctx: StageContext, contender: ContenderConfig, train_ids: list[int]) -> dict[str, Any]:
    """Train one contender on ``train_ids`` into ``out/models/<name>`` (resuming) and register it; the stage's
    outputs."""
    from generation.lora_train import LoraTrainConfig, allow_mixed_precision, dataset_examples, train_lora
    from generation.msdm.pipeline import model_kind_for
    from generation.pipelines import build_spec

    workspace, config, device, bars = ctx.workspace, ctx.config, ctx.config.device, ctx.bars
    examples = dataset_examples(workspace, config.dataset, case_ids=train_ids)
    folder = ctx.out / "models" / contender.name
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


def held_out_cases(workspace: Workspace, config: CompareConfig, held: list[int]) -> list[CaseRef]:
    """The dataset's cases whose ids are in ``held`` (the split stage's held-out ids), in dataset order."""
    from db.generated import dataset_cases

    with workspace.database.session() as session:
        chosen = set(held)
        return [c for c in dataset_cases(session, config.dataset) if c.id in chosen]


def model_row(workspace: Workspace, name: str) -> tuple[int, str, ModelSpec | None]:
    """A registered model's id, kind and pipeline spec (None for a folder of imported images)."""
    from db.generated import get_model
    from generation.pipelines import ModelSpec

    with workspace.database.session() as session:
        row = get_model(session, name)
        kind = getattr(row.kind, "value", row.kind)
        return row.id, str(kind), (ModelSpec.from_model(row) if kind != "folder" else None)


def generate(ctx: StageContext, contender: ContenderConfig, cases: list[CaseRef]) -> dict[str, Any]:
    """Generate every held-out case with the contender's model (resuming: recorded images are skipped); a model
    of imported images must already hold them."""
    from db.generated import existing_seeds
    from generation.batch import DbImageSink, run_generation

    workspace, config = ctx.workspace, ctx.config
    model_id, _, spec = model_row(workspace, config.model_name(contender))
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
    loaded = ctx.cache.get(spec, config.device)
    sink = DbImageSink(workspace.database, workspace.store, model_id)
    settings = generation_config(config.generation_for(contender))
    report = run_generation(loaded, cases, settings, sink, progress=ctx.bars)
    return {
        "model": config.model_name(contender),
        "generated": report.generated,
        "skipped": report.skipped,
        "params": dataclasses.asdict(report.params),
    }


def cost(ctx: StageContext, contender: ContenderConfig, cases: list[CaseRef]) -> dict[str, Any]:
    """Parameters, FLOPs for one image, and the recorded seconds and peak memory per image of a contender."""
    from generation.batch import resolve_params
    from generation.cost import count_parameters, generation_timing, pipeline_flops_per_image

    workspace, config = ctx.workspace, ctx.config
    model_id, _, spec = model_row(workspace, config.model_name(contender))
    timing = dataclasses.asdict(generation_timing(workspace.database, model_id, [c.id for c in cases]))
    if spec is None:
        return {"parameters": None, "flops_per_image": None, "flops_by_module": {}, **timing}
    loaded = ctx.cache.get(spec, config.device)
    params = resolve_params(loaded, generation_config(config.generation_for(contender)))
    flops = pipeline_flops_per_image(loaded.pipe, params, cases[0].prompt, loaded.device)
    return {
        "parameters": count_parameters(loaded.pipe),
        "flops_per_image": flops.total,
        "flops_by_module": flops.by_module,
        **timing,
    }


def generated_images(workspace: Workspace, model_id: int, case_ids: list[int]) -> list[tuple[int, Image.Image]]:
    """``(case id, image)`` of every recorded image of ``model_id`` for ``case_ids``."""
    from db.generated import generated_shas

    with workspace.database.session() as session:
        rows = generated_shas(session, model_id, case_ids)
    return [(case_id, workspace.store.open(sha)) for case_id, sha in rows]


def real_images(workspace: Workspace, cases: list[CaseRef], *, distinct: bool = True) -> list[Image.Image]:
    """The real images of ``cases``: the distinct ones (one per image, however many prompts share it; for the
    metrics) or, with ``distinct=False``, one per case in order (for the report's samples)."""
    from db.generated import case_image_shas

    with workspace.database.session() as session:
        shas = case_image_shas(session, [c.id for c in cases])
    chosen = [shas[c.id] for c in cases]
    return [workspace.store.open(sha) for sha in (dict.fromkeys(chosen) if distinct else chosen)]


def metrics(ctx: StageContext, cases: list[CaseRef]) -> dict[str, Any]:
    """FD/KID/CMMD of every contender against the real held-out images (equal N), and alignment."""
    import pandas as pd

    from analysis.metrics import alignment_metric, compare_models

    workspace, config = ctx.workspace, ctx.config
    settings = config.metrics
    extractor = load_extractor(settings.extractor)
    prompts = {c.id: c.prompt for c in cases}
    ids = [c.id for c in cases]
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        real = extractor(real_images(workspace, cases))
        generated = {}
        for contender in config.contenders:
            model_id, _, _ = model_row(workspace, config.model_name(contender))
            generated[contender.name] = generated_images(workspace, model_id, ids)
        feats = {name: extractor([image for _, image in images]) for name, images in generated.items()}
        table = compare_models(
            extractor,
            real,
            feats,
            seed=settings.seed,
            n_boot=settings.n_boot,
            metrics=list(settings.metrics),  # type: ignore[arg-type]
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
    path = ctx.out / "metrics.csv"
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


def study(ctx: StageContext, held_out_keys: Sequence[str]) -> dict[str, Any]:
    """Create the blinded study of the contenders' images of the held-out cases (once; a rerun finds it)."""
    from db.errors import NotFoundError
    from db.studies import create_study, get_study

    workspace, config = ctx.workspace, ctx.config
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
