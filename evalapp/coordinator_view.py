"""The coordinator console: sign-in, studies, raters, live progress, generation jobs, exports, analysis, demo switch.

Every handler here except sign-in/sign-out and the page-load check begins with ``require_coordinator(request)``:
the server checks the caller on every event; hiding the console's components is only for the eye. Handlers are
kept off the public API page (``api_visibility="private"``). Errors a user can fix (bad TOML, unknown names)
are shown as messages, HTML-escaped.

The work is done by plain functions (``db``, :mod:`db.progress`, the worker's jobs); the handlers
only check the caller, call them, and shape their results into tables.
"""

from __future__ import annotations

import html
import math
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from db import progress as prog
from db.audit import record_action
from db.errors import InputError, MedSynthError
from db.export import export_study, items_frame
from db.generated import get_model
from db.models import Specialty
from db.progress import list_jobs
from db.raters import add_rater, reissue_token, revoke_rater
from db.settings import demo_is_open, set_demo_open
from db.studies import create_study, get_study, parse_study_config
from evalapp.auth import Role, client_key, coordinator_logout, coordinator_sign_in, identify, require_coordinator

MAX_CONFIG_CHARS = 100_000
MAX_CONFIG_BYTES = 1024 * 1024  # the server refuses larger uploads before they are read
MAX_PASSWORD_CHARS = 200
REFRESH_S = 5.0
EXPORT_FORMATS = ("csv", "parquet", "json")
DEVICES = ("auto", "cuda", "cpu")
GENERATE_JOB = "generate"
REPORT_JOB = "report"
EXPORT_MAX_AGE_S = 3600
# Part of the page every visitor receives: placeholders only, never the names of this server's data.
EXAMPLE_CONFIG = """name = "my-study"
seed = 7
datasets = ["DATASET-NAME"]
models = ["MODEL-A", "MODEL-B"]
cases_per_model = 6
raters_per_item = 2
rater_slots = 2
attention_fraction = 0.1
repeat_fraction = 0.1
"""
CSS = """
.ms-console { max-width: 1200px; margin: 0 auto; }
.ms-signin { max-width: 420px; margin: 48px auto; }
.ms-note { color: var(--body-text-color-subdued); font-size: 0.92em; }
"""


# ----------------------------------------------------------------------------------------------- plain helpers


@contextmanager
def shown_errors() -> Iterator[None]:
    """Turn errors a user can fix into a Gradio message (escaped: the text may quote their input)."""
    try:
        yield
    except MedSynthError as exc:  # anything else is a bug: Gradio logs it with its traceback
        raise gr.Error(html.escape(str(exc)), print_exception=False) from None


def beside(what: str, exc: Exception, untouched: int) -> list[Any]:
    """A user error shown in the message beside the form (escaped), the other ``untouched`` outputs left as
    they are: a mistake never blanks a table with Gradio's red "Error" badge."""
    return [f"**{what}:** {html.escape(str(exc))}", *[gr.skip()] * untouched]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else ""


def studies_table(ctx: Any) -> pd.DataFrame:
    """Every study with its counts."""
    with ctx.workspace.database.session() as session:
        rows = prog.list_studies(session)
    return pd.DataFrame(
        [[r.name, r.status, r.items, r.raters, r.ratings, _when(r.created_at)] for r in rows],
        columns=["study", "status", "items", "raters", "ratings", "created"],
    )


def study_names(ctx: Any) -> list[str]:
    """Study names, newest first."""
    with ctx.workspace.database.session() as session:
        return [r.name for r in prog.list_studies(session)]


def items_table(ctx: Any, study: str) -> pd.DataFrame:
    """The study's items (coordinator view: model and true side included)."""
    columns = ["item", "item_kind", "repeat_of", "dataset", "case", "domain", "model", "generated_side", "prompt"]
    if not study:
        return pd.DataFrame(columns=columns)
    with ctx.workspace.database.session() as session:
        return items_frame(session, get_study(session, study))[columns]


def assignments_table(ctx: Any, study: str) -> pd.DataFrame:
    """Each rater's list, in order."""
    columns = ["rater", "position", "item", "item_kind", "model", "domain", "rated"]
    if not study:
        return pd.DataFrame(columns=columns)
    with ctx.workspace.database.session() as session:
        rows = prog.assignment_rows(session, study)
    return pd.DataFrame([list(vars(r).values()) for r in rows], columns=columns)


def raters_table(ctx: Any, study: str) -> pd.DataFrame:
    """Per rater: progress, revoked, last activity."""
    columns = ["rater", "name", "specialty", "rated", "assigned", "done", "revoked", "last rating"]
    if not study:
        return pd.DataFrame(columns=columns)
    with ctx.workspace.database.session() as session:
        rows = prog.rater_progress(session, study)
    return pd.DataFrame(
        [
            [r.rater, r.name, r.specialty, r.rated, r.assigned, f"{r.fraction:.0%}", "yes" if r.revoked else "",
             _when(r.last_rating_at)]
            for r in rows
        ],
        columns=columns,
    )  # fmt: skip


def models_table(ctx: Any, study: str) -> pd.DataFrame:
    """Per model: items, assignments, ratings."""
    columns = ["model", "items", "rated", "assigned", "done"]
    if not study:
        return pd.DataFrame(columns=columns)
    with ctx.workspace.database.session() as session:
        rows = prog.model_progress(session, study)
    return pd.DataFrame([[r.model, r.items, r.rated, r.assigned, f"{r.fraction:.0%}"] for r in rows], columns=columns)


JOB_COLUMNS = ["job", "kind", "status", "progress", "message", "queued", "finished"]


def jobs_table(ctx: Any, study: str) -> pd.DataFrame:
    """The selected study's recent background jobs (never another study's; empty without a study)."""
    if not study:
        return pd.DataFrame(columns=JOB_COLUMNS)
    with ctx.workspace.database.session() as session:
        rows = prog.list_jobs(session, limit=30, study=study)
    return pd.DataFrame(
        [
            [j.id, j.kind, j.status, f"{j.progress:.0%}", j.message[:200], _when(j.created_at), _when(j.finished_at)]
            for j in rows
        ],
        columns=JOB_COLUMNS,
    )


def rater_choices(ctx: Any, study: str) -> list[tuple[str, str]]:
    """(label, public id) of the study's raters."""
    if not study:
        return []
    with ctx.workspace.database.session() as session:
        rows = prog.rater_progress(session, study)
    return [(f"{r.name} ({'revoked' if r.revoked else r.specialty})", r.rater) for r in rows]


def study_models(ctx: Any, study: str) -> list[str]:
    """The models a study compares (from its config)."""
    if not study:
        return []
    with ctx.workspace.database.session() as session:
        return list(get_study(session, study).config.get("models", []))


def create_study_from_text(ctx: Any, text: str) -> str:
    """Create a study from TOML text; returns a one-line summary."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("paste a study config (TOML) or upload a .toml file first")
    if len(text) > MAX_CONFIG_CHARS:
        raise InputError(f"the config is {len(text)} characters; the limit is {MAX_CONFIG_CHARS}")
    with ctx.workspace.database.session() as session:
        return create_study(session, ctx.workspace.store, text, source="pasted config").describe()


def add_study_rater(ctx: Any, study: str, name: str, specialty: str, years: float | None) -> tuple[str, str]:
    """Add a rater; returns (message, personal link)."""
    if not study:
        raise InputError("choose a study first")
    with ctx.workspace.database.session() as session:
        new = add_rater(session, study, name, specialty, None if years is None or str(years) == "" else float(years))
    return f"Added {new.name} with {new.assignments} pairs to rate. The link is shown once.", ctx.rater_link(new.token)


def optional_number(
    value: object, field: str, *, minimum: float, maximum: float, integer: bool = False
) -> float | int | None:
    """A number typed in an optional field: empty means None (the model's default); otherwise it must lie in
    [minimum, maximum] (a whole number when ``integer``). The error names the field.

    >>> optional_number("", "Steps", minimum=1, maximum=1000), optional_number(" 25 ", "Steps", minimum=1, maximum=99)
    (None, 25.0)
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{field}: {str(value)[:40]!r} is not a number (leave it empty for the default)") from None
    if not math.isfinite(number) or not minimum <= number <= maximum:
        raise InputError(f"{field}: {number:g} is outside {minimum:g}-{maximum:g} (leave it empty for the default)")
    if integer and number != int(number):
        raise InputError(f"{field}: {number:g} is not a whole number")
    return int(number) if integer else number


def queue_generation(
    ctx: Any,
    study: str,
    models: list[str],
    device: str,
    steps: object,
    guidance: object,
    seed: object,
) -> list[int]:
    """Queue one ``generate`` job per (dataset, model) of the study; returns the job ids.

    Empty steps / guidance leave the model's own defaults (a model may carry its own steps, as the demo's
    fast one does); a value given applies to every chosen model.
    """
    if not study:
        raise InputError("choose a study first")
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}")
    n_steps = optional_number(steps, "Steps", minimum=1, maximum=1000, integer=True)
    scale = optional_number(guidance, "Guidance", minimum=0, maximum=100)
    base_seed = optional_number(seed, "Base seed", minimum=0, maximum=2**32 - 1, integer=True) or 0
    with ctx.workspace.database.session() as session:
        cfg = parse_study_config(get_study(session, study).config_text, source=f"study {study}")
    chosen = [m for m in models or [] if m in cfg.models]
    if not chosen:
        raise InputError("tick at least one of the study's models")
    params: dict[str, Any] = {"study": study, "device": device, "seed": int(base_seed), "per_case": 1}
    if scale is not None:
        params["guidance"] = float(scale)
    with ctx.workspace.database.session() as session:  # a model may carry its own steps (the demo's fast one)
        own_steps = {m: get_model(session, m).parameters.get("steps") for m in chosen}
    worker = ctx.jobs()
    jobs = []
    for model in chosen:
        model_steps = n_steps if n_steps is not None else own_steps[model]
        for dataset in cfg.datasets:
            job = {**params, "dataset": dataset, "model": model}
            if model_steps is not None:
                job["steps"] = int(model_steps)
            jobs.append(worker.submit(GENERATE_JOB, job))
    return jobs


def sweep_old_folders(parent: Path, prefix: str, max_age_s: float = EXPORT_MAX_AGE_S) -> None:
    """Delete this app's folders ``parent/prefix*`` older than ``max_age_s`` (earlier exports)."""
    cutoff = time.time() - max_age_s
    for folder in parent.glob(f"{prefix}*"):
        try:
            if folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def export_files(ctx: Any, study: str, fmt: str) -> list[str]:
    """Export the study's tidy tables into a fresh temporary folder; returns [zip of all, ratings table]."""
    if not study:
        raise InputError("choose a study first")
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose csv, parquet or json")
    sweep_old_folders(Path(tempfile.gettempdir()), "medsynth-export-")
    folder = Path(tempfile.mkdtemp(prefix="medsynth-export-"))
    out = folder / "tables"
    with ctx.workspace.database.session() as session:
        result = export_study(session, study, out, fmt)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in study)[:80] or "study"
    archive = folder / f"{stem}-{fmt}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in result.files:
            zf.write(path, arcname=f"{stem}/{path.name}")
    ratings = folder / f"{stem}-ratings.{fmt}"
    shutil.copyfile(out / f"ratings.{fmt}", ratings)
    return [str(archive), str(ratings)]


def config_text_from_upload(content: bytes | None) -> str:
    """The text of an uploaded study config (its bytes, as uploaded; never a path)."""
    if not isinstance(content, bytes) or not content:
        raise InputError("the uploaded file is empty or missing")
    if len(content) > MAX_CONFIG_BYTES:
        raise InputError(f"the uploaded file has {len(content)} bytes; a study config has at most {MAX_CONFIG_BYTES}")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("the uploaded config is not UTF-8 text") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise InputError(f"the config is {len(text)} characters; the limit is {MAX_CONFIG_CHARS}")
    return text


def reports_folder(ctx: Any) -> Path:
    """Where reports are written: ``<data folder>/reports``."""
    return Path(ctx.workspace.settings.data_dir) / "reports"


def latest_report_files(ctx: Any, study: str) -> list[str]:
    """[report.html, tables zip] of the newest finished report of ``study`` (never another study's)."""
    if not study:
        return []
    with ctx.workspace.database.session() as session:
        jobs = list_jobs(session, kinds=(REPORT_JOB,), limit=500, study=study)
    for job in jobs:
        if job.status == "done" and job.result.get("study") == study:
            files = [job.result.get("path"), job.result.get("tables_zip")]
            return [str(f) for f in files if f and Path(str(f)).is_file()]
    return []


def queue_report(ctx: Any, study: str) -> int:
    """Queue a ``report`` job writing the analysis report of ``study`` under the data folder."""
    if not study:
        raise InputError("choose a study first")
    with ctx.workspace.database.session() as session:
        name = get_study(session, study).name
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80] or "study"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = reports_folder(ctx) / f"{stem}-{stamp}"
    return ctx.jobs().submit(REPORT_JOB, {"study": name, "out_dir": str(out_dir)})


# ----------------------------------------------------------------------------------------------- the console


@dataclass
class CoordinatorConsole:
    """The console's main components (for the server and tests)."""

    signin: gr.Column
    password: gr.Textbox
    signin_button: gr.Button
    signin_message: gr.Markdown
    console: gr.Column
    study: gr.Dropdown
    config_text: gr.Code
    create_button: gr.Button
    create_message: gr.Markdown
    rater_name: gr.Textbox
    add_button: gr.Button
    link: gr.Textbox
    revoke_button: gr.Button
    export_button: gr.Button
    export_files: gr.File


def build_coordinator_tab(ctx: Any) -> CoordinatorConsole:
    """Build the coordinator console inside the current ``gr.Blocks`` (the server mounts it at /coordinator)."""
    analysis_available = REPORT_JOB in ctx.jobs().handlers
    private: dict[str, Any] = {"api_visibility": "private", "concurrency_id": "coordinator", "concurrency_limit": 4}
    quiet = {**private, "show_progress": "hidden"}
    # Sign-in, sign-out and the page check never wait behind console work (nor console work behind them);
    # a sign-in checks one password (no sleeping: back-off is refused up front, see evalapp.auth).
    door: dict[str, Any] = {"api_visibility": "private", "concurrency_id": "coordinator-door", "concurrency_limit": 8}
    # Sign-ins have their own group: waiting password checks (one per address) never delay the page check.
    signing: dict[str, Any] = {**door, "concurrency_id": "coordinator-signin", "concurrency_limit": 16}
    gr.HTML(f"<style>{CSS}</style>", padding=False)
    with gr.Column(elem_classes=["ms-signin"], visible=True) as signin:
        gr.Markdown("## MedSynth coordinator\nSign in with the coordinator password.")
        password = gr.Textbox(label="Password", type="password", max_length=MAX_PASSWORD_CHARS)
        signin_button = gr.Button("Sign in", variant="primary")
        signin_message = gr.Markdown("")
    with gr.Column(elem_classes=["ms-console"], visible=False) as console:
        with gr.Row(equal_height=False):
            gr.Markdown("## MedSynth coordinator")
            # Choices change per page (new studies, raters); the handlers check every name on the server.
            study = gr.Dropdown(label="Study", choices=[], value=None, scale=2, allow_custom_value=True)
            with gr.Column(scale=0, min_width=110):
                refresh_button = gr.Button("Refresh", size="sm")
                signout_button = gr.Button("Sign out", size="sm", variant="secondary")
        with gr.Tabs():
            with gr.Tab("Studies"):
                studies = gr.Dataframe(label="Studies", interactive=False, wrap=True)
                with gr.Accordion("New study from a TOML config", open=False):
                    config_text = gr.Code(value=EXAMPLE_CONFIG, language=None, label="Config (TOML: paste or edit)")
                    with gr.Row():
                        upload = gr.UploadButton("Load a .toml file", file_types=[".toml"], type="binary", scale=0)
                        create_button = gr.Button("Create study", variant="primary", scale=0)
                    create_message = gr.Markdown("")
                with gr.Accordion("Items of the chosen study", open=False):
                    items = gr.Dataframe(interactive=False, wrap=True, max_height=360)
                with gr.Accordion("Assignments of the chosen study", open=False):
                    assignments = gr.Dataframe(interactive=False, max_height=360)
            with gr.Tab("Raters"):
                raters = gr.Dataframe(label="Raters of the chosen study", interactive=False)
                with gr.Row(equal_height=False):
                    with gr.Column():
                        gr.Markdown("**Add a rater**")
                        rater_name = gr.Textbox(label="Name", max_length=200, elem_id="ms-rater-name")
                        with gr.Row():
                            specialty = gr.Dropdown(
                                label="Specialty", choices=[s.value for s in Specialty], value="other"
                            )
                            years = gr.Number(label="Years of experience", minimum=0, maximum=80, value=None)
                        add_button = gr.Button("Add rater", variant="primary")
                    with gr.Column():
                        gr.Markdown("**A rater's link**")
                        rater_pick = gr.Dropdown(label="Rater", choices=[], value=None, allow_custom_value=True)
                        with gr.Row():
                            newlink_button = gr.Button("Issue a new link")
                            revoke_button = gr.Button("Revoke link", variant="stop")
                rater_message = gr.Markdown("")
                link = gr.Textbox(
                    label="Personal link (shown once: copy it now and send it privately)",
                    interactive=False,
                    buttons=["copy"],
                    elem_id="ms-link",
                )
            with gr.Tab("Progress"):
                progress_note = gr.Markdown("", elem_classes=["ms-note"])
                rater_progress = gr.Dataframe(label="Per rater", interactive=False)
                model_progress = gr.Dataframe(label="Per model", interactive=False)
            with gr.Tab("Generation"):
                gr.Markdown(
                    "Make the chosen study's images on the server (GPU if present, CPU otherwise). "
                    "Jobs run in the background; raters are not slowed down.",
                    elem_classes=["ms-note"],
                )
                with gr.Row():
                    gen_models = gr.Dropdown(
                        label="Models", choices=[], value=[], multiselect=True, allow_custom_value=True
                    )
                    device = gr.Radio(label="Device", choices=list(DEVICES), value="auto")
                with gr.Row():
                    # Text, not gr.Number: an empty number field is sent as 0 ("less than minimum 1").
                    gen_steps = gr.Textbox(
                        label="Steps (1-1000; empty: model default)",
                        value="",
                        placeholder="model default",
                        max_length=12,
                    )
                    gen_guidance = gr.Textbox(
                        label="Guidance (0-100; empty: model default)",
                        value="",
                        placeholder="model default",
                        max_length=12,
                    )
                    gen_seed = gr.Textbox(label="Base seed (empty: 0)", value="0", max_length=12)
                generate_button = gr.Button("Start generation", variant="primary")
                generate_message = gr.Markdown("")
                jobs = gr.Dataframe(
                    label="Background jobs of the selected study (other studies' jobs are not listed)",
                    interactive=False,
                    wrap=True,
                )
            with gr.Tab("Export"):
                gr.Markdown(
                    "The tidy tables (ratings, items, raters, models) with the study config, as one zip, "
                    "and the ratings table on its own.",
                    elem_classes=["ms-note"],
                )
                with gr.Row():
                    export_format = gr.Radio(label="Format", choices=list(EXPORT_FORMATS), value="csv")
                    export_button = gr.Button("Export", variant="primary", scale=0)
                export_out = gr.File(label="Downloads", file_count="multiple", interactive=False)
            with gr.Tab("Analysis"):
                if analysis_available:
                    gr.Markdown(
                        "Write the analysis report of the chosen study (runs in the background, saved under "
                        "the data folder's `reports/`). The newest report of the chosen study appears below: "
                        "the HTML page and its tables as a zip."
                    )
                    report_button = gr.Button("Write report", variant="primary")
                    report_message = gr.Markdown("")
                    report_file = gr.File(label="Report of the chosen study", file_count="multiple", interactive=False)
                else:
                    gr.Markdown("The analysis report is not available in this installation yet.")
            with gr.Tab("Live demo"):
                demo_switch = gr.Checkbox(
                    label="Open the live demo to everyone",
                    value=True,
                    info="Only applies when the app runs with its demo (not --no-demo).",
                )
                demo_message = gr.Markdown("")
    timer = gr.Timer(REFRESH_S, active=False)

    # ---- handlers: each coordinator handler begins with require_coordinator(request)

    def overview(chosen: str | None) -> list[Any]:
        names = study_names(ctx)
        value = chosen if chosen in names else (names[0] if names else None)
        return [gr.update(choices=names, value=value), studies_table(ctx), jobs_table(ctx, value or "")]

    def coordinator_page_state(request: gr.Request) -> list[Any]:
        if identify(request).role != Role.COORDINATOR:
            return [gr.update(visible=True), gr.update(visible=False), gr.Timer(active=False), *[gr.update()] * 4]
        return signed_in_view()

    def signed_in_view() -> list[Any]:
        return [gr.update(visible=False), gr.update(visible=True), gr.Timer(active=True), *overview(None),
                demo_is_open(ctx.workspace.database)]  # fmt: skip

    def coordinator_signin(password_text: str, request: gr.Request) -> list[Any]:
        text = password_text if isinstance(password_text, str) else ""
        result = coordinator_sign_in(request, text[:MAX_PASSWORD_CHARS])
        if not result.ok or len(text) > MAX_PASSWORD_CHARS:
            audit(request, "signin.failed")
            return [gr.update(), gr.update(), gr.Timer(active=False), *[gr.update()] * 4,
                    html.escape(result.message() or "Wrong password."), ""]  # fmt: skip
        audit(request, "signin")
        return [*signed_in_view(), "", ""]

    def coordinator_signout(request: gr.Request) -> list[Any]:
        coordinator_logout(request)
        audit(request, "signout")
        return [gr.update(visible=True), gr.update(visible=False), gr.Timer(active=False)]

    def coord_refresh(chosen: str | None, request: gr.Request) -> list[Any]:
        require_coordinator(request)
        return overview(chosen)

    def coord_select_study(chosen: str | None, request: gr.Request) -> list[Any]:
        require_coordinator(request)
        with shown_errors():
            models = study_models(ctx, chosen or "")
            return [
                items_table(ctx, chosen or ""),
                assignments_table(ctx, chosen or ""),
                raters_table(ctx, chosen or ""),
                gr.update(choices=rater_choices(ctx, chosen or ""), value=None),
                gr.update(choices=models, value=models),
                *coord_progress_values(chosen),
            ]

    def coord_progress_values(chosen: str | None) -> list[Any]:
        stamp = datetime.now().strftime("%H:%M:%S")
        return [
            f"Updated {stamp}; refreshes every {REFRESH_S:g} s while this page is open.",
            raters_table(ctx, chosen or ""),
            models_table(ctx, chosen or ""),
            jobs_table(ctx, chosen or ""),
        ]

    def coord_tick(chosen: str | None, request: gr.Request) -> list[Any]:
        require_coordinator(request)
        with shown_errors():
            return coord_progress_values(chosen)

    def coord_load_config(content: bytes | None, request: gr.Request) -> str:
        # The uploaded bytes only (type="binary"): the handler never opens a path named by the request.
        require_coordinator(request)
        with shown_errors():
            return config_text_from_upload(content)

    def coord_create_study(text: str, chosen: str | None, request: gr.Request) -> list[Any]:
        require_coordinator(request)
        try:
            summary = create_study_from_text(ctx, text)
            name = parse_study_config(text).name
        except MedSynthError as exc:  # shown under the config; the tables stay as they are
            return beside("Not created", exc, 3)
        audit(request, "study.create", name)
        return [f"Created {html.escape(summary)}", *overview(name)]

    def coord_add_rater(chosen: str, name: str, spec: str, yrs: float | None, request: gr.Request) -> list[Any]:
        require_coordinator(request)
        try:
            message, url = add_study_rater(ctx, chosen, name, spec, yrs)
        except MedSynthError as exc:
            return beside("Not added", exc, 4)
        audit(request, "rater.add", chosen, rater=name, specialty=spec)
        return [html.escape(message), url, raters_table(ctx, chosen), gr.update(choices=rater_choices(ctx, chosen)),
                ""]  # fmt: skip

    def coord_revoke_rater(chosen: str, rater: str, request: gr.Request) -> list[Any]:
        require_coordinator(request)
        try:
            if not chosen or not rater:
                raise InputError("choose a study and a rater first")
            with ctx.workspace.database.session() as session:
                revoked = revoke_rater(session, chosen, rater).name
        except MedSynthError as exc:
            return beside("Not revoked", exc, 3)
        audit(request, "rater.revoke", chosen, rater=revoked)
        return [f"Revoked the link of {html.escape(revoked)}; their ratings are kept.", "",
                raters_table(ctx, chosen), gr.update(choices=rater_choices(ctx, chosen))]  # fmt: skip

    def coord_new_link(chosen: str, rater: str, request: gr.Request) -> list[Any]:
        require_coordinator(request)
        try:
            if not chosen or not rater:
                raise InputError("choose a study and a rater first")
            with ctx.workspace.database.session() as session:
                token = reissue_token(session, chosen, rater)
        except MedSynthError as exc:
            return beside("No new link", exc, 3)
        audit(request, "rater.reissue", chosen, rater=rater)
        return ["New link issued; the old one no longer works.", ctx.rater_link(token), raters_table(ctx, chosen),
                gr.update(choices=rater_choices(ctx, chosen))]  # fmt: skip

    def coord_generate(
        chosen: str,
        models: list[str],
        dev: str,
        steps: str | None,
        guidance: str | None,
        seed: str | None,
        request: gr.Request,
    ) -> list[Any]:
        require_coordinator(request)
        try:
            ids = queue_generation(ctx, chosen, models, dev, steps, guidance, seed)
        except MedSynthError as exc:  # shown beside the fields; the jobs table stays
            return beside("Not queued", exc, 1)
        audit(request, "generate.queue", chosen, jobs=",".join(map(str, ids)))
        return [f"Queued job(s) {', '.join(map(str, ids))}.", jobs_table(ctx, chosen)]

    def coord_export(chosen: str, fmt: str, request: gr.Request) -> list[str]:
        require_coordinator(request)
        with shown_errors():
            files = export_files(ctx, chosen, fmt)
        audit(request, "export", chosen, format=fmt)
        return files

    def coord_set_demo(is_open: bool, request: gr.Request) -> str:
        require_coordinator(request)
        set_demo_open(ctx.workspace.database, bool(is_open))
        audit(request, "demo.switch", open=bool(is_open))
        state = "open to everyone" if is_open else "switched off"
        if not getattr(ctx, "demo_enabled", False):
            state += " (but this server runs without the demo: --no-demo)"
        return f"The live demo is {state}."

    def audit(request: gr.Request, action: str, target: str = "", **details: Any) -> None:
        record_action(ctx.workspace.database, action, actor=f"coordinator@{client_key(request)}", target=target,
                      details=details)  # fmt: skip

    # ---- wiring

    page_outputs = [signin, console, timer, study, studies, jobs, demo_switch]
    root = gr.context.Context.root_block
    if root is not None:
        root.load(coordinator_page_state, None, page_outputs, **door, show_progress="hidden")
    signin_button.click(coordinator_signin, [password], [*page_outputs, signin_message, password], **signing)
    password.submit(coordinator_signin, [password], [*page_outputs, signin_message, password], **signing)
    signout_button.click(coordinator_signout, None, [signin, console, timer], **door, show_progress="hidden")
    refresh_button.click(coord_refresh, [study], [study, studies, jobs], **private)
    progress_outputs = [progress_note, rater_progress, model_progress, jobs]
    study.change(
        coord_select_study, [study], [items, assignments, raters, rater_pick, gen_models, *progress_outputs], **quiet
    )
    timer.tick(coord_tick, [study], progress_outputs, **quiet)
    upload.upload(coord_load_config, [upload], [config_text], **private)
    create_button.click(coord_create_study, [config_text, study], [create_message, study, studies, jobs], **private)
    add_button.click(
        coord_add_rater, [study, rater_name, specialty, years], [rater_message, link, raters, rater_pick, rater_name],
        **private,
    )  # fmt: skip
    revoke_button.click(coord_revoke_rater, [study, rater_pick], [rater_message, link, raters, rater_pick], **private)
    newlink_button.click(coord_new_link, [study, rater_pick], [rater_message, link, raters, rater_pick], **private)
    generate_button.click(
        coord_generate, [study, gen_models, device, gen_steps, gen_guidance, gen_seed], [generate_message, jobs],
        **private,
    )  # fmt: skip
    export_button.click(coord_export, [study, export_format], [export_out], **private)
    demo_switch.input(coord_set_demo, [demo_switch], [demo_message], **private)
    if analysis_available:

        def coord_report(chosen: str, request: gr.Request) -> str:
            require_coordinator(request)
            try:
                job_id = queue_report(ctx, chosen)
            except MedSynthError as exc:
                return f"**Not queued:** {html.escape(str(exc))}"
            audit(request, "report.queue", chosen, job=job_id)
            return (
                f"Queued report job {job_id} for study {html.escape(chosen)}; "
                "it appears below when done (this page checks every few seconds)."
            )

        def coord_report_file(chosen: str | None, request: gr.Request) -> Any:
            require_coordinator(request)
            return latest_report_files(ctx, chosen or "") or None

        report_button.click(coord_report, [study], [report_message], **private).then(
            coord_report_file, [study], [report_file], **quiet
        )
        study.change(coord_report_file, [study], [report_file], **quiet)
        timer.tick(coord_report_file, [study], [report_file], **quiet)

    return CoordinatorConsole(
        signin=signin,
        password=password,
        signin_button=signin_button,
        signin_message=signin_message,
        console=console,
        study=study,
        config_text=config_text,
        create_button=create_button,
        create_message=create_message,
        rater_name=rater_name,
        add_button=add_button,
        link=link,
        revoke_button=revoke_button,
        export_button=export_button,
        export_files=export_out,
    )
