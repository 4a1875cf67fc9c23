"""LoRA adapters on any diffusers pipeline that supports them (``load_lora_weights``).

A LoRA is named on the command line as ``PATH`` or ``PATH@SCALE`` (``--lora ./polyp-lora@0.8``);
``PATH`` is a ``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors`` (what
``save_lora_weights`` writes), or a hub id. Several LoRAs are combined with ``set_adapters``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.errors import InputError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA adapter: where its weights are and how strongly to apply them."""

    path: str
    scale: float = 1.0

    def to_text(self) -> str:
        """The ``PATH@SCALE`` form (``PATH`` alone when the scale is 1)."""
        return self.path if self.scale == 1.0 else f"{self.path}@{self.scale:g}"


def parse_lora(text: str) -> LoraSpec:
    """Parse ``PATH`` or ``PATH@SCALE`` into a :class:`LoraSpec`.

    Raises
    ------
    ValueError
        For an empty path or a scale that is not a finite number.
    """
    path, scale = text.strip(), 1.0
    head, sep, tail = path.rpartition("@")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            raise InputError(f"LoRA {text!r}: the part after '@' must be a number (the scale)") from None
        path = head
    if not path:
        raise InputError(f"LoRA {text!r}: no path given")
    if scale != scale or scale in (float("inf"), float("-inf")):
        raise InputError(f"LoRA {text!r}: the scale must be a finite number")
    return LoraSpec(path=path, scale=scale)


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a local path rather than a hub id (``owner/name``)."""
    if source.startswith(("/", "./", "../", "~")) or source.endswith(".safetensors"):
        return True
    return Path(source).expanduser().exists() or source.count("/") != 1


def check_lora(spec: LoraSpec) -> None:
    """Refuse a LoRA whose local file or folder does not exist, or a folder without LoRA weights.

    Raises
    ------
    ValueError
        Naming the path and what is missing.
    """
    if not looks_like_path(spec.path):
        return  # a hub id: checked when it is loaded (offline cache, see pipelines.check_hub_available)
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise InputError(f"LoRA weights not found: {path} does not exist")
    if path.is_dir() and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise InputError(f"LoRA folder {path} holds no .safetensors or .bin weights (expected {LORA_WEIGHT_NAME})")


def supports_lora(pipe: Any) -> bool:
    """Whether ``pipe`` can load LoRA weights (has the diffusers LoRA loader mixin)."""
    return callable(getattr(pipe, "load_lora_weights", None)) and callable(getattr(pipe, "set_adapters", None))


def apply_loras(pipe: Any, loras: Sequence[LoraSpec]) -> list[str]:
    """Load ``loras`` into ``pipe`` as named adapters and activate them with their scales.

    Parameters
    ----------
    pipe
        A diffusers pipeline with LoRA support.
    loras
        Adapters to load, in order; adapter names are ``lora_0``, ``lora_1``, ...

    Returns
    -------
    list[str]
        The adapter names, in order.

    Raises
    ------
    ValueError
        If the pipeline does not take LoRA weights, a path is missing, or diffusers refuses the file
        (wrong base model, not a LoRA).
    """
    if not loras:
        return []
    if not supports_lora(pipe):
        raise InputError(f"{type(pipe).__name__} does not support LoRA weights (no load_lora_weights)")
    names: list[str] = []
    for index, spec in enumerate(loras):
        check_lora(spec)
        name = f"lora_{index}"
        path = Path(spec.path).expanduser()
        kwargs: dict[str, Any] = {"adapter_name": name}
        target: str | Path = spec.path
        if path.is_file():
            target, kwargs["weight_name"] = path.parent, path.name
        elif path.is_dir():
            target = path
        try:
            pipe.load_lora_weights(target, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"cannot load LoRA {spec.path} into {type(pipe).__name__}: {exc}") from exc
        loaded = {adapter for names_ in pipe.get_list_adapters().values() for adapter in names_}
        if name not in loaded:  # diffusers only warns when no key matches: a LoRA for another model
            raise InputError(
                f"cannot load LoRA {spec.path} into {type(pipe).__name__}: none of its weights match this "
                "pipeline's layers (a LoRA made for another base model?)"
            )
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[spec.scale for spec in loras])
    return names
