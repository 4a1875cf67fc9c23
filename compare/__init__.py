"""The comparison run: train the contenders, generate for held-out prompts, score quality and cost, report.

``python app.py compare CONFIG.toml`` (and the worker's ``compare`` job) call :func:`run_comparison`. One TOML
config names a dataset and how its held-out prompts are chosen, the contenders (MSDM trained from a named
config, LoRA fine-tunes of named bases, any registered model), the generation settings, the metrics and
optionally the blinded study. The run is a list of stages, in this order::

    split                      held-out and training cases
    train:<c>                  MSDM or LoRA training, then the model is registered   (trained contenders)
    generate:<c>               images for every held-out case, recorded in the database
    cost:<c>                   parameters, FLOPs per image, seconds and peak memory per image
    metrics                    FD / KID / CMMD of each contender against the real held-out images, alignment
    report                     report.csv and report.html, side by side
    study                      the blinded study of those images                     (with a [study] table)

Every finished stage is written to ``manifest.json`` in the output folder and to the database's stage cache
(``compare_stages``, :mod:`db.stages`), with a fingerprint of everything it depends on. A rerun skips a
stage whose fingerprint is unchanged; a changed setting redoes that stage and every stage after it that
depends on it. Inside a stage, training resumes from its last checkpoint and generation from the images
already recorded, so an interrupted run loses at most one checkpoint interval. See ``docs/compare.md``.

One concept per module: :mod:`compare.config` (the TOML and its dataclasses), :mod:`compare.stages` (what each
stage does), :mod:`compare.manifest` (the stage cache), :mod:`compare.run` (the order and the skipping),
:mod:`compare.report` (the side-by-side report) and :mod:`compare.jobs` (the worker's handler). This package
imports ``generation`` (to make images), ``analysis`` (features and metrics) and ``db``; only ``app.py``
imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compare.config import CompareConfig, ContenderConfig, MetricsConfig, SplitConfig, parse_compare_config
    from compare.run import ComparisonResult, resolve_out_dir, run_comparison
    from compare.stages import choose_split, study_config_text

# Each public name and the module that defines it. They are imported on first use, so that importing a
# submodule (the server's ``compare.jobs`` at start-up) does not pull in torch through compare.config.
_EXPORTS = {
    "CompareConfig": "compare.config",
    "ContenderConfig": "compare.config",
    "MetricsConfig": "compare.config",
    "SplitConfig": "compare.config",
    "parse_compare_config": "compare.config",
    "ComparisonResult": "compare.run",
    "resolve_out_dir": "compare.run",
    "run_comparison": "compare.run",
    "choose_split": "compare.stages",
    "study_config_text": "compare.stages",
}
__all__ = [
    "CompareConfig",
    "ComparisonResult",
    "ContenderConfig",
    "MetricsConfig",
    "SplitConfig",
    "choose_split",
    "parse_compare_config",
    "resolve_out_dir",
    "run_comparison",
    "study_config_text",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'compare' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
