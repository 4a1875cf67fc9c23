"""MedSynth command line: ``python app.py [SUBCOMMAND]`` (no subcommand = ``serve``).

This module only parses arguments and hands over to the packages: ``db`` (data, studies, exports),
``generation`` (models, training, generation), ``evalapp`` (the Gradio app) and ``analysis`` (reports).
A user mistake (a :class:`db.errors.MedSynthError`: bad input, unknown name, unreachable database or network)
prints one ``error:`` line and exits with status 2; anything else is a bug: it is logged and raised with its
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db.errors import MedSynthError
from db.settings import DEFAULT_DATA_DIR

if TYPE_CHECKING:
    from db.importers import GeneratedSummary, ImportSummary
    from db.jobs import Worker
    from db.workspace import Workspace

log = logging.getLogger("medsynth.cli")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
Handler = Callable[[argparse.Namespace], int]


def _workspace(args: argparse.Namespace) -> Workspace:
    from db.workspace import Workspace

    return Workspace.open(args.db, args.data_dir)


def _base_url(args: argparse.Namespace, ws: Workspace | None = None) -> str:
    """--base-url, else $MEDSYNTH_BASE_URL, else the address `serve` last ran at (stored), else the default."""
    from db.settings import PUBLIC_URL_SETTING, get_setting

    stored = get_setting(ws.database, PUBLIC_URL_SETTING) if ws is not None else None
    return (
        getattr(args, "base_url", None)
        or os.environ.get("MEDSYNTH_BASE_URL")
        or getattr(args, "root_url", None)
        or stored
        or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
    )


# ------------------------------------------------------------------------------------------------ serve


def build_worker(ws: Workspace) -> Worker:
    """The app's background worker on the database, with every job kind registered before anything is served:
    ``generate``, ``compare`` and ``report`` on the batch lane, ``demo`` on the live lane."""
    from analysis.jobs import register_analysis_jobs
    from compare.jobs import register_compare_jobs
    from db.jobs import DbJobStore, Worker
    from generation.worker import register_generation_jobs

    worker = Worker(DbJobStore(ws.database), workspace=ws)
    register_generation_jobs(worker)
    register_compare_jobs(worker)
    register_analysis_jobs(worker)
    return worker


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the Gradio app (raters, coordinators, live demo)."""
    from evalapp.server import serve

    ws = _workspace(args)
    notice = ""
    if not args.no_demo:  # the built-in demo study is built on the first start (or reused)
        from generation.demo_study import ensure_demo

        base = (args.root_url or f"http://{args.host}:{args.port}").rstrip("/")
        notice = ensure_demo(ws).describe(base)
    serve(ws, host=args.host, port=args.port, demo=not args.no_demo, root_url=args.root_url,
          worker=build_worker(ws), notice=notice)  # fmt: skip
    return 0


# ------------------------------------------------------------------------------------------------ data


def cmd_import(args: argparse.Namespace) -> int:
    """Import a dataset, or generated images for one."""
    from db.importers import import_dataset, import_generated

    ws = _workspace(args)
    path = Path(args.path)
    summary: ImportSummary | GeneratedSummary
    if args.format == "generated":
        if not args.dataset or not args.model:
            raise MedSynthError("import generated needs --dataset NAME and --model NAME")
        if args.images:
            raise MedSynthError("import generated takes no --images: the images sit beside manifest.csv")
        summary = import_generated(
            ws.database, ws.store, path, dataset=args.dataset, model=args.model, max_pixels=args.max_pixels
        )
    else:
        if not args.name:
            raise MedSynthError(f"import {args.format} needs --name NAME")
        summary = import_dataset(
            ws.database, ws.store, args.format, path, name=args.name, domain=args.domain,
            images_dir=Path(args.images) if args.images else None, skip_missing=args.skip_missing, limit=args.limit,
            file_column=args.file_column, text_column=args.text_column, merge=args.merge, max_pixels=args.max_pixels,
        )  # fmt: skip
    print(summary.describe())
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """List datasets with their case and image counts."""
    from db.generated import dataset_summaries

    ws = _workspace(args)
    with ws.database.session() as session:
        rows = dataset_summaries(session)
    if not rows:
        print("no datasets yet: python app.py import FORMAT PATH --name NAME")
    for d in rows:
        print(f"{d.name}\t{d.domain}\t{d.format}\t{d.cases} cases\t{d.images} images")
    return 0


# ------------------------------------------------------------------------------------------------ studies


def cmd_study_create(args: argparse.Namespace) -> int:
    """Create a study from a TOML config."""
    from db.importers import read_text
    from db.studies import create_study

    ws = _workspace(args)
    path = Path(args.config)
    text = read_text(path)
    with ws.database.session() as session:
        summary = create_study(session, ws.store, text, source=str(path))
    print(summary.describe())
    return 0


def cmd_study_list(args: argparse.Namespace) -> int:
    """List studies."""
    from db.progress import list_studies

    ws = _workspace(args)
    with ws.database.session() as session:
        studies = sorted(list_studies(session), key=lambda s: s.name)
    if not studies:
        print("no studies yet: python app.py study create CONFIG.toml")
    for s in studies:
        print(f"{s.name}\t{s.status}\t{s.items} items\t{s.raters} raters\tconfig {s.config_sha256[:12]}")
    return 0


def cmd_study_show(args: argparse.Namespace) -> int:
    """Show a study's config, items per model and rater progress."""
    from db.export import items_frame, raters_frame
    from db.studies import get_study

    ws = _workspace(args)
    with ws.database.session() as session:
        study = get_study(session, args.name)
        items = items_frame(session, study)
        raters = raters_frame(session, study)
        print(f"study {study.name} ({study.status.value}), seed {study.seed}, config sha256 {study.config_sha256}")
        print(study.config_text.rstrip())
        print("\nitems:")
        if len(items):
            print(items.groupby(["model", "item_kind"]).size().to_string())
        print("\nraters:")
        print(
            raters[["rater_name", "specialty", "assigned", "rated", "revoked"]].to_string(index=False)
            if len(raters)
            else "none yet: python app.py rater add --study NAME --name TEXT --specialty ..."
        )
    return 0


def cmd_study_check(args: argparse.Namespace) -> int:
    """Print the design audit of a stored study; exit 1 when it is not balanced."""
    from db.studies import check_study

    ws = _workspace(args)
    with ws.database.session() as session:
        text = check_study(session, args.name)
    print(text)
    return 1 if "NOT BALANCED" in text else 0


def cmd_study_audit_blinding(args: argparse.Namespace) -> int:
    """Print how well each observable of the served images predicts the real side; exit 1 on a leak."""
    from analysis.blinding import audit_blinding

    table = audit_blinding(_workspace(args), args.name)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if table.empty or table["pairs"].max() == 0:
        print("no pairs assigned yet: add raters first")
        return 0
    leaks = table.loc[table["leak"], "observable"].tolist()
    print("LEAK: " + ", ".join(leaks) if leaks else "no observable predicts the real side (every CI holds 0.5)")
    return 1 if leaks else 0


def cmd_rater_add(args: argparse.Namespace) -> int:
    """Add a rater and print their personal link."""
    from db.raters import add_rater, rater_link

    ws = _workspace(args)
    with ws.database.session() as session:
        new = add_rater(session, args.study, args.name, args.specialty, args.years)
    print(f"added rater {new.name!r} ({new.assignments} pairs to rate)")
    print(f"personal link (shown once; keep it private): {rater_link(_base_url(args, ws), new.token)}")
    return 0


def cmd_rater_list(args: argparse.Namespace) -> int:
    """List a study's raters with progress."""
    from db.export import raters_frame
    from db.studies import get_study

    ws = _workspace(args)
    with ws.database.session() as session:
        frame = raters_frame(session, get_study(session, args.study))
    if frame.empty:
        print("no raters yet")
    else:
        print(frame[["rater_name", "specialty", "years", "assigned", "rated", "revoked"]].to_string(index=False))
    return 0


def cmd_rater_revoke(args: argparse.Namespace) -> int:
    """Revoke a rater's link."""
    from db.raters import revoke_rater

    ws = _workspace(args)
    with ws.database.session() as session:
        rater = revoke_rater(session, args.study, args.name)
        print(f"revoked the link of {rater.name!r}; their ratings are kept")
    return 0


def cmd_rater_link(args: argparse.Namespace) -> int:
    """Issue a fresh link for a rater (the old one stops working)."""
    from db.raters import rater_link, reissue_token

    ws = _workspace(args)
    with ws.database.session() as session:
        token = reissue_token(session, args.study, args.name)
    print(f"new personal link: {rater_link(_base_url(args, ws), token)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a study's tidy tables."""
    from db.export import export_study

    ws = _workspace(args)
    with ws.database.session() as session:
        result = export_study(session, args.study, Path(args.out), args.format, bom=not args.no_bom)
    print(result.describe())
    return 0


def cmd_coordinator_set_password(args: argparse.Namespace) -> int:
    """Set the coordinator password (stored as an Argon2 hash)."""
    from evalapp.auth import set_coordinator_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("coordinator password: ")
        if getpass.getpass("again: ") != password:
            raise MedSynthError("the two passwords differ")
    if len(password) < 8:
        raise MedSynthError("the coordinator password needs at least 8 characters")
    ws = _workspace(args)
    set_coordinator_password(ws.database, password)
    print("coordinator password set")
    return 0


# ------------------------------------------------------------------------------------------------ models


def cmd_models_add(args: argparse.Namespace) -> int:
    """Register a text-to-image model (diffusers pipeline, MSDM folder, or a folder of images)."""
    from db.generated import register_model
    from generation.pipelines import build_spec

    spec = build_spec(args.name, args.kind, args.source, lora=args.lora or (), dtype=args.dtype, offload=args.offload)
    ws = _workspace(args)
    with ws.database.session() as session:
        register_model(session, spec.name, kind=spec.kind, source=spec.source, parameters=spec.parameters(),
                       replace=args.replace)  # fmt: skip
    print(f"registered model {spec.name!r} ({spec.kind}: {spec.source})")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    """List registered models with their image counts."""
    from db.generated import model_summaries

    ws = _workspace(args)
    with ws.database.session() as session:
        rows = model_summaries(session)
    if not rows:
        print("no models yet: python app.py models add NAME --kind diffusers --source HUB_ID_OR_FOLDER")
    for m in rows:
        print(f"{m.name}\t{m.kind}\t{m.source}\t{m.images} images")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate the missing images of a dataset with a registered model (resumable)."""
    from generation.batch import GenerationConfig, generate_for_dataset

    config = GenerationConfig(per_case=args.per_case, seed=args.seed, steps=args.steps, guidance=args.guidance,
                              scheduler=args.scheduler, height=args.height, width=args.width,
                              batch_size=args.batch_size)  # fmt: skip
    ws = _workspace(args)
    report = generate_for_dataset(ws, args.dataset, args.model, config, device=args.device, limit=args.limit)
    print(
        f"generated {report.generated} images ({report.skipped} already there) in {report.seconds:.1f} s, "
        f"{report.images_per_second:.2f} images/s, peak memory {report.peak_memory_bytes / 2**20:.0f} MiB"
    )
    return 0


# ------------------------------------------------------------------------------------------------ training


def cmd_train_msdm(args: argparse.Namespace) -> int:
    """Train MSDM (VAE, then UNet) on a dataset and save a loadable pipeline folder."""
    from generation.lora_train import dataset_examples
    from generation.msdm.config import get_config
    from generation.msdm.train import train_msdm

    ws = _workspace(args)
    examples = dataset_examples(ws, args.dataset, split=args.split)
    config = get_config(args.config)
    if args.text_encoder:
        config.model = dataclasses.replace(config.model, text_encoder=args.text_encoder)
    overrides = {"mixed_precision": args.mixed_precision, "gradient_accumulation_steps": args.gradient_accumulation,
                 "checkpoint_every": args.checkpoint_every, "validate_every": args.validate_every,
                 "perceptual_net": args.perceptual_net, "perceptual_weights": args.perceptual_weights}  # fmt: skip
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    result = train_msdm(config, examples, Path(args.out), vae=args.vae, steps=args.steps, vae_steps=args.vae_steps,
                        batch_size=args.batch_size, lr=args.lr, resume=args.resume, device=args.device,
                        data_description=f"dataset {args.dataset!r} ({len(examples)} cases)",
                        command="python app.py " + " ".join(sys.argv[1:]))  # fmt: skip
    print(f"saved MSDM ({args.config}) to {result.out_dir} in {result.wall_time_s:.0f} s; "
          f"register it with: python app.py models add NAME --kind msdm --source {result.out_dir}")  # fmt: skip
    return 0


def cmd_train_lora(args: argparse.Namespace) -> int:
    """Fine-tune a LoRA adapter on a pretrained pipeline (FLUX, Stable Diffusion families)."""
    from generation.lora_train import LoraTrainConfig, train_lora
    from generation.msdm.pipeline import model_kind_for

    config = LoraTrainConfig(
        base=args.base, out_dir=args.out, dataset=args.dataset, split=args.split, rank=args.rank, alpha=args.alpha,
        steps=args.steps, lr=args.lr, resolution=args.resolution, batch_size=args.batch_size,
        gradient_checkpointing=args.gradient_checkpointing, mixed_precision=args.mixed_precision, resume=args.resume,
        train_text_encoder=args.train_text_encoder, ema_decay=args.ema_decay, optimizer=args.optimizer,
        device=args.device,
    )  # fmt: skip
    ws = _workspace(args)
    result = train_lora(config, workspace=ws)
    print(f"saved the LoRA adapter to {result.adapter_path} (eval loss {result.eval_loss_before:.4f} -> "
          f"{result.eval_loss_after:.4f}, {result.wall_time_s:.0f} s, {result.device_hours:.3f} device hours); "
          f"load it with: python app.py models add NAME --kind {model_kind_for(args.base)} "
          f"--source {args.base} --lora {result.adapter_path}")  # fmt: skip
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run a comparison: train, generate, measure quality and cost, report side by side (resumable)."""
    from compare import run_comparison

    ws = _workspace(args)
    result = run_comparison(ws, Path(args.config), progress=print)
    print(f"report: {result.report_html} and {result.report_csv}")
    print(
        f"stages run: {', '.join(result.stages_run) or 'none'}; skipped: {', '.join(result.stages_skipped) or 'none'}"
    )
    if result.study:
        print(f"blinded study created: {result.study}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the analysis report of a study (HTML + tables)."""
    from analysis.report import ReportConfig
    from analysis.study_report import write_study_report

    metrics = [m.strip().lower() for m in args.metrics.split(",") if m.strip()] if args.metrics else []
    ws = _workspace(args)
    config = ReportConfig(n_resamples=args.resamples, seed=args.seed, rater_labels=args.rater_labels)
    result = write_study_report(ws, args.study, Path(args.out), metrics=metrics, extractor=args.extractor,
                                config=config)  # fmt: skip
    print(f"wrote {result.html_path}, {len(result.tables)} tables, figures and {result.zip_path} "
          f"({result.seconds:.1f} s)")  # fmt: skip
    return 0


def cmd_study_plan(args: argparse.Namespace) -> int:
    """How many raters and cases: a Turing equivalence claim or an MRMC AUC difference (analysis.power)."""
    from analysis.power import ORComponents, mrmc_plan_text, turing_plan_text

    if args.question == "turing":
        print(turing_plan_text(margin=args.margin, power=args.power, sd_rater=args.sd_rater, sd_item=args.sd_item,
                               true_accuracy=args.true_accuracy, answers_per_rater=args.answers_per_rater,
                               pilot=args.pilot))  # fmt: skip
        return 0
    given = (args.var_tr, args.var_error, args.cov1, args.cov2, args.cov3, args.pilot_cases)
    components = ORComponents(*given) if all(v is not None for v in given) else None
    print(mrmc_plan_text(effect=args.effect, power=args.power, components=components, roc=args.roc))
    return 0


# ------------------------------------------------------------------------------------------------ memorization


def cmd_memorization(args: argparse.Namespace) -> int:
    """Audit a model's generated images for copies of its training images (stored for studies and reports)."""
    from analysis.memorization import AuditConfig, run_audit

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            print(f"  {stage}: {done}/{total}", file=sys.stderr, flush=True)

    config = AuditConfig() if args.threshold is None else AuditConfig(threshold=args.threshold)
    ws = _workspace(args)
    summary = run_audit(ws, args.model, args.dataset, split=args.split, extractor=args.extractor,
                        out_dir=Path(args.out) if args.out else None, cfg=config, progress=progress)  # fmt: skip
    print(summary.describe())
    for top in summary.top_copied:
        print(f"  copied {top['copies']}x: {top['train_key']}")
    if args.out:
        print(f"wrote {args.out}/summary.json, matches.csv and {len(summary.pairs)} side-by-side pairs")
    return 0


# ------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="MedSynth: make medical images from text and have clinicians judge them, blinded.",
        epilog="With no subcommand, 'serve' runs: the app on http://127.0.0.1:7860 with a built-in demo study.",
    )
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (env MEDSYNTH_DB; default: SQLite in the data dir)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"data folder: media store, default database (env MEDSYNTH_DATA; default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="log messages of this level and above to stderr (default warning; info shows jobs)")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    def add(name: str, handler: Handler, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    # serve's options are accepted before the subcommand too, so `python app.py --port 8000` works.
    for target, default in ((parser, True), (add("serve", cmd_serve, "serve the evaluation app"), False)):
        keep: dict[str, Any] = {} if default else {"default": argparse.SUPPRESS}
        target.add_argument(
            "--host", **({"default": DEFAULT_HOST} | keep), help="address to bind (default 127.0.0.1: local only)"
        )
        target.add_argument("--port", type=int, **({"default": DEFAULT_PORT} | keep), help="default 7860")
        target.add_argument("--no-demo", action="store_true", **keep, help="do not build or show the demo study")
        target.add_argument(
            "--root-url",
            "--base-url",
            dest="root_url",
            **({"default": None} | keep),
            help="public URL (e.g. behind a reverse proxy, HTTPS); used in every rater link, also by `rater add`",
        )

    p = add("import", cmd_import, "import a dataset (real images + prompts) or generated images")
    p.add_argument("format", choices=["medvqa-gi", "rocov2", "roco", "kvasir-vqa", "kvasir-vqa-x1", "csv",
                                      "imagefolder", "dicom", "generated"])  # fmt: skip
    p.add_argument("path", help="the format's file or folder (see README: import formats)")
    p.add_argument("--name", help="name of the new dataset")
    p.add_argument("--domain", choices=["gi", "radiology", "other"])
    p.add_argument("--images", help="folder of the images (default: beside the listing file)")
    p.add_argument("--skip-missing", action="store_true", help="import only the listed images that exist")
    p.add_argument("--limit", type=int, help="import at most N cases")
    p.add_argument("--file-column", default="file_name", help="csv/imagefolder/dicom: column with the image file")
    p.add_argument("--text-column", default="text", help="csv/imagefolder/dicom: column with the prompt")
    p.add_argument("--merge", action="store_true", help="add new cases to an existing dataset of that name")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (default 40 MP)")
    p.add_argument("--dataset", help="generated: the dataset the images were made for")
    p.add_argument("--model", help="generated: the model that made them (registered as kind 'folder')")

    add("datasets", cmd_datasets, "list datasets with case counts")

    study = add("study", lambda a: _help(a, study), "create, list and show studies")
    study_sub = study.add_subparsers(dest="study_command", metavar="ACTION")
    p = add("create", cmd_study_create, "create a study from a TOML config", study_sub)
    p.add_argument("config", help="study config (TOML); see README")
    add("list", cmd_study_list, "list studies", study_sub)
    p = add("show", cmd_study_show, "show a study", study_sub)
    p.add_argument("name")
    p = add("plan", cmd_study_plan, "how many raters and cases: Turing equivalence or MRMC AUC power", study_sub)
    p.add_argument("question", choices=["turing", "mrmc"])
    p.add_argument("--power", type=float, default=0.8, help="target power (default 0.8; table cells at it are starred)")
    p.add_argument("--margin", type=float, default=0.1, help="turing: equivalence margin around 0.5 (default 0.1)")
    p.add_argument("--sd-rater", type=float, default=0.5, help="turing: rater SD, logit scale (default 0.5)")
    p.add_argument("--sd-item", type=float, default=1.0, help="turing: pair SD, logit scale (default 1)")
    p.add_argument("--true-accuracy", type=float, default=0.5, help="turing: assumed true accuracy (default 0.5)")
    p.add_argument("--answers-per-rater", type=int, help="turing: K pairs per rater (K-of-N); default all")
    p.add_argument("--pilot", help="turing: pilot ratings table (csv/parquet export) for the variance components")
    p.add_argument("--effect", type=float, default=0.05, help="mrmc: AUC difference to detect (default 0.05)")
    p.add_argument("--roc", help="mrmc: pilot ROC data csv (reader, test, case, truth, score)")
    for name in ("var-tr", "var-error", "cov1", "cov2", "cov3"):
        p.add_argument(f"--{name}", type=float, help="mrmc: OR component of a pilot (instead of --roc)")
    p.add_argument("--pilot-cases", type=int, help="mrmc: number of cases of that pilot")
    p = add("check", cmd_study_check, "audit a study's reader design (balance, overlap, real-image recurrences)",
            study_sub)  # fmt: skip
    p.add_argument("name")
    p = add("audit-blinding", cmd_study_audit_blinding, "measure whether served images reveal the real side",
            study_sub)  # fmt: skip
    p.add_argument("name")

    rater = add("rater", lambda a: _help(a, rater), "add, list and revoke raters")
    rater_sub = rater.add_subparsers(dest="rater_command", metavar="ACTION")
    p = add("add", cmd_rater_add, "add a rater and print their personal link", rater_sub)
    p.add_argument("--study", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--specialty", required=True, choices=["gastroenterology", "radiology", "other"])
    p.add_argument("--years", type=float, help="years of clinical experience")
    p.add_argument("--base-url", help="URL the app is reached at (env MEDSYNTH_BASE_URL)")
    p = add("list", cmd_rater_list, "list a study's raters and their progress", rater_sub)
    p.add_argument("--study", required=True)
    p = add("revoke", cmd_rater_revoke, "revoke a rater's link", rater_sub)
    p.add_argument("--study", required=True)
    p.add_argument("--name", required=True, help="rater name or id")
    p = add("link", cmd_rater_link, "issue a fresh link for a rater", rater_sub)
    p.add_argument("--study", required=True)
    p.add_argument("--name", required=True, help="rater name or id")
    p.add_argument("--base-url", help="URL the app is reached at (env MEDSYNTH_BASE_URL)")

    p = add("export", cmd_export, "export a study's tidy tables (ratings, items, raters, models, config)")
    p.add_argument("--study", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="csv", choices=["csv", "parquet", "json"])
    p.add_argument("--no-bom", action="store_true", help="CSV without the UTF-8 byte-order mark Excel needs")

    models = add("models", lambda a: _help(a, models), "register and list text-to-image models")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    p = add("add", cmd_models_add, "register a model", models_sub)
    p.add_argument("name")
    p.add_argument("--kind", required=True, choices=["diffusers", "msdm", "folder"])
    p.add_argument("--source", required=True, help="hub id or local folder (save_pretrained output)")
    p.add_argument("--lora", action="append", metavar="PATH[@SCALE]", help="LoRA weights to load on top (repeatable)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: fp32 on CPU, the preset's on GPU")
    p.add_argument("--offload", action="store_true", help="CPU offload of idle components (low GPU memory)")
    p.add_argument("--replace", action="store_true", help="update a model registered under this name")
    add("list", cmd_models_list, "list registered models", models_sub)

    p = add("generate", cmd_generate, "generate images for a dataset's cases with a registered model")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--per-case", type=int, default=1, help="images per case, each with its own recorded seed")
    p.add_argument("--seed", type=int, default=0, help="base seed; per-image seeds derive from it")
    p.add_argument("--steps", type=int, help="default: the model family's preset")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: preset)")
    p.add_argument("--scheduler", help="ddim, dpm++, euler, ... (default: the pipeline's)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch-size", type=int, help="default: sized to the device")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--limit", type=int, help="only the first N cases")

    train = add("train", lambda a: _help(a, train), "train MSDM or a LoRA adapter")
    train_sub = train.add_subparsers(dest="train_command", metavar="MODEL")
    p = add("msdm", cmd_train_msdm, "train MSDM (VAE, then UNet) on a dataset", train_sub)
    p.add_argument("--dataset", required=True)
    p.add_argument("--config", default="tiny", choices=["tiny", "paper"], help="named config (default tiny)")
    p.add_argument("--out", required=True, help="pipeline folder to write")
    p.add_argument("--split", help="train on this split only")
    p.add_argument("--steps", type=int, help="UNet steps (default: the config's)")
    p.add_argument("--vae-steps", type=int, help="VAE steps (default: the config's)")
    p.add_argument("--vae", help="an existing AutoencoderKL folder: skip the VAE stage")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--text-encoder", help="minilm, clip-vit-l14, bio-clinicalbert, biomedbert, a folder or hub id")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="on CUDA (default: the config's)")
    p.add_argument("--gradient-accumulation", type=int, help="micro-batches per optimizer step")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: the config's)")
    p.add_argument("--validate-every", type=int, help="steps between validation grids (default: the config's)")
    p.add_argument("--perceptual-net", choices=["lpips-vgg", "fixed-random"], help="VAE perceptual loss net")
    p.add_argument("--perceptual-weights", help="VGG16.pth,LPIPS_VGG.pth for lpips-vgg (the paper config's)")
    p = add("lora", cmd_train_lora, "fine-tune a LoRA adapter on a pretrained pipeline", train_sub)
    p.add_argument("--dataset", required=True)
    p.add_argument("--base", required=True, help="hub id or folder of the base pipeline")
    p.add_argument("--out", required=True)
    p.add_argument("--split")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--resolution", type=int)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit"])
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--resume", action="store_true")

    p = add("compare", cmd_compare, "run a comparison of contenders from a TOML config (see docs/compare.md)")
    p.add_argument("config")

    p = add("report", cmd_report, "analyse a study's ratings (and images) into an HTML report and tables")
    p.add_argument("--study", required=True)
    p.add_argument("--out", required=True, help="output folder (report.html, tables/)")
    p.add_argument(
        "--metrics",
        help="automated metrics, comma-separated: fd,kid,cmmd,diversity,ms-ssim (per model), nn,alignment "
        "(per image); each is compared with the experts (default: none)",
    )
    p.add_argument(
        "--extractor",
        default="handcrafted",
        help="feature extractor for --metrics: handcrafted (default, committed, offline; not FID), "
        "inception[:/path/to/weights.pth] (FID), biomedclip:HUB_ID_OR_FOLDER, dinov2:..., clip:..., tiny-clip",
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of items (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rater-labels", choices=["codes", "names"], default="codes",
                   help="show raters as R01, R02 ... (default) or by name")  # fmt: skip

    p = add("memorization", cmd_memorization, "audit a model's generated images for copies of training images")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True, help="the training dataset")
    p.add_argument("--split", help="training split (default: every case); other splits are the held-out baseline")
    p.add_argument("--extractor", default="pixels",
                   help="retrieval descriptor: pixels (no weights, default) or a report --extractor spec")  # fmt: skip
    p.add_argument("--out", help="folder for summary.json, matches.csv and side-by-side PNGs of the top matches")
    p.add_argument("--threshold", type=float, help="copy threshold on the pixel score (default: the calibrated one)")

    coord = add("coordinator", lambda a: _help(a, coord), "coordinator account")
    coord_sub = coord.add_subparsers(dest="coordinator_command", metavar="ACTION")
    p = add("set-password", cmd_coordinator_set_password, "set the coordinator password", coord_sub)
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    return parser


def _help(_args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        args = parser.parse_args([*(argv or sys.argv[1:]), "serve"])
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_library_notices(args.log_level)
    try:
        return int(args.handler(args) or 0)
    except MedSynthError as exc:  # a problem the user can fix: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_network_error(exc):
            print(f"error: the network is unreachable or switched off (HF_HUB_OFFLINE): {_first_line(exc)}",
                  file=sys.stderr)  # fmt: skip
            return 2
        log.exception("bug: %s failed with %s", getattr(args, "command", "serve"), type(exc).__name__)
        raise  # a bug: the traceback is the report


def _quiet_library_notices(level: str) -> None:
    """Show the ML libraries' own notices (e.g. transformers' "requires torchvision ... falling back") only from
    ``--log-level info`` on, so at the default level a user's error stays the one line on stderr.

    Set before they are imported (they read these variables once); a value the user exported wins.
    """
    library_level = "error" if level in ("warning", "error") else level
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(variable, library_level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed download or connection, not a bug."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError | socket.gaierror):
            return True
        kind = type(seen)
        if kind.__module__.split(".")[0] in {"huggingface_hub", "requests", "urllib3", "httpx", "httpcore"} and any(
            word in kind.__name__ for word in ("Connect", "Offline", "Timeout", "LocalEntryNotFound", "Network")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
