"""Downstream utility: scores equal sklearn.metrics; the classifier is seeded and learns; real-data run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from analysis.downstream import (
    DownstreamConfig,
    classification_scores,
    downstream_utility,
    finding_labels,
    fit_logistic,
)
from analysis.features import load_images
from analysis.features.tiny import tiny_dinov2

torch.set_num_threads(1)


@pytest.mark.parametrize("average", ["macro", "weighted", "micro"])
def test_classification_scores_equal_sklearn(average: str) -> None:
    rng = np.random.default_rng(0)
    y_true = rng.choice(["polyp", "ulcer", "normal", "oesophagitis"], 80).tolist()
    y_pred = rng.choice(["polyp", "ulcer", "normal", "instrument"], 80).tolist()  # one class never true
    scores, per_class = classification_scores(y_true, y_pred, average)  # type: ignore[arg-type]
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
    assert scores["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((p, r, f))
    labels = sorted(set(y_true) | set(y_pred))
    pc, rc, fc, sc = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(per_class[["precision", "recall", "f1"]].to_numpy(), np.c_[pc, rc, fc])
    np.testing.assert_array_equal(per_class["support"], sc)


def test_logistic_fit_is_seeded_and_matches_sklearn_predictions() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=2.0, size=(3, 5))
    labels = np.repeat(["a", "b", "c"], 40)
    x = centres[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 5))
    config = DownstreamConfig(l2=1e-2, seed=3)
    m1, m2 = fit_logistic(x, labels, config), fit_logistic(x, labels, config)
    np.testing.assert_array_equal(m1.weight, m2.weight)
    # same objective as sklearn's multinomial LogisticRegression with C = 1 / (n * l2) on standardised x
    z = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1 / (120 * 1e-2), max_iter=2000, tol=1e-10).fit(z, labels)
    assert np.mean(m1.predict(x) == ref.predict(z)) >= 0.98
    probe = rng.normal(scale=2.0, size=(200, 5))
    assert np.mean(m1.predict(probe) == ref.predict((probe - x.mean(0)) / x.std(0))) >= 0.97


def test_downstream_utility_on_separable_data_and_unseen_classes() -> None:
    rng = np.random.default_rng(2)
    gen = np.r_[rng.normal(0, 1, (30, 4)), rng.normal(4, 1, (30, 4))]
    real = np.r_[rng.normal(0, 1, (20, 4)), rng.normal(4, 1, (20, 4))]
    prompts = ["a polyp"] * 30 + ["a normal cecum"] * 30
    train_labels = finding_labels(prompts, {"a polyp": "polyp", "a normal cecum": "normal"})
    test_labels = ["polyp"] * 20 + ["normal"] * 20
    result = downstream_utility(gen, train_labels, real, test_labels, extractor=tiny_dinov2())
    assert result.accuracy > 0.9 and result.f1 > 0.9
    assert (result.n_train, result.n_test, result.classes) == (60, 40, ("normal", "polyp"))
    assert result.to_row()["extractor"] == "dinov2-tiny-random"
    with pytest.warns(UserWarning, match="never generated"):
        downstream_utility(gen, train_labels, real, ["polyp"] * 39 + ["ulcer"])
    with pytest.raises(ValueError, match="no finding"):
        finding_labels(["unknown prompt"], {})


def test_downstream_on_real_samples_domain_labels(shared_data: Path) -> None:
    # stand-in for generated-vs-real: train on half of the real samples, test on the other half
    gi = load_images(sorted((shared_data / "gi").glob("*.jpg")))
    rad = load_images(sorted((shared_data / "radiology").glob("*.jpg")))
    extractor = tiny_dinov2(seed=0)
    f_gi, f_rad = extractor(gi), extractor(rad)
    train = np.r_[f_gi[::2], f_rad[::2]]
    test = np.r_[f_gi[1::2], f_rad[1::2]]
    y_train = ["gi"] * len(f_gi[::2]) + ["radiology"] * len(f_rad[::2])
    y_test = ["gi"] * len(f_gi[1::2]) + ["radiology"] * len(f_rad[1::2])
    result = downstream_utility(train, y_train, test, y_test, DownstreamConfig(seed=0), extractor)
    p, r, f, _ = precision_recall_fscore_support(
        y_test, fit_logistic(train, y_train).predict(test).tolist(), average="macro", zero_division=0
    )
    assert (result.precision, result.recall, result.f1) == pytest.approx((p, r, f))
    assert result.accuracy > 0.8
