"""Prompt adherence on the procedural demo: an attribute classifier and the benchmark core.

A small CNN with one head per attribute of :mod:`generation.demo_data` is trained on procedural
*real* frames; it then reads the attributes of generated frames, which are compared with the
attributes their prompts asked for (:func:`generation.demo_data.parse_caption`). The same model given
shuffled prompts (each image scored against a prompt it was not generated from) is the control: its
accuracy must fall toward :func:`chance_accuracy`, the agreement of the prompt attributes with a
permutation of themselves.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from db.errors import InputError
from generation.demo_data import (
    DOMAIN_ATTRIBUTES,
    DOMAINS,
    OPACITY_SIDES,
    POLYP_POSITIONS,
    POLYP_SIZES,
    caption_for,
    generate_samples,
    parse_caption,
    sample_attributes,
)

#: Classes of each classifier head (index = class id).
HEAD_CLASSES: dict[str, tuple[Any, ...]] = {
    "domain": DOMAINS,
    "polyp_count": (0, 1, 2),
    "polyp_size": ("none", *POLYP_SIZES),
    "polyp_position": ("none", *POLYP_POSITIONS),
    "ulcer": (False, True),
    "instrument": (False, True),
    "opacity": OPACITY_SIDES,
    "cardiomegaly": (False, True),
    "effusion": (False, True),
}


def attribute_targets(attrs: dict[str, Any]) -> dict[str, int]:
    """Class index per head; ``-1`` where the attribute does not apply (the other domain)."""
    return {h: (classes.index(attrs[h]) if attrs.get(h) is not None else -1) for h, classes in HEAD_CLASSES.items()}


def images_to_tensor(images: Sequence[Image.Image], size: int = 64) -> torch.Tensor:
    """RGB PIL images -> float tensor ``(N, 3, size, size)`` in [-1, 1]."""
    bilinear = Image.Resampling.BILINEAR
    arrs = [np.asarray(im.convert("RGB").resize((size, size), bilinear), dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) / 127.5 - 1.0


class AttributeClassifier(nn.Module):
    """A strided stem (64 -> 32 px), three conv stages (-> 4 px) and a linear head per attribute."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = [width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.2))
        self.heads = nn.ModuleDict({h: nn.Linear(chans[-1] * 16, len(c)) for h, c in HEAD_CLASSES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.features(x)
        return {h: head(z) for h, head in self.heads.items()}


def degrade(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur half the batch (down- then up-sampling by a random factor) and add random Gaussian noise."""
    n, _, h, w = x.shape
    out = x.clone()
    pick = torch.rand(n, generator=generator) < 0.5
    if pick.any():
        side = int(torch.randint(12, 40, (1,), generator=generator))
        small = F.interpolate(x[pick], size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out[pick] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    sigma = torch.rand(n, 1, 1, 1, generator=generator) * 0.1
    return (out + sigma * torch.randn(out.shape, generator=generator)).clamp(-1, 1)


def train_classifier(
    images: Sequence[Image.Image],
    attributes: Sequence[dict[str, Any]],
    *,
    epochs: int = 6,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    augment: bool = True,
) -> AttributeClassifier:
    """Fit an :class:`AttributeClassifier` on real frames (cross-entropy per head, masked by domain).

    With ``augment`` half of each batch is blurred and noised (:func:`degrade`), so the classifier reads
    findings rather than sharpness: generated frames are softer than the real ones they are scored against.
    """
    if len(images) != len(attributes) or not images:
        raise ValueError(f"need as many images as attribute dicts (got {len(images)} and {len(attributes)})")
    torch.manual_seed(seed)
    x = images_to_tensor(images)
    y = {h: torch.tensor([attribute_targets(a)[h] for a in attributes]) for h in HEAD_CLASSES}
    model = AttributeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        logits = model(degrade(x[idx], gen) if augment else x[idx])
        loss = sum(F.cross_entropy(logits[h], y[h][idx], ignore_index=-1) for h in HEAD_CLASSES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict_attributes(model: AttributeClassifier, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
    """Read attributes off images (every head, both domains' attributes included)."""
    model.eval()
    out: list[dict[str, Any]] = []
    x = images_to_tensor(images)
    for i in range(0, len(x), 256):
        logits = model(x[i : i + 256])
        idx = {h: v.argmax(dim=1).tolist() for h, v in logits.items()}
        out += [{h: HEAD_CLASSES[h][idx[h][k]] for h in HEAD_CLASSES} for k in range(len(x[i : i + 256]))]
    return out


def applicable(attrs: dict[str, Any]) -> tuple[str, ...]:
    """The attributes scored for a prompt: its domain plus that domain's findings."""
    return ("domain", *DOMAIN_ATTRIBUTES[attrs["domain"]])


def attribute_accuracy(predicted: Sequence[dict[str, Any]], wanted: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Accuracy per attribute over the prompts it applies to, ``mean`` over all (prompt, attribute) pairs
    and ``findings_mean`` over the same pairs without the domain.

    A prompt of one domain is scored on that domain's attributes only; the image's predicted domain
    counts as one more attribute.
    """
    if len(predicted) != len(wanted):
        raise ValueError(f"{len(predicted)} predictions for {len(wanted)} prompts")
    hits: dict[str, list[bool]] = {}
    for pred, want in zip(predicted, wanted, strict=True):
        for attr in applicable(want):
            hits.setdefault(attr, []).append(pred.get(attr) == want[attr])
    acc = {a: float(np.mean(v)) for a, v in hits.items()}
    acc["mean"] = float(np.mean([x for v in hits.values() for x in v]))
    acc["findings_mean"] = float(np.mean([x for a, v in hits.items() if a != "domain" for x in v]))
    return acc


def findings_hits_per_prompt(
    predicted: Sequence[dict[str, Any]], wanted: Sequence[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: how many of its findings the image shows, and how many it asks for.

    ``hits.sum() / counts.sum()`` is :func:`attribute_accuracy`'s ``findings_mean``; prompts are the unit
    the bootstrap resamples.
    """
    hits, counts = [], []
    for pred, want in zip(predicted, wanted, strict=True):
        attrs = [a for a in applicable(want) if a != "domain"]
        hits.append(sum(pred.get(a) == want[a] for a in attrs))
        counts.append(len(attrs))
    return np.asarray(hits, dtype=float), np.asarray(counts, dtype=float)


def ratio_ci(
    hits: np.ndarray, counts: np.ndarray, *, seed: int = 0, n_resamples: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI (``scipy.stats.bootstrap``, prompts resampled) of ``sum(hits) / sum(counts)``.

    ``hits`` may be a paired difference of two rows' hits (the same prompts and counts): the CI is then
    that of the difference in ``findings_mean``.
    """
    from scipy.stats import bootstrap

    h, c = np.asarray(hits, dtype=float), np.asarray(counts, dtype=float)
    if h.size < 2 or c.sum() == 0:
        return (float("nan"), float("nan"))

    def stat(hh: np.ndarray, cc: np.ndarray, axis: int = -1) -> np.ndarray:
        return hh.sum(axis=axis) / cc.sum(axis=axis)

    res = bootstrap(
        (h, c), stat, paired=True, vectorized=True, n_resamples=n_resamples, confidence_level=level,
        method="percentile", rng=seed,
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def training_captions(n_per_domain: int = 1000, seed: int = 0) -> set[str]:
    """The captions of the procedural training set ``generate_samples(n_per_domain, seed)`` (no rendering):
    the demo model was trained on ``n_per_domain=1000, seed=0``."""
    captions = set()
    for d_idx, domain in enumerate(DOMAINS):
        for i in range(n_per_domain):
            captions.add(caption_for(sample_attributes(domain, np.random.default_rng([seed, d_idx, i]))))
    return captions


def shuffle_within_domain(wanted: Sequence[dict[str, Any]], rng: np.random.Generator) -> list[int]:
    """A permutation of prompt indices that only swaps prompts of the same domain."""
    order = list(range(len(wanted)))
    for domain in DOMAINS:
        idx = [i for i, w in enumerate(wanted) if w["domain"] == domain]
        for i, j in zip(idx, rng.permutation(idx).tolist(), strict=True):
            order[i] = j
    return order


def chance_accuracy(wanted: Sequence[dict[str, Any]], seed: int = 0, rounds: int = 200) -> dict[str, float]:
    """Expected :func:`attribute_accuracy` of attribute dicts against within-domain shuffles of themselves.

    What a model that gets the domain right but ignores the findings asked for would score (with a
    perfect classifier); the shuffled-prompt control should fall toward it.
    """
    rng = np.random.default_rng(seed)
    runs = [attribute_accuracy([wanted[j] for j in shuffle_within_domain(wanted, rng)], wanted) for _ in range(rounds)]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def benchmark_prompts(
    n_per_domain: int, seed: int = 0, *, exclude: set[str] | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """Random demo prompts (attributes drawn like the dataset's) and the attributes they ask for.

    With ``exclude`` (e.g. :func:`training_captions`) only caption combinations outside it are kept, so
    the benchmark measures adherence to prompts the model never saw rather than recall of training pairs.

    Raises
    ------
    ValueError
        When too few unseen combinations exist for ``n_per_domain``.
    """
    prompts, wanted = [], []
    for d_idx, domain in enumerate(DOMAINS):
        kept, i = 0, 0
        while kept < n_per_domain:
            if i > 200 * n_per_domain + 1000:
                raise ValueError(f"only {kept} unseen {domain} prompts found; lower n_per_domain")
            attrs = sample_attributes(domain, np.random.default_rng([seed, 100 + d_idx, i]))
            i += 1
            caption = caption_for(attrs)
            if exclude is not None and caption in exclude:
                continue
            prompts.append(caption)
            wanted.append(parse_caption(caption))
            kept += 1
    return prompts, wanted


def real_classifier(n_per_domain: int = 800, seed: int = 101, epochs: int = 10) -> AttributeClassifier:
    """Train the adherence classifier on fresh procedural real frames (seed differs from the demo data)."""
    data = generate_samples(n_per_domain, seed=seed)
    return train_classifier([d[0] for d in data], [d[2] for d in data], epochs=epochs, seed=seed)


def classifier_report(model: AttributeClassifier, n_per_domain: int = 200, seed: int = 202) -> dict[str, float]:
    """Accuracy of the classifier on held-out real frames (the ceiling of the adherence score)."""
    data = generate_samples(n_per_domain, seed=seed)
    return attribute_accuracy(predict_attributes(model, [d[0] for d in data]), [d[2] for d in data])


@dataclass
class AdherenceRow:
    """One benchmark line: a sampling setting and its attribute accuracy."""

    name: str
    accuracy: dict[str, float]
    seconds_per_image: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: per prompt: findings shown and findings asked for (for CIs and paired differences)
    findings_hits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    findings_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def findings_ci(self) -> tuple[float, float]:
        """95% bootstrap CI of ``findings_mean``, prompts resampled."""
        return ratio_ci(self.findings_hits, self.findings_counts)


#: makes one image per prompt, image ``i`` from its own seed ``seeds[i]`` (no noise shared across images)
GenerateFn = Callable[[list[str], list[int]], list[Image.Image]]


def score_generator(
    name: str,
    generate_fn: GenerateFn,
    prompts: Sequence[str],
    wanted: Sequence[dict[str, Any]],
    classifier: AttributeClassifier,
    *,
    shuffle_seed: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> AdherenceRow:
    """Generate an image per prompt and score it against ``wanted``.

    Image ``i`` gets its own seed ``seed * 1_000_003 + i``, the same for every setting compared, so rows
    differ by sampler and prompt only. With ``shuffle_seed`` the generator gets the prompts shuffled within
    each domain (the control): image ``i`` is made from prompt ``order[i]`` but scored against ``wanted[i]``.
    """
    order = list(range(len(prompts)))
    if shuffle_seed is not None:
        order = shuffle_within_domain(wanted, np.random.default_rng(shuffle_seed))
    fed = [prompts[j] for j in order]
    started = time.perf_counter()
    images: list[Image.Image] = []
    seeds = [seed * 1_000_003 + i for i in range(len(fed))]
    for i in range(0, len(fed), batch_size):
        images += generate_fn(fed[i : i + batch_size], seeds[i : i + batch_size])
    seconds = (time.perf_counter() - started) / max(1, len(fed))
    predicted = predict_attributes(classifier, images)
    acc = attribute_accuracy(predicted, wanted)
    hits, counts = findings_hits_per_prompt(predicted, wanted)
    return AdherenceRow(name, acc, seconds, findings_hits=hits, findings_counts=counts)


DEMO_CLASSIFIER_FILE = "adherence_classifier.safetensors"


def save_classifier(model: AttributeClassifier, path: str | Path) -> Path:
    """Write the classifier weights as safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def load_classifier(path: str | Path) -> AttributeClassifier:
    """Load a classifier written by :func:`save_classifier`.

    Raises
    ------
    ValueError
        If ``path`` does not exist.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no adherence classifier at {path}")
    model = AttributeClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def load_demo_classifier() -> AttributeClassifier:
    """The classifier committed beside the demo model (trained by :func:`real_classifier`)."""
    return load_classifier(Path(__file__).resolve().parent / "demo_model" / DEMO_CLASSIFIER_FILE)
