"""Import datasets (real images + prompts) and externally generated images, all or nothing.

Each format has a reader that turns its files into :class:`CaseRecord` rows and checks them (columns,
encodings, paths that must stay inside the dataset folder). Every image is then read and validated before
anything is written; the database rows go in one transaction. An error names the file and the line.

Formats: ``medvqa-gi``, ``rocov2``, ``roco`` (ROCO v1), ``kvasir-vqa``, ``kvasir-vqa-x1`` (MEDVQA-GI 2025),
``csv``, ``imagefolder`` (CSV, JSONL or Parquet with embedded image bytes), ``dicom`` and ``generated``.
Images are hashed first; each distinct image is decoded once, in parallel (:class:`ImageSink`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from db.errors import ConflictError, InputError, NotFoundError
from db.imaging import dicom_header, is_dicom
from db.media import DEFAULT_MAX_PIXELS, ImageInfo, MediaStore, read_file_checked, sha256_bytes
from db.models import Case, Dataset, Domain, GeneratedImage, ImageBlob, ModelKind
from db.session import Database

DATASET_FORMATS = ("medvqa-gi", "rocov2", "roco", "kvasir-vqa", "kvasir-vqa-x1", "csv", "imagefolder", "dicom")
MAX_PROMPT_CHARS = 4000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
logger = logging.getLogger(__name__)


@dataclass
class CaseRecord:
    """One case parsed from a dataset's files, before its image is read.

    The image is a file (``image_path``) or bytes embedded in the listing (Parquet), already handed to the
    :class:`ImageSink` (``sha256``).
    """

    key: str
    prompt: str
    image_path: Path | None
    source: str
    line: int | None
    labels: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    sha256: str | None = None


@dataclass
class ImportSummary:
    """What an import did, and what it skipped and why (cases per reason)."""

    dataset: str
    format: str
    cases: int
    images: int
    new_images: int
    skipped_missing: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    merged_existing: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    duplicate_images: int = 0

    def describe(self) -> str:
        """One human line."""
        text = f"imported {self.cases:,} cases with {self.images:,} images into dataset {self.dataset!r}"
        text += f" (format {self.format})"
        if self.duplicate_images:
            text += f"; {self.duplicate_images:,} listed images were byte-identical copies, stored once"
        if self.merged_existing:
            text += f"; {self.merged_existing:,} cases were already there"
        if self.skipped:
            total = sum(self.skipped.values())
            parts = []
            for reason, n in self.skipped.items():
                part = f"{n:,} {reason}"
                if reason == SKIP_MISSING and self.skipped_missing:
                    part += f" ({self.skipped_missing:,} missing images"
                    part += f", e.g. {', '.join(self.skipped_examples)})" if self.skipped_examples else ")"
                parts.append(part)
            text += f"; skipped {total:,} cases: {'; '.join(parts)}"
        return text


SKIP_MISSING = "whose image is missing"
SKIP_LIMIT = "beyond --limit"


# ----------------------------------------------------------------------------------------------- helpers


def read_text(path: Path) -> str:
    """Read a UTF-8 text file (BOM allowed); a bad byte is reported with its line number."""
    raw = read_file_checked(path, max_bytes=512 * 1024 * 1024) if path.exists() else None
    if raw is None:
        raise InputError("file not found", path=path)
    if raw[:4] == b"PAR1":
        raise InputError(
            "this is a Parquet file, not text; Parquet is read by the csv, imagefolder, rocov2, kvasir-vqa and "
            "kvasir-vqa-x1 formats",
            path=path,
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"bad encoding: not UTF-8 (byte 0x{raw[exc.start]:02x})", path=path, line=line) from None


_RESOLVED: dict[tuple[Path, str], Path] = {}


def resolve_inside(root: Path, name: str, *, source: Path, line: int | None) -> Path:
    """Resolve ``name`` under ``root``; refuse absolute paths, ``..`` and symlinks that lead outside.

    Results are remembered for the duration of one import (many rows name the same image)."""
    cached = _RESOLVED.get((root, name))
    if cached is not None:
        return cached
    resolved = _resolve_inside(root, name, source=source, line=line)
    if len(_RESOLVED) < 1_000_000:
        _RESOLVED[(root, name)] = resolved
    return resolved


def _resolve_inside(root: Path, name: str, *, source: Path, line: int | None) -> Path:
    name = name.strip()
    if not name:
        raise InputError("empty file name", path=source, line=line)
    if "\x00" in name:
        raise InputError("file name contains a NUL byte", path=source, line=line)
    candidate = Path(name)
    if candidate.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"absolute path {name!r} is not allowed; paths are relative to {root}", path=source, line=line)
    root_resolved = root.resolve()
    resolved = (root_resolved / candidate).resolve()
    if not resolved.is_relative_to(root_resolved):
        raise InputError(f"path {name!r} escapes the dataset folder {root}", path=source, line=line)
    return resolved


def clean_prompt(text: str | None, *, source: Path, line: int | None) -> str:
    """Strip a caption; refuse empty, control characters and absurd lengths."""
    prompt = (text or "").strip()
    if not prompt:
        raise InputError("empty caption", path=source, line=line)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(
            f"caption is {len(prompt)} characters, over the limit of {MAX_PROMPT_CHARS}",
            path=source,
            line=line,
        )
    if any(ord(c) < 32 and c not in "\t\n\r" for c in prompt):
        raise InputError("caption contains control characters", path=source, line=line)
    return prompt


def csv_rows(path: Path, *, delimiter: str, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, row)`` from a delimited file, checking the header has the required columns."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        if len(header) == 1 and any(d in header[0] for d in ",;\t" if d != delimiter):
            hint = f" (is the delimiter {delimiter!r} right? the header reads {header[0]!r})"
        raise InputError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}{hint}",
            path=path,
            line=1,
        )
    for row in reader:
        if None in row:
            raise InputError("row has more fields than the header", path=path, line=reader.line_num)
        yield reader.line_num, row


# ----------------------------------------------------------------------------------------------- readers


def read_medvqa_gi(path: Path, images_dir: Path | None) -> tuple[list[CaseRecord], Path]:
    """MEDVQA-GI 2024 ``prompt-gt.csv`` (``Prompt;Filename``, many prompts per image)."""
    root = images_dir or path.parent
    records: list[CaseRecord] = []
    per_image: dict[str, int] = {}
    for line, row in csv_rows(path, delimiter=";", required=("Prompt", "Filename")):
        filename = row["Filename"].strip()
        image = resolve_inside(root, filename, source=path, line=line)
        per_image[filename] = per_image.get(filename, 0) + 1
        records.append(
            CaseRecord(
                key=f"{filename}#{per_image[filename]}",
                prompt=clean_prompt(row["Prompt"], source=path, line=line),
                image_path=image,
                source=filename,
                line=line,
                labels={"filename": filename},
            )
        )
    return records, root


def _rocov2_concepts(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    text = read_text(path)
    lines = text.splitlines()
    if not lines:
        return {}
    delimiter = "," if "," in lines[0] else ";"
    concepts: dict[str, list[str]] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if delimiter == ",":
            ident, _, rest = line.partition(",")
            cuis = [c.strip() for c in rest.split(";") if c.strip()]
        else:
            ident, *cuis = [c.strip() for c in line.split(";")]
        if not ident:
            raise InputError("empty ID", path=path, line=n)
        concepts[ident.strip()] = cuis
    return concepts


def read_rocov2(path: Path, images_dir: Path | None, sink: ImageSink | None = None) -> tuple[list[CaseRecord], Path]:
    """ROCOv2 ``{split}_captions.csv`` (``ID,Caption``) + ``{split}_concepts.csv`` + images named by ID;
    or the hub's Parquet shards (``image`` embedded, ``image_id``, ``caption``, ``cui``)."""
    if path.is_dir():
        found = sorted(path.glob("*_captions.csv"))
        if len(found) != 1:
            raise InputError(f"expected one *_captions.csv in the folder, found {len(found)}", path=path)
        path = found[0]
    if is_parquet(path):
        return _read_rocov2_parquet(path, images_dir, sink)
    split = path.name.removesuffix("_captions.csv") if path.name.endswith("_captions.csv") else None
    concepts = _rocov2_concepts(path.with_name(f"{split}_concepts.csv")) if split else {}
    root = images_dir or (path.parent / split if split and (path.parent / split).is_dir() else path.parent)
    records: list[CaseRecord] = []
    for line, row in csv_rows(path, delimiter=",", required=("ID", "Caption")):
        ident = row["ID"].strip()
        name = ident if ident.lower().endswith(IMAGE_SUFFIXES) else f"{ident}.jpg"
        records.append(
            CaseRecord(
                key=ident,
                prompt=clean_prompt(row["Caption"], source=path, line=line),
                image_path=resolve_inside(root, name, source=path, line=line),
                source=name,
                line=line,
                labels={"id": ident, "cuis": concepts.get(ident, [])},
                split=split,
            )
        )
    return records, root


def _read_rocov2_parquet(path: Path, images_dir: Path | None, sink: ImageSink | None) -> tuple[list[CaseRecord], Path]:
    spec = _table_spec(path)
    root = images_dir or path.parent
    _refuse_images_option(spec, images_dir, path)
    split = next((s for s in ("train", "validation", "valid", "test") if path.name.startswith(s)), None)
    records: list[CaseRecord] = []
    for line, row in parquet_rows(path, required=("image_id", "caption")):
        ident = str(row["image_id"] or "").strip()
        if not ident:
            raise InputError("empty image_id", path=path, line=line)
        name = ident if ident.lower().endswith(IMAGE_SUFFIXES) else f"{ident}.jpg"
        image_path, sha, name = _record_image(row, spec, sink, root=root, fallback=name, source=path, line=line)
        cuis = row.get("cui") or row.get("cuis") or []
        records.append(
            CaseRecord(
                key=ident,
                prompt=clean_prompt(str(row["caption"] or ""), source=path, line=line),
                image_path=image_path,
                source=name,
                line=line,
                labels={"id": ident, "cuis": json_safe(list(cuis) if not isinstance(cuis, str) else [cuis])},
                split=split,
                sha256=sha,
            )
        )
    return records, root


ROCO_ID = re.compile(r"^ROCO_\d+$")
PMC_IN_URL = re.compile(r"\b(PMC\d+)\.tar\.gz\b")


def _tab_table(path: Path) -> dict[str, list[str]]:
    """ROCO ``ID<TAB>value<TAB>...`` files (``cuis.txt``, ``keywords.txt``; empty fields dropped)."""
    if not path.exists():
        return {}
    table: dict[str, list[str]] = {}
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        ident, *rest = [p.strip() for p in line.split("\t")]
        if not ident:
            raise InputError("empty ROCO id", path=path, line=n)
        table[ident] = [r for r in rest if r]
    return table


def _roco_semtypes(path: Path) -> dict[str, list[dict[str, str]]]:
    """``semtypes.txt``: ``ID<TAB><TAB>T031<TAB>Body Substance<TAB>T060<TAB>...`` as (tui, name) pairs."""
    out: dict[str, list[dict[str, str]]] = {}
    for ident, fields in _tab_table(path).items():
        out[ident] = [{"tui": t, "name": n} for t, n in zip(fields[::2], fields[1::2], strict=False)]
    return out


def _roco_dlinks(path: Path) -> dict[str, tuple[str, str]]:
    """``dlinks.txt``: ``ID<TAB>wget -r ftp://.../PMC123.tar.gz -P /path/to/Dir<TAB><name inside the archive>``.

    Returns ``{ROCO id: (PMC id, name)}``.
    """
    out: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return out
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise InputError(
                f"expected 'ROCO_ID<TAB>download command<TAB>file name' (3 fields), found {len(fields)}",
                path=path,
                line=n,
            )
        match = PMC_IN_URL.search(fields[1])
        if match is None:
            raise InputError(f"no PMC<id>.tar.gz archive in {fields[1][:120]!r}", path=path, line=n)
        out[fields[0].strip()] = (match.group(1), fields[2].strip())
    return out


def _roco_licences(path: Path) -> dict[str, tuple[str, str]]:
    """``licences.txt``: comma-separated ``ROCO_ID,PMC_ID,CC`` (``PMC_ID`` is the ``PMC<id>_<name>`` file name)."""
    out: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return out
    for _line, row in csv_rows(path, delimiter=",", required=("ROCO_ID", "PMC_ID", "CC")):
        out[row["ROCO_ID"].strip()] = (row["PMC_ID"].strip(), row["CC"].strip())
    return out


def read_roco(path: Path, images_dir: Path | None) -> tuple[list[CaseRecord], Path]:
    """ROCO v1 as published (``data/{split}/{radiology,non-radiology}/``).

    ``captions.txt`` (``ROCO_ID<TAB> caption``); images ``images/<ROCO id>.jpg`` (current download script)
    or ``PMC<id>_<name>.jpg`` (older downloads; the name comes from ``licences.txt``, else from
    ``dlinks.txt``); ``cuis.txt``, ``keywords.txt``, ``semtypes.txt`` become labels; the licence
    (``licences.txt`` column ``CC``) and the attribution (the PMC article) are kept per case.
    """
    if path.is_dir():
        path = path / "captions.txt"
    folder = path.parent
    root = _images_root(folder, images_dir)
    dlinks, licences = _roco_dlinks(folder / "dlinks.txt"), _roco_licences(folder / "licences.txt")
    cuis, keywords = _tab_table(folder / "cuis.txt"), _tab_table(folder / "keywords.txt")
    semtypes = _roco_semtypes(folder / "semtypes.txt")
    split = folder.parent.name if folder.name in ("radiology", "non-radiology") else None
    records: list[CaseRecord] = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        ident, sep, caption = line.partition("\t")
        if not sep:
            raise InputError("expected 'ROCO_ID<TAB>caption'", path=path, line=n)
        ident = ident.strip()
        if not ROCO_ID.match(ident):
            raise InputError(f"{ident[:40]!r} is not a ROCO id (ROCO_<digits>)", path=path, line=n)
        pmc_name, licence = licences.get(ident, ("", ""))
        pmc_id = pmc_name.partition("_")[0] if pmc_name else ""
        if ident in dlinks:
            pmc_id = pmc_id or dlinks[ident][0]
            pmc_name = pmc_name or f"{dlinks[ident][0]}_{dlinks[ident][1]}"
        candidates = [f"{ident}.jpg"] + ([pmc_name] if pmc_name else [])
        paths = [resolve_inside(root, c, source=path, line=n) for c in candidates]
        chosen = next((i for i, p in enumerate(paths) if p.exists()), 0)
        labels: dict[str, Any] = {
            "roco_id": ident,
            "cuis": cuis.get(ident, []),
            "keywords": keywords.get(ident, []),
            "semtypes": semtypes.get(ident, []),
        }
        if pmc_id:
            labels["pmc_id"] = pmc_id
            labels["attribution"] = (
                f"Figure from PubMed Central article {pmc_id} (https://www.ncbi.nlm.nih.gov/pmc/articles/{pmc_id}/); "
                "ROCO: Pelka et al., MICCAI LABELS 2018, doi:10.1007/978-3-030-01364-6_20"
            )
        if licence:
            labels["license"] = licence
        records.append(
            CaseRecord(
                key=ident,
                prompt=clean_prompt(caption, source=path, line=n),
                image_path=paths[chosen],
                source=candidates[chosen],
                line=n,
                labels=labels,
                split=split,
            )
        )
    return records, root


# ----------------------------------------------------------------------------------------------- tables


def is_parquet(path: Path) -> bool:
    """A Parquet file (by suffix or by its ``PAR1`` magic)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def image_column(schema: Any, preferred: Iterable[str] = ()) -> str | None:
    """The column holding image bytes: a Hugging Face ``Image`` struct (``bytes``, ``path``) or binary."""
    import pyarrow as pa

    candidates = []
    for f in schema:
        t = f.type
        is_struct = pa.types.is_struct(t) and "bytes" in [c.name for c in t]
        if is_struct or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            candidates.append(f.name)
    for name in (*preferred, "image"):
        if name in candidates:
            return name
    return candidates[0] if candidates else None


def parquet_rows(path: Path, *, required: Iterable[str], batch_rows: int = 256) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row number, row)`` from a Parquet file, one record batch at a time (never the whole file)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses on a bad file
        raise InputError(f"not a readable Parquet file ({exc})", path=path) from None
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)}; found {', '.join(names) or 'none'}", path=path)
    n = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def table_rows(
    path: Path, *, delimiter: str, required: Iterable[str], batch_rows: int = 256
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a listing: CSV (header line 1) or Parquet (row numbers), by the file's type."""
    if is_parquet(path):
        yield from parquet_rows(path, required=required, batch_rows=batch_rows)
    else:
        yield from csv_rows(path, delimiter=delimiter, required=required)


def json_safe(value: Any) -> Any:
    """A label value as JSON: lists and dicts kept, bytes dropped (``None``), numbers and text as they are."""
    if isinstance(value, bytes | bytearray | memoryview):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class ImageSink:
    """Images for one import: hashed first, each distinct image decoded and validated once, in parallel
    worker threads (Pillow and hashlib release the GIL) while the listing is still being read, then stored
    (content-addressed). At most a few images per worker wait in memory. Shows a tqdm bar with counts."""

    def __init__(self, store: MediaStore, max_pixels: int, *, total: int | None = None,
                 workers: int | None = None, progress: bool | None = None) -> None:  # fmt: skip
        self.store = store
        self.max_pixels = max_pixels
        self.infos: dict[str, ImageInfo] = {}
        self.running: dict[str, Future[ImageInfo]] = {}
        self.listed = 0
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.bar = tqdm(total=total, unit="img", desc="images", disable=None if progress is None else not progress,
                        leave=False)  # fmt: skip

    def add_bytes(self, data: bytes, source: object) -> str:
        """Queue ``data``; returns its sha256. Byte-identical images are decoded once."""
        sha = sha256_bytes(data)
        self.listed += 1
        if sha not in self.infos and sha not in self.running:
            if self._pool is None:
                self.infos[sha] = self.store.put_bytes(data, source=source, max_pixels=self.max_pixels)
            else:
                self.running[sha] = self._pool.submit(self.store.put_bytes, data, source=source,
                                                      max_pixels=self.max_pixels)  # fmt: skip
                if len(self.running) >= 4 * self.workers:
                    self._collect(wait_all=False)
        self.bar.update(1)
        self.bar.set_postfix(distinct=len(self.infos) + len(self.running), refresh=False)
        return sha

    def add_path(self, path: Path, source: str) -> str:
        try:
            data = read_file_checked(path)
        except InputError as exc:
            raise InputError(f"{exc} (listed as {source!r})", path=path) from None
        return self.add_bytes(data, path)

    def _collect(self, *, wait_all: bool) -> None:
        """Move finished work into ``infos`` (re-raising the first error); wait for half the queue, or all."""
        keep = 0 if wait_all else 2 * self.workers
        for sha in list(self.running):
            future = self.running[sha]
            if len(self.running) > keep or future.done():
                self.infos[sha] = future.result()
                del self.running[sha]

    def close_quietly(self) -> None:
        """Stop the bar and the workers after an error (nothing more is stored)."""
        self.bar.close()
        for future in self.running.values():
            future.cancel()
        self.running.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> dict[str, ImageInfo]:
        try:
            self._collect(wait_all=True)
        finally:
            self.close_quietly()
        return self.infos


def _image_of_row(row: dict[str, Any], column: str | None) -> tuple[bytes | None, str | None]:
    """``(bytes, path)`` of a row's image cell (HF struct, raw bytes, or a path string)."""
    if column is None:
        return None, None
    cell = row.get(column)
    if isinstance(cell, dict):
        data = cell.get("bytes")
        return (bytes(data) if data else None), (cell.get("path") or None)
    if isinstance(cell, bytes | bytearray | memoryview):
        return bytes(cell) or None, None
    if isinstance(cell, str):
        return None, cell
    return None, None


@dataclass
class TableSpec:
    """Where a table reader finds the image, the key and the prompt of a row."""

    image_col: str | None
    embedded: bool


def _images_root(folder: Path, images_dir: Path | None) -> Path:
    """Where a listing's images are: ``--images``, else ``images/`` beside the listing, else its folder."""
    return images_dir or (folder / "images" if (folder / "images").is_dir() else folder)


def _refuse_images_option(spec: TableSpec, images_dir: Path | None, path: Path) -> None:
    """``--images`` names a folder of files; a table whose images are embedded has none to point at."""
    if spec.embedded and images_dir is not None:
        raise InputError(f"--images has no meaning here: the images are embedded in column {spec.image_col!r}",
                         path=path)  # fmt: skip


def _table_spec(path: Path, preferred_image: Iterable[str] = ()) -> TableSpec:
    if not is_parquet(path):
        return TableSpec(None, False)
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Exception as exc:
        raise InputError(f"not a readable Parquet file ({exc})", path=path) from None
    col = image_column(schema, preferred_image)
    return TableSpec(col, col is not None)


def _record_image(
    row: dict[str, Any], spec: TableSpec, sink: ImageSink | None, *, root: Path, fallback: str | None,
    source: Path, line: int,
) -> tuple[Path | None, str | None, str]:  # fmt: skip
    """Resolve a row's image: embedded bytes go to the sink (sha), else a file under ``root``."""
    data, name = _image_of_row(row, spec.image_col)
    if data is not None:
        if sink is None:
            raise InputError("embedded image bytes need an image sink (internal)", path=source, line=line)
        sha = sink.add_bytes(data, f"{source}, row {line}")
        return None, sha, name or f"row {line}"
    name = name or fallback
    if not name:
        raise InputError(
            f"row has no image: column {spec.image_col!r} is empty and no file name is given", path=source, line=line
        )
    return resolve_inside(root, name, source=source, line=line), None, name


def _id_index(root: Path) -> dict[str, str]:
    """``{stem: file name}`` of the images in ``root`` (ids without an extension find any image type)."""
    index: dict[str, str] = {}
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.suffix.lower() in (*IMAGE_SUFFIXES, ".dcm"):
                index.setdefault(p.stem, p.name)
    return index


def _by_id(index: dict[str, str], ident: str) -> str:
    if ident.lower().endswith((*IMAGE_SUFFIXES, ".dcm")):
        return ident
    return index.get(ident, f"{ident}.jpg")


def _listing(path: Path, name: str) -> list[Path]:
    """The listing file(s): ``path`` itself, ``name`` in the folder, or the folder's Parquet shards
    (``*.parquet`` or ``data/*.parquet``, as the Hugging Face hub lays datasets out), in name order."""
    if not path.is_dir():
        return [path]
    if (path / name).exists():
        return [path / name]
    shards = sorted(path.glob("*.parquet")) or sorted(path.glob("data/*.parquet"))
    if not shards:
        raise InputError(f"no {name} and no Parquet shards (*.parquet, data/*.parquet) in the folder", path=path)
    return shards


def _shard_rows(paths: list[Path], *, required: Iterable[str]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """``(file, line or row number, row)`` over every listing file in turn."""
    for path in paths:
        for line, row in table_rows(path, delimiter=",", required=required):
            yield path, line, row


def read_kvasir_vqa(path: Path, images_dir: Path | None, sink: ImageSink | None) -> tuple[list[CaseRecord], Path]:
    """Kvasir-VQA as its card saves it: ``metadata.csv`` (``source,question,answer,img_id``) and
    ``images/{img_id}.jpg`` (any image extension); also the hub's Parquet files (``image`` column).
    One case per question: many questions share an image, which is stored once."""
    shards = _listing(path, "metadata.csv")
    path = shards[0]
    folder = path.parent.parent if path.parent.name == "data" and is_parquet(path) else path.parent
    root = _images_root(folder, images_dir)
    spec = _table_spec(path)
    _refuse_images_option(spec, images_dir, path)
    index = {} if spec.embedded else _id_index(root)
    records: list[CaseRecord] = []
    per_image: dict[str, int] = {}
    for path, line, row in _shard_rows(shards, required=("source", "question", "answer", "img_id")):
        img_id = str(row["img_id"] or "").strip()
        if not img_id:
            raise InputError("empty img_id", path=path, line=line)
        image_path, sha, name = _record_image(row, spec, sink, root=root, fallback=_by_id(index, img_id),
                                              source=path, line=line)  # fmt: skip
        per_image[img_id] = per_image.get(img_id, 0) + 1
        records.append(
            CaseRecord(
                key=f"{img_id}#{per_image[img_id]}",
                prompt=clean_prompt(str(row["question"] or ""), source=path, line=line),
                image_path=image_path,
                source=name,
                line=line,
                labels={"img_id": img_id, "answer": json_safe(row["answer"]), "source": json_safe(row["source"])},
                sha256=sha,
            )
        )
    return records, root


X1_TABLE_COLUMNS = ("img_id", "question", "answer")


def read_kvasir_vqa_x1(path: Path, images_dir: Path | None, sink: ImageSink | None) -> tuple[list[CaseRecord], Path]:
    """MEDVQA-GI 2025 / Kvasir-VQA-x1.

    - ``kvasir-captions.json`` (the 2025 image-generation captions, read by the organisers' notebook as
      ``{img_id: {group: [caption, paraphrase, ...]}}``): one case per caption; the captions of one group
      are paraphrases of one prompt and share ``labels["paraphrase_group"]`` (see :func:`paraphrase_groups`).
    - the Kvasir-VQA-x1 table (CSV or the hub's Parquet: ``img_id, complexity, question, answer, original,
      question_class``): one case per question.
    Images ``images/{img_id}.<ext>`` beside the listing (or ``--images``).
    """
    if path.is_dir() and (path / "kvasir-captions.json").exists():
        path = path / "kvasir-captions.json"
    shards = [path] if path.suffix.lower() == ".json" else _listing(path, "metadata.csv")
    path = shards[0]
    folder = path.parent.parent if path.parent.name == "data" and is_parquet(path) else path.parent
    root = _images_root(folder, images_dir)
    if path.suffix.lower() == ".json":
        return _read_x1_captions(path, root), root
    spec = _table_spec(path)
    _refuse_images_option(spec, images_dir, path)
    index = {} if spec.embedded else _id_index(root)
    records: list[CaseRecord] = []
    per_image: dict[str, int] = {}
    for path, line, row in _shard_rows(shards, required=X1_TABLE_COLUMNS):
        img_id = str(row["img_id"] or "").strip()
        if not img_id:
            raise InputError("empty img_id", path=path, line=line)
        image_path, sha, name = _record_image(row, spec, sink, root=root, fallback=_by_id(index, img_id),
                                              source=path, line=line)  # fmt: skip
        per_image[img_id] = per_image.get(img_id, 0) + 1
        labels = {k: json_safe(v) for k, v in row.items()
                  if k not in ("question", spec.image_col) and v not in (None, "")}  # fmt: skip
        records.append(
            CaseRecord(
                key=f"{img_id}#{per_image[img_id]}",
                prompt=clean_prompt(str(row["question"] or ""), source=path, line=line),
                image_path=image_path,
                source=name,
                line=line,
                labels=labels,
                sha256=sha,
            )
        )
    return records, root


def _read_x1_captions(path: Path, root: Path) -> list[CaseRecord]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg})", path=path, line=exc.lineno) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object {img_id: {group: [caption, ...]}}", path=path)
    index = _id_index(root)
    records: list[CaseRecord] = []
    for img_id, groups in data.items():
        if isinstance(groups, list):  # a plain list of captions is one group
            groups = {"0": groups}
        if not isinstance(groups, dict):
            raise InputError(f"img_id {img_id!r}: expected {{group: [caption, ...]}}", path=path)
        name = _by_id(index, str(img_id))
        image_path = resolve_inside(root, name, source=path, line=None)
        for group, captions in groups.items():
            if isinstance(captions, str):
                captions = [captions]
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                raise InputError(f"img_id {img_id!r}, group {group!r}: expected a list of captions", path=path)
            for i, caption in enumerate(captions):
                records.append(
                    CaseRecord(
                        key=f"{img_id}#{group}#{i}",
                        prompt=clean_prompt(caption, source=path, line=None),
                        image_path=image_path,
                        source=name,
                        line=None,
                        labels={"img_id": str(img_id), "paraphrase_group": f"{img_id}#{group}", "paraphrase_index": i},
                    )
                )
    return records


def read_csv_folder(
    path: Path, file_column: str, text_column: str, images_dir: Path | None = None, sink: ImageSink | None = None,
    *, listings: tuple[str, ...] = ("metadata.csv", "metadata.jsonl", "metadata.parquet"),
) -> tuple[list[CaseRecord], Path]:  # fmt: skip
    """``metadata.csv`` / ``metadata.jsonl`` / Parquet (Hugging Face imagefolder: ``file_name``, ``text``).

    In Parquet the image may be embedded (a Hugging Face ``Image`` struct or a binary column) instead of
    named; files are looked up under ``images_dir`` (``--images``) or beside the listing.
    """
    if path.is_dir():
        existing = [path / c for c in listings if (path / c).exists()]
        if not existing:
            raise InputError(f"no {' or '.join(listings)} in the folder", path=path)
        path = existing[0]
    root = images_dir or path.parent
    rows: Iterable[tuple[int, dict[str, Any]]]
    spec = TableSpec(None, False)
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path, (file_column, text_column))
    elif is_parquet(path):
        spec = _table_spec(path, (file_column,))
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        if not spec.embedded and file_column not in names:
            raise InputError(
                f"no image column: expected image bytes (a Hugging Face Image struct or a binary column) or a "
                f"file-name column {file_column!r}; found {', '.join(names) or 'none'}",
                path=path,
            )
        _refuse_images_option(spec, images_dir, path)
        rows = parquet_rows(path, required=(text_column,))
    else:
        rows = csv_rows(path, delimiter=",", required=(file_column, text_column))
    records: list[CaseRecord] = []
    for n, row in rows:
        if spec.embedded:
            image_path, sha, name = _record_image(row, spec, sink, root=root, fallback=None, source=path, line=n)
            key = str(row.get(file_column) or name)
        else:
            name = str(row[file_column] if row[file_column] is not None else "")
            image_path, sha, key = resolve_inside(root, name, source=path, line=n), None, name
        skip = (file_column, text_column, spec.image_col)
        extras = {k: json_safe(v) for k, v in row.items() if k not in skip and v not in (None, "")}
        records.append(
            CaseRecord(
                key=key,
                prompt=clean_prompt(str(row[text_column] or ""), source=path, line=n),
                image_path=image_path,
                source=name,
                line=n,
                labels=extras,
                split=str(extras.pop("split")) if "split" in extras else None,
                sha256=sha,
            )
        )
    return records, root


def _jsonl_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", path=path, line=n) from None
        if not isinstance(obj, dict):
            raise InputError("each line must be a JSON object", path=path, line=n)
        for col in required:
            if col not in obj:
                raise InputError(f"missing field {col!r}", path=path, line=n)
        yield n, obj


def read_dicom_folder(
    path: Path, file_column: str, text_column: str, images_dir: Path | None
) -> tuple[list[CaseRecord], Path]:
    """A folder of DICOM files with their captions in a CSV beside them (``captions.csv`` or
    ``metadata.csv``: ``file_name,text``, other headers via ``--file-column``/``--text-column``).
    Each file's modality and display window become labels; the file itself is stored at full depth."""
    records, root = read_csv_folder(path, file_column, text_column, images_dir,
                                    listings=("captions.csv", "metadata.csv", "metadata.jsonl"))  # fmt: skip
    for r in records:
        if r.image_path is None or not r.image_path.is_file():
            continue
        with r.image_path.open("rb") as fh:
            head = fh.read(133)
        if not is_dicom(head):
            raise InputError(f"not a DICOM file (no 'DICM' marker) (listed as {r.source!r})", path=r.image_path)
        r.labels.update(dicom_header(r.image_path))  # header only: the pixels are decoded once, when stored
    return records, root


# ----------------------------------------------------------------------------------------------- writing


def _check_unique_keys(records: list[CaseRecord], source: Path) -> None:
    seen: dict[str, int | None] = {}
    for r in records:
        if r.key in seen:
            raise InputError(f"duplicate id {r.key!r} (first at line {seen[r.key]})", path=source, line=r.line)
        seen[r.key] = r.line


def ensure_image_rows(session: Session, infos: Iterable[ImageInfo]) -> int:
    """Insert the media rows that are not in the database yet; returns how many were new."""
    infos = list({i.sha256: i for i in infos}.values())
    existing = set(session.scalars(select(ImageBlob.sha256).where(ImageBlob.sha256.in_([i.sha256 for i in infos]))))
    new = [i for i in infos if i.sha256 not in existing]
    session.add_all(
        ImageBlob(sha256=i.sha256, width=i.width, height=i.height, mode=i.mode, format=i.format, n_bytes=i.n_bytes)
        for i in new
    )
    session.flush()  # image rows first: nothing else orders them before the rows that reference them
    return len(new)


def import_dataset(
    database: Database,
    store: MediaStore,
    fmt: str,
    path: Path,
    *,
    name: str,
    domain: Domain | str | None = None,
    images_dir: Path | None = None,
    skip_missing: bool = False,
    limit: int | None = None,
    file_column: str = "file_name",
    text_column: str = "text",
    merge: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool | None = None,
) -> ImportSummary:
    """Import a dataset in format ``fmt`` from ``path``; nothing is written unless every case is valid."""
    path = Path(path)
    if fmt not in DATASET_FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(DATASET_FORMATS)}")
    if not name or len(name) > 200:
        raise InputError("a dataset name of 1-200 characters is required")
    if limit is not None and limit <= 0:
        raise InputError(f"--limit must be positive, got {limit}")
    if not path.exists():
        raise InputError("not found", path=path)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise InputError("images folder not found", path=images_dir)
    default_domain = {"medvqa-gi": Domain.GI, "rocov2": Domain.RADIOLOGY, "roco": Domain.RADIOLOGY,
                      "kvasir-vqa": Domain.GI, "kvasir-vqa-x1": Domain.GI, "dicom": Domain.RADIOLOGY}  # fmt: skip
    try:
        dom = Domain(domain) if domain else default_domain.get(fmt, Domain.OTHER)
    except ValueError:
        raise InputError(f"unknown domain {domain!r}; choose gi, radiology or other") from None
    with database.session() as session:
        existing = session.scalar(select(Dataset).where(Dataset.name == name))
        if existing is not None and not merge:
            raise ConflictError(f"dataset {name!r} already exists; choose another --name or pass --merge")

    sink = ImageSink(store, max_pixels, workers=workers, progress=progress)
    _RESOLVED.clear()  # the file system may have changed since the last import
    try:
        records, root = _read_records(fmt, path, images_dir, sink, file_column, text_column)
        if not records:
            raise InputError("no cases found", path=path)
        _check_unique_keys(records, path)

        absent = {p for p in {r.image_path for r in records} if p is not None and not p.exists()}
        missing = sorted({r.source for r in records if r.image_path in absent})
        skipped: dict[str, int] = {}
        if missing and not skip_missing:
            listed = len({r.source for r in records})
            raise InputError(
                f"{len(missing)} of {listed} images listed are missing from {root} (e.g. {', '.join(missing[:3])}); "
                "pass --skip-missing to import only the images present",
                path=path,
            )
        missing_set = set(missing)
        if missing:
            before = len(records)
            records = [r for r in records if r.source not in missing_set]
            skipped[SKIP_MISSING] = before - len(records)
        if limit is not None and len(records) > limit:
            skipped[SKIP_LIMIT] = len(records) - limit
            records = records[:limit]
        if not records:
            raise InputError(f"none of the listed images is present in {root}", path=path)

        paths = list(dict.fromkeys(r.image_path for r in records if r.image_path is not None))
        sink.bar.reset(total=len(paths) + sink.listed)
        sink.bar.update(sink.listed)
        listed_as = {r.image_path: r.source for r in reversed(records) if r.image_path is not None}
        by_path = {p: sink.add_path(p, listed_as[p]) for p in paths}
        for r in records:
            if r.image_path is not None:
                r.sha256 = by_path[r.image_path]
        infos = sink.close()
    except BaseException:
        sink.close_quietly()
        raise
    used = {r.sha256 for r in records}
    logger.info("import %s: %d cases, %d distinct images of %d listed", name, len(records), len(used), sink.listed)

    with database.session() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        known: dict[str, Case] = {}
        if dataset is None:
            dataset = Dataset(name=name, domain=dom, format=fmt, source=str(path))
            session.add(dataset)
            session.flush()
        else:
            known = {c.key: c for c in session.scalars(select(Case).where(Case.dataset_id == dataset.id))}
        new_images = ensure_image_rows(session, [infos[sha] for sha in used if sha is not None])
        merged = 0
        rows: list[dict[str, Any]] = []
        for r in records:
            sha = r.sha256
            assert sha is not None, "every record's image was stored above"
            if r.key in known:
                old = known[r.key]
                if old.prompt != r.prompt or old.image_sha256 != sha:
                    raise ConflictError(
                        f"{path}, line {r.line}: case {r.key!r} exists in {name!r} with another prompt or image;"
                        " refusing to merge"
                    )
                merged += 1
                continue
            rows.append({"dataset_id": dataset.id, "key": r.key, "prompt": r.prompt, "image_sha256": sha,
                         "source_file": r.source, "labels": r.labels, "split": r.split})  # fmt: skip
        for start in range(0, len(rows), 5000):  # one executemany per chunk, not one ORM object per case
            session.execute(insert(Case), rows[start : start + 5000])
    return ImportSummary(
        dataset=name,
        format=fmt,
        cases=len(records) - merged,
        images=len(used),
        new_images=new_images,
        skipped_missing=len(missing),
        skipped_examples=missing[:3],
        merged_existing=merged,
        skipped=skipped,
        duplicate_images=max(0, sink.listed - len(infos)),
    )


def _read_records(
    fmt: str, path: Path, images_dir: Path | None, sink: ImageSink, file_column: str, text_column: str
) -> tuple[list[CaseRecord], Path]:
    if fmt == "medvqa-gi":
        return read_medvqa_gi(path, images_dir)
    if fmt == "rocov2":
        return read_rocov2(path, images_dir, sink)
    if fmt == "roco":
        return read_roco(path, images_dir)
    if fmt == "kvasir-vqa":
        return read_kvasir_vqa(path, images_dir, sink)
    if fmt == "kvasir-vqa-x1":
        return read_kvasir_vqa_x1(path, images_dir, sink)
    if fmt == "dicom":
        return read_dicom_folder(path, file_column, text_column, images_dir)
    return read_csv_folder(path, file_column, text_column, images_dir, sink)


def paraphrase_groups(session: Session, dataset: str) -> dict[str, list[str]]:
    """``{group: [case key, ...]}`` of a dataset's paraphrase groups (MEDVQA-GI 2025 captions: the
    captions of one group paraphrase one prompt; the agreement score compares answers within a group)."""
    ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
    if ds is None:
        raise NotFoundError(f"no dataset called {dataset!r}")
    groups: dict[str, list[str]] = {}
    for key, labels in session.execute(select(Case.key, Case.labels).where(Case.dataset_id == ds.id).order_by(Case.id)):
        group = (labels or {}).get("paraphrase_group")
        if group is not None:
            groups.setdefault(str(group), []).append(key)
    return groups


# ----------------------------------------------------------------------------------------------- generated


@dataclass
class GeneratedSummary:
    """What ``import generated`` did."""

    dataset: str
    model: str
    images: int
    already_present: int

    def describe(self) -> str:
        return f"recorded {self.images} generated images of model {self.model!r} for dataset {self.dataset!r}" + (
            f"; {self.already_present} were already recorded" if self.already_present else ""
        )


def import_generated(
    database: Database,
    store: MediaStore,
    path: Path,
    *,
    dataset: str,
    model: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> GeneratedSummary:
    """Record images made elsewhere: a manifest (``file``, ``case`` or ``prompt``, ``seed``) beside them."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.exists():
        raise InputError("manifest not found", path=path)
    root = path.parent
    text = read_text(path)
    header = next(csv.reader(io.StringIO(text)), [])
    file_col = "file" if "file" in header else "file_name"
    rows = list(csv_rows(path, delimiter=",", required=(file_col,)))
    if "case" not in header and "prompt" not in header:
        raise InputError("missing column: the manifest needs 'case' or 'prompt'", path=path, line=1)
    if not rows:
        raise InputError("no rows in the manifest", path=path)
    with database.session() as session:
        ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
        if ds is None:
            raise NotFoundError(f"no dataset called {dataset!r}; import it first (python app.py datasets)")
        cases = list(session.scalars(select(Case).where(Case.dataset_id == ds.id)))
    by_key = {c.key: c for c in cases}
    by_prompt: dict[str, list[Case]] = {}
    for c in cases:
        by_prompt.setdefault(c.prompt, []).append(c)

    planned: list[tuple[Case, int, Path, int]] = []
    seen: set[tuple[int, int]] = set()
    for line, row in rows:
        image_path = resolve_inside(root, row[file_col], source=path, line=line)
        if row.get("case"):
            case = by_key.get(row["case"].strip())
            if case is None:
                raise InputError(f"unknown case {row['case']!r} in dataset {dataset!r}", path=path, line=line)
        else:
            matches = by_prompt.get((row.get("prompt") or "").strip(), [])
            if not matches:
                raise InputError(f"prompt {row.get('prompt')!r} matches no case of {dataset!r}", path=path, line=line)
            if len(matches) > 1:
                raise InputError(
                    f"prompt matches {len(matches)} cases of {dataset!r}; give the 'case' column",
                    path=path,
                    line=line,
                )
            case = matches[0]
        seed_text = (row.get("seed") or "").strip()
        try:
            seed = int(seed_text) if seed_text else 0
        except ValueError:
            raise InputError(f"seed {seed_text!r} is not an integer", path=path, line=line) from None
        if not 0 <= seed < 2**63:
            raise InputError(f"seed {seed} is out of range", path=path, line=line)
        if (case.id, seed) in seen:
            raise InputError(f"duplicate case {case.key!r} with seed {seed}", path=path, line=line)
        seen.add((case.id, seed))
        if not image_path.exists():
            raise InputError(f"image {row[file_col]!r} not found", path=path, line=line)
        planned.append((case, seed, image_path, line))

    infos = {p: store.put_bytes(read_file_checked(p), source=p, max_pixels=max_pixels) for _, _, p, _ in planned}
    present = 0
    with database.session() as session:
        from db.generated import register_model  # a local import: db.generated imports this module

        m = register_model(session, model, kind=ModelKind.FOLDER, source=str(root), exist_ok=True)
        ensure_image_rows(session, infos.values())
        existing = {
            (g.case_id, g.seed): g
            for g in session.scalars(select(GeneratedImage).where(GeneratedImage.model_id == m.id))
        }
        for case, seed, p, line in planned:
            sha = infos[p].sha256
            if (case.id, seed) in existing:
                if existing[(case.id, seed)].image_sha256 != sha:
                    raise ConflictError(
                        f"{path}, line {line}: case {case.key!r} seed {seed} is already recorded "
                        f"for model {model!r} with another image"
                    )
                present += 1
                continue
            session.add(
                GeneratedImage(
                    case_id=case.id,
                    model_id=m.id,
                    image_sha256=sha,
                    seed=seed,
                    steps=None,
                    guidance=None,
                    parameters={"imported_from": str(p.name)},
                    device="external",
                )
            )
    return GeneratedSummary(dataset=dataset, model=model, images=len(planned) - present, already_present=present)
