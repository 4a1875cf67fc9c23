"""The live demo tab: prompt, model, seed, steps, guidance -> one image, with step progress and the time taken.

Generation never runs in the request handler: the handler queues a ``demo`` job on the app's background
worker (:class:`db.jobs.Worker`, live lane: it never waits behind batch generation or reports) and polls it,
reporting the worker's step count to the page. The event has its own concurrency group, so raters' events
never queue behind it. The tab is open to everyone unless the app was started with ``--no-demo`` or the
coordinator switched it off (:func:`db.settings.set_demo_open`).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from db.errors import InputError, MedSynthError
from db.generated import generatable_model_names
from db.jobs import FINISHED, JobStatus
from db.session import Database
from db.settings import demo_is_open

if TYPE_CHECKING:
    from evalapp.server import AppContext

#: the worker's job kind that makes one demo image (registered on the live lane by ``generation.worker``)
DEMO_JOB = "demo"
DEMO_CONCURRENCY_ID = "live_demo"
DEMO_CONCURRENCY_LIMIT = 2
MAX_PROMPT_CHARS = 500
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_SEED = 2**32 - 1
POLL_S = 0.2
DEMO_TIMEOUT_S = 600.0
CLOSED_MESSAGE = "The live demo is switched off on this server."
DEFAULT_PROMPT = "Generate an endoscopy image containing a small polyp in the upper left."


@dataclass(frozen=True)
class DemoRequest:
    """Validated live-demo inputs."""

    prompt: str
    model: str
    seed: int
    steps: int
    guidance: float


def _whole(value: Any, label: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a whole number from {low} to {high}") from None
    if number != int(number) or not low <= number <= high:
        raise InputError(f"{label} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def validate_demo_inputs(prompt: Any, model: Any, seed: Any, steps: Any, guidance: Any) -> DemoRequest:
    """Check the demo form: a 1-500 character prompt, a model name, seed 0..2**32-1, steps 1-100, guidance 0-20.

    Raises
    ------
    InputError
        Naming the field and its allowed range.
    """
    text = prompt.strip() if isinstance(prompt, str) else ""
    if not text:
        raise InputError("please type a prompt")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        raise InputError("the prompt contains control characters")
    if not isinstance(model, str) or not model.strip():
        raise InputError("please choose a model")
    try:
        scale = float(guidance)
    except (TypeError, ValueError):
        raise InputError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}") from None
    if not 0.0 <= scale <= MAX_GUIDANCE:  # also refuses NaN
        raise InputError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance!r}")
    return DemoRequest(
        prompt=text,
        model=model.strip(),
        seed=_whole(seed, "seed", 0, MAX_SEED),
        steps=_whole(steps, "steps", 1, MAX_STEPS),
        guidance=scale,
    )


def demo_available(ctx: AppContext) -> bool:
    """The demo runs only when the app was started with it and the coordinator has not closed it."""
    return ctx.demo_enabled and demo_is_open(ctx.workspace.database)


def generatable_models(database: Database) -> list[str]:
    """Names of registered models that can make images here (not imported folders), by name."""
    with database.session() as session:
        return generatable_model_names(session)


def run_demo_job(
    ctx: AppContext, request_: DemoRequest, on_progress: Callable[[float, str], object] | None = None
) -> tuple[Image.Image, str]:
    """Queue a ``demo`` job on the worker's live lane, wait for it (reporting progress), return (image, summary)."""
    worker = ctx.jobs()
    started = time.perf_counter()
    job_id = worker.submit(
        DEMO_JOB,
        {
            "model": request_.model,
            "prompt": request_.prompt,
            "seed": request_.seed,
            "steps": request_.steps,
            "guidance": request_.guidance,
        },
    )
    deadline = started + DEMO_TIMEOUT_S
    while True:
        job = worker.status(job_id)
        if job.status in FINISHED:
            break
        if on_progress is not None:
            if job.status == JobStatus.QUEUED:
                on_progress(0.0, "waiting for the worker")
            else:
                on_progress(job.progress, job.message or "running")
        if time.perf_counter() > deadline:
            worker.cancel(job_id)
            raise gr.Error("The demo took too long and was cancelled.", print_exception=False)
        time.sleep(POLL_S)
    if job.status != JobStatus.DONE:
        reason = job.message or job.status.value
        raise gr.Error(f"The demo image could not be made: {html.escape(reason)}", print_exception=False)
    image = ctx.workspace.store.open(job.result["sha256"])
    seconds = time.perf_counter() - started
    ran = (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else seconds
    summary = (
        f"{request_.model}, seed {request_.seed}, {job.result.get('steps', request_.steps)} steps, "
        f"guidance {job.result.get('guidance', request_.guidance):g}: {ran:.1f} s generating, "
        f"{seconds:.1f} s in all"
    )
    return image, summary


@dataclass
class DemoTab:
    """The components of the demo tab (for the server and tests)."""

    page: gr.Column
    notice: gr.Markdown
    prompt: gr.Textbox
    model: gr.Dropdown
    seed: gr.Number
    steps: gr.Slider
    guidance: gr.Slider
    run: gr.Button
    image: gr.Image
    info: gr.Textbox


def build_demo_tab(ctx: AppContext) -> DemoTab:
    """The live demo page; call inside the app's ``gr.Blocks`` (the server mounts it at /demo)."""
    models = generatable_models(ctx.workspace.database)
    with gr.Column() as page:
        gr.Markdown("## MedSynth live demo")
        notice = gr.Markdown("Type a prompt, pick a model and press Generate. Images are made on the server.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(
                    label="Prompt", value=DEFAULT_PROMPT, lines=3, max_lines=6, max_length=MAX_PROMPT_CHARS
                )
                model = gr.Dropdown(
                    label="Model", choices=models, value=models[0] if models else None, allow_custom_value=True
                )
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
                    steps = gr.Slider(label="Steps", minimum=1, maximum=MAX_STEPS, step=1, value=20)
                    guidance = gr.Slider(label="Guidance", minimum=0, maximum=MAX_GUIDANCE, step=0.5, value=3.5)
                run = gr.Button("Generate", variant="primary")
            with gr.Column(scale=1, min_width=280):
                image = gr.Image(label="Generated image", type="pil", interactive=False, height=320)
                info = gr.Textbox(label="Details", interactive=False, lines=2)

        def demo_generate(
            prompt_text: str,
            model_name: str,
            seed_value: float,
            steps_value: float,
            guidance_value: float,
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio injects progress through the default
        ) -> tuple[Any, str]:
            if not demo_available(ctx):
                raise gr.Error(CLOSED_MESSAGE, print_exception=False)
            try:
                checked = validate_demo_inputs(prompt_text, model_name, seed_value, steps_value, guidance_value)
                if checked.model not in generatable_models(ctx.workspace.database):
                    raise InputError(f"no model called {checked.model!r} can generate here")
            except MedSynthError as exc:
                raise gr.Error(html.escape(str(exc)), print_exception=False) from None
            return run_demo_job(ctx, checked, lambda f, desc: progress(f, desc=desc))

        def demo_refresh(request: gr.Request) -> tuple[Any, str]:
            if not demo_available(ctx):
                return gr.update(choices=[], value=None), CLOSED_MESSAGE
            names = generatable_models(ctx.workspace.database)
            return gr.update(choices=names), "Type a prompt, pick a model and press Generate."

        run.click(
            demo_generate,
            [prompt, model, seed, steps, guidance],
            [image, info],
            api_name="demo_generate",
            api_visibility="undocumented",
            concurrency_id=DEMO_CONCURRENCY_ID,
            concurrency_limit=DEMO_CONCURRENCY_LIMIT,
            trigger_mode="once",
        )
    root = gr.context.Context.root_block
    if root is not None:
        root.load(
            demo_refresh,
            None,
            [model, notice],
            api_name="demo_refresh",
            api_visibility="private",
            concurrency_id="demo_ui",
            concurrency_limit=4,
            show_progress="hidden",
        )
    return DemoTab(page, notice, prompt, model, seed, steps, guidance, run, image, info)
