"""Fixtures for the app tests: a workspace with real GI samples, two "models", studies, raters, a live server.

The two models are deterministic PIL transforms of the real images (a blur and a posterised, rotated
copy), written as JPEG files with a manifest and recorded through :func:`db.importers.import_generated`. The server
runs in a background thread on a free 127.0.0.1 port for the whole test session.

Helpers for other test files:

* ``app_env.add_rater(study, name=None)`` -> :class:`RaterLogin` (id, token, personal link);
* ``app_env.cookie(token=None)`` -> the session cookie value a browser would get (anonymous without token);
* ``app_env.request(cookie)`` -> a ``gr.Request`` carrying that cookie, for calling handlers directly;
* ``app_env.gradio_headers(cookie)`` -> headers for ``gradio_client.Client(..., headers=...)``;
* ``app_env.coordinator_password`` -> the stored coordinator password.

(Test files cannot import this module under ``--import-mode=importlib``: use the fixture's methods.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import httpx
import pytest
from PIL import Image, ImageFilter, ImageOps
from starlette.requests import Request

from db.generated import dataset_cases
from db.importers import import_dataset, import_generated
from db.models import Case
from db.raters import add_rater
from db.studies import create_study
from db.workspace import Workspace
from evalapp.auth import COOKIE_NAME
from evalapp.server import AppContext, RunningServer, start_server

DATASET = "gi-leakcheck-set"
MODELS = ("Zephyrine-Diffusion-7", "Quokkanet-GAN-3")
SEEDS = {MODELS[0]: 918273645, MODELS[1]: 564738291}
N_CASES = 8
STUDY = "pilot-study"
SMALL_STUDY = "browser-study"
COORDINATOR_PASSWORD = "a-long-coordinator-password"


def _blur(img: Image.Image) -> Image.Image:
    return img.convert("RGB").filter(ImageFilter.GaussianBlur(2))


def _poster(img: Image.Image) -> Image.Image:
    return ImageOps.posterize(img.convert("RGB"), 3).rotate(3)


TRANSFORMS = {MODELS[0]: _blur, MODELS[1]: _poster}


def study_toml(name: str, per_model: int, *, attention: float = 0.0, repeat: float = 0.0, size: int = 384) -> str:
    """A study config over both fixture models; every rater reads every item."""
    models = ", ".join(f'"{m}"' for m in MODELS)
    return (
        f'name = "{name}"\nseed = 11\ndatasets = ["{DATASET}"]\nmodels = [{models}]\n'
        f"cases_per_model = {per_model}\nraters_per_item = 1\nrater_slots = 1\n"
        f"attention_fraction = {attention}\nrepeat_fraction = {repeat}\n"
        f'title = "Polyp image study"\n[display]\nsize = {size}\nfit = "square"\n'
    )


@dataclass(frozen=True)
class RaterLogin:
    """A rater added for a test."""

    rater_pk: int
    public_id: str
    token: str
    link: str


@dataclass
class AppEnv:
    """The live app and its data."""

    workspace: Workspace
    server: RunningServer
    data_dir: Path
    case_keys: list[str]
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ctx(self) -> AppContext:
        return self.server.ctx

    def add_rater(self, study: str = STUDY, name: str | None = None, specialty: str = "gastroenterology") -> RaterLogin:
        from db.models import Rater

        with self.workspace.database.session() as session:
            new = add_rater(session, study, name or f"Rater {next(self._names)}", specialty, 5)
        with self.workspace.database.session() as session:
            from sqlalchemy import select

            pk = session.scalar(select(Rater.id).where(Rater.public_id == new.rater_id))
        return RaterLogin(int(pk), new.rater_id, new.token, self.ctx.rater_link(new.token))

    coordinator_password: str = COORDINATOR_PASSWORD

    @staticmethod
    def request(cookie: str | None, host: str = "127.0.0.1") -> gr.Request:
        """A ``gr.Request`` carrying ``cookie`` (see :func:`fake_request`)."""
        return fake_request(cookie, host)

    @staticmethod
    def gradio_headers(cookie: str) -> dict[str, str]:
        """Headers for ``gradio_client.Client(url, headers=...)`` speaking with this session."""
        return gradio_headers(cookie)

    def cookie(self, token: str | None = None) -> str:
        """The session cookie the server sets for a personal link (or for a plain page load)."""
        url = f"{self.url}/?rater={token}" if token is not None else f"{self.url}/"
        with httpx.Client(follow_redirects=False, timeout=30) as client:
            response = client.get(url)
        value = response.cookies.get(COOKIE_NAME)
        assert value, f"no session cookie from {url.split('?')[0]} (status {response.status_code})"
        return value


def fake_request(cookie: str | None, host: str = "127.0.0.1") -> gr.Request:
    """A ``gr.Request`` as Gradio builds it for a queued event, carrying ``cookie``."""
    headers = [(b"cookie", f"{COOKIE_NAME}={cookie}".encode())] if cookie else []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/gradio_api/queue/join",
        "headers": headers,
        "query_string": b"",
        "client": (host, 50000),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
    }
    return gr.Request(request=Request(scope), session_hash="test-session")


def gradio_headers(cookie: str) -> dict[str, str]:
    """Headers that make ``gradio_client.Client`` speak with this session."""
    return {"Cookie": f"{COOKIE_NAME}={cookie}"}


def _build_workspace(root: Path, shared_data: Path) -> tuple[Workspace, list[str]]:
    ws = Workspace.open(None, root / "data")
    gi = shared_data / "gi"
    import_dataset(
        ws.database,
        ws.store,
        "csv",
        gi / "captions.csv",
        name=DATASET,
        domain="gi",
        file_column="file",
        text_column="caption",
        limit=N_CASES,
    )
    with ws.database.session() as session:
        cases = dataset_cases(session, DATASET)
    for model in MODELS:  # write each model's images beside a manifest, as an external generator would
        folder = root / "generated" / model
        folder.mkdir(parents=True)
        rows = ["file,case,seed"]
        for n, case in enumerate(cases):
            with ws.database.session() as session:
                sha = session.get(Case, case.id).image_sha256  # type: ignore[union-attr]
            TRANSFORMS[model](ws.store.open(sha)).save(folder / f"out_{n:03d}.jpg", quality=92)
            rows.append(f"out_{n:03d}.jpg,{case.key},{SEEDS[model]}")
        (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
        import_generated(ws.database, ws.store, folder, dataset=DATASET, model=model)
    with ws.database.session() as session:
        create_study(session, ws.store, study_toml(STUDY, 4, attention=0.13, repeat=0.13))
        create_study(session, ws.store, study_toml(SMALL_STUDY, 2))
    return ws, [c.key for c in cases]


@pytest.fixture(scope="session")
def app_env(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[AppEnv]:
    """A workspace with real samples, two models, two studies, and the app serving it."""
    root = tmp_path_factory.mktemp("medsynth-app")
    ws, keys = _build_workspace(root, shared_data)
    from evalapp.auth import set_coordinator_password

    set_coordinator_password(ws.database, COORDINATOR_PASSWORD)
    ctx = AppContext(workspace=ws, demo_enabled=True, login_failure_delay_s=0.01)
    server = start_server(ctx)
    try:
        yield AppEnv(workspace=ws, server=server, data_dir=root / "data", case_keys=keys)
    finally:
        server.stop()
        ws.close()
