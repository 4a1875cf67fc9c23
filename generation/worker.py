"""Job handlers of the generation room: ``generate`` (a dataset with a registered model, resumable) and
``demo`` (one image for one prompt, reporting each denoising step). The ``compare`` job is
:mod:`compare.jobs`.

The worker itself (queues, lanes, job state) is :class:`db.jobs.Worker`; :func:`register_generation_jobs`
adds these handlers to it, sharing one :class:`~generation.pipelines.PipelineCache` so pipelines stay warm
between jobs. ``app.py`` calls it before the server accepts a request; the cache (and torch with it) is made
when the first generation or demo job runs, so a server start does not pay for importing torch.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from db.generated import get_model
from db.jobs import Handler, JobContext, Lane, Worker

if TYPE_CHECKING:
    from generation.pipelines import PipelineCache

log = logging.getLogger(__name__)

GENERATE_JOB = "generate"
DEMO_JOB = "demo"


class SharedPipelines:
    """The one pipeline cache the generation jobs share, made on first use (importing torch takes 2 s)."""

    def __init__(self, cache: PipelineCache | None = None, capacity: int = 2) -> None:
        self._cache = cache
        self._capacity = capacity
        self._lock = threading.Lock()

    @property
    def cache(self) -> PipelineCache:
        """The cache, made by the first job that asks."""
        with self._lock:
            if self._cache is None:
                from generation.pipelines import PipelineCache

                self._cache = PipelineCache(capacity=self._capacity)
            return self._cache


def generate_handler(pipelines: SharedPipelines) -> Handler:
    """The ``generate`` handler: ``params`` are ``dataset``, ``model`` and :class:`GenerationConfig` fields."""

    def generate(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        from generation.batch import GenerationConfig, generate_for_dataset

        report = generate_for_dataset(
            ctx.require_workspace(),
            str(params["dataset"]),
            str(params["model"]),
            GenerationConfig.from_params(params),
            device=str(params.get("device", "auto")),
            progress=False,
            on_progress=ctx.report,
            should_stop=ctx.cancelled,
            cache=pipelines.cache,
            limit=params.get("limit"),
        )
        return report.summary()

    return generate


def demo_handler(pipelines: SharedPipelines) -> Handler:
    """The ``demo`` handler: one image for ``prompt`` with ``model`` (or a ``spec``), stored in the media store.

    Progress is reported after every denoising step (the step callback is added here, inside the worker,
    because job parameters are stored as JSON).
    """

    def demo(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        from generation.batch import GenerationConfig, generate_images, resolve_params
        from generation.pipelines import ModelSpec

        workspace = ctx.require_workspace()
        if params.get("model"):
            with workspace.database.session() as session:
                spec = ModelSpec.from_model(get_model(session, str(params["model"])))
        else:
            spec = ModelSpec.from_record(**params["spec"])
        total = {"steps": int(params.get("steps") or 1)}

        def on_step(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            ctx.report(step + 1, total["steps"], f"step {step + 1} of {total['steps']}")
            return tensors

        call_kwargs = {**dict(params.get("call_kwargs") or {}), "callback_on_step_end": on_step}
        loaded = pipelines.cache.get(spec, str(params.get("device", "auto")))
        config = GenerationConfig.from_params({**params, "call_kwargs": call_kwargs}, batch_size=1, per_case=1)
        sampling = resolve_params(loaded, config)
        total["steps"] = sampling.steps
        (image,) = generate_images(loaded.pipe, [str(params["prompt"])], [config.seed], sampling, loaded.device)
        info = workspace.store.put_image(image, source=f"demo image (job {ctx.job_id})")
        return {"sha256": info.sha256, "seed": config.seed, "steps": sampling.steps, "guidance": sampling.guidance}

    return demo


def register_generation_jobs(worker: Worker, cache: PipelineCache | None = None) -> SharedPipelines:
    """Register ``generate`` (batch lane) and ``demo`` (live lane) over one shared pipeline cache (``cache``,
    or one of two pipelines made on the first job); returns what they share."""
    pipelines = SharedPipelines(cache)
    worker.register(GENERATE_JOB, generate_handler(pipelines), Lane.BATCH)
    worker.register(DEMO_JOB, demo_handler(pipelines), Lane.LIVE)
    return pipelines
