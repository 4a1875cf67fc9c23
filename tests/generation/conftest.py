"""Shared fixtures of the generation tests: one torch thread, tiny pipelines saved once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from generation.testing import save_tiny_pipeline, single_torch_thread

#: Image size each tiny family is sampled at in tests.
SIZES = {"sd": 32, "flux": 16}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two threads only contend on a shared 2-core machine."""
    with single_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_pipeline_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny SD and FLUX pipelines of ``generation.testing``, saved with ``save_pretrained`` once."""
    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {family: save_tiny_pipeline(family, root / family) for family in SIZES}  # type: ignore[arg-type]
