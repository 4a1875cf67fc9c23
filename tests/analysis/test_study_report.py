"""`python app.py report` on a study whose ratings a test fills through the database's own services."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import main
from db.importers import import_dataset, import_generated
from db.raters import add_rater
from db.ratings import submit_rating
from db.studies import create_study
from db.workspace import Workspace
from tests.db.conftest import STUDY_TOML, TRANSFORMS, write_generated
from tests.rating import unrated_pairs


@pytest.fixture(scope="module")
def rated_study(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A study of two 'models' with 3 raters who rated everything (answers from a seeded generator).

    Built once for the module: the reports only read it and write to their own ``tmp_path``."""
    tmp_path = tmp_path_factory.mktemp("rated-study")
    data_dir = tmp_path / "data"
    ws = Workspace.open(None, data_dir)
    import_dataset(ws.database, ws.store, "csv", shared_data / "gi", name="gi", domain="gi",
                   file_column="file", text_column="caption")  # fmt: skip
    names = [r["file"] for r in csv.DictReader((shared_data / "gi" / "captions.csv").open())][:24]
    for model, fn in TRANSFORMS.items():
        import_generated(ws.database, ws.store, write_generated(shared_data / "gi", tmp_path / model, names, fn),
                         dataset="gi", model=model)  # fmt: skip
    with ws.database.session() as s:
        create_study(s, ws.store, STUDY_TOML)
    with ws.database.session() as s:
        tokens = [add_rater(s, "pilot", f"Dr {i}", "gastroenterology", 2 + 5 * i).token for i in range(3)]
    rng = np.random.default_rng(0)
    for token in tokens:
        for rid, pair in unrated_pairs(ws.database, token):
            r = rng.integers(1, 6, size=5)
            answers = {"realism_left": int(r[0]), "realism_right": int(r[1]), "accuracy_left": int(r[2]),
                       "accuracy_right": int(r[3]), "confidence": int(r[4]),
                       "which_generated": "left" if rng.random() < 0.5 else "right"}  # fmt: skip
            submit_rating(ws.database, rid, pair.item_public_id, uuid.uuid4().hex, answers)
    ws.close()
    return data_dir


def test_report_command_writes_html_tables_and_mrmc(rated_study: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "report"
    code = main(["--data-dir", str(rated_study), "report", "--study", "pilot", "--out", str(out),
                 "--resamples", "200", "--metrics", "fd,kid", "--extractor", "tiny-clip"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    html = (out / "report.html").read_text()
    for heading in ("Turing", "multi-case ROC", "Automated image metrics", "Expert ratings against automated metrics"):
        assert heading in html
    manifest = json.loads((out / "tables" / "manifest.json").read_text())
    assert manifest  # every table listed
    # The experts against the two metrics: both models ranked by each metric and by each expert question.
    assert "Do the metrics rank the models as the experts do?" in html
    ranking = pd.read_csv(out / "tables" / "human_vs_metric_ranking.csv")
    assert set(ranking["metric"]) == {"FD_clip-tiny-random", "KID_clip-tiny-random"}
    assert set(ranking["question"]) == {"realism", "accuracy"} and set(ranking["n_models"]) == {2}
    assert ranking["expert_order"].str.contains("blur").all() and ranking["metric_order"].str.contains("mirror").all()
    assert (out / "report-files.zip").is_file() and any((out / "figures").glob("scatter_FD*.svg"))
    metrics = pd.read_csv(out / "tables" / "metrics.csv")
    assert set(metrics["model"]) == {"blur", "mirror"}
    assert set(metrics["metric"]) == {"FD_clip-tiny-random", "KID_clip-tiny-random"}
    assert (metrics.loc[metrics["metric"].str.startswith("FD"), "value"] > 0).all()  # KID may dip below 0
    assert metrics["n_a"].nunique() == 1  # models compared at equal N


def test_report_refuses_unknown_study_and_empty_ratings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--data-dir", str(tmp_path / "d"), "report", "--study", "nope", "--out", str(tmp_path / "o")])
    assert code == 2 and "no study called 'nope'" in capsys.readouterr().err


def test_report_with_per_image_metrics_correlates_per_case(rated_study: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(["--data-dir", str(rated_study), "report", "--study", "pilot", "--out", str(out),
                 "--resamples", "100", "--metrics", "nn,alignment,cmmd", "--extractor", "tiny-clip"])  # fmt: skip
    assert code == 0
    per_case = pd.read_csv(out / "tables" / "human_vs_metric_per_case.csv")
    assert set(per_case["metric"]) == {"nn_clip-tiny-random", "alignment_clip-tiny-random"}
    assert set(per_case["model"]) == {"all models", "blur", "mirror"}
    pooled = per_case[per_case["model"] == "all models"]
    assert (pooled["n_images"] > 20).all() and pooled["spearman_ci_low"].notna().all()
    metrics = pd.read_csv(out / "tables" / "metrics.csv")
    assert set(metrics["estimator"].dropna()) == {"unbiased"} and metrics["ci_low"].notna().all()


def test_missing_inception_weights_are_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MEDSYNTH_INCEPTION_WEIGHTS", raising=False)
    code = main(["--data-dir", str(tmp_path / "d"), "report", "--study", "pilot", "--out", str(tmp_path / "o"),
                 "--metrics", "fd", "--extractor", "inception"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--extractor inception:/path/to/" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
