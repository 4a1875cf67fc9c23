"""Blinding audit: how well does each thing a rater's browser can observe predict which side is real?

Every pair of a study is fetched as its rater is served it (the same lookup and bytes as ``GET /m/...``,
both sides requested at once, as the page does), and so is each side's zoom ("full size") copy. For each
observable (byte length, pixel width and height, colour mode, time to first byte, which side arrived first,
and the zoom copy's byte length, width and height) the score of a pair is the left side's value minus the
right side's, and the audit reports the AUC of that score for "the real image is on the left", with a
DeLong 95% confidence interval and the p-value of AUC = 0.5. Blinding holds when every AUC is 0.5 up to its
CI; an observable is flagged as a leak when its p-value is below 0.05 / 9 (Bonferroni over the nine
observables, so that timing noise alone flags an audit about 5% of the time, not 37%).

The CI treats pairs as independent; a rater's pairs and an item's K readings are not, so the interval is
somewhat narrow: a flag is a reason to look, and a pass with AUC exactly 0.5 (identical observables) is
exact. Reads go through ``db/`` only.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import stats

from analysis.mrmc import placement_values
from db.models import Side
from db.studies import ServedPair, served_bytes, served_pairs
from db.workspace import Workspace

logger = logging.getLogger(__name__)

OBSERVABLES = (
    "bytes",
    "width",
    "height",
    "mode",
    "ttfb_ms",
    "arrived_first",
    "zoom_bytes",
    "zoom_width",
    "zoom_height",
)
#: fetch(pair, side) -> the bytes served for that side
Fetch = Callable[[ServedPair, Side], bytes]


@dataclass(frozen=True)
class AUCResult:
    """An AUC with its DeLong confidence interval and the two-sided p-value of AUC = 0.5."""

    auc: float
    low: float
    high: float
    p_value: float = float("nan")


def delong_auc(scores: np.ndarray, labels: np.ndarray, conf_level: float = 0.95) -> AUCResult:
    """Empirical AUC of ``scores`` for ``labels`` (1 = positive) with a DeLong (1988) normal CI, clipped
    to [0, 1]; NaN when a class is missing."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    pos, neg = scores[labels], scores[~labels]
    if pos.size == 0 or neg.size == 0:
        return AUCResult(float("nan"), float("nan"), float("nan"))
    v10, v01 = placement_values(pos, neg)
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / pos.size if pos.size > 1 else 0.0) + (v01.var(ddof=1) / neg.size if neg.size > 1 else 0.0)
    se = float(np.sqrt(var))
    half = float(stats.norm.ppf(0.5 + conf_level / 2) * se)
    exact = 1.0 if auc == 0.5 else 0.0  # no spread: the AUC is exact
    p_value = float(2 * stats.norm.sf(abs(auc - 0.5) / se)) if se > 0 else exact
    return AUCResult(auc, max(0.0, auc - half), min(1.0, auc + half), p_value)


def served_fetch(workspace: Workspace, *, zoom: bool = False) -> Fetch:
    """What the image route serves for one side (:func:`db.studies.served_bytes`), or its zoom copy."""

    def fetch(pair: ServedPair, side: Side) -> bytes:
        data = served_bytes(workspace.database, workspace.store, pair.rater_id, pair.position, side, zoom=zoom)
        if data is None:
            raise LookupError(f"rater {pair.rater_id} has no pair at position {pair.position}")
        return data

    return fetch


def observe(pairs: list[ServedPair], fetch: Fetch, zoom_fetch: Fetch | None = None) -> pd.DataFrame:
    """One row per pair: whether the real image is on the left and each observable of both sides (the
    ``zoom_*`` ones from ``zoom_fetch``, fetched after the pair; 0 on both sides without it)."""
    rows = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for pair in pairs:
            start = time.perf_counter()
            arrived: list[Side] = []

            def get(
                side: Side, pair: ServedPair = pair, arrived: list[Side] = arrived, start: float = start
            ) -> tuple[bytes, float]:
                data = fetch(pair, side)
                arrived.append(side)
                return data, (time.perf_counter() - start) * 1000

            futures = {side: pool.submit(get, side) for side in (Side.LEFT, Side.RIGHT)}
            row: dict[str, Any] = {"rater_id": pair.rater_id, "position": pair.position, "real_left": pair.real_left}
            for side, future in futures.items():
                data, ms = future.result()
                with Image.open(io.BytesIO(data)) as img:
                    width, height, mode = img.width, img.height, img.mode
                tag = side.value
                row |= {f"bytes_{tag}": len(data), f"width_{tag}": width, f"height_{tag}": height}
                row |= {f"mode_{tag}": mode, f"ttfb_ms_{tag}": ms}
                row[f"arrived_first_{tag}"] = int(arrived[0] == side)
            for side in (Side.LEFT, Side.RIGHT):
                data, width, height = (zoom_fetch(pair, side), 0, 0) if zoom_fetch else (b"", 0, 0)
                if data:
                    with Image.open(io.BytesIO(data)) as img:
                        width, height = img.width, img.height
                row |= {f"zoom_bytes_{side.value}": len(data), f"zoom_width_{side.value}": width}
                row[f"zoom_height_{side.value}"] = height
            rows.append(row)
    return pd.DataFrame(rows)


def audit_table(observed: pd.DataFrame, conf_level: float = 0.95) -> pd.DataFrame:
    """AUC (with CI and p-value) of each observable's left-minus-right score for "real on the left"."""
    labels = observed["real_left"].to_numpy(dtype=bool)
    modes = sorted(set(observed.get("mode_left", pd.Series(dtype=str))) | set(observed.get("mode_right", [])))
    code = {m: i for i, m in enumerate(modes)}
    rows = []
    for name in OBSERVABLES:
        left, right = observed[f"{name}_left"], observed[f"{name}_right"]
        if name == "mode":
            left, right = left.map(code), right.map(code)
        score = left.to_numpy(dtype=float) - right.to_numpy(dtype=float)
        res = delong_auc(score, labels, conf_level)
        leak = bool(res.p_value < (1 - conf_level) / len(OBSERVABLES))  # Bonferroni over the observables
        rows.append(
            {"observable": name, "auc": res.auc, "ci_low": res.low, "ci_high": res.high, "p_value": res.p_value,
             "pairs": len(observed), "leak": leak}
        )  # fmt: skip
    return pd.DataFrame(rows)


def audit_blinding(
    workspace: Workspace, study: str, *, fetch: Fetch | None = None, zoom_fetch: Fetch | None = None
) -> pd.DataFrame:
    """The blinding audit of every pair of ``study`` as served to its raters, display and zoom copies (see
    the module doc); ``fetch`` / ``zoom_fetch`` replace the served bytes (e.g. to plant a leak)."""
    with workspace.database.session() as session:
        pairs, _ = served_pairs(session, study)
    if not pairs:
        return audit_table(
            pd.DataFrame({"real_left": []} | {f"{o}_{s}": [] for o in OBSERVABLES for s in ("left", "right")})
        )
    return audit_table(
        observe(pairs, fetch or served_fetch(workspace), zoom_fetch or served_fetch(workspace, zoom=True))
    )


def blinding_report_section(table: pd.DataFrame) -> dict[str, Any]:
    """The audit as a report section: ``{"tables": {"blinding/auc": table}, "notes": [str]}``."""
    leaks = table.loc[table["leak"], "observable"].tolist()
    notes = [
        "AUC of each observable of the served images (left minus right) for 'the real image is on the left', "
        "DeLong 95% CI; 0.5 means the observable says nothing about which side is real. Leak: "
        f"p < 0.05/{len(OBSERVABLES)} (Bonferroni over the observables)."
    ]
    if table.empty or table["pairs"].max() == 0:
        notes.append("No pair has been assigned yet.")
    elif leaks:
        notes.append("LEAK: " + ", ".join(leaks) + " predict(s) the real side; the study is not blinded.")
    else:
        notes.append("No observable predicts the real side.")
    return {"tables": {"blinding/auc": table}, "notes": notes}
