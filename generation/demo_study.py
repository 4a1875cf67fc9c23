"""The embedded demo: a ready blinded study built from the procedural demo data and the committed demo model.

``python app.py`` on a fresh machine calls :func:`ensure_demo`, which (once) writes the procedural dataset,
imports it (one dataset per domain, so specialty routing has something to route), registers the demo MSDM
twice (its normal sampling and a 4-step "fast" variant, so the study compares two models), generates every
case with both through :mod:`generation.batch`, creates the study and adds a demo rater; beside it, a small
head-to-head study of the two demo models (:data:`DEMO_H2H_STUDY`, the real image shown above each pair as a
reference) with the same demo rater, reached by its own link. Every step is
idempotent: a later start finds what exists and skips it (an interrupted build resumes where it stopped).
Each start re-issues the demo rater's link (tokens are stored hashed, so the old one cannot be shown again)
and generates a coordinator password if none is set.
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from db.errors import InputError, NotFoundError
from db.generated import dataset_names, find_model, register_model
from db.models import Domain, ModelKind, Specialty
from db.settings import PASSWORD_ENV, coordinator_password_hash, set_coordinator_password
from db.studies import get_study
from db.workspace import Workspace

log = logging.getLogger(__name__)

DEMO_STUDY = "demo"
DEMO_H2H_STUDY = "demo-head-to-head"
DEMO_RATER = "Demo rater"
DEMO_SEED = 2024
#: (dataset name, procedural domain, database domain)
DEMO_DATASETS: tuple[tuple[str, str, Domain], ...] = (
    ("demo-endoscopy", "endoscopy", Domain.GI),
    ("demo-chest-xray", "chest_xray", Domain.RADIOLOGY),
)
#: (model name, sampling steps): the demo model (12 DPM-Solver++ steps), and the same weights with only 4.
DEMO_MODELS: tuple[tuple[str, int], ...] = (("demo-msdm", 12), ("demo-msdm-fast", 4))

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DemoInfo:
    """What a start of the demo produced: the study, a fresh rater token and the coordinator password."""

    study: str
    rater_name: str
    rater_token: str
    coordinator_password: str | None
    password_source: str
    built: bool
    seconds: float
    h2h_study: str = DEMO_H2H_STUDY
    h2h_rater_token: str = ""

    def describe(self, base_url: str) -> str:
        """The lines printed at start-up: the demo rater link and how to sign in as coordinator."""
        from db.raters import rater_link

        lines = [
            f"demo study {self.study!r} {'built' if self.built else 'ready'} in {self.seconds:.1f} s",
            f"demo rater link: {rater_link(base_url, self.rater_token)}",
        ]
        if self.h2h_rater_token:
            lines.append(
                f"demo head-to-head rater link ({self.h2h_study!r}, which demo model's image is better): "
                f"{rater_link(base_url, self.h2h_rater_token)}"
            )
        if self.coordinator_password is not None:
            lines.append(f"coordinator password (generated for this demo): {self.coordinator_password}")
        else:
            lines.append(f"coordinator password: {self.password_source}")
        return "\n".join(lines)


def _print(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _demo_toml(head: str, cases: int, design: str) -> str:
    """A demo study config: ``head`` (name, title, instructions, kind), the demo data and models, ``cases``
    per model (per model pair in a head-to-head study), ``design`` (raters and quality-control lines)."""
    datasets = ", ".join(f'"{name}"' for name, _, _ in DEMO_DATASETS)
    models = ", ".join(f'"{name}"' for name, _ in DEMO_MODELS)
    return f"""{head}
seed = {DEMO_SEED}
datasets = [{datasets}]
models = [{models}]
cases_per_model = {cases}
{design}

[display]
size = 256
fit = "square"
"""


def demo_config_text(cases_per_model: int) -> str:
    """The TOML config of the demo study."""
    head = (
        f'name = "{DEMO_STUDY}"\ntitle = "MedSynth demo study"\n'
        'instructions = "Procedural demo images: which of the two looks generated?"'
    )
    design = "raters_per_item = 2\nrater_slots = 2\nattention_fraction = 0.1\nrepeat_fraction = 0.1"
    return _demo_toml(head, cases_per_model, design)


def demo_h2h_config_text(cases_per_pair: int) -> str:
    """The TOML config of the demo head-to-head study: the two demo models on the same prompts, the real
    image above each pair as a reference."""
    head = (
        f'name = "{DEMO_H2H_STUDY}"\ntitle = "MedSynth demo: head-to-head"\n'
        'instructions = "Procedural demo images: two demo models made the images for the same prompt. '
        'Which is better?"\nkind = "head-to-head"\nreference = true'
    )
    design = "raters_per_item = 1\nrater_slots = 1\nattention_fraction = 0.0\nrepeat_fraction = 0.0"
    return _demo_toml(head, cases_per_pair, design)


def _write_domain_listings(folder: Path) -> dict[str, Path]:
    """Split the demo ``metadata.csv`` into one listing per domain (same folder, so paths resolve)."""
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    listings = {}
    for _, domain, _ in DEMO_DATASETS:
        path = folder / f"metadata-{domain}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(r for r in rows if r.get("domain") == domain)
        listings[domain] = path
    return listings


def _ensure_datasets(workspace: Workspace, n_per_domain: int, say: Progress) -> None:
    from db.importers import import_dataset
    from generation.demo_data import make_demo_dataset

    with workspace.database.session() as session:
        present = dataset_names(session)
    if all(name in present for name, _, _ in DEMO_DATASETS):
        return
    folder = workspace.settings.data_dir / "demo" / "data"
    say(f"writing {2 * n_per_domain} procedural images to {folder}")
    make_demo_dataset(folder, n_per_domain=n_per_domain, seed=DEMO_SEED)
    listings = _write_domain_listings(folder)
    for name, domain, db_domain in DEMO_DATASETS:
        if name not in present:
            summary = import_dataset(
                workspace.database, workspace.store, "csv", listings[domain], name=name, domain=db_domain
            )
            say(summary.describe())


def _ensure_models(workspace: Workspace, model_dir: Path) -> None:
    with workspace.database.session() as session:
        for name, steps in DEMO_MODELS:
            model = find_model(session, name)
            if model is None or model.source != str(model_dir):
                register_model(
                    session,
                    name,
                    kind=ModelKind.MSDM,
                    source=str(model_dir),
                    parameters={"steps": steps, "demo": True},
                    replace=model is not None,
                )


def _generate(workspace: Workspace, device: str, say: Progress) -> None:
    from generation.batch import GenerationConfig, generate_for_dataset
    from generation.pipelines import PipelineCache

    cache = PipelineCache(capacity=1)  # one warm pipeline at a time keeps memory low on small machines
    for model, steps in DEMO_MODELS:
        for dataset, _, _ in DEMO_DATASETS:
            started = time.perf_counter()
            report = generate_for_dataset(
                workspace,
                dataset,
                model,
                GenerationConfig(per_case=1, seed=DEMO_SEED, steps=steps),
                device=device,
                progress=False,
                cache=cache,
            )
            if report.generated:
                say(
                    f"{model}: generated {report.generated} images for {dataset} "
                    f"({steps} steps, {time.perf_counter() - started:.1f} s)"
                )


def _ensure_study(workspace: Workspace, cases_per_model: int, say: Progress) -> bool:
    from db.studies import create_study

    if _demo_study_exists(workspace):
        return False
    with workspace.database.session() as session:
        summary = create_study(session, workspace.store, demo_config_text(cases_per_model), source="demo study")
    say(summary.describe())
    return True


def _ensure_h2h_study(workspace: Workspace, n_per_domain: int, say: Progress) -> bool:
    """Create the demo head-to-head study if it is missing (also for a demo built before it existed: the
    demo models' images are there already)."""
    from db.studies import create_study

    if _demo_study_exists(workspace, DEMO_H2H_STUDY):
        return False
    config = demo_h2h_config_text(max(2, n_per_domain // 2))
    with workspace.database.session() as session:
        summary = create_study(session, workspace.store, config, source="demo head-to-head study")
    say(summary.describe())
    return True


def _demo_token(workspace: Workspace, study: str = DEMO_STUDY) -> str:
    from db.raters import add_rater, reissue_token

    try:
        with workspace.database.session() as session:
            return reissue_token(session, study, DEMO_RATER)
    except NotFoundError:  # the demo rater is added on the first start
        with workspace.database.session() as session:
            return add_rater(session, study, DEMO_RATER, Specialty.OTHER, 5.0).token


def _demo_study_exists(workspace: Workspace, study: str = DEMO_STUDY) -> bool:
    try:
        with workspace.database.session() as session:
            get_study(session, study)
    except NotFoundError:
        return False
    return True


def _coordinator_password(workspace: Workspace) -> tuple[str | None, str]:
    if os.environ.get(PASSWORD_ENV):
        return None, f"taken from ${PASSWORD_ENV}"
    if coordinator_password_hash(workspace.database) is not None:
        return None, "already set (change it with: python app.py coordinator set-password)"
    password = secrets.token_urlsafe(12)
    set_coordinator_password(workspace.database, password)
    return password, "generated"


def ensure_demo(
    workspace: Workspace,
    progress: Progress | None = None,
    *,
    model_dir: str | Path | None = None,
    n_per_domain: int = 12,
    device: str = "auto",
) -> DemoInfo:
    """Build the demo study if it is missing (or finish an interrupted build); reuse it otherwise.

    Parameters
    ----------
    workspace
        The opened workspace to build into.
    progress
        Called with one line per step (default: print).
    model_dir
        The demo MSDM folder (default: the committed ``generation/demo_model``).
    n_per_domain
        Procedural cases per domain (endoscopy, chest X-ray); the study takes half of all cases per model.
    device
        Where the demo images are generated (``auto``: CUDA if present, else CPU).

    Returns
    -------
    DemoInfo
        The study name, the demo rater's fresh tokens (the demo study and the head-to-head one) and the
        coordinator password (``None`` when one was set before or comes from the environment).

    Raises
    ------
    InputError
        If ``model_dir`` is not a saved pipeline folder, or ``n_per_domain`` is below 2.
    """
    say = progress or _print
    started = time.perf_counter()
    if n_per_domain < 2:
        raise InputError(f"the demo needs at least 2 cases per domain, got n_per_domain={n_per_domain}")
    built = not _demo_study_exists(workspace)
    if built:
        from generation.msdm.pipeline import DEMO_MODEL_DIR  # torch and diffusers: only the first start needs them

        folder = Path(model_dir or DEMO_MODEL_DIR).resolve()
        if not (folder / "model_index.json").is_file():
            raise InputError(f"the demo model is missing: {folder} has no model_index.json")
        say("building the demo study (first start only)")
        log.info("building the demo study in %s", workspace.settings.data_dir)
        _ensure_datasets(workspace, n_per_domain, say)
        _ensure_models(workspace, folder)
        _generate(workspace, device, say)
        _ensure_study(workspace, n_per_domain, say)
    _ensure_h2h_study(workspace, n_per_domain, say)
    token = _demo_token(workspace)
    h2h_token = _demo_token(workspace, DEMO_H2H_STUDY)
    password, source = _coordinator_password(workspace)
    return DemoInfo(
        study=DEMO_STUDY,
        rater_name=DEMO_RATER,
        rater_token=token,
        coordinator_password=password,
        password_source=source,
        built=built,
        seconds=time.perf_counter() - started,
        h2h_rater_token=h2h_token,
    )
