"""Tiny random-weight extractors (seeded, offline) for tests and smoke runs. Never for reported metrics."""

from __future__ import annotations

import torch

from analysis.features.base import Preprocess
from analysis.features.hf import IMAGENET_MEAN, IMAGENET_STD, BiomedCLIPExtractor, CLIPExtractor, DINOv2Extractor

TINY_VOCAB = [
    "<s>",
    "<pad>",
    "</s>",
    "<unk>",
    "a",
    "an",
    "the",
    "of",
    "with",
    "and",
    "image",
    "generate",
    "containing",
    "showing",
    "polyp",
    "colon",
    "colonoscopy",
    "ulcerative",
    "colitis",
    "oesophagitis",
    "esophagitis",
    "instrument",
    "chest",
    "x-ray",
    "radiograph",
    "ct",
    "mri",
    "scan",
    "lung",
    "heart",
    "fracture",
    "normal",
    "pneumonia",
    "effusion",
]
TINY_SIZE = 32


def _tiny_preprocess() -> Preprocess:
    return Preprocess(
        size=TINY_SIZE,
        resize="shortest_side_center_crop",
        interpolation="bicubic",
        antialias=True,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def tiny_word_tokenizer() -> object:
    """A word-level ``PreTrainedTokenizerFast`` over :data:`TINY_VOCAB` (``<s> ... </s>``, ids 0 and 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_clip(seed: int = 0, projection_dim: int = 16) -> CLIPExtractor:
    """A 1-layer random CLIP (32-px images, 8-px patches) with a word-level tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": len(TINY_VOCAB),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 24,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": TINY_SIZE,
        "patch_size": 8,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return CLIPExtractor(model, _tiny_preprocess(), "clip-tiny-random", "tiny random CLIP", tiny_word_tokenizer())


def tiny_dinov2(seed: int = 0, hidden_size: int = 16) -> DINOv2Extractor:
    """A 1-layer random DINOv2 (32-px images, 8-px patches); ``dim`` = ``hidden_size``."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        image_size=TINY_SIZE,
        patch_size=8,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Dinov2Model(config)
    return DINOv2Extractor(model, _tiny_preprocess(), "dinov2-tiny-random", "tiny random DINOv2")


def tiny_biomedclip(seed: int = 0, hidden_size: int = 24) -> BiomedCLIPExtractor:
    """A 1-layer random CLIP vision tower (32-px images) read as BiomedCLIP: CLS hidden state, ``dim`` = hidden."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=TINY_SIZE,
        patch_size=8,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
    return BiomedCLIPExtractor(model, _tiny_preprocess(), "biomedclip-tiny-random", "tiny random CLIP vision tower")
