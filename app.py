"""MedSynth command line: ``python app.py [SUBCOMMAND]`` (no subcommand = ``serve``).

This module only parses arguments and hands over to the packages: ``db`` (data, studies, exports),
``generation`` (models, training, generation), ``evalapp`` (the Gradio app) and ``analysis`` (reports).
A user mistake prints one ``error:`` line and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from db.errors import MedSynthError
from db.settings import DEFAULT_DATA_DIR

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
Handler = Callable[[argparse.Namespace], int]


def _workspace(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from db.workspace import Workspace

    return Workspace.open(args.db, args.data_dir)


def _base_url(args: argparse.Namespace, ws=None) -> str:  # type: ignore[no-untyped-def]
    """--base-url, else $MEDSYNTH_BASE_URL, else the address `serve` last ran at (stored), else the default."""
    stored = None
    if ws is not None:
        from db.app_settings import PUBLIC_URL_SETTING, get_setting

        with ws.database.session() as session:
            stored = get_setting(session, PUBLIC_URL_SETTING)
    return (
        getattr(args, "base_url", None)
        or os.environ.get("MEDSYNTH_BASE_URL")
        or getattr(args, "root_url", None)
        or stored
        or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
    )


# ------------------------------------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the Gradio app (raters, coordinators, live demo)."""
    from evalapp.server import serve

    ws = _workspace(args)
    serve(ws, host=args.host, port=args.port, demo=not args.no_demo, root_url=args.root_url)
    return 0


# ------------------------------------------------------------------------------------------------ data


def cmd_import(args: argparse.Namespace) -> int:
    """Import a dataset, or generated images for one."""
    from db.importers import import_dataset, import_generated

    ws = _workspace(args)
    path = Path(args.path)
    if args.format == "generated":
        if not args.dataset or not args.model:
            raise MedSynthError("import generated needs --dataset NAME and --model NAME")
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
    from sqlalchemy import func, select

    from db.models import Case, Dataset

    ws = _workspace(args)
    with ws.database.session() as session:
        rows = session.execute(
            select(Dataset.name, Dataset.domain, Dataset.format, func.count(Case.id),
                   func.count(func.distinct(Case.image_sha256)))
            .outerjoin(Case).group_by(Dataset.id).order_by(Dataset.name)
        ).all()  # fmt: skip
    if not rows:
        print("no datasets yet: python app.py import FORMAT PATH --name NAME")
    for name, domain, fmt, cases, images in rows:
        print(f"{name}\t{domain.value}\t{fmt}\t{cases} cases\t{images} images")
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
    from sqlalchemy import select

    from db.models import Study

    ws = _workspace(args)
    with ws.database.session() as session:
        studies = list(session.scalars(select(Study).order_by(Study.name)))
        if not studies:
            print("no studies yet: python app.py study create CONFIG.toml")
        for s in studies:
            print(f"{s.name}\t{s.status.value}\t{len(s.items)} items\t{len(s.raters)} raters\t"
                  f"config {s.config_sha256[:12]}")  # fmt: skip
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
        result = export_study(session, args.study, Path(args.out), args.format)
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
    from sqlalchemy import func, select

    from db.models import GeneratedImage, Model

    ws = _workspace(args)
    with ws.database.session() as session:
        rows = session.execute(
            select(Model, func.count(GeneratedImage.id))
            .outerjoin(GeneratedImage)
            .group_by(Model.id)
            .order_by(Model.name)
        ).all()
    if not rows:
        print("no models yet: python app.py models add NAME --kind diffusers --source HUB_ID_OR_FOLDER")
    for model, images in rows:
        print(f"{model.name}\t{model.kind.value}\t{model.source}\t{images} images")
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
    result = train_msdm(config, examples, Path(args.out), vae=args.vae, steps=args.steps, vae_steps=args.vae_steps,
                        batch_size=args.batch_size, lr=args.lr, resume=args.resume,
                        data_description=f"dataset {args.dataset!r} ({len(examples)} cases)",
                        command="python app.py " + " ".join(sys.argv[1:]))  # fmt: skip
    print(f"saved MSDM ({args.config}) to {result.out_dir} in {result.wall_time_s:.0f} s; "
          f"register it with: python app.py models add NAME --kind msdm --source {result.out_dir}")  # fmt: skip
    return 0


def cmd_train_lora(args: argparse.Namespace) -> int:
    """Fine-tune a LoRA adapter on a pretrained pipeline (FLUX, Stable Diffusion families)."""
    from generation.lora_train import LoraTrainConfig, train_lora

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
          "load it with: python app.py models add NAME --kind diffusers "
          f"--source {args.base} --lora {result.adapter_path}")  # fmt: skip
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run a comparison: train, generate, measure quality and cost, report side by side (resumable)."""
    from generation.compare import run_comparison

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
    result = write_study_report(ws, args.study, Path(args.out), metrics=metrics, extractor=args.extractor,
                                config=ReportConfig(n_resamples=args.resamples, seed=args.seed))  # fmt: skip
    print(f"wrote {result.html_path} and {len(result.tables)} tables in {result.tables_dir} ({result.seconds:.1f} s)")
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
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    def add(name: str, handler: Handler, help_text: str, parent=sub) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    # serve's options are accepted before the subcommand too, so `python app.py --port 8000` works.
    for target, default in ((parser, True), (add("serve", cmd_serve, "serve the evaluation app"), False)):
        keep = {} if default else {"default": argparse.SUPPRESS}
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
    p.add_argument("format", choices=["medvqa-gi", "rocov2", "roco", "csv", "imagefolder", "generated"])
    p.add_argument("path", help="the format's file or folder (see README: import formats)")
    p.add_argument("--name", help="name of the new dataset")
    p.add_argument("--domain", choices=["gi", "radiology", "other"])
    p.add_argument("--images", help="folder of the images (default: beside the listing file)")
    p.add_argument("--skip-missing", action="store_true", help="import only the listed images that exist")
    p.add_argument("--limit", type=int, help="import at most N cases")
    p.add_argument("--file-column", default="file_name", help="csv/imagefolder: column with the image file")
    p.add_argument("--text-column", default="text", help="csv/imagefolder: column with the prompt")
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
    p.add_argument("--metrics", help="automated metrics, comma-separated: fd,kid,cmmd (default: none)")
    p.add_argument(
        "--extractor",
        default="inception",
        help="feature extractor for --metrics: inception[:PATH], dinov2:HUB_ID, clip:HUB_ID, tiny-clip",
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of items (default 1000)")
    p.add_argument("--seed", type=int, default=0)

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
    try:
        return int(args.handler(args) or 0)
    except (MedSynthError, ValueError, FileNotFoundError, ImportError) as exc:
        # User mistakes (bad names, files, settings) are reported in one line; bugs still raise.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
