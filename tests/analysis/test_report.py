"""The report writes escaped HTML and stamped tables from a synthetic ratings frame."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis.report import ReportConfig, ReportSection, write_report
from analysis.synthetic import synthetic_ratings

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
FAST = ReportConfig(n_resamples=50, seed=3, include_mrmc=False)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_ratings(n_raters=5, n_items=60, seed=6)


def test_report_writes_html_and_stamped_tables(frame: pd.DataFrame, tmp_path: Path) -> None:
    calls: list[float] = []
    result = write_report(
        frame,
        tmp_path,
        title="Study report",
        stamp={"study": "synthetic-study"},
        progress=lambda fraction, desc: calls.append(fraction),
        config=FAST,
    )
    page = result.html_path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 5
    assert "Visual Turing test" in page and "Inter-rater agreement" in page
    assert result.sections[0].startswith("Headline")  # the report leads with the headline Turing table
    lead = pd.read_csv(result.tables["turing_headline"]["csv"])
    assert "random" in lead["method"].iloc[0] and "DESCRIPTIVE" in lead["method"].iloc[1]
    assert calls == sorted(calls) and calls[-1] == 1.0
    for name in ("agreement_overall", "turing_per_rater", "model_scores", "model_comparisons", "attention_checks"):
        paths = result.tables[name]
        csv = pd.read_csv(paths["csv"])
        parquet = pd.read_parquet(paths["parquet"])
        assert len(csv) == len(parquet) > 0
        stamp = json.loads(pq.read_schema(paths["parquet"]).metadata[b"medsynth.stamp"])
        document = json.loads(paths["json"].read_text())
        assert document["stamp"] == json.loads(json.dumps(stamp))
        assert stamp["study"] == "synthetic-study" and stamp["bootstrap"]["seed"] == 3
        assert stamp["study_config_sha256"] == "0" * 64 and stamp["n_ratings"] == len(frame)
        assert "numpy" in stamp["versions"] and len(document["data"]) == len(csv)
    manifest = json.loads(result.manifest_path.read_text())
    assert len(manifest) == len(result.tables) and all(set(m["files"]) == {"csv", "parquet", "json"} for m in manifest)


def test_report_tables_are_deterministic(frame: pd.DataFrame, tmp_path: Path) -> None:
    first = write_report(frame, tmp_path / "a", title="t", stamp={}, progress=lambda *a, **k: None, config=FAST)
    second = write_report(frame, tmp_path / "b", title="t", stamp={}, progress=lambda *a, **k: None, config=FAST)
    for name, paths in first.tables.items():
        assert paths["csv"].read_bytes() == second.tables[name]["csv"].read_bytes(), name


def test_hostile_strings_are_escaped(frame: pd.DataFrame, tmp_path: Path) -> None:
    hostile = frame.copy()
    for column in ("rater_name", "model", "rater", "specialty", "prompt", "comment"):
        hostile[column] = hostile[column].astype("string") + HOSTILE
    extra = ReportSection(
        title=f"Metrics {HOSTILE}",
        tables={f"metrics {HOSTILE}": pd.DataFrame({HOSTILE: [HOSTILE, 1.5]})},
        notes=[HOSTILE],
    )
    result = write_report(
        hostile,
        tmp_path,
        title=HOSTILE,
        stamp={HOSTILE: HOSTILE},
        extra_sections=[extra],
        progress=lambda *a, **k: None,
        config=FAST,
    )
    page = result.html_path.read_text(encoding="utf-8")
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page
    assert "Content-Security-Policy" in page
    assert all("<" not in path.name for paths in result.tables.values() for path in paths.values())


def test_mrmc_section_is_optional(frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def without_mrmc(name: str, *args: object) -> object:
        if name == "analysis.mrmc":
            raise ImportError("no MRMC here")
        return real_import(name, *args)

    with_mrmc = ReportConfig(n_resamples=50, seed=3, include_mrmc=True)
    monkeypatch.setattr(importlib, "import_module", without_mrmc)
    result = write_report(frame, tmp_path, title="t", stamp={}, progress=lambda *a, **k: None, config=with_mrmc)
    assert not any("MRMC" in title for title in result.sections)


def test_mrmc_section_is_included_when_available(frame: pd.DataFrame, tmp_path: Path) -> None:
    mrmc = pytest.importorskip("analysis.mrmc")
    if not hasattr(mrmc, "mrmc_from_ratings"):
        pytest.skip("analysis.mrmc has no mrmc_from_ratings yet")
    config = ReportConfig(n_resamples=50, seed=3, include_mrmc=True)
    result = write_report(frame, tmp_path, title="t", stamp={}, progress=lambda *a, **k: None, config=config)
    assert any("MRMC" in title for title in result.sections)


def test_missing_columns_are_named(frame: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="which_generated"):
        write_report(frame.drop(columns="which_generated"), tmp_path, title="t", stamp={})
