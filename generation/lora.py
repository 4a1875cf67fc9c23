"""LoRA adapters on any diffusers pipeline that supports them (``load_lora_weights``).

A LoRA is named on the command line as ``PATH`` or ``PATH@SCALE`` (``--lora ./polyp-lora@0.8``);
``PATH`` is a ``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors`` (what
``save_lora_weights`` writes), or a hub id. Several LoRAs are combined with ``set_adapters``.

Pipelines without a diffusers LoRA loader (Kandinsky 2.2 and 3 in diffusers 0.42) take adapters that
:func:`save_peft_lora` wrote: a ``pytorch_lora_weights.safetensors`` whose keys are
``COMPONENT.<peft key>`` and whose metadata (``medsynth_peft_lora``) holds each component's rank, alpha
and exact adapted module names. :func:`apply_loras` injects them with peft
(``inject_adapter_in_model`` + ``set_peft_model_state_dict``), so the same adapter loads into a fresh
pipeline with no training code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.errors import InputError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: safetensors metadata key of adapters saved by :func:`save_peft_lora`.
PEFT_LORA_METADATA = "medsynth_peft_lora"


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


def save_peft_lora(folder: str | Path, modules: Mapping[str, Any], configs: Mapping[str, Any]) -> Path:
    """Save the ``default`` peft LoRA of each pipeline component for :func:`apply_loras`.

    Parameters
    ----------
    folder
        Output folder; the file is ``folder/pytorch_lora_weights.safetensors``.
    modules
        Component name (``unet``) -> the module that carries the injected adapter.
    configs
        Component name -> its ``peft.LoraConfig`` (rank and alpha are recorded).

    Returns
    -------
    Path
        The written file.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    meta: dict[str, dict[str, Any]] = {}
    for component, module in modules.items():
        state = get_peft_model_state_dict(module, adapter_name="default")
        targets = sorted({key.split(".lora_")[0] for key in state})
        config = configs[component]
        meta[component] = {"r": int(config.r), "lora_alpha": float(config.lora_alpha), "target_modules": targets}
        tensors.update({f"{component}.{key}": value.detach().contiguous().cpu() for key, value in state.items()})
    path = Path(folder) / LORA_WEIGHT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", PEFT_LORA_METADATA: json.dumps(meta)})
    return path


def _weights_file(spec: LoraSpec) -> Path | None:
    """The local safetensors file of ``spec`` (``None`` for a hub id or a folder without the standard name)."""
    if not looks_like_path(spec.path):
        return None
    path = Path(spec.path).expanduser()
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    return path if path.is_file() and path.suffix == ".safetensors" else None


def peft_lora_metadata(spec: LoraSpec) -> dict[str, dict[str, Any]] | None:
    """The per-component settings of an adapter saved by :func:`save_peft_lora` (``None`` for other files)."""
    from safetensors import safe_open

    path = _weights_file(spec)
    if path is None:
        return None
    with safe_open(str(path), "pt") as handle:
        text = (handle.metadata() or {}).get(PEFT_LORA_METADATA)
    return json.loads(text) if text else None


def _apply_peft_loras(pipe: Any, loras: Sequence[LoraSpec]) -> list[str]:
    """Inject :func:`save_peft_lora` adapters into ``pipe``'s components and activate them with their scales."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    names: list[str] = []
    touched: dict[str, Any] = {}
    for index, spec in enumerate(loras):
        meta = peft_lora_metadata(spec)
        path = _weights_file(spec)
        if meta is None or path is None:
            raise InputError(
                f"cannot load LoRA {spec.path} into {type(pipe).__name__}: this pipeline has no diffusers LoRA "
                "loader, so only adapters saved by MedSynth's train lora (peft metadata) can be loaded"
            )
        name = f"lora_{index}"
        tensors = load_file(str(path))
        for component, settings in meta.items():
            module = getattr(pipe, component, None)
            if module is None:
                raise InputError(f"cannot load LoRA {spec.path}: {type(pipe).__name__} has no {component}")
            config = LoraConfig(
                r=int(settings["r"]), lora_alpha=float(settings["lora_alpha"]),
                target_modules=list(settings["target_modules"]),
            )  # fmt: skip
            try:
                inject_adapter_in_model(config, module, adapter_name=name)
            except ValueError as exc:  # no target module found: an adapter for another model
                raise InputError(f"cannot load LoRA {spec.path} into {type(pipe).__name__}: {exc}") from exc
            prefix = f"{component}."
            state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
            try:
                result = set_peft_model_state_dict(module, state, adapter_name=name)
            except RuntimeError as exc:  # shape mismatch: same names, another model size
                raise InputError(f"cannot load LoRA {spec.path} into {type(pipe).__name__}: {exc}") from exc
            if result.unexpected_keys:
                raise InputError(
                    f"cannot load LoRA {spec.path} into {type(pipe).__name__}: {len(result.unexpected_keys)} "
                    f"weights match no layer (e.g. {result.unexpected_keys[0]})"
                )
            touched[component] = module
        names.append(name)
    for module in touched.values():
        for layer in module.modules():
            if isinstance(layer, LoraLayer):
                layer.set_adapter([n for n in names if n in layer.lora_A])
                for n, spec in zip(names, loras, strict=True):
                    layer.set_scale(n, spec.scale)
        module.requires_grad_(False)
    return names


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
    if any(peft_lora_metadata(spec) is not None for spec in loras):
        # Kandinsky3Pipeline inherits load_lora_weights, but its UNet has no load_lora_adapter
        return _apply_peft_loras(pipe, loras)
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
