"""The report writes escaped HTML and stamped tables from a synthetic ratings frame."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from analysis.report import ReportConfig, ReportSection, write_report
from analysis.report_render import display_table, format_number, format_p
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
    assert page.count("data:image/png;base64,") >= 5 and "<h2 id='methods'>Methods</h2>" in page
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


def test_mrmc_section_is_included(frame: pd.DataFrame, tmp_path: Path) -> None:
    config = ReportConfig(n_resamples=50, seed=3, include_mrmc=True)
    result = write_report(frame, tmp_path, title="t", stamp={}, progress=lambda *a, **k: None, config=config)
    assert any("multi-case ROC" in title for title in result.sections)
    assert (tmp_path / "figures" / "mrmc_realism_roc.svg").is_file()


def test_report_is_paper_ready(frame: pd.DataFrame, tmp_path: Path) -> None:
    """300-dpi PNG + SVG figures, a zip, rater codes, human headings, formatted numbers, generated methods."""
    result = write_report(frame, tmp_path, title="t", stamp={}, progress=lambda *a, **k: None, config=FAST)
    page = result.html_path.read_text(encoding="utf-8")
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert len(pngs) >= 5 and all(p.with_suffix(".svg").is_file() for p in pngs)
    with Image.open(pngs[0]) as image:
        assert round(image.info["dpi"][0]) == 300
    with zipfile.ZipFile(result.zip_path) as archive:
        names = set(archive.namelist())
    assert "report.html" in names and "tables/manifest.json" in names and f"figures/{pngs[0].name}" in names
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "report.md" in names and "## Methods" in markdown and "| Question | Statistic | Estimate |" in markdown
    assert "](figures/agreement.svg)" in markdown
    # Raters are R01 ... in tables and on the page; names and ids stay out of the page.
    per_rater = pd.read_csv(result.tables["turing_per_rater"]["csv"])
    assert set(per_rater["rater"]) == {f"R{i:02d}" for i in range(1, 6)} and "rater_name" not in per_rater
    assert "rater-000" not in page and "Rater 0" not in page
    # Human headings and journal number formats.
    assert "Inter-rater agreement by model" in page and "agreement_by_model</h3>" not in page
    assert "Krippendorff&#x27;s α (ordinal)" in page and "e-1" not in page and ">-0.000<" not in page
    assert re.search(r"<td[^>]*>(&lt; 0\.001|0\.\d{3})</td>", page)
    # The methods paragraph comes from the objects: resamples, seed, the statistics in the tables.
    methods = page[page.index("<h2 id='methods'>") : page.index("<ol class='toc'>")]
    assert "50 resamples" in methods and "seed 3" in methods and "Fleiss" in methods and "Clopper-Pearson" in methods


def test_number_formats() -> None:
    assert [format_p(v) for v in (3.799e-17, 0.0004, 0.0123, float("nan"))] == ["< 0.001", "< 0.001", "0.012", "–"]
    assert [format_number(v) for v in (3.799e-17, -1e-9, 12.3456, 1234.56, 7.0, -0.5)] == [
        "0.000", "0.000", "12.35", "1234.6", "7", "−0.500",
    ]  # fmt: skip


def test_empty_groups_are_omitted_with_a_note() -> None:
    table = pd.DataFrame({"group": ["a", "b", "c"], "estimate": [0.5, float("nan"), float("nan")],
                          "ci_low": [0.1, None, None], "ci_high": [0.9, None, None]})  # fmt: skip
    shown, notes = display_table(table)
    assert len(shown) == 1 and "2 rows without an estimate omitted" in notes[0] and "b, c" in notes[0]
    assert shown.iloc[0]["95% CI"] == "[0.100, 0.900]"


def test_missing_columns_are_named(frame: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="which_generated"):
        write_report(frame.drop(columns="which_generated"), tmp_path, title="t", stamp={})


def test_image_grids_render_as_escaped_thumbnail_tables(tmp_path: Path) -> None:
    """An ImageGrid (compare's samples) is a table of inline PNGs: a dash for a missing image, labels escaped."""
    import base64
    import io

    from analysis.report import ImageGrid, ReportContent, render_report

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()
    grid = ImageGrid(columns=("real", HOSTILE), rows=((HOSTILE, (png, None)), ("second", (png, png))), label="prompt")
    section = ReportSection("Samples", images={"samples": grid}, captions={"samples": "Sample images"})
    content = ReportContent(HOSTILE, "", ["m"], [section], {"name": HOSTILE}, 0.95)
    result = render_report(content, tmp_path)
    page = result.html_path.read_text(encoding="utf-8")
    assert "<script>" not in page and "<img src=x" not in page
    grid_html = page[page.index("<h3>Sample images</h3>") :]
    assert grid_html.count("<img class='thumb'") == 3 and grid_html.count("<td>–</td>") == 1
    encoded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", grid_html)
    assert [base64.b64decode(e) for e in encoded] == [png] * 3
    assert "Sample images: see report.html" in (tmp_path / "report.md").read_text(encoding="utf-8")
