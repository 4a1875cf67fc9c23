"""Feature extractors behind one interface (:class:`FeatureExtractor`): name, dim, weights_sha256, preprocess."""

from analysis.features.base import (
    COLOUR_HANDLING,
    FeatureExtractor,
    Preprocess,
    file_sha256,
    load_images,
    preprocess_batch,
    state_dict_sha256,
    to_rgb,
)
from analysis.features.hf import BiomedCLIPExtractor, CLIPExtractor, DINOv2Extractor, preprocess_from_config
from analysis.features.inception import (
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    InceptionFeatureExtractor,
)
from analysis.features.registry import DEFAULT_EXTRACTOR, load_extractor, parse_extractor_spec

__all__ = [
    "COLOUR_HANDLING",
    "DEFAULT_EXTRACTOR",
    "FID_WEIGHTS_URL",
    "BiomedCLIPExtractor",
    "CLIPExtractor",
    "DINOv2Extractor",
    "FIDInceptionV3",
    "FeatureExtractor",
    "InceptionFeatureExtractor",
    "Preprocess",
    "file_sha256",
    "load_extractor",
    "load_images",
    "parse_extractor_spec",
    "preprocess_batch",
    "preprocess_from_config",
    "state_dict_sha256",
    "to_rgb",
]
