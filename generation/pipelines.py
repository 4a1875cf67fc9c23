"""Load any diffusers text-to-image pipeline as a MedSynth model; schedulers by name; a warm LRU cache.

A model is a :class:`ModelSpec`: its kind (``diffusers`` for any pipeline on the hub or in a
``save_pretrained`` folder, ``msdm`` for our own, ``folder`` for images generated elsewhere), its
source, LoRA adapters, dtype and CPU offload. :func:`load_pipeline` resolves the pipeline class from
``model_index.json`` (``DiffusionPipeline.from_pretrained``), so FLUX, Kandinsky 2.2/3, Stable
Diffusion 1/2/XL/3, PixArt and any other text-to-image pipeline load the same way.

Offline (``HF_HUB_OFFLINE=1``) a hub id that is not in the local cache is refused up front with a
message naming the id. Online, one ``HEAD`` request for its ``model_index.json`` (10 s timeout) comes
first, so a gated repository (licence not accepted / not logged in), a missing one, one that is no
diffusers pipeline, or an unreachable hub is one line naming the id and what to do, not a traceback
minutes later (an unreachable hub with the id in the local cache only logs a warning). Every other
unusable source (missing folder, no ``model_index.json``) is a ``ValueError`` naming it. Stable
Diffusion's NSFW safety checker is not loaded: it blanks images it flags, and medical images (skin,
anatomy) are flagged often, which would silently corrupt a study. LoRA adapters go on through
:func:`generation.lora.apply_loras`; Kandinsky 2.2/3 adapters made by ``train lora`` are injected with peft.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from db.errors import InputError, NetworkError
from generation.devices import dtype_name, parse_dtype, resolve_device
from generation.lora import LoraSpec, apply_loras, check_lora, looks_like_path, parse_lora
from generation.presets import PRESETS, Family, Preset, detect_family

log = logging.getLogger(__name__)

ModelKindName = Literal["diffusers", "msdm", "folder"]
MODEL_KINDS: tuple[str, ...] = ("diffusers", "msdm", "folder")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ModelSpec:
    """What ``models add`` registers: enough to load the same pipeline again.

    Attributes
    ----------
    name
        Registered name.
    kind
        ``diffusers``, ``msdm`` or ``folder``.
    source
        Hub id or folder (``save_pretrained`` output; for ``folder``, a folder of images).
    loras
        LoRA adapters applied on top, in order.
    dtype
        ``bf16``/``fp16``/``fp32``; ``None`` = device default (fp32 on CPU).
    offload
        Use ``enable_model_cpu_offload`` on CUDA (low VRAM; slower).
    """

    name: str
    kind: ModelKindName
    source: str
    loras: tuple[LoraSpec, ...] = ()
    dtype: str | None = None
    offload: bool = False

    def parameters(self) -> dict[str, Any]:
        """The JSON ``parameters`` stored with the registered model."""
        return {"lora": [lora.to_text() for lora in self.loras], "dtype": self.dtype, "offload": self.offload}

    @classmethod
    def from_record(cls, name: str, kind: str, source: str, parameters: dict[str, Any] | None) -> ModelSpec:
        """Rebuild a spec from a registered model's ``name``, ``kind``, ``source`` and ``parameters``."""
        params = parameters or {}
        loras = params.get("lora") or []
        if isinstance(loras, str):
            loras = [loras]
        kind_text = getattr(kind, "value", kind)
        return cls(
            name=name,
            kind=_check_kind(str(kind_text)),
            source=source,
            loras=tuple(parse_lora(str(text)) for text in loras),
            dtype=params.get("dtype"),
            offload=bool(params.get("offload", False)),
        )

    @classmethod
    def from_model(cls, model: Any) -> ModelSpec:
        """Rebuild a spec from a ``db.models.Model`` row (anything with name/kind/source/parameters)."""
        return cls.from_record(model.name, model.kind, model.source, model.parameters)


def _check_kind(kind: str) -> ModelKindName:
    if kind not in MODEL_KINDS:
        raise InputError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    return kind  # type: ignore[return-value]


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``), read now, not at import."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def check_hub_available(repo_id: str) -> None:
    """Refuse a malformed hub id, or, offline, one whose ``model_index.json`` is not in the local cache.

    Raises
    ------
    ValueError
        Naming the id and what is wrong.
    """
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InputError(f"{repo_id!r} is neither an existing folder nor a valid hub id (owner/name)") from None
    if hub_offline():
        cached = try_to_load_from_cache(repo_id, "model_index.json")
        if not isinstance(cached, str):
            raise NetworkError(
                f"hub model {repo_id!r} is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE=1): download it on a connected machine (huggingface-cli download "
                f"{repo_id}) or unset HF_HUB_OFFLINE"
            )
        return
    _probe_hub(repo_id)


#: Seconds the online check of a hub id waits for the hub (huggingface_hub's own etag timeout).
HUB_PROBE_TIMEOUT_S = 10.0


def _probe_hub(repo_id: str) -> None:
    """One ``HEAD`` request for ``repo_id``'s ``model_index.json``; its failures as one-line errors.

    Raises
    ------
    InputError
        Gated (no access with the current token), no such repository, or no ``model_index.json``.
    NetworkError
        The hub cannot be reached and the id is not in the local cache.
    """
    import huggingface_hub
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    url = huggingface_hub.hf_hub_url(repo_id, "model_index.json")
    try:
        huggingface_hub.get_hf_file_metadata(url, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        raise InputError(
            f"hub model {repo_id!r} is gated: accept its licence at https://huggingface.co/{repo_id} with your "
            "account, then log in here (hf auth login, or set HF_TOKEN); or use a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(
            f"hub model {repo_id!r} does not exist (or is private: log in with hf auth login or set HF_TOKEN)"
        ) from None
    except EntryNotFoundError:
        raise InputError(f"hub model {repo_id!r} has no model_index.json: it is not a diffusers pipeline") from None
    except HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NetworkError(f"the Hugging Face hub refused {repo_id!r}: {first}") from None
    except (OSError, huggingface_hub.errors.HTTPError) as exc:  # no connection, DNS, timeout, proxy
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str):
            log.warning("cannot reach the Hugging Face hub (%s); using the cached copy of %s", type(exc).__name__,
                        repo_id)  # fmt: skip
            return
        raise NetworkError(
            f"cannot reach the Hugging Face hub to fetch {repo_id!r} ({type(exc).__name__}) and it is not in the "
            "local cache: check the network or proxy, or download it on a connected machine"
        ) from None


def check_model_spec(spec: ModelSpec) -> None:
    """Validate a spec before it is registered or loaded: kind, source, LoRA paths, dtype.

    Raises
    ------
    ValueError
        Naming the problem (missing folder, folder without ``model_index.json``, empty image folder,
        hub id unavailable offline, missing LoRA file, unknown dtype).
    """
    _check_kind(spec.kind)
    if not spec.source:
        raise InputError(f"model {spec.name!r}: a --source (hub id or folder) is required")
    if spec.dtype is not None:
        parse_dtype(spec.dtype, torch.device("cpu"))
    if spec.kind == "folder":
        folder = Path(spec.source).expanduser()
        if not folder.is_dir():
            raise InputError(f"model {spec.name!r}: image folder {folder} does not exist")
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
            raise InputError(f"model {spec.name!r}: image folder {folder} holds no images")
        if spec.loras:
            raise InputError(f"model {spec.name!r}: LoRA adapters do not apply to a folder of images")
        return
    if looks_like_path(spec.source):
        folder = Path(spec.source).expanduser()
        if not folder.is_dir():
            raise InputError(f"model {spec.name!r}: folder {folder} does not exist")
        if not (folder / "model_index.json").is_file():
            raise InputError(
                f"model {spec.name!r}: {folder} has no model_index.json (not a diffusers save_pretrained folder)"
            )
    else:
        check_hub_available(spec.source)
    for lora in spec.loras:
        check_lora(lora)


@dataclass
class LoadedPipeline:
    """A loaded pipeline with what produced it: spec, device, dtype, family and its preset."""

    pipe: Any
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    family: Family
    adapters: list[str] = field(default_factory=list)

    @property
    def preset(self) -> Preset:
        """The sampling defaults of this pipeline's family."""
        return PRESETS[self.family]

    def describe(self) -> dict[str, Any]:
        """What is recorded with each image about the model setup."""
        return {
            "pipeline": type(self.pipe).__name__,
            "family": self.family.value,
            "source": self.spec.source,
            "lora": [lora.to_text() for lora in self.spec.loras],
            "dtype": dtype_name(self.dtype),
            "offload": self.spec.offload,
        }


def text_to_image_class(class_name: str) -> type | None:
    """The text-to-image pipeline class for a saved pipeline class, as ``AutoPipelineForText2Image`` picks it.

    Where a checkpoint's own class is not the text-to-image entry point (Kandinsky 2.2's decoder folder
    names ``KandinskyV22Pipeline``, which needs image embeddings; the text-to-image pipeline is
    ``KandinskyV22CombinedPipeline``, which loads the prior too), this returns the latter. ``None`` for
    classes the auto mapping does not know (new or custom pipelines load as saved).
    """
    try:
        from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING, _get_task_class
    except ImportError:  # the auto-pipeline internals moved: load every pipeline as saved
        return None
    return _get_task_class(AUTO_TEXT2IMAGE_PIPELINES_MAPPING, class_name, throw_error_if_not_exist=False)


def _from_pretrained(source: str, dtype: torch.dtype) -> Any:
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = {"dtype": dtype}
    index_path = Path(source).expanduser() / "model_index.json"
    if index_path.is_file():
        components = json.loads(index_path.read_text(encoding="utf-8"))
    else:
        try:
            components = DiffusionPipeline.load_config(source)
        except OSError as exc:  # not cached and the hub is off or unreachable, or no such repository
            raise _hub_error(source, exc) from exc
    if "safety_checker" in components:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if hub_offline():
        kwargs["local_files_only"] = True
    pipeline_cls: Any = text_to_image_class(str(components.get("_class_name", ""))) or DiffusionPipeline
    try:
        return pipeline_cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        if not looks_like_path(source):
            raise _hub_error(source, exc) from exc
        raise InputError(f"cannot load a diffusers pipeline from {source!r}: {exc}") from exc


def _hub_error(source: str, exc: OSError) -> InputError | NetworkError:
    """A one-line error for a hub model that could not be fetched: offline, unreachable, or not on the hub."""
    if hub_offline():
        return NetworkError(
            f"hub model {source!r} is not fully in the local cache and the hub is offline (HF_HUB_OFFLINE=1); "
            "download it on a machine with network access, or use a local folder"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "connect" in first.lower() or "resolve" in first.lower() or "timed out" in first.lower():
        return NetworkError(f"cannot reach the Hugging Face hub to fetch {source!r}: {first}")
    return InputError(f"cannot load a diffusers pipeline from hub id {source!r}: {first}")


def _load_msdm(source: str) -> Any:
    from generation.msdm.pipeline import load_msdm_pipeline

    return load_msdm_pipeline(Path(source).expanduser(), device="cpu")


def load_pipeline(spec: ModelSpec, device: str | torch.device = "auto", dtype: str | None = None) -> LoadedPipeline:
    """Load ``spec`` onto ``device``, with its LoRA adapters, ready to generate.

    Parameters
    ----------
    spec
        The model to load (``diffusers`` or ``msdm`` kind).
    device
        ``auto`` (CUDA if available), ``cuda``, ``cuda:N`` or ``cpu``.
    dtype
        Overrides ``spec.dtype``; both ``None`` = device default (fp32 on CPU).

    Raises
    ------
    ValueError
        For a ``folder`` model (nothing to load), or any problem :func:`check_model_spec` names.
    """
    check_model_spec(spec)
    if spec.kind == "folder":
        raise InputError(f"model {spec.name!r} is a folder of images made elsewhere: it is imported, not generated")
    target = resolve_device(device)
    torch_dtype = parse_dtype(dtype or spec.dtype, target)
    if spec.kind == "msdm":
        pipe = _load_msdm(spec.source).to(dtype=torch_dtype)
    else:
        pipe = _from_pretrained(spec.source, torch_dtype)
    adapters = apply_loras(pipe, spec.loras)
    if spec.offload and target.type == "cuda":
        pipe.enable_model_cpu_offload(device=target)
    else:
        pipe = pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    remember_scheduler(pipe)
    family = detect_family(type(pipe).__name__, spec.source, spec.kind)
    log.info("loaded model %s (%s) on %s as %s", spec.name, family, target, torch_dtype)
    return LoadedPipeline(pipe=pipe, spec=spec, device=target, dtype=torch_dtype, family=family, adapters=adapters)


# ---------------------------------------------------------------------------------------------- schedulers

#: Scheduler names accepted by ``--scheduler``: diffusers class name and extra config.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++-sde": ("DPMSolverSDEScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
}

_BASE_SCHEDULERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def remember_scheduler(pipe: Any) -> None:
    """Keep the pipeline's own scheduler so ``set_scheduler(pipe, None)`` can restore it."""
    if pipe not in _BASE_SCHEDULERS:
        _BASE_SCHEDULERS[pipe] = pipe.scheduler


def scheduler_names(pipe: Any) -> list[str]:
    """The ``--scheduler`` names compatible with ``pipe``'s scheduler."""
    base = _BASE_SCHEDULERS.get(pipe, pipe.scheduler)
    allowed = {cls.__name__ for cls in getattr(base, "compatibles", [])} | {type(base).__name__}
    return [name for name, (cls_name, _) in SCHEDULERS.items() if cls_name in allowed]


def set_scheduler(pipe: Any, name: str | None) -> str:
    """Swap ``pipe``'s scheduler to ``name`` (``from_config`` of its own); ``None`` restores the original.

    Returns
    -------
    str
        The class name of the scheduler now in use (recorded with each image).

    Raises
    ------
    ValueError
        For an unknown name, or one not compatible with the pipeline (e.g. ``ddim`` on FLUX).
    """
    import diffusers

    remember_scheduler(pipe)
    base = _BASE_SCHEDULERS[pipe]
    if name is None:
        pipe.scheduler = base
        return type(base).__name__
    key = name.strip().lower()
    if key not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    if key not in scheduler_names(pipe):
        raise InputError(
            f"scheduler {name!r} does not fit {type(pipe).__name__} (uses {type(base).__name__}); "
            f"compatible: {', '.join(scheduler_names(pipe))}"
        )
    cls_name, extra = SCHEDULERS[key]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(base.config, **extra)
    return cls_name


# ---------------------------------------------------------------------------------------------- the cache


class PipelineCache:
    """A thread-safe LRU of loaded pipelines keyed by (spec, device, dtype), for the live demo / worker.

    Loading happens under the lock, so two requests for one model load it once.
    """

    def __init__(self, capacity: int = 2) -> None:
        if capacity < 1:
            raise ValueError(f"pipeline cache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[tuple[Any, ...], LoadedPipeline] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(spec: ModelSpec, device: str | torch.device, dtype: str | None) -> tuple[Any, ...]:
        """The cache key of a spec loaded on ``device`` with ``dtype``."""
        target = resolve_device(device)
        return (spec, str(target), str(parse_dtype(dtype or spec.dtype, target)))

    def get(self, spec: ModelSpec, device: str | torch.device = "auto", dtype: str | None = None) -> LoadedPipeline:
        """The loaded pipeline for ``spec``, loading it (and evicting the least recently used) if needed."""
        key = self.key(spec, device, dtype)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            while len(self._items) >= self.capacity:  # free memory before loading the next one
                self._items.popitem(last=False)
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            loaded = load_pipeline(spec, device, dtype)
            self._items[key] = loaded
            return loaded

    def loaded_keys(self) -> list[tuple[Any, ...]]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Drop every pipeline."""
        with self._lock:
            self._items.clear()


def build_spec(
    name: str,
    kind: str,
    source: str,
    lora: Sequence[str] = (),
    dtype: str | None = None,
    offload: bool = False,
) -> ModelSpec:
    """A validated :class:`ModelSpec` from ``models add`` arguments (``--lora`` as ``PATH[@SCALE]``).

    Raises
    ------
    ValueError
        As :func:`check_model_spec`.
    """
    if source and Path(source).expanduser().exists():
        # A local folder is stored absolute, so the model loads from any working directory later.
        source = str(Path(source).expanduser().resolve())
    spec = ModelSpec(
        name=name,
        kind=_check_kind(kind),
        source=source,
        loras=tuple(_absolute_lora(parse_lora(text)) for text in lora),
        dtype=dtype,
        offload=offload,
    )
    check_model_spec(spec)
    return spec


def _absolute_lora(spec: LoraSpec) -> LoraSpec:
    """A LoRA given as a local path, made absolute (hub ids are left as they are)."""
    path = Path(spec.path).expanduser()
    return dataclasses.replace(spec, path=str(path.resolve())) if path.exists() else spec
