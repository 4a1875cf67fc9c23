"""Procedural demo dataset: endoscopy-like and chest-radiograph-like frames with known attributes.

Every frame is drawn from an attribute dictionary, and its caption is written from the same
dictionary in the MEDVQA-GI prompt style ("Generate an image containing a polyp in the upper
left."), so the data the project makes carries its own ground truth: :func:`parse_caption` reads the
attributes back from a caption, and the adherence benchmark (:mod:`generation.adherence`) scores
generated images against the attributes their prompts ask for.

Conventions
-----------
* Chest radiographs are shown in the standard PA view: the patient's **left** is on the image's
  **right**. "An opacity in the left lung" is therefore drawn on the right half of the image, and
  the heart sits slightly to the image right.
* Polyp positions name the image quadrant as seen ("upper left" = top-left of the frame).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from PIL import Image

from db.errors import InputError

Domain = Literal["endoscopy", "chest_xray"]
DOMAINS: tuple[Domain, ...] = ("endoscopy", "chest_xray")

POLYP_POSITIONS: tuple[str, ...] = ("upper left", "upper right", "lower left", "lower right", "center")
POLYP_SIZES: tuple[str, ...] = ("small", "large")
OPACITY_SIDES: tuple[str, ...] = ("none", "left", "right")

#: Attribute columns written to ``metadata.csv`` (after ``file_name,text``), in order.
ATTRIBUTE_COLUMNS: tuple[str, ...] = (
    "domain",
    "polyp_count",
    "polyp_size",
    "polyp_position",
    "ulcer",
    "instrument",
    "opacity",
    "cardiomegaly",
    "effusion",
)

#: Which attributes apply to which domain (the others are ``None`` in the attribute dict).
DOMAIN_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "endoscopy": ("polyp_count", "polyp_size", "polyp_position", "ulcer", "instrument"),
    "chest_xray": ("opacity", "cardiomegaly", "effusion"),
}

# Quadrant centres in unit coordinates (x, y), y downwards.
_POSITION_CENTRES: dict[str, tuple[float, float]] = {
    "upper left": (0.3, 0.3),
    "upper right": (0.7, 0.3),
    "lower left": (0.3, 0.7),
    "lower right": (0.7, 0.7),
    "center": (0.5, 0.5),
}


class DemoSample(NamedTuple):
    """One written frame: where it is, its caption and its ground-truth attributes."""

    path: Path
    caption: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class AttributePriors:
    """Probabilities used to draw attributes (defaults balance learnability and variety)."""

    polyp_count: tuple[float, float, float] = (0.3, 0.5, 0.2)
    ulcer: float = 0.25
    instrument: float = 0.3
    opacity: tuple[float, float, float] = (0.4, 0.3, 0.3)
    cardiomegaly: float = 0.35
    effusion: float = 0.3


def empty_attributes(domain: Domain) -> dict[str, Any]:
    """Attribute dict with every column present and those of the other domain set to ``None``."""
    if domain not in DOMAINS:
        raise InputError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    attrs: dict[str, Any] = dict.fromkeys(ATTRIBUTE_COLUMNS)
    attrs["domain"] = domain
    return attrs


def sample_attributes(domain: Domain, rng: np.random.Generator, priors: AttributePriors | None = None) -> dict:
    """Draw a random attribute dict for ``domain``.

    Parameters
    ----------
    domain : {"endoscopy", "chest_xray"}
    rng : numpy Generator that supplies the randomness.
    priors : probabilities of each finding; defaults to :class:`AttributePriors`.
    """
    p = priors or AttributePriors()
    attrs = empty_attributes(domain)
    if domain == "endoscopy":
        count = int(rng.choice(3, p=p.polyp_count))
        attrs["polyp_count"] = count
        attrs["polyp_size"] = str(rng.choice(POLYP_SIZES)) if count else "none"
        attrs["polyp_position"] = str(rng.choice(POLYP_POSITIONS)) if count == 1 else "none"
        attrs["ulcer"] = bool(rng.random() < p.ulcer)
        attrs["instrument"] = bool(rng.random() < p.instrument)
    else:
        attrs["opacity"] = str(rng.choice(OPACITY_SIDES, p=p.opacity))
        attrs["cardiomegaly"] = bool(rng.random() < p.cardiomegaly)
        attrs["effusion"] = bool(rng.random() < p.effusion)
    return attrs


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption_for(attrs: dict[str, Any]) -> str:
    """Write the MEDVQA-GI style prompt that asks for exactly ``attrs``."""
    if attrs["domain"] == "endoscopy":
        items: list[str] = []
        count = attrs["polyp_count"]
        if count == 1:
            items.append(f"a {attrs['polyp_size']} polyp in the {attrs['polyp_position']}")
        elif count == 2:
            items.append(f"2 {attrs['polyp_size']} polyps")
        if attrs["ulcer"]:
            items.append("an ulcer")
        if attrs["instrument"]:
            items.append("biopsy forceps")
        if not items:
            return "Generate an endoscopy image with no polyps."
        return f"Generate an endoscopy image containing {_join(items)}."
    if attrs["domain"] == "chest_xray":
        items = []
        if attrs["opacity"] != "none":
            items.append(f"an opacity in the {attrs['opacity']} lung")
        if attrs["cardiomegaly"]:
            items.append("an enlarged heart")
        if attrs["effusion"]:
            items.append("a pleural effusion")
        if not items:
            return "Generate a chest X-ray with no findings."
        return f"Generate a chest X-ray with {_join(items)}."
    raise ValueError(f"unknown domain {attrs['domain']!r}; expected one of {DOMAINS}")


def parse_caption(caption: str) -> dict[str, Any]:
    """Read the attribute dict back from a caption written by :func:`caption_for`.

    Raises
    ------
    ValueError
        If the caption names neither domain.
    """
    text = caption.lower()
    if "endoscopy" in text:
        attrs = empty_attributes("endoscopy")
        attrs["polyp_count"], attrs["polyp_size"], attrs["polyp_position"] = 0, "none", "none"
        for size in POLYP_SIZES:
            if f"2 {size} polyps" in text:
                attrs["polyp_count"], attrs["polyp_size"] = 2, size
            if f"a {size} polyp in the " in text:
                attrs["polyp_count"], attrs["polyp_size"] = 1, size
                rest = text.split(f"a {size} polyp in the ", 1)[1]
                attrs["polyp_position"] = next(p for p in POLYP_POSITIONS if rest.startswith(p))
        attrs["ulcer"] = "an ulcer" in text
        attrs["instrument"] = "biopsy forceps" in text
        return attrs
    if "chest x-ray" in text:
        attrs = empty_attributes("chest_xray")
        attrs["opacity"] = next((side for side in ("left", "right") if f"opacity in the {side} lung" in text), "none")
        attrs["cardiomegaly"] = "enlarged heart" in text
        attrs["effusion"] = "effusion" in text
        return attrs
    raise InputError(f"caption names no known domain (endoscopy / chest X-ray): {caption!r}")


# --------------------------------------------------------------------------------------------
# Rendering (pure numpy on a 2x canvas, box-downsampled for anti-aliasing)
# --------------------------------------------------------------------------------------------


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.meshgrid(c, c)  # xx, yy in [0, 1]


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a random ``cells`` x ``cells`` grid bilinearly upsampled to ``n``."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(coarse).resize((n, n), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _blob(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float, soft: float) -> np.ndarray:
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return np.clip((1.0 - d) / soft, 0.0, 1.0)


def _render_endoscopy(attrs: dict[str, Any], rng: np.random.Generator, n: int) -> np.ndarray:
    xx, yy = _grid(n)
    tex = 0.6 * _smooth_noise(rng, n, 6) + 0.4 * _smooth_noise(rng, n, 16)
    base = np.array([0.78, 0.36, 0.30], dtype=np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
    img = base[None, None, :] * (0.8 + 0.35 * tex[..., None])
    # lumen (dark tunnel) and folds (rings around it)
    lx, ly = 0.5 + rng.uniform(-0.15, 0.15), 0.5 + rng.uniform(-0.15, 0.15)
    r = np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2)
    folds = 0.5 + 0.5 * np.sin(r * rng.uniform(28, 38) + rng.uniform(0, 2 * np.pi) + 2.0 * tex)
    img *= (0.82 + 0.18 * folds)[..., None]
    img *= (1.0 - 0.75 * _blob(xx, yy, lx, ly, 0.11, 0.11, 0.8))[..., None]
    # ulcer: whitish fibrin patch with a red rim, away from the polyp quadrants' centres
    if attrs["ulcer"]:
        ux, uy = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75)
        rim = _blob(xx, yy, ux, uy, 0.14, 0.11, 0.5)
        core = _blob(xx, yy, ux, uy, 0.1, 0.075, 0.4) * (0.7 + 0.3 * tex)
        img = img * (1 - 0.35 * rim[..., None]) + rim[..., None] * np.array([0.25, 0.0, 0.0])
        img = img * (1 - core[..., None]) + core[..., None] * np.array([0.93, 0.88, 0.70])
    # polyps: raised reddish domes with shading and a highlight
    count = attrs["polyp_count"] or 0
    radius = 0.08 if attrs["polyp_size"] == "small" else 0.14
    if count == 1:
        centres = [_POSITION_CENTRES[attrs["polyp_position"]]]
    else:
        corners = rng.permutation(4)[:count]
        centres = [_POSITION_CENTRES[POLYP_POSITIONS[i]] for i in corners]
    for cx, cy in centres:
        cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
        rr = radius * rng.uniform(0.9, 1.1)
        dome = _blob(xx, yy, cx, cy, rr, rr * rng.uniform(0.85, 1.0), 0.25)
        shade = np.clip(1.0 - ((xx - cx + 0.3 * rr) ** 2 + (yy - cy + 0.3 * rr) ** 2) / rr**2, 0, 1)
        colour = np.array([0.92, 0.45, 0.38]) * (0.7 + 0.4 * shade[..., None])
        img = img * (1 - dome[..., None]) + colour * dome[..., None]
        spot = _blob(xx, yy, cx - 0.35 * rr, cy - 0.35 * rr, 0.2 * rr, 0.15 * rr, 0.5)
        img = img * (1 - spot[..., None]) + spot[..., None]
    # instrument: grey metallic shaft entering from the lower right, with jaws at the tip
    if attrs["instrument"]:
        ang = rng.uniform(np.pi * 1.1, np.pi * 1.4)
        tx, ty = 0.5 + 0.15 * np.cos(ang) + 0.1, 0.5 - 0.15 * np.sin(ang) + 0.1
        dx, dy = np.cos(ang), -np.sin(ang)
        t = (xx - tx) * -dx + (yy - ty) * -dy  # distance along the shaft, 0 at the tip
        d = np.abs((xx - tx) * dy - (yy - ty) * dx)
        shaft = np.clip((0.045 - d) / 0.01, 0, 1) * (t > 0)
        jaw = _blob(xx, yy, tx, ty, 0.05, 0.05, 0.3)
        metal = np.clip(shaft + jaw, 0, 1)
        shine = 0.55 + 0.35 * np.clip(1 - d / 0.045, 0, 1)
        img = img * (1 - metal[..., None]) + (metal * shine)[..., None] * np.array([0.85, 0.87, 0.9])
    # specular light, vignette and the circular endoscope field
    for _ in range(rng.integers(2, 5)):
        s = _blob(xx, yy, rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), 0.015, 0.01, 0.5)
        img = np.maximum(img, s[..., None])
    rc = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    img *= np.clip(1.15 - 1.3 * rc**2 * 2.2, 0, 1)[..., None]
    img *= np.clip((0.52 - rc) / 0.02, 0, 1)[..., None]
    return img


def _render_chest_xray(attrs: dict[str, Any], rng: np.random.Generator, n: int) -> np.ndarray:
    xx, yy = _grid(n)
    tex = _smooth_noise(rng, n, 12)
    img = 0.08 + 0.04 * tex
    body = _blob(xx, yy, 0.5, 0.62, 0.47, 0.62, 0.15)
    img = img + 0.45 * body
    lung_l_img = _blob(xx, yy, 0.31 + rng.uniform(-0.02, 0.02), 0.5, 0.15, 0.31, 0.2)  # patient's right
    lung_r_img = _blob(xx, yy, 0.69 + rng.uniform(-0.02, 0.02), 0.5, 0.15, 0.31, 0.2)  # patient's left
    lungs = np.clip(lung_l_img + lung_r_img, 0, 1)
    img = img - 0.38 * lungs * (0.85 + 0.15 * tex)
    # ribs: curved bright bands over the lungs
    phase = rng.uniform(0, 2 * np.pi)
    ribs = 0.5 + 0.5 * np.sin((yy + 0.18 * (xx - 0.5) ** 2 * 4) * 2 * np.pi * 7 + phase)
    img = img + 0.1 * (ribs**3) * np.clip(lungs * 1.5, 0, 1)
    # spine and clavicles
    img = img + 0.18 * np.clip((0.045 - np.abs(xx - 0.5)) / 0.02, 0, 1) * (yy > 0.1)
    clav = np.abs(yy - (0.2 + 0.12 * np.abs(xx - 0.5)))
    img = img + 0.15 * np.clip((0.015 - clav) / 0.01, 0, 1) * (np.abs(xx - 0.5) < 0.33)
    # heart: bright mass lower centre, shifted to the image right (patient's left)
    hw = 0.2 if attrs["cardiomegaly"] else 0.12
    heart = _blob(xx, yy, 0.53 + 0.3 * (hw - 0.12), 0.68, hw * rng.uniform(0.95, 1.05), 0.14, 0.3)
    img = img + 0.28 * heart
    # opacity in one lung (patient's left = image right)
    if attrs["opacity"] != "none":
        ox = 0.69 if attrs["opacity"] == "left" else 0.31
        op = _blob(xx, yy, ox + rng.uniform(-0.04, 0.04), rng.uniform(0.32, 0.55), 0.09, 0.1, 0.8)
        img = img + 0.45 * op * (0.8 + 0.2 * tex)
    # effusion: fluid filling the base of one lung with a meniscus
    if attrs["effusion"]:
        ex = 0.31 if rng.random() < 0.5 else 0.69
        level = 0.66 + rng.uniform(-0.03, 0.03) - 0.08 * np.abs(xx - ex) / 0.15
        fluid = np.clip((yy - level) / 0.03, 0, 1) * (np.abs(xx - ex) < 0.17)
        img = img + 0.3 * fluid * lungs
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    return np.repeat(img[..., None], 3, axis=2)


def render_image(attrs: dict[str, Any], rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Draw the frame described by ``attrs`` as an RGB PIL image of ``size`` x ``size`` pixels."""
    if size < 16:
        raise InputError(f"size must be at least 16 pixels, got {size}")
    canvas = 2 * size
    if attrs["domain"] == "endoscopy":
        arr = _render_endoscopy(attrs, rng, canvas)
    elif attrs["domain"] == "chest_xray":
        arr = _render_chest_xray(attrs, rng, canvas)
    else:
        raise ValueError(f"unknown domain {attrs['domain']!r}; expected one of {DOMAINS}")
    arr8 = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr8, "RGB").resize((size, size), Image.Resampling.BOX)


def generate_samples(n_per_domain: int, seed: int = 0, size: int = 64) -> list[tuple[Image.Image, str, dict[str, Any]]]:
    """Make the dataset in memory: ``2 * n_per_domain`` (image, caption, attributes) triples.

    Frame ``i`` of domain ``d`` depends only on ``(seed, d, i)``, so growing ``n_per_domain``
    keeps the earlier frames identical.
    """
    if n_per_domain < 1:
        raise InputError(f"n_per_domain must be >= 1, got {n_per_domain}")
    out = []
    for d_idx, domain in enumerate(DOMAINS):
        for i in range(n_per_domain):
            rng = np.random.default_rng([seed, d_idx, i])
            attrs = sample_attributes(domain, rng)
            out.append((render_image(attrs, rng, size), caption_for(attrs), attrs))
    return out


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def make_demo_dataset(out_dir: str | Path, n_per_domain: int = 500, seed: int = 0, size: int = 64) -> list[DemoSample]:
    """Write the procedural dataset as PNGs plus ``metadata.csv`` (``file_name,text`` + attributes).

    Parameters
    ----------
    out_dir : folder to write into (created if missing).
    n_per_domain : frames per domain (endoscopy, chest X-ray).
    seed : master seed; the same seed gives byte-identical files.
    size : side length in pixels.

    Returns
    -------
    list of DemoSample
        ``(path, caption, attributes)`` per frame, in file order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples: list[DemoSample] = []
    rows = []
    for k, (img, caption, attrs) in enumerate(generate_samples(n_per_domain, seed, size)):
        name = f"{attrs['domain']}_{k:05d}.png"
        img.save(out / name, format="PNG")
        samples.append(DemoSample(out / name, caption, attrs))
        rows.append([name, caption, *(_csv_value(attrs[c]) for c in ATTRIBUTE_COLUMNS)])
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "text", *ATTRIBUTE_COLUMNS])
        writer.writerows(rows)
    return samples


def read_metadata(folder: str | Path) -> list[DemoSample]:
    """Read a folder written by :func:`make_demo_dataset` back (attributes re-typed)."""
    folder = Path(folder)
    meta = folder / "metadata.csv"
    if not meta.is_file():
        raise InputError(f"no metadata.csv in {folder}; is this a demo dataset folder?")
    samples = []
    with open(meta, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            attrs: dict[str, Any] = {}
            for col in ATTRIBUTE_COLUMNS:
                raw = row[col]
                if raw == "":
                    attrs[col] = None
                elif raw in ("true", "false"):
                    attrs[col] = raw == "true"
                elif col == "polyp_count":
                    attrs[col] = int(raw)
                else:
                    attrs[col] = raw
            samples.append(DemoSample(folder / row["file_name"], row["text"], attrs))
    return samples
