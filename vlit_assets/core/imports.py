"""Import sources: an existing instruction dataset directory turned into raw-stage tables.

Quality control must also run on instruction data the pipeline did not generate. An import
source is a directory DIR holding one or more instruction files at its top level (``*.json``,
``*.jsonl``; each LLaVA or paper release format, parsed by :mod:`vlit_assets.core.formats`) and
the images they name, under ``DIR/images/`` when that folder exists, else in DIR itself.
:func:`collect_import` returns the imported conversations, one ``raw__images`` row per valid
image they are about and ``raw__rejects`` rows for everything that could not be imported.

Choices that callers rely on:

- Every image a conversation names is checked by :func:`images.inspect_images`, the code that
  checks COCO images. Instruction files declare no image size, so no size mismatch is raised.
  Identical bytes under two names are not rejected (the COCO path does): two names are two
  images to the conversations that use them, and exact duplicates are the dedup stage's call.
- A paper region image ``<stem>_<k>.jpg`` belongs to the original image ``<stem>.jpg``
  (formats.py gives both the original's ``image_id``). When the original is present it is
  checked too and its ``raw__images`` row describes the original; when it is absent, the first
  valid region file (by name) stands in for it. A conversation is kept only when its own image
  file and the row of its ``image_id`` are both valid; otherwise it becomes one
  ``parent_image_rejected`` reject whose record id is its conversation id.
- Image rejects name the image file relative to DIR (as the COCO path does), the reference as
  written in the instruction file as record id, and ``image`` as field.
- Conversation ids are those of formats.py, which depend on the record (id or index, image,
  type) and not on the file it sits in, so a re-imported export keeps its ids. When files are
  read in name order and a later file yields an id already taken: the same turns are the same
  conversation and become a ``conversation_duplicate_id`` reject; different turns are another
  conversation, whose id is re-derived from its file name and the taken id.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import polars as pl

from vlit_assets.core.formats import LLAVA_ID_PREFIX, load_instruction_file
from vlit_assets.core.ids import stable_id
from vlit_assets.core.images import ImageJob, ImageReport, inspect_images, resolve_inside
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, RAW_IMAGES, RAW_REJECTS, Table

INSTRUCTION_SUFFIXES = frozenset({".json", ".jsonl"})
IMAGES_DIR = "images"

# Instruction files declare no size: jobs carry an impossible one and the resulting
# image_size_mismatch (always the last check, so every fact is filled in) counts as a pass.
_NO_DECLARED_SIZE = -1
_REGION_SUFFIX = re.compile(r"_\d+$")
# COCO names: optional "COCO_<split><year>_", the zero-padded 12-digit id, optional "_<region>"
_COCO_NAME = re.compile(r"^(?:COCO_[A-Za-z]+\d{4}_)?(\d{12})(?:_\d+)?$")
_FILE_COL = "_file"


def coco_id_from_name(name: str) -> int | None:
    """The COCO image id a file name carries, or None when it follows no COCO naming.

    ``COCO_train2014_000000288586.jpg`` -> 288586, ``000000247884_0.jpg`` (a region image) ->
    247884. Only the 12-digit zero-padded id COCO uses counts: ``img_5.jpg`` has no COCO id.
    """
    match = _COCO_NAME.match(PurePosixPath(name).stem)
    return int(match.group(1)) if match else None


def _has_coco_captions(root: Path) -> bool:
    return any((root / "annotations").glob("captions_*.json"))


def _instruction_files(root: Path) -> list[Path]:
    # hidden files are editor and OS litter (macOS writes "._x.json" beside every x.json)
    return sorted(
        p
        for p in root.iterdir()
        if p.suffix.lower() in INSTRUCTION_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def is_import_source(root: Path) -> bool:
    """True when ``root`` is no COCO-layout source but holds instruction files at its top."""
    root = Path(root)
    if not root.is_dir() or _has_coco_captions(root):
        return False
    return bool(_instruction_files(root))


def find_instruction_files(root: Path) -> list[Path]:
    """The instruction files at the top of an import source, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: import source directory does not exist")
    files = _instruction_files(root)
    if not files:
        raise FileNotFoundError(
            f"{root}: no instruction files (*.json, *.jsonl) at the top of the directory"
        )
    return files


def image_root_of(root: Path) -> Path:
    """Where the images of an import source are: ``root/images`` if it exists, else ``root``."""
    root = Path(root)
    return root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root


@dataclass
class ImportCollectResult:
    conversations: pl.DataFrame  # generated__conversations, generator="import"
    images: pl.DataFrame  # raw__images
    rejects: pl.DataFrame  # raw__rejects

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name).height for name in ("conversations", "images", "rejects")}

    def rejects_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(self.rejects["reason"].to_list()).items()))


# ---------------------------------------------------------------- instruction files


def _reject(source: str, file: str, record_id: str, field: str, reason: str, detail: str) -> dict:
    return {
        "reject_id": stable_id("rej", source, file, record_id, field, reason),
        "source": source,
        "file": file,
        "record_id": record_id,
        "field": field,
        "reason": reason,
        "detail": detail,
        "run_id": None,
    }


def _record_ref(row: dict) -> str:
    """How formats.py names an imported record in its reject rows."""
    for value in row["source_annotation_ids"] or []:
        if value.startswith(LLAVA_ID_PREFIX):
            return f"{value[len(LLAVA_ID_PREFIX) :]} [{row['variant']}]"
    return f"[{row['variant']}]"


class _Conversations:
    """Rows of all files in name order, with conversation ids kept unique across files."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.rows: list[dict] = []
        self.rejects: list[dict] = []
        self._first: dict[str, dict] = {}

    def add_file(self, path: Path) -> None:
        result = load_instruction_file(path, source=self.source)
        self.rejects.extend(result.rejects.to_dicts())
        for row in result.rows.to_dicts():
            row[_FILE_COL] = path.name
            self._add(row)

    def _add(self, row: dict) -> None:
        cid = row["conversation_id"]
        first = self._first.get(cid)
        if first is None:
            self._first[cid] = row
            self.rows.append(row)
            return
        if first["turns"] == row["turns"]:
            detail = (
                f"{row[_FILE_COL]} record {_record_ref(row)} repeats record "
                f"{_record_ref(first)} of {first[_FILE_COL]} (same id, image and turns)"
            )
            self.rejects.append(
                _reject(
                    self.source,
                    row[_FILE_COL],
                    _record_ref(row),
                    "id",
                    "conversation_duplicate_id",
                    detail,
                )
            )
            return
        row["conversation_id"] = stable_id("conv", self.source, row[_FILE_COL], cid)
        if row["conversation_id"] in self._first:  # a 64-bit hash collision, not bad data
            raise RuntimeError(f"conversation id {row['conversation_id']} is not unique")
        self._first[row["conversation_id"]] = row
        self.rows.append(row)


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class _ImageGroup:
    """The files behind one image_id: the original's name and the region images of it."""

    image_id: str
    base: str
    regions: tuple[str, ...]


def _base_name(source: str, image_id: str, name: str) -> str:
    """The name formats.py derived ``image_id`` from: ``name`` itself or its region original."""
    if stable_id("img", source, name) == image_id:
        return name
    path = PurePosixPath(name)
    original = str(path.with_stem(_REGION_SUFFIX.sub("", path.stem)))
    if stable_id("img", source, original) == image_id:
        return original
    raise RuntimeError(  # formats.py changed how it derives image ids
        f"image_id {image_id} of {name!r} is neither stable_id('img', {source!r}, {name!r}) "
        f"nor that of its region original {original!r}"
    )


def _groups(source: str, rows: list[dict]) -> list[_ImageGroup]:
    regions: dict[str, set[str]] = {}
    bases: dict[str, str] = {}
    for row in rows:
        image_id, name = row["image_id"], row["image_path"]
        base = bases.setdefault(image_id, _base_name(source, image_id, name))
        found = regions.setdefault(image_id, set())
        if name != base:
            found.add(name)
    return [
        _ImageGroup(image_id, bases[image_id], tuple(sorted(regions[image_id])))
        for image_id in sorted(bases)
    ]


def _present(image_root: Path, name: str) -> bool:
    try:
        path = resolve_inside(image_root, name)
    except (OSError, RuntimeError):
        return False
    return path is not None and path.exists()


def _files_to_check(
    rows: list[dict], groups: list[_ImageGroup], image_root: Path
) -> dict[str, list[str]]:
    """Every image file to check, with what refers to it (instruction files or a region image)."""
    named: dict[str, list[str]] = {}
    for row in rows:
        users = named.setdefault(row["image_path"], [])
        if row[_FILE_COL] not in users:
            users.append(row[_FILE_COL])
    for group in groups:
        if group.regions and group.base not in named and _present(image_root, group.base):
            named[group.base] = [f"region image {group.regions[0]}"]
    return dict(sorted(named.items()))


def _check_images(
    names: list[str], image_root: Path, *, max_pixels: int, workers: int
) -> dict[str, ImageReport]:
    jobs = [ImageJob(str(image_root), n, _NO_DECLARED_SIZE, _NO_DECLARED_SIZE) for n in names]
    reports = inspect_images(jobs, max_pixels=max_pixels, workers=workers)
    return {
        report.file_name: dataclasses.replace(report, reason=None, detail=None)
        if report.reason == "image_size_mismatch"
        else report
        for report in reports
    }


def _main_file(group: _ImageGroup, reports: dict[str, ImageReport]) -> str | None:
    """The file whose facts make the image's row; None when the image is rejected."""
    base = reports.get(group.base)
    if base is not None and base.reason != "image_missing":
        return group.base if base.ok else None
    return next((r for r in group.regions if reports[r].ok), None)


def _image_row(source: str, group: _ImageGroup, report: ImageReport) -> dict:
    return {
        "image_id": group.image_id,
        "source": source,
        "coco_image_id": coco_id_from_name(group.base),
        "file_name": report.file_name,
        "width": report.width,
        "height": report.height,
        "oriented_width": report.oriented_width,
        "oriented_height": report.oriented_height,
        "format": report.format,
        "mode": report.mode,
        "bytes": report.bytes,
        "sha256": report.sha256,
        "run_id": None,
    }


def _image_rejects(
    source: str, root: Path, image_root: Path, reports: dict[str, ImageReport], named: dict
) -> list[dict]:
    prefix = "" if image_root == root else f"{image_root.name}/"
    out = []
    for name, report in reports.items():
        if report.ok:
            continue
        file = name if name.startswith("/") else prefix + name
        users = ", ".join(named[name])
        detail = f"{report.detail} (named by {users})"
        out.append(_reject(source, file, name, "image", str(report.reason), detail))
    return out


def _why_rejected(
    row: dict, main: dict[str, str | None], groups: dict[str, _ImageGroup], reports: dict
) -> str | None:
    """Why a conversation cannot be kept, or None when its images are valid."""
    own = reports[row["image_path"]]
    if not own.ok:
        return f"its image {row['image_path']} was rejected ({own.reason})"
    if main[row["image_id"]] is None:
        group = groups[row["image_id"]]
        failed = reports.get(group.base)
        reason = failed.reason if failed is not None else "no valid file"
        return f"its original image {group.base} was rejected ({reason})"
    return None


def _keep_valid(
    source: str,
    rows: list[dict],
    groups: list[_ImageGroup],
    main: dict[str, str | None],
    reports: dict[str, ImageReport],
    image_root: Path,
) -> tuple[list[dict], list[dict]]:
    """Conversations whose images are valid (image_path made absolute), and rejects for the rest."""
    by_id = {g.image_id: g for g in groups}
    resolved_root = str(image_root.resolve())
    kept, rejects = [], []
    for row in rows:
        why = _why_rejected(row, main, by_id, reports)
        if why is None:
            # normpath cannot leave the root here: escaping names were rejected above
            path = os.path.normpath(os.path.join(resolved_root, row["image_path"]))
            kept.append({**row, "image_path": path})
            continue
        file, cid = row[_FILE_COL], row["conversation_id"]
        detail = f"{file} record {_record_ref(row)}: conversation {cid}: {why}"
        rejects.append(_reject(source, file, cid, "image", "parent_image_rejected", detail))
    return kept, rejects


# ---------------------------------------------------------------- the whole source


def _frame(table: Table, rows: list[dict]) -> pl.DataFrame:
    if not rows:
        return table.empty_frame()
    return pl.DataFrame(
        [{c: r[c] for c in table.columns} for r in rows], schema=table.polars_schema, orient="row"
    )


def _with_run(frame: pl.DataFrame, run_id: str) -> pl.DataFrame:
    return frame.with_columns(pl.lit(run_id, pl.String).alias("run_id"))


def _check_unique(frame: pl.DataFrame, key: str) -> None:
    clashes = frame.filter(pl.col(key).is_duplicated())
    if clashes.height:  # one problem reported twice: a bug here, not in the data
        raise RuntimeError(f"duplicate {key}: {clashes.head(5).to_dicts()}")


def collect_import(
    source: str,
    root: Path,
    *,
    max_pixels: int = 89_478_485,
    workers: int = 2,
    run_id: str = "",
) -> ImportCollectResult:
    """Conversations, images and rejects of one import source directory (see the module doc).

    An instruction file that is unusable as a whole raises ``formats.InstructionFormatError``
    naming it; a bad record or image only becomes reject rows.
    """
    root = Path(root)
    image_root = image_root_of(root)
    conversations = _Conversations(source)
    for path in find_instruction_files(root):
        conversations.add_file(path)
    rows, rejects = conversations.rows, conversations.rejects
    groups = _groups(source, rows)
    named = _files_to_check(rows, groups, image_root)
    reports = _check_images(list(named), image_root, max_pixels=max_pixels, workers=workers)
    main = {g.image_id: _main_file(g, reports) for g in groups}
    images = [_image_row(source, g, reports[name]) for g in groups if (name := main[g.image_id])]
    kept, cascaded = _keep_valid(source, rows, groups, main, reports, image_root)
    rejects = [*rejects, *_image_rejects(source, root, image_root, reports, named), *cascaded]
    result = ImportCollectResult(
        conversations=_with_run(_frame(GENERATED_CONVERSATIONS, kept), run_id),
        images=_with_run(_frame(RAW_IMAGES, images), run_id).sort("file_name"),
        rejects=_with_run(_frame(RAW_REJECTS, rejects), run_id).sort("file", "record_id", "reason"),
    )
    _check_unique(result.conversations, "conversation_id")
    _check_unique(result.rejects, "reject_id")
    return result


def link_annotations(
    imported_images: pl.DataFrame,
    annotated_images: pl.DataFrame,
    frames: dict[str, pl.DataFrame],
    *,
    source: str,
) -> dict[str, pl.DataFrame]:
    """Re-key another source's annotation frames onto the imported images, by COCO image id.

    ``frames`` are raw tables of the annotating source; those with ``image_id`` (captions,
    objects, tags) keep only the images the import uses. Every frame's ``source`` becomes the
    importing source, since metrics judge a conversation by the annotations of its own source.
    """
    mapping = (
        imported_images.select("image_id", "coco_image_id")
        .filter(pl.col("coco_image_id").is_not_null())
        .join(
            annotated_images.select(
                pl.col("image_id").alias("annotated_image_id"), "coco_image_id"
            ),
            on="coco_image_id",
        )
        .select("image_id", "annotated_image_id")
    )
    linked: dict[str, pl.DataFrame] = {}
    for name, frame in frames.items():
        if "source" in frame.columns:
            frame = frame.with_columns(pl.lit(source).alias("source"))
        if "image_id" not in frame.columns:
            linked[name] = frame
            continue
        linked[name] = (
            frame.rename({"image_id": "annotated_image_id"})
            .join(mapping, on="annotated_image_id")
            .drop("annotated_image_id")
            .select(frame.columns)
        )
    return linked
