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
  (``formats/paper.py`` gives both the original's ``image_id``). When the original is present it is
  checked too and its ``raw__images`` row describes the original; when it is absent, the first
  valid region file (by name) stands in for it. A conversation is kept only when its own image
  file and the row of its ``image_id`` are both valid; otherwise it becomes one
  ``parent_image_rejected`` reject whose record id is its conversation id.
- Image rejects name the image file relative to DIR (as the COCO path does), the reference as
  written in the instruction file as record id, and ``image`` as field.
- Conversation ids are those of ``core/formats``, which depend on the record (id or index, image,
  type) and not on the file it sits in, so a re-imported export keeps its ids. When files are
  read in name order and a later file yields an id already taken: the same turns are the same
  conversation and become a ``conversation_duplicate_id`` reject; different turns are another
  conversation, whose id is re-derived from its file name and the taken id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import polars as pl

from vlit_assets.core.formats.files import load_instruction_file
from vlit_assets.core.formats.records import LLAVA_ID_PREFIX, ImportLimits
from vlit_assets.core.ids import stable_id
from vlit_assets.core.raw.images import ImageJob, ImageReport, inspect_images, resolve_inside
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, RAW_IMAGES, RAW_REJECTS, Table
from vlit_assets.core.shards import ShardMap

INSTRUCTION_SUFFIXES = frozenset({".json", ".jsonl", ".parquet"})
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
    """How core/formats names an imported record in its reject rows."""
    for value in row["source_annotation_ids"] or []:
        if value.startswith(LLAVA_ID_PREFIX):
            return f"{value[len(LLAVA_ID_PREFIX) :]} [{row['variant']}]"
    return f"[{row['variant']}]"


def _merge_files(source: str, results: list[tuple[str, pl.DataFrame]]) -> tuple[pl.DataFrame, list]:
    """Rows of all files in name order, with conversation ids kept unique across files."""
    frames = [rows.with_columns(pl.lit(name).alias(_FILE_COL)) for name, rows in results]
    if not frames:
        return GENERATED_CONVERSATIONS.empty_frame().with_columns(pl.lit("").alias(_FILE_COL)), []
    frame = pl.concat(frames, rechunk=True)
    first = frame["conversation_id"].is_first_distinct()
    if first.all():
        return frame, []
    # ids repeated across files: rare, so handled one row at a time
    ids = frame["conversation_id"].to_list()
    taken = set(ids)
    firsts: dict[str, dict] = {}
    keep = first.to_list()
    rejects = []
    repeated = set(frame.filter(~first)["conversation_id"].to_list())
    for i, row in enumerate(frame.iter_rows(named=True)):
        cid = row["conversation_id"]
        if cid not in repeated:
            continue
        if keep[i]:
            firsts[cid] = row
            continue
        earlier = firsts[cid]
        if earlier["turns"] == row["turns"]:
            detail = (
                f"{row[_FILE_COL]} record {_record_ref(row)} repeats record "
                f"{_record_ref(earlier)} of {earlier[_FILE_COL]} (same id, image and turns)"
            )
            rejects.append(
                _reject(
                    source,
                    row[_FILE_COL],
                    _record_ref(row),
                    "id",
                    "conversation_duplicate_id",
                    detail,
                )
            )
            continue
        new_id = stable_id("conv", source, row[_FILE_COL], cid)
        if new_id in taken:  # a 64-bit hash collision, not bad data
            raise RuntimeError(f"conversation id {new_id} is not unique")
        taken.add(new_id)
        ids[i], keep[i] = new_id, True
    frame = frame.with_columns(pl.Series("conversation_id", ids, pl.String))
    return frame.filter(pl.Series(keep)), rejects


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class _ImageGroup:
    """The files behind one image_id: the original's name and the region images of it."""

    image_id: str
    base: str
    regions: tuple[str, ...]


def _base_name(source: str, image_id: str, name: str) -> str:
    """The name core/formats derived ``image_id`` from: ``name`` itself or its region original."""
    if stable_id("img", source, name) == image_id:
        return name
    path = PurePosixPath(name)
    original = str(path.with_stem(_REGION_SUFFIX.sub("", path.stem)))
    if stable_id("img", source, original) == image_id:
        return original
    raise RuntimeError(  # core/formats changed how it derives image ids
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


class ImageStore:
    """Image bytes from Parquet rows, written once each to ``<root>/<sha256[:2]>/<sha256>.<ext>``.

    The file is then checked like any other image. A name it hands out is looked up here
    and nowhere else (:class:`_Locator`); the extension comes from the file's magic bytes.
    """

    PREFIX = "bytes:sha256/"  # no relative path a user writes starts with this

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.names: set[str] = set()

    def __call__(self, data: bytes) -> str:
        if self.root is None:
            raise RuntimeError("image bytes need an image cache directory (image_cache=)")
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{digest[:2]}/{digest}.{_extension(data)}"
        path = self.root / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: a concurrent run sees the whole file or none
        name = self.PREFIX + relative
        self.names.add(name)
        return name

    def place(self, name: str) -> tuple[Path, str] | None:
        """The cache root and the path under it of a name this store handed out."""
        if name not in self.names or self.root is None:
            return None
        return self.root, name[len(self.PREFIX) :]


_MAGIC = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
)


def _extension(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), "bin")


@dataclass(frozen=True)
class _Locator:
    """Where an image name points: the first root under which it exists.

    Each root confines its own names (``images.resolve_inside``): ``../x.jpg`` is refused under
    every root, even when it would land in another root. Names of stored image bytes are
    found in the store only.
    """

    source_root: Path
    roots: tuple[Path, ...]
    store: ImageStore

    def place(self, name: str) -> tuple[Path, str, bool]:
        """The root to check ``name`` under, the path under it, and whether it exists there."""
        stored = self.store.place(name)
        if stored is not None:
            return stored[0], stored[1], True
        inside = None
        for root in self.roots:
            try:
                path = resolve_inside(root, name)
                found = path is not None and path.exists()
            except (OSError, RuntimeError, ValueError):  # a loop, a name too long for the OS
                continue
            if path is None:
                continue
            if found:
                return root, name, True
            inside = inside or root
        return inside or self.roots[0], name, False

    def shown(self, root: Path, name: str) -> str:
        """``name`` under ``root`` as a reject names it: relative to the source when inside it."""
        path = root / name
        try:
            return path.relative_to(self.source_root).as_posix()
        except ValueError:
            return str(path)


def image_roots(root: Path, images_dir: Path | None = None) -> tuple[Path, ...]:
    """Folders an image name is resolved against, in order (see the module docstring)."""
    if images_dir is not None:
        return (Path(images_dir),)
    root = Path(root)
    return (root / IMAGES_DIR, root) if (root / IMAGES_DIR).is_dir() else (root,)


def _files_to_check(
    frame: pl.DataFrame, groups: list[_ImageGroup], locator: _Locator
) -> dict[str, list[str]]:
    """Every image file to check, with what refers to it (instruction files or a region image)."""
    users = (
        frame.filter(pl.col("image_path").is_not_null())
        .group_by("image_path", maintain_order=True)
        .agg(pl.col(_FILE_COL).unique(maintain_order=True))
    )
    named: dict[str, list[str]] = dict(users.iter_rows())
    for group in groups:
        if group.regions and group.base not in named and locator.place(group.base)[2]:
            named[group.base] = [f"region image {group.regions[0]}"]
    return dict(sorted(named.items()))


def _check_images(
    names: list[str], locator: _Locator, *, max_pixels: int, workers: int, mapper: ShardMap | None
) -> tuple[dict[str, ImageReport], dict[str, tuple[Path, str]]]:
    """Reports by name as written, and where each name was looked up (root, path under it)."""
    places = {n: locator.place(n) for n in names}
    jobs = [
        ImageJob(str(root), rel, _NO_DECLARED_SIZE, _NO_DECLARED_SIZE)
        for root, rel, _ in places.values()
    ]
    reports = {}
    tried = " or ".join(str(r) for r in locator.roots)
    checked = inspect_images(jobs, max_pixels=max_pixels, workers=workers, mapper=mapper)
    for name, report in zip(places, checked, strict=True):
        report = dataclasses.replace(report, file_name=name)
        if report.reason == "image_size_mismatch":
            report = dataclasses.replace(report, reason=None, detail=None)
        elif report.reason == "image_missing" and len(locator.roots) > 1:
            report = dataclasses.replace(report, detail=f"{name!r} is not under {tried}")
        reports[name] = report
    return reports, {n: (root, rel) for n, (root, rel, _) in places.items()}


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
        "file_name": report.file_name,  # as the instruction file names it
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
    source: str,
    locator: _Locator,
    reports: dict[str, ImageReport],
    roots: dict[str, tuple[Path, str]],
    named: dict,
) -> list[dict]:
    out = []
    for name, report in reports.items():
        if report.ok:
            continue
        file = name if name.startswith("/") else locator.shown(*roots[name])
        users = ", ".join(named[name])
        detail = f"{report.detail} (named by {users})"
        out.append(_reject(source, file, name, "image", str(report.reason), detail))
    return out


def _why_rejected(
    image_path: str,
    image_id: str,
    main: dict[str, str | None],
    groups: dict[str, _ImageGroup],
    reports: dict,
) -> str | None:
    """Why a conversation about this image cannot be kept, or None when its images are valid."""
    own = reports[image_path]
    if not own.ok:
        return f"its image {image_path} was rejected ({own.reason})"
    if main[image_id] is None:
        group = groups[image_id]
        failed = reports.get(group.base)
        reason = failed.reason if failed is not None else "no valid file"
        return f"its original image {group.base} was rejected ({reason})"
    return None


def _keep_valid(
    source: str,
    frame: pl.DataFrame,
    pairs: list[dict],
    groups: list[_ImageGroup],
    main: dict[str, str | None],
    reports: dict[str, ImageReport],
    roots: dict[str, tuple[Path, str]],
) -> tuple[pl.DataFrame, list[dict]]:
    """Conversations whose images are valid (image_path made absolute), and rejects for the rest.

    Text-only conversations (no image) are kept as they are.
    """
    by_id = {g.image_id: g for g in groups}
    why = {
        (p["image_path"], p["image_id"]): _why_rejected(
            p["image_path"], p["image_id"], main, by_id, reports
        )
        for p in pairs
    }
    bad = [k for k, v in why.items() if v is not None]
    bad_frame = pl.DataFrame(
        {"image_path": [k[0] for k in bad], "image_id": [k[1] for k in bad]},
        schema={"image_path": pl.String, "image_id": pl.String},
    )
    failed = frame.join(bad_frame, on=["image_path", "image_id"], how="semi")
    kept = frame.join(bad_frame, on=["image_path", "image_id"], how="anti", nulls_equal=False)
    rejects = []
    for row in failed.select(
        _FILE_COL, "conversation_id", "image_path", "image_id", "variant", "source_annotation_ids"
    ).iter_rows(named=True):
        file, cid = row[_FILE_COL], row["conversation_id"]
        reason = why[(row["image_path"], row["image_id"])]
        detail = f"{file} record {_record_ref(row)}: conversation {cid}: {reason}"
        rejects.append(_reject(source, file, cid, "image", "parent_image_rejected", detail))
    # normpath cannot leave the root here: escaping names were rejected above
    absolute = {
        name: os.path.normpath(os.path.join(str(root.resolve()), rel))
        for name, (root, rel) in roots.items()
        if reports[name].ok
    }
    kept = kept.with_columns(
        pl.col("image_path").replace_strict(absolute, default=None, return_dtype=pl.String)
    )
    return kept, rejects


# ---------------------------------------------------------------- the whole source


def _with_run(frame: pl.DataFrame, run_id: str) -> pl.DataFrame:
    return frame.with_columns(pl.lit(run_id, pl.String).alias("run_id"))


def _check_unique(frame: pl.DataFrame, key: str) -> None:
    clashes = frame.filter(pl.col(key).is_duplicated())
    if clashes.height:  # one problem reported twice: a bug here, not in the data
        raise RuntimeError(f"duplicate {key}: {clashes.head(5).to_dicts()}")


def _frame(table: Table, rows: list[dict]) -> pl.DataFrame:
    if not rows:
        return table.empty_frame()
    return pl.DataFrame(
        [{c: r[c] for c in table.columns} for r in rows], schema=table.polars_schema, orient="row"
    )


def collect_import(
    source: str,
    root: Path,
    *,
    images_dir: Path | None = None,
    image_cache: Path | None = None,
    limits: ImportLimits | None = None,
    max_pixels: int = 89_478_485,
    workers: int = 2,
    run_id: str = "",
    mapper: ShardMap | None = None,
) -> ImportCollectResult:
    """Conversations, images and rejects of one import source directory (see the module doc).

    An instruction file that is unusable as a whole raises
    ``formats.records.InstructionFormatError`` naming it; a bad record or image only becomes
    reject rows. A ``mapper`` checks the images as shards instead of ``workers`` processes.
    """
    root = Path(root)
    store = ImageStore(image_cache)
    locator = _Locator(root.resolve(), image_roots(root, images_dir), store)
    results, rejects = [], []
    for path in find_instruction_files(root):
        loaded = load_instruction_file(path, source=source, limits=limits, image_store=store)
        results.append((path.name, loaded.rows))
        rejects.append(loaded.rejects)
    frame, clashes = _merge_files(source, results)
    pairs = (
        frame.filter(pl.col("image_path").is_not_null())
        .select("image_id", "image_path")
        .unique(maintain_order=True)
        .to_dicts()
    )
    groups = _groups(source, pairs)
    named = _files_to_check(frame, groups, locator)
    reports, roots = _check_images(
        list(named), locator, max_pixels=max_pixels, workers=workers, mapper=mapper
    )
    main = {g.image_id: _main_file(g, reports) for g in groups}
    images = [_image_row(source, g, reports[name]) for g in groups if (name := main[g.image_id])]
    kept, cascaded = _keep_valid(source, frame, pairs, groups, main, reports, roots)
    reject_rows = [
        *clashes,
        *_image_rejects(source, locator, reports, roots, named),
        *cascaded,
    ]
    all_rejects = pl.concat(
        [*(r for r in rejects if r.height), _frame(RAW_REJECTS, reject_rows)], how="vertical"
    )
    result = ImportCollectResult(
        conversations=_with_run(kept.select(list(GENERATED_CONVERSATIONS.columns)), run_id),
        images=_with_run(_frame(RAW_IMAGES, images), run_id).sort("file_name"),
        rejects=_with_run(all_rejects, run_id).sort("file", "record_id", "reason"),
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
