"""Seeded, resumable, batch-invariant generation over the cases of a dataset.

Seeds
-----
Every image has its own seed, derived from the base seed, the case key and the image index::

    seed = int.from_bytes(sha256(f"medsynth-seed-v1|{base_seed}|{case_key}|{index}").digest()[:4]) >> 1

(a 31-bit non-negative integer, so it fits a 32-bit signed ``INTEGER`` column on every database).
It depends only on those three values: neither the order of cases nor the batch size nor the number
of processes changes it, and raising ``--per-case`` from 2 to 4 keeps the first two images. Within a
case the K seeds are distinct (on the rare 31-bit collision the index is re-hashed with a ``#n``
suffix until it is). Each image gets its own ``torch.Generator`` seeded with its seed, so its starting
noise is the same whether it is made alone or in a batch of 4; the denoiser then runs on the batch,
where float reductions may round differently (observed: < 1e-5 on CPU fp32), so images agree to
well under one 8-bit level but are not guaranteed bit-identical across batch sizes. The same seed,
batch size and device give bit-identical images.

Resuming and splitting
----------------------
The full plan (every case x index) is split across processes first (``plan[process_index::n]``),
then each process drops what is already recorded, so the split does not depend on when each
process reads the database: no image is made twice, none is left out. ``accelerate launch app.py
generate ...`` runs one process per GPU; :func:`distributed_context` reads its rank and device.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image

from db.errors import InputError
from generation.devices import device_label, resolve_device, suggest_batch_size, track_peak_memory
from generation.pipelines import LoadedPipeline, PipelineCache, set_scheduler
from generation.presets import resolve_resolution, resolve_sampling, vae_factor

if TYPE_CHECKING:
    from db.session import Database
    from db.workspace import Workspace

log = logging.getLogger(__name__)

SEED_SCHEME = "medsynth-seed-v1"
_OWN_COLUMNS = frozenset({"steps", "guidance", "call_kwargs"})  # recorded in columns / filtered separately
MAX_SEED = 2**31 - 1
MIN_SIDE = 8
MAX_SIDE = 4096
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_PER_CASE = 10_000


# ---------------------------------------------------------------------------------------------- pure core


def derive_seed(base_seed: int, case_key: str, index: int, attempt: int = 0) -> int:
    """The seed of image ``index`` of case ``case_key`` under ``base_seed`` (see the module docstring)."""
    text = f"{SEED_SCHEME}|{base_seed}|{case_key}|{index}" + (f"#{attempt}" if attempt else "")
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") >> 1


def case_seeds(base_seed: int, case_key: str, count: int) -> list[int]:
    """The ``count`` distinct seeds of one case, in index order."""
    seeds: list[int] = []
    for index in range(count):
        attempt = 0
        seed = derive_seed(base_seed, case_key, index)
        while seed in seeds:
            attempt += 1
            seed = derive_seed(base_seed, case_key, index, attempt)
        seeds.append(seed)
    return seeds


class CaseLike(Protocol):
    """What generation needs of a case (``db.generated.CaseRef`` fits)."""

    @property
    def id(self) -> int: ...
    @property
    def key(self) -> str: ...
    @property
    def prompt(self) -> str: ...


@dataclass(frozen=True)
class WorkItem:
    """One image to make: which case, which index, which seed."""

    case_id: int
    case_key: str
    prompt: str
    index: int
    seed: int


def plan_work(cases: Iterable[CaseLike], per_case: int, base_seed: int) -> list[WorkItem]:
    """Every (case, index) image of a run, in case order then index order."""
    return [
        WorkItem(case.id, case.key, case.prompt, index, seed)
        for case in cases
        for index, seed in enumerate(case_seeds(base_seed, case.key, per_case))
    ]


def split_work(items: Sequence[WorkItem], process_index: int, num_processes: int) -> list[WorkItem]:
    """The share of ``process_index`` out of ``num_processes``: every ``num_processes``-th item.

    Raises
    ------
    ValueError
        If ``num_processes < 1`` or ``process_index`` is outside ``[0, num_processes)``.
    """
    if num_processes < 1:
        raise InputError(f"num_processes must be at least 1, got {num_processes}")
    if not 0 <= process_index < num_processes:
        raise InputError(f"process_index {process_index} is outside [0, {num_processes})")
    return list(items[process_index::num_processes])


def drop_done(items: Iterable[WorkItem], done: set[tuple[int, int]]) -> list[WorkItem]:
    """Items whose (case_id, seed) is not recorded yet."""
    return [item for item in items if (item.case_id, item.seed) not in done]


def batched(items: Sequence[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    """Consecutive batches of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def check_inputs(
    *,
    height: int,
    width: int,
    factor: int,
    steps: int,
    guidance: float,
    per_case: int = 1,
    batch_size: int = 1,
    seed: int = 0,
) -> None:
    """Refuse impossible generation settings with a message naming the value and the rule.

    Raises
    ------
    ValueError
        Height/width not multiples of the VAE factor, below ``MIN_SIDE`` or above ``MAX_SIDE``; steps
        outside ``[1, MAX_STEPS]``; guidance negative or above ``MAX_GUIDANCE``; ``per_case`` or
        ``batch_size`` below 1; a negative seed.
    """
    for label, side in (("height", height), ("width", width)):
        if not isinstance(side, int) or isinstance(side, bool):
            raise InputError(f"{label} must be an integer number of pixels, got {side!r}")
        if side < max(MIN_SIDE, factor) or side > MAX_SIDE:
            raise InputError(f"{label}={side} px is out of range: use {max(MIN_SIDE, factor)}..{MAX_SIDE} px")
        if side % factor:
            lower, upper = side - side % factor, side - side % factor + factor
            raise InputError(
                f"{label}={side} px is not a multiple of this model's VAE factor {factor}: "
                f"use {lower or upper} or {upper}"
            )
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps={steps} is out of range: use 1..{MAX_STEPS}")
    if not 0.0 <= guidance <= MAX_GUIDANCE:
        raise InputError(f"guidance={guidance} is out of range: use 0..{MAX_GUIDANCE:g}")
    if not 1 <= per_case <= MAX_PER_CASE:
        raise InputError(f"per-case={per_case} is out of range: use 1..{MAX_PER_CASE}")
    if batch_size < 1:
        raise InputError(f"batch-size={batch_size} must be at least 1")
    if not seed >= 0:
        raise InputError(f"seed={seed} must be a non-negative integer")


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationConfig:
    """What ``app.py generate`` asks for; ``None`` fields take the model family's preset.

    Attributes
    ----------
    per_case
        Images per case (K).
    seed
        Base seed the per-image seeds derive from.
    steps, guidance, scheduler, height, width
        Sampling settings (``scheduler`` by name, see ``pipelines.SCHEDULERS``).
    batch_size
        Images per pipeline call; ``None`` = sized to the device.
    negative_prompt
        Optional negative prompt (pipelines that take one).
    call_kwargs
        Extra keyword arguments for the pipeline call (e.g. ``{"max_sequence_length": 64}``).
    """

    per_case: int = 1
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int | None = None
    negative_prompt: str | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> GenerationConfig:
        """A config from JSON job parameters (absent keys keep their defaults), then ``overrides``."""
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in params.items() if key in names and value is not None}
        values["call_kwargs"] = dict(values.get("call_kwargs") or {})
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class SamplingParams:
    """Fully resolved settings of one run (what every image records)."""

    steps: int
    guidance: float
    height: int
    width: int
    scheduler: str
    batch_size: int
    negative_prompt: str | None
    call_kwargs: dict[str, Any]


def resolve_params(loaded: LoadedPipeline, config: GenerationConfig) -> SamplingParams:
    """Fill ``config``'s blanks from the family preset and the pipeline, validate, set the scheduler.

    Raises
    ------
    ValueError
        As :func:`check_inputs`, or for an unknown / incompatible scheduler name.
    """
    pipe, preset = loaded.pipe, loaded.preset
    steps, guidance = resolve_sampling(pipe, preset, config.steps, config.guidance)
    height, width = resolve_resolution(pipe, preset, config.height, config.width)
    batch_size = config.batch_size or suggest_batch_size(loaded.device, height, width)
    check_inputs(
        height=height,
        width=width,
        factor=vae_factor(pipe),
        steps=steps,
        guidance=guidance,
        per_case=config.per_case,
        batch_size=batch_size,
        seed=config.seed,
    )
    scheduler = set_scheduler(pipe, config.scheduler)
    call_kwargs = {**preset.call_kwargs, **config.call_kwargs}
    return SamplingParams(steps, guidance, height, width, scheduler, batch_size, config.negative_prompt, call_kwargs)


# ---------------------------------------------------------------------------------------------- generating


def generate_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    params: SamplingParams,
    device: torch.device,
    output_type: str = "pil",
) -> Any:
    """Run one pipeline call for ``prompts``, image ``i`` seeded by its own generator ``seeds[i]``.

    Generators live on ``device`` for CUDA (the same seed gives the same image on the same device,
    not across devices) and on the CPU otherwise.

    Returns
    -------
    list[PIL.Image.Image] or numpy.ndarray
        As the pipeline's ``images`` for ``output_type``.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    generators = [torch.Generator(device=gen_device).manual_seed(int(seed)) for seed in seeds]
    kwargs: dict[str, Any] = dict(params.call_kwargs)
    if params.negative_prompt is not None:
        kwargs["negative_prompt"] = [params.negative_prompt] * len(prompts)
    with torch.inference_mode():
        out = pipe(
            prompt=list(prompts),
            num_inference_steps=params.steps,
            guidance_scale=params.guidance,
            height=params.height,
            width=params.width,
            generator=generators,
            output_type=output_type,
            **kwargs,
        )
    return out.images


@dataclass(frozen=True)
class GeneratedRecord:
    """One made image with everything needed to make it again, as handed to an :class:`ImageSink`."""

    case_id: int
    seed: int
    image: Image.Image
    steps: int
    guidance: float
    parameters: dict[str, Any]
    device: str
    seconds: float
    peak_memory_bytes: int


class ImageSink(Protocol):
    """Where images go: the database (:class:`DbImageSink`) or anything else (tests, benchmarks)."""

    def done(self, case_ids: Sequence[int]) -> set[tuple[int, int]]:
        """(case_id, seed) pairs already recorded among ``case_ids``."""
        ...

    def record(self, record: GeneratedRecord) -> None:
        """Store one image and its record (idempotent on case_id + seed)."""
        ...


@dataclass
class MemorySink:
    """An in-memory :class:`ImageSink` (tests, benchmarks, the demo's one-off images)."""

    records: list[GeneratedRecord] = field(default_factory=list)

    def done(self, case_ids: Sequence[int]) -> set[tuple[int, int]]:
        wanted = set(case_ids)
        return {(r.case_id, r.seed) for r in self.records if r.case_id in wanted}

    def record(self, record: GeneratedRecord) -> None:
        if (record.case_id, record.seed) not in self.done([record.case_id]):
            self.records.append(record)


@dataclass
class DbImageSink:
    """Records into MedSynth's database and media store through ``db.generated``."""

    database: Database
    store: Any
    model_id: int

    def done(self, case_ids: Sequence[int]) -> set[tuple[int, int]]:
        from db.generated import existing_seeds

        with self.database.session() as session:
            return existing_seeds(session, self.model_id, list(case_ids))

    def record(self, record: GeneratedRecord) -> None:
        from db.generated import record_generated_image

        record_generated_image(
            self.database,
            self.store,
            model_id=self.model_id,
            case_id=record.case_id,
            image=record.image,
            seed=record.seed,
            steps=record.steps,
            guidance=record.guidance,
            parameters=record.parameters,
            device=record.device,
            seconds=record.seconds,
            peak_memory_bytes=record.peak_memory_bytes,
        )


@dataclass(frozen=True)
class GenerationReport:
    """What a run did (this process's share)."""

    planned: int
    skipped: int
    generated: int
    seconds: float
    peak_memory_bytes: int
    params: SamplingParams
    stopped: bool = False

    @property
    def images_per_second(self) -> float:
        """Generated images per wall-clock second (0 when nothing was generated)."""
        return self.generated / self.seconds if self.generated and self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The figures as a JSON-able dict (a job's result, the CLI's last line)."""
        keys = ("planned", "skipped", "generated", "seconds", "peak_memory_bytes", "stopped")
        return {**{key: getattr(self, key) for key in keys}, "images_per_second": self.images_per_second}


ProgressCallback = Callable[[int, int], None]


def run_generation(
    loaded: LoadedPipeline,
    cases: Sequence[CaseLike],
    config: GenerationConfig,
    sink: ImageSink,
    *,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationReport:
    """Make the images of ``cases`` that ``sink`` does not hold yet, in batches, recording each one.

    Parameters
    ----------
    loaded
        The pipeline (from ``load_pipeline`` or a ``PipelineCache``).
    cases
        Cases in a stable order (all processes must pass the same list).
    config
        Run settings; blanks come from the family preset.
    sink
        Where images and their records go.
    process_index, num_processes
        This process's share of the work (``accelerate launch``; see :func:`distributed_context`).
    progress
        Show a tqdm bar.
    on_progress
        Called with ``(done, total)`` after each batch (the background worker's progress).
    should_stop
        Polled between batches; returning ``True`` stops the run cleanly (what is done stays recorded).

    Returns
    -------
    GenerationReport
    """
    from tqdm.auto import tqdm

    params = resolve_params(loaded, config)
    mine = split_work(plan_work(cases, config.per_case, config.seed), process_index, num_processes)
    todo = drop_done(mine, sink.done(sorted({item.case_id for item in mine})))
    label = device_label(loaded.device)
    common = {
        **loaded.describe(),
        **{f.name: getattr(params, f.name) for f in fields(params) if f.name not in _OWN_COLUMNS},
        "call_kwargs": {k: v for k, v in params.call_kwargs.items() if not callable(v)},  # JSON-safe
        "base_seed": config.seed,
        "per_case": config.per_case,
        "seed_scheme": SEED_SCHEME,
        "num_processes": num_processes,
        "torch": torch.__version__,
        "diffusers": _diffusers_version(),
    }
    started, peak, made, stopped = time.perf_counter(), 0, 0, False
    bar = tqdm(total=len(todo), desc=f"{loaded.spec.name} [{process_index + 1}/{num_processes}]", disable=not progress)
    try:
        for batch in batched(todo, params.batch_size):
            if should_stop is not None and should_stop():
                stopped = True
                break
            t0 = time.perf_counter()
            with track_peak_memory(loaded.device) as memory:
                images = generate_images(
                    loaded.pipe, [i.prompt for i in batch], [i.seed for i in batch], params, loaded.device
                )
            per_image = (time.perf_counter() - t0) / len(batch)
            peak = max(peak, memory.bytes)
            for item, image in zip(batch, images, strict=True):
                parameters = {
                    **common,
                    "prompt": item.prompt,
                    "case_key": item.case_key,
                    "index": item.index,
                    "peak_memory_kind": memory.kind,
                }
                sink.record(
                    GeneratedRecord(
                        item.case_id, item.seed, image, params.steps, params.guidance, parameters, label,
                        per_image, memory.bytes,
                    )
                )  # fmt: skip
            made += len(batch)
            bar.update(len(batch))
            if on_progress is not None:
                on_progress(made, len(todo))
    finally:
        bar.close()
    return GenerationReport(
        planned=len(mine),
        skipped=len(mine) - len(todo),
        generated=made,
        seconds=time.perf_counter() - started,
        peak_memory_bytes=peak,
        params=params,
        stopped=stopped,
    )


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


# ---------------------------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class DistributedContext:
    """This process's rank, the number of processes and the device it should use."""

    process_index: int
    num_processes: int
    device: torch.device


def distributed_context(device: str = "auto") -> DistributedContext:
    """Rank, world size and device under ``accelerate launch`` (one process, ``device`` otherwise).

    With several processes and ``device`` ``auto``/``cuda``, each process takes its own GPU
    (``accelerate.PartialState().device``).
    """
    try:
        from accelerate import PartialState
    except ImportError:  # accelerate is a runtime requirement; stay usable without it
        return DistributedContext(0, 1, resolve_device(device))
    state = PartialState()
    if state.num_processes > 1 and device in ("auto", "cuda") and state.device.type == "cuda":
        return DistributedContext(state.process_index, state.num_processes, state.device)
    return DistributedContext(state.process_index, state.num_processes, resolve_device(device))


def generate_for_dataset(
    workspace: Workspace,
    dataset: str,
    model: str,
    config: GenerationConfig,
    *,
    device: str = "auto",
    progress: bool = True,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    cache: PipelineCache | None = None,
    limit: int | None = None,
) -> GenerationReport:
    """``app.py generate``: make the missing images of ``dataset`` with registered ``model``.

    Parameters
    ----------
    workspace
        A ``db.workspace.Workspace`` (database + media store).
    dataset, model
        Registered names.
    config
        Run settings.
    device
        ``auto``/``cuda``/``cpu``; under ``accelerate launch`` each process takes its own GPU.
    cache
        A ``pipelines.PipelineCache`` to reuse warm pipelines (the app's worker); ``None`` loads afresh.
    limit
        Only the first ``limit`` cases (smoke runs).

    Raises
    ------
    db.errors.NotFoundError
        For an unknown dataset or model.
    ValueError
        For a folder model, an unusable source, or impossible settings.
    """
    from db.generated import dataset_cases, get_model
    from generation.pipelines import ModelSpec, load_pipeline

    with workspace.database.session() as session:
        row = get_model(session, model)
        spec, model_id = ModelSpec.from_model(row), row.id
        cases = dataset_cases(session, dataset, limit=limit)
    context = distributed_context(device)
    loaded = cache.get(spec, context.device) if cache is not None else load_pipeline(spec, context.device)
    sink = DbImageSink(workspace.database, workspace.store, model_id)
    log.info("generating %d cases of %s with %s on %s", len(cases), dataset, model, loaded.device)
    return run_generation(
        loaded,
        cases,
        config,
        sink,
        process_index=context.process_index,
        num_processes=context.num_processes,
        progress=progress and context.process_index == 0,
        on_progress=on_progress,
        should_stop=should_stop,
    )
