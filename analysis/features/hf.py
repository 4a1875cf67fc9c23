"""DINOv2 and CLIP-style (incl. biomedical CLIP) extractors through transformers, by hub id or folder.

Preprocessing follows the checkpoint's ``preprocessor_config.json`` (resize, crop, mean/std) but is done in
plain torch (no torchvision, no fast image processors), and recorded in the extractor's ``preprocess``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from analysis.features.base import ImageInput, Preprocess, preprocess_batch, run_batched, state_dict_sha256
from db.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIL_RESAMPLE: dict[int, Literal["bilinear", "bicubic"]] = {2: "bilinear", 3: "bicubic"}


def preprocess_from_config(config: dict[str, Any]) -> Preprocess:
    """Translate a transformers ``preprocessor_config.json`` dict into a :class:`Preprocess`.

    Handles the CLIP/DINOv2 form (``size.shortest_edge`` + ``crop_size``) and the SigLIP form
    (``size.height``/``width`` with no centre crop).
    """
    size = config.get("size", {})
    size = {"shortest_edge": size} if isinstance(size, int) else size
    crop = config.get("crop_size", {})
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    interpolation = _PIL_RESAMPLE.get(int(config.get("resample", 3)), "bicubic")
    mean_values = [float(v) for v in config.get("image_mean", IMAGENET_MEAN)]
    std_values = [float(v) for v in config.get("image_std", IMAGENET_STD)]
    if len(mean_values) != 3 or len(std_values) != 3:
        raise InputError(f"image_mean/image_std must have 3 values, got {mean_values} / {std_values}")
    mean = (mean_values[0], mean_values[1], mean_values[2])
    std = (std_values[0], std_values[1], std_values[2])
    if config.get("do_center_crop", True) and crop and "shortest_edge" in size:
        if crop["height"] != crop["width"]:
            raise ValueError(f"only square crops are supported, got crop_size={crop}")
        return Preprocess(
            size=int(crop["height"]),
            resize="shortest_side_center_crop",
            interpolation=interpolation,
            antialias=True,
            mean=mean,
            std=std,
            shortest_side=int(size["shortest_edge"]),
        )
    side = int(size.get("height", size.get("shortest_edge", 224)))
    return Preprocess(
        size=side,
        resize="resize",
        interpolation=interpolation,
        antialias=True,
        mean=mean,
        std=std,
    )


def _read_preprocessor_config(name_or_path: str | PathLike[str]) -> dict[str, Any]:
    """``preprocessor_config.json`` from a folder or the hub cache (network only if allowed)."""
    from transformers.utils import cached_file

    local = Path(name_or_path) / "preprocessor_config.json"
    path = local if local.is_file() else cached_file(str(name_or_path), "preprocessor_config.json")
    if path is None:
        raise ValueError(f"{name_or_path} has no preprocessor_config.json")
    return json.loads(Path(path).read_text())


def _short_name(name_or_path: str | PathLike[str]) -> str:
    return Path(str(name_or_path).rstrip("/")).name.lower()


class DINOv2Extractor:
    """DINOv2 CLS-token features (after the final layer norm), ``dim`` = hidden size (768 for base)."""

    def __init__(
        self, model: torch.nn.Module, preprocess: Preprocess, name: str, backbone: str, batch_size: int = 32
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.name = name
        self.backbone = backbone
        self.batch_size = batch_size
        self.dim = int(model.config.hidden_size)
        self.weights_sha256 = state_dict_sha256(model)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | PathLike[str], name: str | None = None, batch_size: int = 32
    ) -> DINOv2Extractor:
        """Load e.g. ``facebook/dinov2-base`` (hub id, offline from the cache when HF_HUB_OFFLINE=1) or a folder."""
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(name_or_path))
        preprocess = preprocess_from_config(_read_preprocessor_config(name_or_path))
        return cls(model, preprocess, name or _short_name(name_or_path), str(name_or_path), batch_size)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).pooler_output

    def __call__(self, images: ImageInput) -> np.ndarray:
        """Features (N, dim) in float64."""
        return run_batched(self._forward, preprocess_batch(images, self.preprocess), self.batch_size)


class CLIPExtractor:
    """A dual encoder (CLIP, SigLIP, biomedical CLIPs in transformers format) with L2-normalised embeddings.

    Image embeddings are L2-normalised like the reference CMMD implementation's CLIP embeddings; ``dim`` is
    the projection size. :meth:`embed_texts` gives text embeddings in the same space for alignment.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Preprocess,
        name: str,
        backbone: str,
        tokenizer: Any | None = None,
        batch_size: int = 32,
    ) -> None:
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(model, method):
                raise ValueError(f"{backbone} is not a dual encoder: {type(model).__name__} lacks {method}()")
        self.model = model.eval()
        self.preprocess = preprocess
        self.name = name
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dim = int(model.config.projection_dim)
        self.weights_sha256 = state_dict_sha256(model)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | PathLike[str], name: str | None = None, batch_size: int = 32
    ) -> CLIPExtractor:
        """Load a transformers dual encoder and its tokenizer by hub id or folder."""
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(str(name_or_path))
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        preprocess = preprocess_from_config(_read_preprocessor_config(name_or_path))
        return cls(model, preprocess, name or _short_name(name_or_path), str(name_or_path), tokenizer, batch_size)

    @staticmethod
    def _unit(x: torch.Tensor | Any) -> torch.Tensor:
        emb = x if isinstance(x, torch.Tensor) else x.pooler_output
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._unit(self.model.get_image_features(pixel_values=pixels))

    def __call__(self, images: ImageInput) -> np.ndarray:
        """Unit-norm image embeddings (N, dim) in float64."""
        return run_batched(self._forward, preprocess_batch(images, self.preprocess), self.batch_size)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm text embeddings (N, dim) in float64 (truncated to the model's context length)."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name} was built without a tokenizer; pass tokenizer= to embed texts")
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty sequence of strings")
        max_len = int(self.model.config.text_config.max_position_embeddings)
        outs = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding="max_length" if "siglip" in type(self.model).__name__.lower() else True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                )
                kwargs = {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
                outs.append(self._unit(self.model.get_text_features(**kwargs)).double().numpy())
        return np.concatenate(outs, axis=0)


class BiomedCLIPExtractor:
    """BiomedCLIP image features as the MEDVQA-GI 2025 organisers take them: the CLS hidden state.

    ``__call__`` returns ``vision_model(pixel_values).last_hidden_state[:, 0, :]``: the CLS token after the
    last transformer block, before the final layer norm and the projection, and NOT L2-normalised (768-d for
    ViT-B/16). Load the organisers' checkpoint (``ikim-uk-essen/BiomedCLIP_ViT_patch16_224``, a transformers
    port; ``trust_remote_code=True`` is needed for it and runs the checkpoint's own code) or any CLIP-style
    transformers folder. The open_clip checkpoint (``microsoft/BiomedCLIP-...``) needs open_clip, which needs
    torchvision and is not installed here: convert it to transformers format first.
    """

    def __init__(
        self, model: torch.nn.Module, preprocess: Preprocess, name: str, backbone: str, batch_size: int = 32
    ) -> None:
        # A dual encoder (CLIPModel) or a vision-only wrapper (CLIPVisionModel) keeps the ViT in .vision_model.
        self.vision = getattr(model, "vision_model", model).eval()
        self.model = model.eval()
        self.preprocess = preprocess
        self.name = name
        self.backbone = backbone
        self.batch_size = batch_size
        config = getattr(model.config, "vision_config", model.config)
        self.dim = int(config.hidden_size)
        self.weights_sha256 = state_dict_sha256(model)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | PathLike[str],
        name: str = "biomedclip-cls",
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> BiomedCLIPExtractor:
        """Load by hub id (offline from the cache when HF_HUB_OFFLINE=1) or local folder."""
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        preprocess = preprocess_from_config(_read_preprocessor_config(name_or_path))
        return cls(model, preprocess, name, str(name_or_path), batch_size)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixels).last_hidden_state[:, 0, :]

    def __call__(self, images: ImageInput) -> np.ndarray:
        """CLS hidden states (N, dim) in float64, unnormalised."""
        return run_batched(self._forward, preprocess_batch(images, self.preprocess), self.batch_size)
