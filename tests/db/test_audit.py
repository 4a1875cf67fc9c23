"""The audit log of coordinator actions keeps what was done, never a secret."""

from __future__ import annotations

import pytest

from db.audit import recent_actions, record_action
from db.workspace import Workspace


def test_audit_keeps_actions_newest_first_without_secrets(workspace: Workspace) -> None:
    db = workspace.database
    record_action(db, "study.create", target="pilot")
    record_action(db, "rater.reissue", target="pilot", details={"rater": "Dr A", "token": "s3cr3t", "new_link": "x"})
    first, second = recent_actions(db)
    assert (first.action, first.target, first.details) == ("rater.reissue", "pilot", {"rater": "Dr A"})
    assert second.action == "study.create" and second.actor == "coordinator"
    with pytest.raises(ValueError, match="personal link"):
        record_action(db, "rater.add", target="http://host/?rater=s3cr3t")
    assert "s3cr3t" not in repr(recent_actions(db))
