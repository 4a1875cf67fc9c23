"""Blinding audit: the AUC matches sklearn, its DeLong CI holds its level, a planted size leak is flagged
and the fixed serving passes (served real and generated images are indistinguishable by every observable
that does not depend on timing)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from analysis.blinding import audit_blinding, blinding_report_section, delong_auc, served_fetch
from app import main
from db.models import Side
from db.raters import add_rater
from db.studies import ServedPair, create_study
from db.workspace import Workspace
from tests.db.conftest import STUDY_TOML, import_gi_with_models

DETERMINISTIC = ["bytes", "width", "height", "mode", "zoom_bytes", "zoom_width", "zoom_height"]


def test_auc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounded: many ties
    assert delong_auc(scores, labels).auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_delong_interval_holds_its_level() -> None:
    rng = np.random.default_rng(11)
    shift = 0.8
    true_auc = float(norm.cdf(shift / np.sqrt(2)))
    hits = 0
    reps = 400
    for _ in range(reps):
        labels = np.repeat([1, 0], 60)
        scores = np.concatenate([rng.normal(shift, 1, 60), rng.normal(0, 1, 60)])
        res = delong_auc(scores, labels)
        hits += res.low <= true_auc <= res.high
    assert 0.92 <= hits / reps <= 0.98


@pytest.fixture(scope="module")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("blinding")


@pytest.fixture(scope="module")
def served_study(served_root: Path, shared_data: Path) -> Iterator[Workspace]:
    """The GI samples, two transform 'models' and a study (K = 2 of 4 slots) with four raters assigned."""
    tmp_path = served_root
    ws = import_gi_with_models(Workspace.open(None, tmp_path / "data"), shared_data, tmp_path)
    with ws.database.session() as s:
        create_study(s, ws.store, STUDY_TOML.replace("rater_slots = 3", "rater_slots = 4") + "[display]\nsize = 128\n")
    with ws.database.session() as s:
        for i in range(4):
            add_rater(s, "pilot", f"Dr {i}", "gastroenterology")
    yield ws
    ws.close()


def test_fixed_serving_passes(served_study: Workspace) -> None:
    table = audit_blinding(served_study, "pilot").set_index("observable")
    assert table.loc["bytes", "pairs"] > 40
    for name in DETERMINISTIC:  # identical on both sides of every pair: AUC exactly 0.5
        assert table.loc[name, "auc"] == 0.5 and table.loc[name, "ci_low"] == table.loc[name, "ci_high"] == 0.5
        assert not table.loc[name, "leak"]
    section = blinding_report_section(table.reset_index())
    assert "blinding/auc" in section["tables"]


def test_planted_size_leak_is_flagged(served_study: Workspace) -> None:
    """Positive control: the old serving's tell (a compressed PNG, whose size follows the picture)."""
    honest = served_fetch(served_study)

    def compressed(pair: ServedPair, side: Side) -> bytes:
        with Image.open(io.BytesIO(honest(pair, side))) as img:
            buf = io.BytesIO()
            img.save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    table = audit_blinding(served_study, "pilot", fetch=compressed).set_index("observable")
    assert table.loc["bytes", "leak"]
    assert abs(table.loc["bytes", "auc"] - 0.5) > 0.3
    notes = blinding_report_section(table.reset_index())["notes"]
    assert any(n.startswith("LEAK: bytes") for n in notes)


def test_planted_zoom_leak_is_flagged(served_study: Workspace) -> None:
    """Positive control for the zoom copies: serving each side's original file (its bytes tell)."""

    def original(pair: ServedPair, side: Side) -> bytes:
        sha = pair.left_sha256 if side == Side.LEFT else pair.right_sha256
        return served_study.store.path(sha).read_bytes()

    table = audit_blinding(served_study, "pilot", zoom_fetch=original).set_index("observable")
    assert table.loc["zoom_bytes", "leak"] and abs(table.loc["zoom_bytes", "auc"] - 0.5) > 0.3
    assert not table.loc["bytes", "leak"]  # the display copies are still the honest ones


def test_cli_audit_blinding(served_study: Workspace, served_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--data-dir", str(served_root / "data"), "study", "audit-blinding", "pilot"])
    out = capsys.readouterr().out
    assert "observable" in out and "ttfb_ms" in out and "arrived_first" in out
    assert "bytes" not in out.split("LEAK:", 1)[-1] if "LEAK:" in out else "no observable predicts" in out


def test_p_value_holds_its_level_under_no_leak() -> None:
    rng = np.random.default_rng(5)
    p = np.array([delong_auc(rng.normal(size=80), np.repeat([1, 0], 40)).p_value for _ in range(400)])
    assert 0.02 <= float(np.mean(p < 0.05)) <= 0.08
