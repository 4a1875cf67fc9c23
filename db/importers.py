"""Import datasets (real images + prompts) and externally generated images, all or nothing.

Each format has a reader that turns its files into :class:`CaseRecord` rows and checks them (columns,
encodings, paths that must stay inside the dataset folder). Every image is then read and validated before
anything is written; the database rows go in one transaction. An error names the file and the line.

Formats: ``medvqa-gi``, ``rocov2``, ``roco``, ``csv``, ``imagefolder`` and ``generated``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import ConflictError, InputError, NotFoundError
from db.media import DEFAULT_MAX_PIXELS, ImageInfo, MediaStore, read_file_checked
from db.models import Case, Dataset, Domain, GeneratedImage, ImageBlob, ModelKind
from db.session import Database

DATASET_FORMATS = ("medvqa-gi", "rocov2", "roco", "csv", "imagefolder")
MAX_PROMPT_CHARS = 4000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class CaseRecord:
    """One case parsed from a dataset's files, before its image is read."""

    key: str
    prompt: str
    image_path: Path
    source: str
    line: int | None
    labels: dict[str, Any] = field(default_factory=dict)
    split: str | None = None


@dataclass
class ImportSummary:
    """What an import did."""

    dataset: str
    format: str
    cases: int
    images: int
    new_images: int
    skipped_missing: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    merged_existing: int = 0

    def describe(self) -> str:
        """One human line."""
        text = f"imported {self.cases} cases with {self.images} images into dataset {self.dataset!r}"
        text += f" (format {self.format})"
        if self.merged_existing:
            text += f"; {self.merged_existing} cases were already there"
        if self.skipped_missing:
            text += f"; skipped {self.skipped_missing} missing images"
            if self.skipped_examples:
                text += f" (e.g. {', '.join(self.skipped_examples)})"
        return text


# ----------------------------------------------------------------------------------------------- helpers


def read_text(path: Path) -> str:
    """Read a UTF-8 text file (BOM allowed); a bad byte is reported with its line number."""
    raw = read_file_checked(path, max_bytes=512 * 1024 * 1024) if path.exists() else None
    if raw is None:
        raise InputError("file not found", path=path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"bad encoding: not UTF-8 (byte 0x{raw[exc.start]:02x})", path=path, line=line) from None


def resolve_inside(root: Path, name: str, *, source: Path, line: int | None) -> Path:
    """Resolve ``name`` under ``root``; refuse absolute paths, ``..`` and symlinks that lead outside."""
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


def read_rocov2(path: Path, images_dir: Path | None) -> tuple[list[CaseRecord], Path]:
    """ROCOv2 ``{split}_captions.csv`` (``ID,Caption``) + ``{split}_concepts.csv`` + images named by ID."""
    if path.is_dir():
        found = sorted(path.glob("*_captions.csv"))
        if len(found) != 1:
            raise InputError(f"expected one *_captions.csv in the folder, found {len(found)}", path=path)
        path = found[0]
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


def _tab_table(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    table: dict[str, list[str]] = {}
    for line in read_text(path).splitlines():
        if line.strip():
            ident, *rest = [p.strip() for p in line.split("\t")]
            table[ident] = [r for r in rest if r]
    return table


def read_roco(path: Path, images_dir: Path | None) -> tuple[list[CaseRecord], Path]:
    """ROCO v1 ``captions.txt`` (``ROCO_ID<TAB>caption``); file names from ``dlinks.txt``/``licences.txt``."""
    if path.is_dir():
        path = path / "captions.txt"
    folder = path.parent
    root = images_dir or (folder / "images" if (folder / "images").is_dir() else folder)
    names: dict[str, str] = {}
    for mapping in ("dlinks.txt", "licences.txt"):
        for ident, fields in _tab_table(folder / mapping).items():
            for f in fields:
                if f.lower().endswith(IMAGE_SUFFIXES) and "/" not in f:
                    names.setdefault(ident, f)
    cuis, keywords = _tab_table(folder / "cuis.txt"), _tab_table(folder / "keywords.txt")
    licences = _tab_table(folder / "licences.txt")
    records: list[CaseRecord] = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        ident, sep, caption = line.partition("\t")
        if not sep:
            raise InputError("expected 'ROCO_ID<TAB>caption'", path=path, line=n)
        ident = ident.strip()
        name = names.get(ident, f"{ident}.jpg")
        labels: dict[str, Any] = {
            "roco_id": ident,
            "cuis": cuis.get(ident, []),
            "keywords": keywords.get(ident, []),
        }
        if licences.get(ident):
            labels["license"] = next((x for x in licences[ident] if not x.lower().endswith(IMAGE_SUFFIXES)), "")
        records.append(
            CaseRecord(
                key=ident,
                prompt=clean_prompt(caption, source=path, line=n),
                image_path=resolve_inside(root, name, source=path, line=n),
                source=name,
                line=n,
                labels=labels,
            )
        )
    return records, root


def read_csv_folder(path: Path, file_column: str, text_column: str) -> tuple[list[CaseRecord], Path]:
    """``metadata.csv`` / ``metadata.jsonl`` (Hugging Face imagefolder: ``file_name``, ``text``)."""
    if path.is_dir():
        candidates = [path / "metadata.csv", path / "metadata.jsonl"]
        existing = [c for c in candidates if c.exists()]
        if not existing:
            raise InputError("no metadata.csv or metadata.jsonl in the folder", path=path)
        path = existing[0]
    root = path.parent
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON ({exc.msg})", path=path, line=n) from None
            if not isinstance(obj, dict):
                raise InputError("each line must be a JSON object", path=path, line=n)
            for col in (file_column, text_column):
                if col not in obj:
                    raise InputError(f"missing field {col!r}", path=path, line=n)
            rows.append((n, obj))
    else:
        rows = list(csv_rows(path, delimiter=",", required=(file_column, text_column)))
    records: list[CaseRecord] = []
    for n, row in rows:
        name = str(row[file_column])
        extras = {k: v for k, v in row.items() if k not in (file_column, text_column) and v not in (None, "")}
        records.append(
            CaseRecord(
                key=name,
                prompt=clean_prompt(str(row[text_column] or ""), source=path, line=n),
                image_path=resolve_inside(root, name, source=path, line=n),
                source=name,
                line=n,
                labels=extras,
                split=str(extras.pop("split")) if "split" in extras else None,
            )
        )
    return records, root


# ----------------------------------------------------------------------------------------------- writing


def _check_unique_keys(records: list[CaseRecord], source: Path) -> None:
    seen: dict[str, int | None] = {}
    for r in records:
        if r.key in seen:
            raise InputError(f"duplicate id {r.key!r} (first at line {seen[r.key]})", path=source, line=r.line)
        seen[r.key] = r.line


def _load_images(records: list[CaseRecord], store: MediaStore, max_pixels: int) -> dict[Path, ImageInfo]:
    infos: dict[Path, ImageInfo] = {}
    for r in records:
        if r.image_path in infos:
            continue
        try:
            data = read_file_checked(r.image_path)
        except InputError as exc:
            raise InputError(f"{exc} (listed as {r.source!r})", path=r.image_path) from None
        infos[r.image_path] = store.put_bytes(data, source=r.image_path, max_pixels=max_pixels)
    return infos


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
    default_domain = {"medvqa-gi": Domain.GI, "rocov2": Domain.RADIOLOGY, "roco": Domain.RADIOLOGY}
    try:
        dom = Domain(domain) if domain else default_domain.get(fmt, Domain.OTHER)
    except ValueError:
        raise InputError(f"unknown domain {domain!r}; choose gi, radiology or other") from None

    if fmt == "medvqa-gi":
        records, root = read_medvqa_gi(path, images_dir)
    elif fmt == "rocov2":
        records, root = read_rocov2(path, images_dir)
    elif fmt == "roco":
        records, root = read_roco(path, images_dir)
    else:
        records, root = read_csv_folder(path, file_column, text_column)
    if not records:
        raise InputError("no cases found", path=path)
    _check_unique_keys(records, path)

    missing = sorted({r.source for r in records if not r.image_path.exists()})
    skipped_examples = missing[:3]
    if missing and not skip_missing:
        listed = len({r.source for r in records})
        raise InputError(
            f"{len(missing)} of {listed} images listed are missing from {root} (e.g. {', '.join(missing[:3])}); "
            "pass --skip-missing to import only the images present",
            path=path,
        )
    missing_set = set(missing)
    records = [r for r in records if r.source not in missing_set]
    if limit is not None:
        records = records[:limit]
    if not records:
        raise InputError(f"none of the listed images is present in {root}", path=path)

    with database.session() as session:
        existing = session.scalar(select(Dataset).where(Dataset.name == name))
        if existing is not None and not merge:
            raise ConflictError(f"dataset {name!r} already exists; choose another --name or pass --merge")

    infos = _load_images(records, store, max_pixels)

    with database.session() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        known: dict[str, Case] = {}
        if dataset is None:
            dataset = Dataset(name=name, domain=dom, format=fmt, source=str(path))
            session.add(dataset)
            session.flush()
        else:
            known = {c.key: c for c in session.scalars(select(Case).where(Case.dataset_id == dataset.id))}
        new_images = ensure_image_rows(session, infos.values())
        merged = 0
        for r in records:
            sha = infos[r.image_path].sha256
            if r.key in known:
                old = known[r.key]
                if old.prompt != r.prompt or old.image_sha256 != sha:
                    raise ConflictError(
                        f"{path}, line {r.line}: case {r.key!r} exists in {name!r} with another prompt or image;"
                        " refusing to merge"
                    )
                merged += 1
                continue
            session.add(
                Case(
                    dataset_id=dataset.id,
                    key=r.key,
                    prompt=r.prompt,
                    image_sha256=sha,
                    source_file=r.source,
                    labels=r.labels,
                    split=r.split,
                )
            )
    return ImportSummary(
        dataset=name,
        format=fmt,
        cases=len(records) - merged,
        images=len(infos),
        new_images=new_images,
        skipped_missing=len(missing),
        skipped_examples=skipped_examples if missing else [],
        merged_existing=merged,
    )


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
