"""Memorization audit: search against brute force, ROC against scikit-learn, and the end-to-end audit on a
fixture made from the real GI samples (transformed copies of training images mixed with other cases)."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from analysis.memorization import (
    DEFAULT_COPY_THRESHOLD,
    copy_transforms,
    nearest_by_owner,
    roc_auc,
    roc_curve,
    top_k_search,
    youden_threshold,
)
from app import main
from db.importers import import_dataset, import_generated
from db.models import Study, StudyItem
from db.raters import add_rater
from db.ratings import submit_rating
from db.workspace import Workspace
from tests.db.conftest import link_images
from tests.rating import unrated_pairs


def test_top_k_search_equals_brute_force_across_blocks() -> None:
    rng = np.random.default_rng(0)
    index = rng.standard_normal((1000, 24)).astype(np.float32)
    queries = rng.standard_normal((37, 24)).astype(np.float32)
    sims, idx = top_k_search(queries, index, 7, block_rows=128)  # 8 blocks: the running top-k is exercised
    full = queries.astype(np.float64) @ index.T.astype(np.float64)
    expected = np.argsort(-full, axis=1)[:, :7]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(full, expected, axis=1), rtol=1e-5, atol=1e-5)


def test_nearest_by_owner_takes_the_best_view_and_skips_self() -> None:
    index = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, -0.6]], dtype=np.float32)  # views of images 0,0,1,1
    owner = np.array([0, 0, 1, 1])
    query = np.array([[0, 1], [0.8, 0.6]], dtype=np.float32)  # two views of query image 0
    found = nearest_by_owner(query, np.array([0, 0]), index, owner, 1, 2)
    assert [i for i, _ in found[0]] == [0, 1]
    assert [s for _, s in found[0]] == pytest.approx([1.0, 0.96])  # the best view pair of each image
    loo = nearest_by_owner(query, np.array([0, 0]), index, owner, 1, 2, exclude_same=[0])
    assert [i for i, _ in loo[0]] == [1]


def test_roc_and_auc_equal_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties are exercised
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])


def test_youden_threshold_is_the_middle_of_the_gap() -> None:
    scores = [0.1, 0.3, 0.5, 0.9, 0.95, 1.0]
    labels = [0, 0, 0, 1, 1, 1]
    assert youden_threshold(scores, labels) == pytest.approx(0.7)
    # one negative above a positive: J is best cutting below the stray positive or above it; the wider gap wins
    assert youden_threshold([0.1, 0.2, 0.85, 0.8, 0.95, 1.0], [0, 0, 0, 1, 1, 1]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ end to end


def summary_threshold(out: Path) -> float:
    return float(json.loads((out / "summary.json").read_text())["threshold"])


def _gi_fixture(shared_data: Path, root: Path) -> tuple[Path, Path, list[str], list[str]]:
    """A GI dataset split train/test within each finding, and a 'model' of 8 transformed copies of training
    images (one per transform kind) plus 12 distinct test-split images of the same findings."""
    rows = list(csv.DictReader((shared_data / "gi" / "captions.csv").open()))
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["caption"], []).append(r["file"])
    rng = np.random.default_rng(20)
    split = {}
    for files in groups.values():
        order = rng.permutation(len(files))
        for n, i in enumerate(order):
            split[files[i]] = "train" if n < max(1, len(files) // 2) else "test"
    data = root / "gi"
    link_images(shared_data / "gi", data, [r["file"] for r in rows])
    with (data / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "caption", "split"])
        w.writerows([r["file"], r["caption"], split[r["file"]]] for r in rows)
    train = sorted(f for f in split if split[f] == "train")
    test = sorted(f for f in split if split[f] == "test")
    gen = root / "gen"
    gen.mkdir()
    copies, others = [], []
    with (gen / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "case", "seed"])
        for n, name in enumerate(train[:8]):
            with Image.open(shared_data / "gi" / name) as im:
                made, _kind = copy_transforms(im.convert("RGB"), np.random.default_rng(n))[n]
            made.save(gen / f"copy-{n}.png")
            w.writerow([f"copy-{n}.png", name, 0])
            copies.append(name)
        for n, name in enumerate(test[:12]):
            with Image.open(shared_data / "gi" / name) as im:
                im.convert("RGB").resize((256, 256)).save(gen / f"other-{n}.png")
            w.writerow([f"other-{n}.png", name, 0])
            others.append(name)
    return data, gen, copies, others


@pytest.mark.slow
def test_audit_flags_copies_study_excludes_them_and_report_has_the_table(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, gen, copies, others = _gi_fixture(shared_data, tmp_path)
    data_dir = tmp_path / "store"
    ws = Workspace.open(None, data_dir)
    import_dataset(ws.database, ws.store, "csv", data, name="gi", domain="gi", file_column="file",
                   text_column="caption")  # fmt: skip
    import_generated(ws.database, ws.store, gen, dataset="gi", model="leaky")
    ws.close()
    base = ["--data-dir", str(data_dir)]
    out = tmp_path / "audit"
    assert main([*base, "memorization", "--model", "leaky", "--dataset", "gi", "--split", "train",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr()
    assert "8/20 generated images are copies" in printed.out
    assert "embed generated" in printed.err and "verify generated: 20/20" in printed.err  # progress

    matches = pd.read_csv(out / "matches.csv")
    flagged = set(matches.loc[matches.is_copy, "case"])
    assert flagged == set(copies), matches[["case", "pixel_score", "nearest_training_case"]]
    copied = matches[matches.is_copy]
    assert (copied.case == copied.nearest_training_case).all()  # each copy found its own source
    assert summary_threshold(out) == DEFAULT_COPY_THRESHOLD  # the calibrated default was used
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "held-out" and summary["heldout_pixel"]["n"] >= len(others)
    assert summary["generated_pixel"]["p95"] > summary["heldout_pixel"]["p95"]
    assert len(summary["pairs"]) == 12 and all((out / p).is_file() for p in summary["pairs"])
    with Image.open(out / summary["pairs"][0]) as pair:
        assert pair.height == 256 and pair.width > 256

    # study create excludes the flagged images and says so; too few left names the exclusion
    config = tmp_path / "study.toml"
    config.write_text('name = "pilot"\nseed = 3\ndatasets = ["gi"]\nmodels = ["leaky"]\ncases_per_model = 12\n')
    assert main([*base, "study", "create", str(config)]) == 0
    assert "memorization: excluded 8 generated images flagged as copies (leaky: 8)" in capsys.readouterr().out
    ws = Workspace.open(None, data_dir)
    with ws.database.session() as s:
        drawn = {i.case.key for i in s.query(StudyItem).all()}
    assert drawn == set(others)
    config.write_text(config.read_text().replace('"pilot"', '"pilot2"').replace("= 12", "= 13"))
    assert main([*base, "study", "create", str(config)]) == 2
    assert "excluded 8" in capsys.readouterr().err
    # ... or, with copies = "keep", keeps and marks them
    config.write_text(config.read_text().replace('"pilot2"', '"kept"').replace("= 13", '= 20\ncopies = "keep"'))
    assert main([*base, "study", "create", str(config)]) == 0
    assert "kept and marked (copies = 'keep') 8 generated images" in capsys.readouterr().out
    with ws.database.session() as s:
        kept = s.query(Study).filter_by(name="kept").one()
        assert len(kept.config["memorization"]["flagged_drawn_generated_image_ids"]) == 8

    # the report carries the memorization table
    with ws.database.session() as s:
        token = add_rater(s, "pilot", "Dr A", "gastroenterology", 5).token
    for rid, pair in unrated_pairs(ws.database, token):
        answers = {"realism_left": 3, "realism_right": 4, "accuracy_left": 3, "accuracy_right": 2,
                   "which_generated": "left", "confidence": 3}  # fmt: skip
        submit_rating(ws.database, rid, pair.item_public_id, uuid.uuid4().hex, answers)
    ws.close()
    report = tmp_path / "report"
    assert main([*base, "report", "--study", "pilot", "--out", str(report), "--resamples", "50"]) == 0
    html = (report / "report.html").read_text()
    assert "Memorization audit" in html
    table = pd.read_csv(next(report.glob("tables/*memorization*.csv")))
    assert table.loc[0, "model"] == "leaky" and table.loc[0, "copies"] == 8
    assert table.loc[0, "share_copies"] == pytest.approx(0.4)


def test_user_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--data-dir", str(tmp_path / "data")]
    assert main([*base, "memorization", "--model", "nope", "--dataset", "gi"]) == 2
    err = capsys.readouterr().err
    assert "error: no model called 'nope'" in err and len(err.strip().splitlines()) == 1
    from db.errors import InputError
    from db.studies import parse_study_config

    toml = 'name = "s"\nseed = 1\ndatasets = ["d"]\nmodels = ["m"]\ncases_per_model = 2\n'
    assert parse_study_config(toml).copies == "exclude"
    assert parse_study_config(toml + 'copies = "keep"\n').copies == "keep"
    with pytest.raises(InputError, match="'copies' must be 'exclude' or 'keep'"):
        parse_study_config(toml + 'copies = "maybe"\n')
