"""The comparison report's content (pure) and its sample images, without a comparison run."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from analysis.report import render_report
from compare import parse_compare_config, stages
from compare.report import report_content
from db.generated import dataset_cases
from db.importers import import_dataset
from db.workspace import Workspace

CONFIG = 'name = "c"\ndataset = "d"\n[[contenders]]\nname = "a"\nkind = "registered"\nmodel = "m"\n'
METRICS = {"extractor": "tiny-random", "weights_sha256": "ab" * 32, "preprocess": "resize", "alignment": None,
           "warnings": ["few images"]}  # fmt: skip


def test_the_report_is_computed_then_rendered_by_the_one_renderer(tmp_path: Path) -> None:
    config = parse_compare_config(CONFIG)
    rows = [{"contender": "a", "kind": "registered", "model": "m", "FD_tiny-random": 1.25, "parameters": 12}]
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("L", (8, 8), 90)
    content = report_content(config, rows, METRICS, [("a polyp", red, {"a": blue}), ("no image", red, {})])
    quality, samples = content.sections
    assert list(quality.tables["quality_and_cost"]["FD_tiny-random"]) == [1.25]  # full precision
    assert "random weights" in " ".join(quality.notes) and "Warning: few images" in quality.notes
    grid = samples.images["samples"]
    assert grid.columns == ("real", "a") and [label for label, _ in grid.rows] == ["a polyp", "no image"]
    assert grid.rows[1][1][1] is None  # the contender has no image for that prompt
    page = render_report(content, tmp_path).html_path.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and page.count("<img") == 3
    assert "FD tiny-random" in page and "1.25" in page


def test_the_samples_show_each_prompts_own_real_image(tmp_path: Path) -> None:
    """MEDVQA-GI has several prompts per image: the metrics take each image once, the samples one per prompt."""
    ws = Workspace.open(f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path / "data")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())  # a second prompt of the same image
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "c.png")
    (tmp_path / "meta.csv").write_text("file,caption\na.png,one\nb.png,two\nc.png,three\n", encoding="utf-8")
    import_dataset(ws.database, ws.store, "csv", tmp_path / "meta.csv", name="d", file_column="file",
                   text_column="caption")  # fmt: skip
    with ws.database.session() as session:
        cases = dataset_cases(session, "d")
    assert len(stages.real_images(ws, cases)) == 2
    per_case = stages.real_images(ws, cases, distinct=False)
    assert [im.getpixel((0, 0)) for im in per_case] == [(255, 0, 0), (255, 0, 0), (0, 0, 255)]
