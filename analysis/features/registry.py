"""One place that turns an extractor spec string into a :class:`FeatureExtractor`: :func:`load_extractor`.

Specs (``report --extractor``, and the spec a comparison config names):

- ``handcrafted`` (default): committed, weight-free image statistics; always works offline; not FID.
- ``inception``: the standard FID InceptionV3 weights, from ``$MEDSYNTH_INCEPTION_WEIGHTS`` or the torch hub
  cache, else downloaded (unless ``HF_HUB_OFFLINE``/``MEDSYNTH_OFFLINE`` is set); ``inception:PATH`` a local
  ``pt_inception-2015-12-05-6726825d.pth``.
- ``biomedclip:HUB_ID_OR_FOLDER`` (CLS hidden state, MEDVQA-GI 2025), ``dinov2:...``, ``clip:...``
  (transformers checkpoints, offline from the hub cache or a folder).
- ``tiny-clip``, ``tiny-dinov2``, ``tiny-biomedclip``: random weights, offline smoke runs only.

A missing download or checkpoint is one :class:`~db.errors.InputError` that says how to give the weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from analysis.features.base import FeatureExtractor
from analysis.features.inception import FID_WEIGHTS_URL
from db.errors import InputError

__all__ = ["DEFAULT_EXTRACTOR", "EXTRACTOR_KINDS", "ExtractorSpec", "load_extractor", "parse_extractor_spec"]

logger = logging.getLogger(__name__)

DEFAULT_EXTRACTOR = "handcrafted"
EXTRACTOR_KINDS = ("handcrafted", "inception", "biomedclip", "dinov2", "clip", "tiny-clip", "tiny-dinov2",
                   "tiny-biomedclip")  # fmt: skip
_NEEDS_ARG = ("biomedclip", "dinov2", "clip")
INCEPTION_FILE = Path(FID_WEIGHTS_URL).name
INCEPTION_HOWTO = (
    f"download {FID_WEIGHTS_URL} once (on a machine with internet) and pass "
    f"--extractor inception:/path/to/{INCEPTION_FILE} (or set MEDSYNTH_INCEPTION_WEIGHTS), "
    f"or use the offline default --extractor {DEFAULT_EXTRACTOR}"
)


@dataclass(frozen=True)
class ExtractorSpec:
    """A parsed spec: ``kind`` and its argument (a path or hub id, or None)."""

    kind: str
    arg: str | None

    @property
    def random_weights(self) -> bool:
        """True for the tiny random extractors (never numbers to report)."""
        return self.kind.startswith("tiny-")


def parse_extractor_spec(spec: str) -> ExtractorSpec:
    """Split ``kind[:arg]`` and check the kind (see the module docstring)."""
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in EXTRACTOR_KINDS or (kind in _NEEDS_ARG and not arg):
        raise InputError(
            f"unknown extractor {spec!r}; use handcrafted (offline default), inception[:WEIGHTS.pth], "
            "biomedclip:HUB_ID_OR_FOLDER, dinov2:HUB_ID_OR_FOLDER, clip:HUB_ID_OR_FOLDER, or tiny-clip / "
            "tiny-dinov2 / tiny-biomedclip (random weights, smoke runs only)"
        )
    if arg and kind in ("handcrafted", "tiny-clip", "tiny-dinov2", "tiny-biomedclip"):
        raise InputError(f"extractor {kind!r} takes no argument, got {spec!r}")
    return ExtractorSpec(kind, arg or None)


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "MEDSYNTH_OFFLINE")
    )


def _inception(path: str | None) -> FeatureExtractor:
    import torch

    from analysis.features.inception import InceptionFeatureExtractor

    if path is None:
        path = os.environ.get("MEDSYNTH_INCEPTION_WEIGHTS") or None
    if path is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if cached.is_file():
            path = str(cached)
    if path is not None:
        if not Path(path).is_file():
            raise InputError(f"Inception weights not found at {path}; {INCEPTION_HOWTO}")
        return InceptionFeatureExtractor.from_pretrained(path)
    if _offline():
        raise InputError(f"the FID Inception weights are not on this machine and downloads are off; {INCEPTION_HOWTO}")
    try:
        return InceptionFeatureExtractor.from_pretrained(None)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a truncated download a RuntimeError
        logger.warning("Inception weights download failed: %s", error)
        raise InputError(f"could not download the FID Inception weights ({error}); {INCEPTION_HOWTO}") from None


def _transformers(kind: str, name_or_path: str) -> FeatureExtractor:
    from analysis.features.hf import BiomedCLIPExtractor, CLIPExtractor, DINOv2Extractor

    try:
        if kind == "biomedclip":
            return BiomedCLIPExtractor.from_pretrained(name_or_path)
        if kind == "dinov2":
            return DINOv2Extractor.from_pretrained(name_or_path)
        return CLIPExtractor.from_pretrained(name_or_path)
    except OSError as error:  # not in the cache / no such folder / no network
        raise InputError(
            f"could not load the {kind} checkpoint {name_or_path!r} ({str(error).splitlines()[0]}); download it "
            f"once with `huggingface-cli download {name_or_path}` on a machine with internet, or pass "
            f"--extractor {kind}:/path/to/a/local/folder"
        ) from None


def load_extractor(spec: str = DEFAULT_EXTRACTOR) -> FeatureExtractor:
    """Build the feature extractor a spec names (see the module docstring); errors are one InputError."""
    parsed = parse_extractor_spec(spec)
    logger.info("loading feature extractor %s", spec)
    if parsed.kind == "handcrafted":
        from analysis.features.handcrafted import HandcraftedExtractor

        return HandcraftedExtractor()
    if parsed.kind == "inception":
        return _inception(parsed.arg)
    if parsed.random_weights:
        from analysis.features import tiny

        if parsed.kind == "tiny-clip":
            return tiny.tiny_clip()
        if parsed.kind == "tiny-dinov2":
            return tiny.tiny_dinov2()
        return tiny.tiny_biomedclip()
    if parsed.arg is None:  # parse_extractor_spec guarantees an argument for these kinds
        raise AssertionError(parsed)
    return _transformers(parsed.kind, parsed.arg)
