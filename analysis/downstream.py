"""Downstream utility (MEDVQA-GI 2024): train on generated images labelled by their prompt's finding, test on real.

The classifier is a seeded multinomial logistic regression (L2, full-batch L-BFGS in float64 torch) on
features from one extractor (:mod:`analysis.features`); scores are accuracy and macro precision, recall and
F1, computed like ``sklearn.metrics`` with ``zero_division=0``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from analysis.features.base import FeatureExtractor
from analysis.metrics import MetricStamp

Average = Literal["macro", "weighted", "micro"]


@dataclass(frozen=True)
class DownstreamConfig:
    """Classifier settings. ``l2`` is the penalty on the weights (not the bias), per training example."""

    l2: float = 1e-3
    max_iter: int = 200
    standardize: bool = True
    average: Average = "macro"
    seed: int = 0


@dataclass(frozen=True)
class DownstreamResult:
    """Test-set scores of a classifier trained on generated images and tested on real ones."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    n_train: int
    n_test: int
    classes: tuple[str, ...]
    average: Average
    per_class: pd.DataFrame
    stamp: MetricStamp | None = None
    notes: list[str] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        """Flat row: scores, N and (when stamped) the extractor."""
        row = {k: getattr(self, k) for k in ("accuracy", "precision", "recall", "f1", "n_train", "n_test")}
        row |= {"average": self.average, "n_classes": len(self.classes)}
        if self.stamp is not None:
            row |= {"extractor": self.stamp.extractor, "weights_sha256": self.stamp.weights_sha256}
            row |= {"seed": self.stamp.seed}
        return row


def finding_labels(prompts: Sequence[str], finding_of: Mapping[str, str]) -> list[str]:
    """Label each generated image with the finding of its prompt; every prompt must be mapped."""
    missing = sorted({p for p in prompts if p not in finding_of})
    if missing:
        raise ValueError(f"{len(missing)} prompt(s) have no finding, e.g. {missing[0]!r}")
    return [finding_of[p] for p in prompts]


def classification_scores(
    y_true: Sequence[Any], y_pred: Sequence[Any], average: Average = "macro"
) -> tuple[dict[str, float], pd.DataFrame]:
    """Accuracy and averaged precision / recall / F1 (zero division counts as 0), plus a per-class table.

    Classes are the union of true and predicted labels, as in ``sklearn.metrics.precision_recall_fscore_support``.
    """
    if average not in ("macro", "weighted", "micro"):
        raise ValueError(f"average must be 'macro', 'weighted' or 'micro', got {average!r}")
    t, p = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    if t.shape != p.shape or t.ndim != 1 or t.size == 0:
        raise ValueError(f"y_true and y_pred must be equal-length non-empty 1-D, got {t.shape} and {p.shape}")
    classes = sorted(set(t.tolist()) | set(p.tolist()), key=str)
    tp = np.array([np.sum((t == c) & (p == c)) for c in classes], dtype=float)
    pred_n = np.array([np.sum(p == c) for c in classes], dtype=float)
    true_n = np.array([np.sum(t == c) for c in classes], dtype=float)

    def ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
        num, den = np.asarray(num, float), np.asarray(den, float)
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    precision, recall = ratio(tp, pred_n), ratio(tp, true_n)
    f1 = ratio(2 * precision * recall, precision + recall)
    per_class = pd.DataFrame(
        {"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": true_n.astype(int)}
    )
    if average == "micro":
        mp, mr = float(ratio(tp.sum(), pred_n.sum())), float(ratio(tp.sum(), true_n.sum()))
        avg = {"precision": mp, "recall": mr, "f1": float(ratio(2 * mp * mr, mp + mr))}
    else:
        w = true_n / true_n.sum() if average == "weighted" else np.full(len(classes), 1 / len(classes))
        avg = {"precision": float(w @ precision), "recall": float(w @ recall), "f1": float(w @ f1)}
    return {"accuracy": float(np.mean(t == p)), **avg}, per_class


@dataclass(frozen=True)
class LogisticModel:
    """A fitted multinomial logistic regression on (optionally standardised) features."""

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    classes: tuple[str, ...]

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """Most probable class per row."""
        logits = ((np.asarray(feats, np.float64) - self.mean) / self.scale) @ self.weight + self.bias
        return np.asarray(self.classes, dtype=object)[np.argmax(logits, axis=1)]


def fit_logistic(feats: Any, labels: Sequence[Any], config: DownstreamConfig = DownstreamConfig()) -> LogisticModel:
    """Seeded multinomial logistic regression: mean cross-entropy + ``l2/2 |W|^2``, L-BFGS in float64."""
    x = np.asarray(feats, dtype=np.float64)
    y = np.asarray(labels, dtype=object)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features {x.shape} and {y.shape[0]} labels do not pair up")
    classes = tuple(sorted({str(c) for c in y.tolist()}))
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes to train a classifier, got {classes}")
    mean = x.mean(axis=0) if config.standardize else np.zeros(x.shape[1])
    scale = x.std(axis=0) if config.standardize else np.ones(x.shape[1])
    scale = np.where(scale > 0, scale, 1.0)
    xt = torch.from_numpy((x - mean) / scale)
    yt = torch.tensor([classes.index(str(c)) for c in y.tolist()])
    gen = torch.Generator().manual_seed(config.seed)
    weight = (0.01 * torch.randn(x.shape[1], len(classes), generator=gen, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=config.max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt) + 0.5 * config.l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LogisticModel(weight.detach().numpy(), bias.detach().numpy(), mean, scale, classes)


def downstream_utility(
    train_feats: Any,
    train_labels: Sequence[Any],
    test_feats: Any,
    test_labels: Sequence[Any],
    config: DownstreamConfig = DownstreamConfig(),
    extractor: FeatureExtractor | None = None,
) -> DownstreamResult:
    """Train on generated-image features, test on real-image features; accuracy, precision, recall, F1.

    Parameters
    ----------
    train_feats, train_labels
        Generated images' features and the finding of their prompt (see :func:`finding_labels`).
    test_feats, test_labels
        Real images' features and their finding.
    extractor
        The extractor that made the features, to stamp the result.
    """
    model = fit_logistic(train_feats, train_labels, config)
    test = np.asarray(test_feats, dtype=np.float64)
    if test.ndim != 2 or test.shape[1] != model.weight.shape[0]:
        raise ValueError(f"test features {test.shape} do not match the training dimension {model.weight.shape[0]}")
    truth = [str(c) for c in test_labels]
    notes = []
    unseen = sorted(set(truth) - set(model.classes))
    if unseen:
        msg = f"test classes never generated (always wrong): {unseen}"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    scores, per_class = classification_scores(truth, model.predict(test).tolist(), config.average)
    stamp = MetricStamp.for_extractor(extractor, len(train_labels), len(truth), config.seed) if extractor else None
    return DownstreamResult(
        n_train=len(train_labels),
        n_test=len(truth),
        classes=model.classes,
        average=config.average,
        per_class=per_class,
        stamp=stamp,
        notes=notes,
        **scores,
    )
