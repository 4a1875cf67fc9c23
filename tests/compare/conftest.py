"""Fixtures of the comparison tests: one torch thread (tiny models contend on a shared 2-core machine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from generation.testing import single_torch_thread


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two threads only contend on a shared 2-core machine."""
    with single_torch_thread():
        yield
