"""One way to register a model: ``register_model``; ``exist_ok`` returns a model of the same kind only."""

from __future__ import annotations

import pytest

from db.errors import ConflictError
from db.generated import register_model
from db.models import ModelKind
from db.workspace import Workspace


def test_exist_ok_returns_the_model_and_checks_its_kind(workspace: Workspace) -> None:
    with workspace.database.session() as session:
        made = register_model(session, "gen", kind="diffusers", source="/models/gen")
        again = register_model(session, "gen", kind=ModelKind.DIFFUSERS, source="/elsewhere", exist_ok=True)
        assert again.id == made.id and again.source == "/models/gen"  # found, not changed
        with pytest.raises(ConflictError, match="registered as kind diffusers, not folder"):
            register_model(session, "gen", kind=ModelKind.FOLDER, source="/imports/gen", exist_ok=True)
        with pytest.raises(ConflictError, match="already registered"):
            register_model(session, "gen", kind="diffusers", source="/models/gen")
