"""Shared pytest fixtures: offline environment, paths to the real samples, a fresh data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real GI / radiology / MRMC samples, read in place (never copied into the repo)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real samples not found at {SHARED_DATA}; the checkout must sit beside shared/")
    return SHARED_DATA
