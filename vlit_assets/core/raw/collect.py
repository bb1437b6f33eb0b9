"""Data collection: COCO annotation loading, record validation, image checks, tags and sampling.

A source is a COCO-layout directory: ``annotations/captions_<split>.json``, optionally
``annotations/instances_<split>.json`` (without it a source has no objects or categories), and
the images under ``<split>/``. :func:`collect_source` turns it into the ``raw__*`` frames of
``schemas.py``. A problem in one record becomes one ``raw__rejects`` row and every good record
still proceeds; a file that is not COCO-shaped at all raises :class:`SourceFormatError`.

Reading large annotation files. ``json.load`` of a 400 MB instances file builds several GB of
Python objects, most of them ``segmentation`` polygons we never use. Two paths avoid that:

1. Fast path: pyarrow's JSON reader parses the whole file as one record with an explicit
   schema of only the fields we keep (lists of structs); everything else, segmentation
   included, is parsed but never materialized. The two files are read on two threads.
2. When pyarrow refuses the file (one value of the wrong type anywhere, a missing key, not an
   object, ...), a vectorised bracket scan (numpy, 16 MB at a time) finds the byte span of
   every record of the top-level arrays, the top-level skeleton (those arrays emptied) is
   parsed with ``json`` to name what is wrong with the file's shape, and each array is streamed
   in 64 MB groups of newline-delimited records through pyarrow again. Only a group pyarrow
   still refuses is re-read record by record with ``json.loads``, which says exactly which
   record and field is wrong.

Measured on 100k images / 500k captions / 700k objects (benchmarks/collect.py): about 4 s to
load and validate, 1.3 GB peak RSS for the whole ingestion; one mistyped record in the 400 MB
file costs about 4 s more.

Why the scan stays here while instruction files (formats.py) use ijson: ijson hands back every
record as Python objects, segmentation polygons included, where the scan hands 64 MB groups of
raw bytes to pyarrow and only a refused group is parsed in Python. On LLaVA records, which are
all kept, ijson wins (a 130 MB list: 0.5 s with ijson, 1.5 s scan + orjson); on COCO files,
whose bulk is polygons we drop, the scan is the cheaper way to find the records. Bytes pyarrow
would pass through unchecked (invalid UTF-8, a lone ``\\uD800`` escape) send their group to
the Python path, which rejects the record holding them.

Which record wins. The captions file declares the images; the instances file's image list
only adds ids the captions file does not declare (such images have no captions and are
rejected as ``image_without_captions``). For a duplicated id the first occurrence in file order
is kept and one reject row names the others. Each bad record gets exactly one reject row: the
first failing check in the order its validator lists them.
"""

from __future__ import annotations

import io
import json
import math
import mmap
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pa_json

from vlit_assets.core.formats import bad_text
from vlit_assets.core.ids import stable_id, stable_ids
from vlit_assets.core.raw.images import ImageJob, inspect_images
from vlit_assets.core.schemas import (
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_REJECTS,
    RAW_TAGS,
    Table,
)

BOX_TOLERANCE_PX: float = 1.0
"""How far a box may pass the image edge: COCO boxes come from float polygons and a few end a
fraction of a pixel outside the image. Shared with the raw GX suite."""


MAX_CAPTION_CHARS: int = 4_096
"""Longer captions are rejected (annotation_bad_field): COCO captions run to about 250
characters, and a caption becomes the text of generated turns."""

MAX_NAME_BYTES: int = 255
"""The longest file or folder name Linux file systems store; a longer one cannot exist."""


RAW_REJECT_REASONS: tuple[str, ...] = (
    "image_missing",
    "image_empty",
    "image_undecodable",
    "image_truncated",
    "image_decompression_bomb",
    "image_unsupported_mode",
    "image_duplicate_bytes",
    "image_path_escapes_root",
    "image_size_mismatch",
    "image_duplicate_id",
    "image_without_captions",
    "annotation_unknown_image",
    "annotation_unknown_category",
    "annotation_duplicate_id",
    "category_duplicate_id",
    "annotation_bad_field",
    "bbox_nonpositive",
    "bbox_outside_image",
    "caption_empty",
    "parent_image_rejected",
)
"""The codes of ``schemas.REJECT_REASONS`` that collection can write."""


class SourceFormatError(ValueError):
    """An annotation file is not COCO-shaped; the message names the file and the key."""


@dataclass(frozen=True)
class CocoFiles:
    root: Path
    split: str
    captions: Path
    instances: Path | None
    image_dir: Path


@dataclass(frozen=True)
class CollectConfig:
    split: str | None = None
    max_pixels: int = 89_478_485  # Pillow's own default limit
    workers: int = 2
    absent_k: int = 8


@dataclass
class AnnotationTables:
    """Validated annotation records of a source, before any image file is opened."""

    images: pl.DataFrame  # coco_image_id, file_name, width, height (declared)
    captions: pl.DataFrame  # coco_caption_id, coco_image_id, caption
    objects: pl.DataFrame  # coco_annotation_id, coco_image_id, category_id, bbox_*, area, iscrowd
    categories: pl.DataFrame  # category_id, name, supercategory
    rejects: pl.DataFrame  # raw__rejects rows
    captions_file: str  # paths relative to the source root, as written in reject rows
    instances_file: str | None


@dataclass
class CollectResult:
    images: pl.DataFrame
    captions: pl.DataFrame
    objects: pl.DataFrame
    categories: pl.DataFrame
    tags: pl.DataFrame
    rejects: pl.DataFrame

    def counts(self) -> dict[str, int]:
        return {
            name: getattr(self, name).height
            for name in ("images", "captions", "objects", "categories", "tags", "rejects")
        }

    def rejects_by_reason(self) -> dict[str, int]:
        if not self.rejects.height:
            return {}
        counts = self.rejects.group_by("reason").len().sort("reason")
        return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))


# --------------------------------------------------------------------------------------------
# Finding the files


def find_coco_files(root: Path, split: str | None = None) -> CocoFiles:
    """Locate the annotation files and image directory of a COCO-layout source."""
    root = Path(root)
    ann_dir = root / "annotations"
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{root}: no annotations/ directory (expected a COCO layout)")
    if split is None:
        found = sorted(
            p.name[len("captions_") : -len(".json")] for p in ann_dir.glob("captions_*.json")
        )
        if len(found) != 1:
            raise FileNotFoundError(
                f"{ann_dir}: expected exactly one captions_<split>.json to detect the split, "
                f"found {found or 'none'}; pass the split explicitly"
            )
        split = found[0]
    captions = ann_dir / f"captions_{split}.json"
    if not captions.is_file():
        raise FileNotFoundError(f"{captions} does not exist")
    image_dir = root / split
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image directory of split {split!r} does not exist")
    instances = ann_dir / f"instances_{split}.json"
    return CocoFiles(root, split, captions, instances if instances.is_file() else None, image_dir)


# --------------------------------------------------------------------------------------------
# Reading COCO JSON without materializing it

_CHUNK_BYTES = 1 << 24
_WHOLE_FILE_LIMIT = 1 << 30  # pyarrow reads a file whole only below its 2 GiB block limit
_BLOCK_BYTES = 1 << 24
_GROUP_BYTES = 1 << 26
_QUOTE, _BACKSLASH, _OPEN, _CLOSE = 1, 2, 3, 4
_CLASS = np.zeros(256, np.uint8)
for _ch, _cls in ((b'"', _QUOTE), (b"\\", _BACKSLASH), (b"[", _OPEN), (b"{", _OPEN)):
    _CLASS[_ch[0]] = _cls
for _ch in (b"]", b"}"):
    _CLASS[_ch[0]] = _CLOSE
_WHITESPACE = np.array([32, 9, 10, 13], np.uint8)


@dataclass(frozen=True)
class _Brackets:
    """Brackets outside strings: those opening depth 1-3 and those closing back to depth 0-2."""

    pos: np.ndarray  # byte offsets
    depth: np.ndarray  # nesting depth after the bracket
    opens: np.ndarray  # True for [ or {


def _escaped_quotes(buf: np.ndarray, quotes: np.ndarray, carried_backslashes: int) -> np.ndarray:
    """Mask of the quotes preceded by an odd run of backslashes (escapes are rare: a loop)."""
    escaped = np.zeros(len(quotes), bool)
    before = np.where(quotes > 0, buf[np.maximum(quotes - 1, 0)] == 92, carried_backslashes > 0)
    for i in np.flatnonzero(before).tolist():
        p, run = int(quotes[i]) - 1, 0
        while p >= 0 and buf[p] == 92:
            run, p = run + 1, p - 1
        if p < 0:
            run += carried_backslashes
        escaped[i] = run % 2 == 1
    return escaped


def _trailing_backslashes(buf: np.ndarray, carried: int) -> int:
    run = 0
    while run < len(buf) and buf[len(buf) - 1 - run] == 92:
        run += 1
    return carried + run if run == len(buf) else run


def _scan_brackets(data: np.ndarray, path: Path) -> _Brackets:
    pos_parts, depth_parts, open_parts = [], [], []
    depth, in_string, backslashes, lowest = 0, 0, 0, 0
    for off in range(0, len(data), _CHUNK_BYTES):
        buf = data[off : off + _CHUNK_BYTES]
        at = np.flatnonzero(_CLASS[buf])
        kind = _CLASS[buf[at]]
        if backslashes or (kind == _BACKSLASH).any():
            quote_at = np.flatnonzero(kind == _QUOTE)
            drop = kind == _BACKSLASH
            drop[quote_at[_escaped_quotes(buf, at[quote_at], backslashes)]] = True
            at, kind = at[~drop], kind[~drop]
            backslashes = _trailing_backslashes(buf, backslashes)
        is_quote = kind == _QUOTE
        quotes_before = np.cumsum(is_quote) - is_quote + in_string
        outside = ~is_quote & (quotes_before % 2 == 0)
        in_string = int((in_string + int(is_quote.sum())) % 2)
        at, kind = at[outside], kind[outside]
        step = np.where(kind == _OPEN, 1, -1)
        after = depth + np.cumsum(step)
        if len(after):
            lowest = min(lowest, int(after.min()))
            depth = int(after[-1])
        keep = ((step == 1) & (after <= 3)) | ((step == -1) & (after <= 2))
        pos_parts.append(at[keep] + off)
        depth_parts.append(after[keep])
        open_parts.append(step[keep] == 1)
    if in_string or depth or lowest < 0:
        raise SourceFormatError(
            f"{path}: not valid JSON (unterminated string or unbalanced brackets)"
        )
    if not pos_parts:
        return _Brackets(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
    return _Brackets(
        np.concatenate(pos_parts), np.concatenate(depth_parts), np.concatenate(open_parts)
    )


@dataclass(frozen=True)
class _Container:
    kind: str  # "a list" or "an object"
    start: int  # offset of the opening bracket
    end: int  # offset of the closing bracket


def _kind_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


@dataclass
class _JsonFile:
    """A JSON file mapped into memory with the spans of its top-level members."""

    path: Path
    data: np.ndarray
    brackets: _Brackets
    members: dict[str, object] = field(default_factory=dict)  # scalars, or a _Container
    dirty: bool = False  # holds invalid UTF-8 or a lone surrogate escape somewhere

    def member(self, key: str) -> object:
        if key not in self.members:
            raise SourceFormatError(f"{self.path}: required key {key!r} is missing")
        return self.members[key]

    def array(self, key: str) -> _Container:
        value = self.member(key)
        if not isinstance(value, _Container) or value.kind != "a list":
            kind = value.kind if isinstance(value, _Container) else _kind_name(value)
            raise SourceFormatError(f"{self.path}: {key!r} is {kind}, expected a list")
        return value


def _map_json(path: Path) -> _JsonFile:
    """Map the file and check its top-level shape. The map closes when the last view goes."""
    with open(path, "rb") as fh:
        if fh.seek(0, io.SEEK_END) == 0:
            raise SourceFormatError(f"{path}: empty file, not JSON")
        data = np.frombuffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    doc = _JsonFile(path, data, _scan_brackets(data, path))
    doc.members = _top_level_members(doc)
    return doc


def _read_whole(path: Path, arrays: dict[str, Sequence[_Field]]) -> dict[str, pl.DataFrame] | None:
    """The arrays of a well-formed file in one pyarrow pass, or None when anything is off.

    The file is parsed as one newline-tolerant record whose members are lists of structs of
    only our fields. pyarrow refuses it as a whole when any value anywhere has the wrong type;
    None then sends the file down the record-by-record path, which says what and where.
    """
    size = path.stat().st_size
    if not size or size > _WHOLE_FILE_LIMIT:
        return None
    with open(path, "rb") as fh:
        head = fh.read(1 << 16).removeprefix(b"\xef\xbb\xbf").lstrip()
    if head[:1] != b"{":
        # pyarrow 26 crashes the process (SIGSEGV) on a file that is just `null`; the scan
        # path names whatever the top level is instead
        return None
    schema = pa.schema(
        [
            (key, pa.list_(pa.struct([(f.name, _ARROW_TYPES[f.kind]) for f in fields])))
            for key, fields in arrays.items()
        ]
    )
    try:
        table = pa_json.read_json(
            path,
            read_options=pa_json.ReadOptions(block_size=size + 1),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema,
                unexpected_field_behavior="ignore",
                newlines_in_values=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowCapacityError):
        return None
    if table.num_rows != 1 or any(table.column(key).null_count for key in arrays):
        return None
    frames = {}
    for key, fields in arrays.items():
        structs = table.column(key).combine_chunks().flatten()
        if structs.null_count:  # a null element: the scan path names it as a non-object
            return None
        records = pl.from_arrow(pa.Table.from_struct_array(structs))
        assert isinstance(records, pl.DataFrame)
        frames[key] = records.with_columns(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("_index"),
            pl.lit(None, pl.String).alias("_bad_field"),
            pl.lit(None, pl.String).alias("_bad_detail"),
        ).select(_empty_records(fields).columns)
    return frames


def _read_coco_file(path: Path, arrays: dict[str, Sequence[_Field]]) -> dict[str, pl.DataFrame]:
    """The records of each named top-level array; every array is checked before any is read."""
    with open(path, "rb") as fh:
        empty = fh.seek(0, io.SEEK_END) == 0
        dirty = not empty and bad_text(
            np.frombuffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        )
    frames = None if dirty else _read_whole(path, arrays)
    if frames is not None:
        return frames
    doc = _map_json(path)
    doc.dirty = dirty
    for key in arrays:
        doc.array(key)
    return {key: _read_records(doc, key, fields) for key, fields in arrays.items()}


def _top_level_members(doc: _JsonFile) -> dict[str, object]:
    """Parse the file with every second-level container emptied: cheap, and checks the shape."""
    b = doc.brackets
    starts = b.pos[(b.depth == 2) & b.opens]
    ends = b.pos[(b.depth == 1) & ~b.opens]
    raw = doc.data
    pieces, prev = [], 0
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        pieces.append(raw[prev : s + 1].tobytes())
        prev = e
    pieces.append(raw[prev:].tobytes())
    skeleton = b"".join(pieces).lstrip(b"\xef\xbb\xbf")
    try:
        top = json.loads(skeleton, object_pairs_hook=lambda pairs: pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceFormatError(
            f"{doc.path}: not valid JSON ({exc.args[0].split(':')[0]})"
        ) from exc
    if skeleton.lstrip()[:1] != b"{":
        kind = "a list" if isinstance(top, list) else _kind_name(top)
        raise SourceFormatError(f"{doc.path}: the top-level value is {kind}, expected an object")
    members: dict[str, object] = {}
    spans = iter(zip(starts.tolist(), ends.tolist(), strict=True))
    for key, value in top:
        if isinstance(value, list):  # every emptied container parses as [] with this hook
            s, e = next(spans)
            members[key] = _Container("a list" if raw[s] == ord("[") else "an object", s, e)
        else:
            members[key] = value
    return members


def _element_spans(doc: _JsonFile, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte spans [start, end] of the objects in the top-level array ``key``, checked."""
    arr = doc.array(key)
    b = doc.brackets
    lo, hi = np.searchsorted(b.pos, [arr.start, arr.end], side="right")
    pos, depth, opens = b.pos[lo : hi - 1], b.depth[lo : hi - 1], b.opens[lo : hi - 1]
    starts, ends = pos[(depth == 3) & opens], pos[(depth == 2) & ~opens]
    _check_gaps(doc, key, arr, starts, ends)
    bad = np.flatnonzero(doc.data[starts] != ord("{"))
    if len(bad):
        raise SourceFormatError(f"{doc.path}: {key}[{int(bad[0])}] is a list, expected an object")
    return starts, ends


def _check_gaps(
    doc: _JsonFile, key: str, arr: _Container, starts: np.ndarray, ends: np.ndarray
) -> None:
    """Between records only whitespace and one comma may appear; anything else is a non-object."""
    gap_lo = np.concatenate([[arr.start + 1], ends + 1])
    gap_hi = np.concatenate([starts, [arr.end]])
    lengths = gap_hi - gap_lo
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    index = np.repeat(gap_lo - offsets[:-1], lengths) + np.arange(offsets[-1])
    values = doc.data[index]
    commas = np.concatenate([[0], np.cumsum(values == 44)])
    other = np.concatenate([[0], np.cumsum(~np.isin(values, _WHITESPACE) & (values != 44))])
    per_gap_commas = commas[offsets[1:]] - commas[offsets[:-1]]
    per_gap_other = other[offsets[1:]] - other[offsets[:-1]]
    expected = np.ones(len(lengths), np.int64)
    expected[0] = expected[-1] = 0
    wrong = np.flatnonzero((per_gap_other > 0) | (per_gap_commas != expected))
    if not len(wrong):
        return
    i = int(wrong[0])
    text = doc.data[gap_lo[i] : gap_hi[i]].tobytes()[:60].decode("utf-8", "replace").strip()
    if per_gap_other[i] > 0:
        stray = text.strip(", \t\r\n")
        raise SourceFormatError(
            f"{doc.path}: {key}[{i}] is not an object (found {stray[:40]!r}), expected an object"
        )
    raise SourceFormatError(
        f"{doc.path}: not valid JSON: expected exactly one comma between {key}[{i - 1}] and "
        f"{key}[{i}], found {text!r}"
    )


class _RecordStream(io.RawIOBase):
    """The records of one array as newline-delimited JSON, built block by block on demand."""

    def __init__(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        self._data, self._starts, self._ends = data, starts, ends
        self._next = 0
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, out) -> int:  # type: ignore[override]
        if not len(self._pending):
            if self._next >= len(self._starts):
                return 0
            self._pending = memoryview(self._block())
        n = min(len(out), len(self._pending))
        out[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _block(self) -> bytes:
        i = self._next
        first = int(self._starts[i])
        j = int(np.searchsorted(self._starts, first + _BLOCK_BYTES, side="left"))
        j = max(j, i + 1)
        self._next = j
        block = self._data[first : int(self._ends[j - 1]) + 1].copy()
        # A raw newline can only be whitespace in JSON; removing them leaves newlines as the
        # record separators pyarrow's fast reader needs.
        block[(block == 10) | (block == 13)] = 32
        gap_lo = self._ends[i : j - 1] + 1 - first
        gap_hi = self._starts[i + 1 : j] - first
        lengths = gap_hi - gap_lo
        offsets = np.cumsum(lengths) - lengths
        block[np.repeat(gap_lo - offsets, lengths) + np.arange(int(lengths.sum()))] = 32
        block[gap_lo] = 10
        return block.tobytes() + b"\n"


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # int | str | num | numlist | flag
    required: bool = True


_ARROW_TYPES = {
    "int": pa.int64(),
    "str": pa.string(),
    "num": pa.float64(),
    "numlist": pa.list_(pa.float64()),
    "flag": pa.int64(),
}
_POLARS_TYPES = {
    "int": pl.Int64,
    "str": pl.String,
    "num": pl.Float64,
    "numlist": pl.List(pl.Float64),
    "flag": pl.Int64,
}
_INT64 = (-(2**63), 2**63 - 1)
_INT32_MAX = 2**31 - 1  # raw__images sizes and category ids are INTEGER columns


def _empty_records(fields: Sequence[_Field]) -> pl.DataFrame:
    schema = {"_index": pl.Int64, **{f.name: _POLARS_TYPES[f.kind] for f in fields}}
    schema |= {"_bad_field": pl.String, "_bad_detail": pl.String}
    return pl.DataFrame(schema=schema)


def _read_fast(
    doc: _JsonFile, starts: np.ndarray, ends: np.ndarray, fields: Sequence[_Field], first: int
) -> pl.DataFrame | None:
    schema = pa.schema([(f.name, _ARROW_TYPES[f.kind]) for f in fields])
    try:
        table = pa_json.read_json(
            _RecordStream(doc.data, starts, ends),
            read_options=pa_json.ReadOptions(block_size=_BLOCK_BYTES + (1 << 20)),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(starts):
        return None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(
        (pl.int_range(pl.len(), dtype=pl.Int64) + first).alias("_index"),
        pl.lit(None, pl.String).alias("_bad_field"),
        pl.lit(None, pl.String).alias("_bad_detail"),
    )


def _typed(value: object, kind: str) -> tuple[object, str | None]:
    """The value if it has the kind's JSON type, else (None, what is wrong)."""
    if value is None:
        return None, None
    if kind in ("int", "flag"):
        if kind == "flag" and isinstance(value, bool):
            return int(value), None
        if isinstance(value, int) and not isinstance(value, bool):
            if _INT64[0] <= value <= _INT64[1]:
                return value, None
            return None, "is out of the 64-bit integer range"
        return None, f"is {_kind_name(value)}, expected an integer"
    if kind == "str":
        return (
            (value, None)
            if isinstance(value, str)
            else (None, f"is {_kind_name(value)}, expected a string")
        )
    if kind == "num":
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value), None
        return None, f"is {_kind_name(value)}, expected a finite number"
    if isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        return [float(v) for v in value], None
    found = "a list with a non-number" if isinstance(value, list) else _kind_name(value)
    return None, f"is {found}, expected a list of numbers"


def _text_problem(value: str, bad_utf8: str | None) -> str | None:
    """What makes a decoded string unstorable: invalid UTF-8 bytes or a lone surrogate."""
    if bad_utf8 is not None and "\ufffd" in value:
        return f"is not valid UTF-8 text (invalid bytes at {bad_utf8})"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone UTF-16 surrogate (e.g. \\ud800), not valid Unicode"
    return None


def _read_slow(
    doc: _JsonFile,
    key: str,
    starts: np.ndarray,
    ends: np.ndarray,
    fields: Sequence[_Field],
    first: int,
) -> pl.DataFrame:
    columns: dict[str, list[object]] = {f.name: [] for f in fields}
    bad_field: list[str | None] = []
    bad_detail: list[str | None] = []
    raw = doc.data
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True), start=first):
        chunk = raw[s : e + 1].tobytes()
        bad_utf8 = None
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            # decoded with U+FFFD so the other fields still name the record
            text, bad_utf8 = chunk.decode("utf-8", "replace"), f"byte {s + exc.start}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceFormatError(f"{doc.path}: {key}[{i}] is not valid JSON ({exc})") from exc
        if not isinstance(record, dict):  # the span check found an object; be safe anyway
            raise SourceFormatError(f"{doc.path}: {key}[{i}] is not an object")
        problem: tuple[str, str] | None = None
        for f in fields:
            value, wrong = _typed(record.get(f.name), f.kind)
            if isinstance(value, str) and wrong is None:
                wrong = _text_problem(value, bad_utf8)
                value = None if wrong else value
            columns[f.name].append(value)
            if wrong and problem is None:
                problem = (f.name, f"field {f.name!r} {wrong}")
        bad_field.append(problem[0] if problem else None)
        bad_detail.append(problem[1] if problem else None)
    frame = pl.DataFrame(
        {
            name: pl.Series(name, values, dtype=_POLARS_TYPES[f.kind])
            for (name, values), f in zip(columns.items(), fields, strict=True)
        }
    )
    return frame.with_columns(
        (pl.int_range(pl.len(), dtype=pl.Int64) + first).alias("_index"),
        pl.Series("_bad_field", bad_field, dtype=pl.String),
        pl.Series("_bad_detail", bad_detail, dtype=pl.String),
    )


def _read_records(doc: _JsonFile, key: str, fields: Sequence[_Field]) -> pl.DataFrame:
    """One row per object of array ``key``: the fields typed (null when absent or mistyped),
    ``_index`` (position in the array) and ``_bad_field``/``_bad_detail`` for a mistyped field."""
    starts, ends = _element_spans(doc, key)
    columns = _empty_records(fields).columns
    parts = [_empty_records(fields)]
    i = 0
    while i < len(starts):
        # Groups bound the work of the slow path to the neighbourhood of a mistyped record.
        j = max(i + 1, int(np.searchsorted(starts, starts[i] + _GROUP_BYTES)))
        s, e = starts[i:j], ends[i:j]
        dirty = doc.dirty and bad_text(doc.data[int(s[0]) : int(e[-1]) + 1])
        frame = None if dirty else _read_fast(doc, s, e, fields, i)
        if frame is None:
            frame = _read_slow(doc, key, s, e, fields, i)
        parts.append(frame.select(columns))
        i = j
    return pl.concat(parts)


# --------------------------------------------------------------------------------------------
# Record validation

_IMAGE_FIELDS = (
    _Field("id", "int"),
    _Field("file_name", "str"),
    _Field("width", "int"),
    _Field("height", "int"),
)
_CAPTION_FIELDS = (_Field("id", "int"), _Field("image_id", "int"), _Field("caption", "str"))
_OBJECT_FIELDS = (
    _Field("id", "int"),
    _Field("image_id", "int"),
    _Field("category_id", "int"),
    _Field("bbox", "numlist"),
    _Field("area", "num"),
    _Field("iscrowd", "flag"),
)
_CATEGORY_FIELDS = (
    _Field("id", "int"),
    _Field("name", "str"),
    _Field("supercategory", "str", required=False),
)
_REJECT_COLUMNS = {
    "file": pl.String,
    "record_id": pl.String,
    "field": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}


def _no_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=_REJECT_COLUMNS)


def _record_id(section: str, frame: pl.DataFrame) -> pl.Expr:
    if "_index" not in frame.columns:  # validated records: the id is never null
        return pl.col("id").cast(pl.String)
    return (
        pl.when(pl.col("id").is_not_null())
        .then(pl.col("id").cast(pl.String))
        .otherwise(pl.format(f"{section}[{{}}]", pl.col("_index")))
    )


def _split(
    frame: pl.DataFrame,
    bad: pl.Expr,
    *,
    file: str,
    section: str,
    reason: str,
    field: str | pl.Expr,
    detail: pl.Expr,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows where ``bad`` is false, one reject row per row where it is true)."""
    flagged = frame.with_columns(bad.fill_null(False).alias("_bad"))
    rejected = flagged.filter(pl.col("_bad"))
    rejects = rejected.select(
        pl.lit(file).alias("file"),
        _record_id(section, rejected).alias("record_id"),
        (pl.lit(f"{section}.{field}") if isinstance(field, str) else field).alias("field"),
        pl.lit(reason).alias("reason"),
        detail.alias("detail"),
    )
    return flagged.filter(~pl.col("_bad")).drop("_bad"), rejects


def _drop_duplicate_ids(
    frame: pl.DataFrame, *, file: str, section: str, reason: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the first record of each id; one reject row per duplicated id names the others."""
    repeat = pl.col("id").is_not_null() & ~pl.col("id").is_first_distinct()
    flagged = frame.with_columns(repeat.alias("_repeat"))
    repeats = flagged.filter(pl.col("_repeat"))
    if not repeats.height:
        return frame, _no_rejects()
    first = flagged.filter(~pl.col("_repeat") & pl.col("id").is_in(repeats["id"].implode()))
    summary = (
        repeats.group_by("id", maintain_order=True)
        .agg(pl.col("_index").alias("later"))
        .join(first.select("id", pl.col("_index").alias("first")), on="id")
    )
    rejects = summary.select(
        pl.lit(file).alias("file"),
        pl.col("id").cast(pl.String).alias("record_id"),
        pl.lit(f"{section}.id").alias("field"),
        pl.lit(reason).alias("reason"),
        pl.format(
            f"id {{}} appears again at {section}[{{}}]; the first ({section}[{{}}]) is kept",
            pl.col("id"),
            pl.col("later").cast(pl.List(pl.String)).list.join(f"], {section}["),
            pl.col("first"),
        ).alias("detail"),
    )
    return flagged.filter(~pl.col("_repeat")).drop("_repeat"), rejects


def _value_problem(
    fields: Sequence[_Field], checks: Sequence[tuple[str, pl.Expr, str]]
) -> tuple[pl.Expr, pl.Expr]:
    """(bad field name, detail) of the first missing required field or failed value check."""
    name = pl.col("_bad_field")
    detail = pl.col("_bad_detail")
    conditions: list[tuple[pl.Expr, str, str]] = [
        (pl.col(f.name).is_null(), f.name, f"field {f.name!r} is missing or null")
        for f in fields
        if f.required
    ]
    conditions += [(cond, fname, text) for fname, cond, text in checks]
    name_chain: pl.Expr | None = None
    detail_chain: pl.Expr | None = None
    for cond, fname, text in reversed(conditions):
        name_chain = (
            pl.when(cond)
            .then(pl.lit(fname))
            .otherwise(name_chain if name_chain is not None else pl.lit(None, pl.String))
        )
        detail_chain = (
            pl.when(cond)
            .then(pl.lit(text))
            .otherwise(detail_chain if detail_chain is not None else pl.lit(None, pl.String))
        )
    assert name_chain is not None and detail_chain is not None
    return pl.coalesce(name, name_chain), pl.coalesce(detail, detail_chain)


def _drop_bad_fields(
    frame: pl.DataFrame,
    fields: Sequence[_Field],
    checks: Sequence[tuple[str, pl.Expr, str]],
    *,
    file: str,
    section: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    name, detail = _value_problem(fields, checks)
    frame = frame.with_columns(name.alias("_bad_field"), detail.alias("_bad_detail"))
    return _split(
        frame,
        pl.col("_bad_field").is_not_null(),
        file=file,
        section=section,
        reason="annotation_bad_field",
        field=pl.lit(f"{section}.") + pl.col("_bad_field"),
        detail=pl.format(f"{section}[{{}}]: {{}}", pl.col("_index"), pl.col("_bad_detail")),
    )


def _validate_images(records: pl.DataFrame, file: str) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    kept, dup = _drop_duplicate_ids(
        records, file=file, section="images", reason="image_duplicate_id"
    )
    checks = [
        ("file_name", pl.col("file_name").str.strip_chars() == "", "field 'file_name' is empty"),
        (
            "file_name",
            pl.col("file_name").str.split("/").list.eval(pl.element().str.len_bytes()).list.max()
            > MAX_NAME_BYTES,
            f"field 'file_name' has a path component longer than {MAX_NAME_BYTES} bytes",
        ),
        ("width", ~pl.col("width").is_between(1, _INT32_MAX), "field 'width' is not in 1..2^31-1"),
        (
            "height",
            ~pl.col("height").is_between(1, _INT32_MAX),
            "field 'height' is not in 1..2^31-1",
        ),
    ]
    kept, bad = _drop_bad_fields(kept, _IMAGE_FIELDS, checks, file=file, section="images")
    return kept, [dup, bad]


def _validate_categories(
    records: pl.DataFrame, file: str
) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    kept, dup = _drop_duplicate_ids(
        records, file=file, section="categories", reason="category_duplicate_id"
    )
    checks = [
        ("id", ~pl.col("id").is_between(-_INT32_MAX - 1, _INT32_MAX), "field 'id' exceeds 32 bits"),
        ("name", pl.col("name").str.strip_chars() == "", "field 'name' is empty"),
    ]
    kept, bad = _drop_bad_fields(kept, _CATEGORY_FIELDS, checks, file=file, section="categories")
    return kept, [dup, bad]


def _validate_captions(
    records: pl.DataFrame, declared_image_ids: pl.Series, file: str
) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    section = "annotations"
    kept, dup = _drop_duplicate_ids(
        records, file=file, section=section, reason="annotation_duplicate_id"
    )
    too_long = [
        (
            "caption",
            pl.col("caption").str.len_chars() > MAX_CAPTION_CHARS,
            f"field 'caption' is longer than {MAX_CAPTION_CHARS} characters",
        )
    ]
    kept, bad = _drop_bad_fields(kept, _CAPTION_FIELDS, too_long, file=file, section=section)
    kept, unknown = _split(
        kept,
        ~pl.col("image_id").is_in(declared_image_ids.implode()),
        file=file,
        section=section,
        reason="annotation_unknown_image",
        field="image_id",
        detail=pl.format(
            "caption {} refers to image {}, which no images record declares",
            pl.col("id"),
            pl.col("image_id"),
        ),
    )
    kept, empty = _split(
        kept,
        pl.col("caption").str.strip_chars() == "",
        file=file,
        section=section,
        reason="caption_empty",
        field="caption",
        detail=pl.format(
            "caption {} of image {} is empty or whitespace", pl.col("id"), pl.col("image_id")
        ),
    )
    return kept, [dup, bad, unknown, empty]


def _validate_objects(
    records: pl.DataFrame,
    declared_image_ids: pl.Series,
    image_sizes: pl.DataFrame,
    categories: pl.DataFrame,
    file: str,
) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    section = "annotations"
    kept, dup = _drop_duplicate_ids(
        records, file=file, section=section, reason="annotation_duplicate_id"
    )
    checks = [
        (
            "bbox",
            pl.col("bbox").list.len() != 4,
            "field 'bbox' must hold 4 numbers [x, y, width, height]",
        ),
        (
            "bbox",
            pl.col("bbox").list.eval(pl.element().is_null()).list.any(),
            "field 'bbox' holds a null",
        ),
        (
            "bbox",
            pl.col("bbox").list.eval(~pl.element().is_finite()).list.any(),
            "field 'bbox' holds a non-finite number (NaN or Infinity)",
        ),
        ("area", ~pl.col("area").is_finite(), "field 'area' is not a finite number"),
        ("area", pl.col("area") < 0, "field 'area' is negative"),
        ("iscrowd", ~pl.col("iscrowd").is_in([0, 1]), "field 'iscrowd' must be 0 or 1"),
    ]
    kept, bad = _drop_bad_fields(kept, _OBJECT_FIELDS, checks, file=file, section=section)
    kept = kept.with_columns(
        pl.col("bbox").list.get(0).alias("bbox_x"),
        pl.col("bbox").list.get(1).alias("bbox_y"),
        pl.col("bbox").list.get(2).alias("bbox_w"),
        pl.col("bbox").list.get(3).alias("bbox_h"),
    )
    kept, unknown_image = _split(
        kept,
        ~pl.col("image_id").is_in(declared_image_ids.implode()),
        file=file,
        section=section,
        reason="annotation_unknown_image",
        field="image_id",
        detail=pl.format(
            "object {} refers to image {}, which no images record declares",
            pl.col("id"),
            pl.col("image_id"),
        ),
    )
    kept, unknown_category = _split(
        kept,
        ~pl.col("category_id").is_in(categories["category_id"].implode()),
        file=file,
        section=section,
        reason="annotation_unknown_category",
        field="category_id",
        detail=pl.format(
            "object {} refers to category {}, which no valid categories record declares",
            pl.col("id"),
            pl.col("category_id"),
        ),
    )
    kept, nonpositive = _split(
        kept,
        (pl.col("bbox_w") <= 0) | (pl.col("bbox_h") <= 0),
        file=file,
        section=section,
        reason="bbox_nonpositive",
        field="bbox",
        detail=pl.format(
            "object {}: box width {} and height {} must both be positive",
            pl.col("id"),
            pl.col("bbox_w"),
            pl.col("bbox_h"),
        ),
    )
    sized = kept.join(
        image_sizes.select(
            pl.col("coco_image_id").alias("image_id"),
            pl.col("width").alias("_W"),
            pl.col("height").alias("_H"),
        ),
        on="image_id",
        how="left",
        maintain_order="left",
    )
    overshoot = pl.max_horizontal(
        -pl.col("bbox_x"),
        -pl.col("bbox_y"),
        pl.col("bbox_x") + pl.col("bbox_w") - pl.col("_W"),
        pl.col("bbox_y") + pl.col("bbox_h") - pl.col("_H"),
    )
    kept, outside = _split(
        sized.with_columns(overshoot.alias("_over")),
        pl.col("_over") > BOX_TOLERANCE_PX,
        file=file,
        section=section,
        reason="bbox_outside_image",
        field="bbox",
        detail=pl.format(
            "object {}: box [{}, {}, {}, {}] passes the edge of the {}x{} image by {} px "
            "(tolerance {} px)",
            pl.col("id"),
            pl.col("bbox_x"),
            pl.col("bbox_y"),
            pl.col("bbox_w"),
            pl.col("bbox_h"),
            pl.col("_W"),
            pl.col("_H"),
            pl.col("_over").round(2),
            pl.lit(BOX_TOLERANCE_PX),
        ),
    )
    return kept.drop("_W", "_H", "_over"), [
        dup,
        bad,
        unknown_image,
        unknown_category,
        nonpositive,
        outside,
    ]


def _cascade(
    frame: pl.DataFrame, rejected_images: pl.DataFrame, *, file: str, what: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Move the annotations of rejected images out, one ``parent_image_rejected`` row each."""
    if not rejected_images.height or not frame.height:
        return frame, _no_rejects()
    parents = rejected_images.select(
        pl.col("coco_image_id").alias("image_id"), pl.col("reason").alias("_parent_reason")
    )
    joined = frame.join(parents, on="image_id", how="left", maintain_order="left")
    kept, rejects = _split(
        joined,
        pl.col("_parent_reason").is_not_null(),
        file=file,
        section="annotations",
        reason="parent_image_rejected",
        field="image_id",
        detail=pl.format(
            f"{what} {{}} belongs to image {{}}, which was rejected ({{}})",
            pl.col("id"),
            pl.col("image_id"),
            pl.col("_parent_reason"),
        ),
    )
    return kept.drop("_parent_reason"), rejects


def _move_to_kept(frame: pl.DataFrame, moved: pl.DataFrame) -> pl.DataFrame:
    """``image_id`` of annotations of a duplicate image replaced by the kept image's id."""
    if not moved.height or not frame.height:
        return frame
    return (
        frame.join(moved, on="image_id", how="left", maintain_order="left")
        .with_columns(pl.coalesce("_kept_id", "image_id").alias("image_id"))
        .drop("_kept_id")
    )


def _image_reject_ids(rejects: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """coco_image_id and reason of every rejected image record that has an integer id."""
    frames = [r for r in rejects if r.height]
    if not frames:
        return pl.DataFrame(schema={"coco_image_id": pl.Int64, "reason": pl.String})
    return (
        pl.concat(frames)
        .filter(
            pl.col("record_id").str.contains(r"^-?\d+$")
            & (pl.col("reason") != "image_duplicate_id")
        )
        .select(pl.col("record_id").cast(pl.Int64).alias("coco_image_id"), "reason")
        .unique("coco_image_id", keep="first", maintain_order=True)
    )


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


_CAPTION_ARRAYS = {"images": _IMAGE_FIELDS, "annotations": _CAPTION_FIELDS}
_INSTANCE_ARRAYS = {
    "images": _IMAGE_FIELDS,
    "annotations": _OBJECT_FIELDS,
    "categories": _CATEGORY_FIELDS,
}


def _read_both(files: CocoFiles) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """Both annotation files, read side by side: pyarrow parses each file on one thread."""
    if files.instances is None:
        no_instances = {key: _empty_records(fields) for key, fields in _INSTANCE_ARRAYS.items()}
        return _read_coco_file(files.captions, _CAPTION_ARRAYS), no_instances
    with ThreadPoolExecutor(max_workers=2) as pool:
        captions = pool.submit(_read_coco_file, files.captions, _CAPTION_ARRAYS)
        instances = pool.submit(_read_coco_file, files.instances, _INSTANCE_ARRAYS)
        return captions.result(), instances.result()


def load_annotations(source: str, files: CocoFiles, run_id: str = "") -> AnnotationTables:
    """Read and validate the annotation files of a source; no image file is opened.

    Returns the good records and a reject row for every bad one, including the cascade of
    record-level image rejects onto their captions and objects and ``image_without_captions``.
    The reject rows are complete raw__rejects rows.
    """
    cap_file = _relative(files.root, files.captions)
    ins_file = _relative(files.root, files.instances) if files.instances else None
    rejects: list[pl.DataFrame] = []
    caption_file, instance_file = _read_both(files)
    image_records, caption_records = caption_file["images"], caption_file["annotations"]
    extra_images = instance_file["images"]
    object_records = instance_file["annotations"]
    category_records = instance_file["categories"]

    images, image_rejects = _validate_images(image_records, cap_file)
    known = image_records["id"].drop_nulls()
    extra_images = extra_images.filter(~pl.col("id").is_in(known.implode()).fill_null(False))
    extra, extra_rejects = _validate_images(extra_images, ins_file or "")
    image_rejects += extra_rejects
    images = pl.concat([images, extra])
    declared = pl.concat([known, extra_images["id"].drop_nulls()])

    categories, category_rejects = _validate_categories(category_records, ins_file or "")
    categories = categories.select(pl.col("id").alias("category_id"), "name", "supercategory")
    rejects += category_rejects

    captions, caption_rejects = _validate_captions(caption_records, declared, cap_file)
    rejects += caption_rejects
    captions, cascaded = _cascade(
        captions, _image_reject_ids(image_rejects), file=cap_file, what="caption"
    )
    rejects.append(cascaded)

    images, uncaptioned = _split(
        images,
        ~pl.col("id").is_in(captions["image_id"].implode()),
        file=cap_file,
        section="images",
        reason="image_without_captions",
        field="id",
        detail=pl.format("image {} ({}) has no valid caption", pl.col("id"), pl.col("file_name")),
    )
    image_rejects.append(uncaptioned)
    rejects += image_rejects
    image_sizes = images.select(pl.col("id").alias("coco_image_id"), "width", "height")
    objects, object_rejects = _validate_objects(
        object_records, declared, image_sizes, categories, ins_file or ""
    )
    rejects += object_rejects
    objects, cascaded = _cascade(
        objects, _image_reject_ids(image_rejects), file=ins_file or "", what="object"
    )
    rejects.append(cascaded)

    return AnnotationTables(
        images=images.select(pl.col("id").alias("coco_image_id"), "file_name", "width", "height"),
        captions=captions.select(
            pl.col("id").alias("coco_caption_id"),
            pl.col("image_id").alias("coco_image_id"),
            "caption",
        ),
        objects=objects.select(
            pl.col("id").alias("coco_annotation_id"),
            pl.col("image_id").alias("coco_image_id"),
            "category_id",
            "bbox_x",
            "bbox_y",
            "bbox_w",
            "bbox_h",
            "area",
            (pl.col("iscrowd") == 1).alias("iscrowd"),
        ),
        categories=categories,
        rejects=_finish_rejects(source, run_id, rejects),
        captions_file=cap_file,
        instances_file=ins_file,
    )


# --------------------------------------------------------------------------------------------
# Image files


# The detail of an image_duplicate_bytes reject; _DUPLICATE_OF reads the kept id back.
_DUPLICATE_DETAIL = (
    "same bytes (sha256 {}) as image {} ({}), which is kept; "
    "this record's captions and objects now belong to image {}"
)
_DUPLICATE_OF = r"as image (-?\d+) \("


def validate_images(
    source: str,
    image_root: Path,
    records: pl.DataFrame,
    *,
    max_pixels: int,
    workers: int,
    run_id: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Open and fully decode every image record: (raw__images rows, reject rows).

    ``records`` has coco_image_id, file_name, width, height (declared). Reject rows name the
    image file relative to the source root (the parent of ``image_root``). Of images with
    identical bytes the one with the lowest coco id is kept.
    """
    image_root = Path(image_root)
    records = records.sort("coco_image_id")
    jobs = [
        ImageJob(str(image_root), name, width, height)
        for name, width, height in records.select("file_name", "width", "height").iter_rows()
    ]
    reports = inspect_images(jobs, max_pixels=max_pixels, workers=workers)
    facts = pl.DataFrame(
        [r.__dict__ for r in reports],
        schema={
            "file_name": pl.String,
            "reason": pl.String,
            "detail": pl.String,
            "sha256": pl.String,
            "bytes": pl.Int64,
            "format": pl.String,
            "mode": pl.String,
            "width": pl.Int64,
            "height": pl.Int64,
            "oriented_width": pl.Int64,
            "oriented_height": pl.Int64,
        },
        orient="row",
    ).drop("file_name")
    checked = pl.concat(
        [records.select("coco_image_id", "file_name"), facts], how="horizontal"
    ).with_columns(
        pl.when(pl.col("file_name").str.starts_with("/"))
        .then(pl.col("file_name"))
        .otherwise(pl.format("{}/{}", pl.lit(image_root.name), pl.col("file_name")))
        .alias("_file")
    )
    first = (
        checked.filter(pl.col("reason").is_null())
        .select(
            "sha256",
            pl.col("coco_image_id").alias("_first_id"),
            pl.col("_file").alias("_first_file"),
        )
        .unique("sha256", keep="first", maintain_order=True)
    )
    checked = checked.join(first, on="sha256", how="left", maintain_order="left").with_columns(
        pl.when(pl.col("reason").is_null() & (pl.col("_first_id") != pl.col("coco_image_id")))
        .then(pl.lit("image_duplicate_bytes"))
        .otherwise(pl.col("reason"))
        .alias("reason"),
        pl.when(pl.col("reason").is_null() & (pl.col("_first_id") != pl.col("coco_image_id")))
        .then(
            pl.format(
                _DUPLICATE_DETAIL,
                pl.col("sha256"),
                pl.col("_first_id"),
                pl.col("_first_file"),
                pl.col("_first_id"),
            )
        )
        .otherwise(pl.col("detail"))
        .alias("detail"),
    )
    rejects = checked.filter(pl.col("reason").is_not_null()).select(
        pl.col("_file").alias("file"),
        pl.col("coco_image_id").cast(pl.String).alias("record_id"),
        pl.lit("images.file_name").alias("field"),
        "reason",
        "detail",
    )
    valid = checked.filter(pl.col("reason").is_null())
    valid = valid.with_columns(
        pl.Series("image_id", _stable_ids("img", source, valid["coco_image_id"]), pl.String),
        pl.lit(source).alias("source"),
        pl.lit(run_id).alias("run_id"),
    )
    return _conform(RAW_IMAGES, valid), _finish_rejects(source, run_id, [rejects])


# --------------------------------------------------------------------------------------------
# Ids, schemas and rejects


def _stable_ids(prefix: str, source: str, values: Iterable[object]) -> list[str]:
    if isinstance(values, pl.Series):
        values = values.to_list()
    return stable_ids(prefix, source, values)


_PRESENT = RAW_TAGS.polars_schema["present"]
_ABSENT = RAW_TAGS.polars_schema["absent"]


def _conform(table: Table, frame: pl.DataFrame) -> pl.DataFrame:
    """Exactly the table's columns, in order, with its types."""
    return frame.select([pl.col(c).cast(t) for c, t in table.polars_schema.items()])


def _finish_rejects(source: str, run_id: str, parts: Iterable[pl.DataFrame]) -> pl.DataFrame:
    frames = [p.select(list(_REJECT_COLUMNS)) for p in parts if p.height]
    if not frames:
        return RAW_REJECTS.empty_frame()
    rejects = pl.concat(frames)
    keys = rejects.select("file", "record_id", "field", "reason").iter_rows()
    rejects = rejects.with_columns(
        pl.Series("reject_id", [stable_id("rej", source, *k) for k in keys], pl.String),
        pl.lit(source).alias("source"),
        pl.lit(run_id).alias("run_id"),
    )
    _check_unique_rejects(rejects)
    return _conform(RAW_REJECTS, rejects)


def _check_unique_rejects(rejects: pl.DataFrame) -> None:
    clashes = rejects.filter(pl.col("reject_id").is_duplicated())
    if clashes.height:  # a validator reported one problem twice: a bug here, not in the data
        raise RuntimeError(f"duplicate reject rows: {clashes.head(5).to_dicts()}")


def _add_source(frame: pl.DataFrame, source: str, run_id: str) -> pl.DataFrame:
    return frame.with_columns(pl.lit(source).alias("source"), pl.lit(run_id).alias("run_id"))


# --------------------------------------------------------------------------------------------
# Tags


def _present_tags(
    images: pl.DataFrame, objects: pl.DataFrame, categories: pl.DataFrame
) -> pl.DataFrame:
    counts = (
        objects.group_by("image_id", "category_id")
        .len("count")
        .join(
            categories.select("category_id", "name"),
            on="category_id",
            how="left",
            maintain_order="left",
        )
        .sort(["image_id", "count", "category_id"], descending=[False, True, False])
        .group_by("image_id", maintain_order=True)
        .agg(
            pl.struct(
                pl.col("category_id").cast(pl.Int32), "name", pl.col("count").cast(pl.Int32)
            ).alias("present")
        )
    )
    return images.select("image_id").join(counts, on="image_id", how="left", maintain_order="left")


_TAG_CHUNK = 1 << 15  # images ranked at once: bounds the images x categories score matrix


def _absent_tags(
    image_ids: list[str], pairs: pl.DataFrame, categories: pl.DataFrame, k: int
) -> pl.DataFrame:
    """Rank, per image, the declared categories it lacks by co-occurrence with those it has.

    score(c | image) = mean over the image's present categories p of P(c | p), where
    P(c | p) = (#images with both) / (#images with p), counted over the source. Ties, and
    candidates with no co-occurrence signal, are ordered by popularity (#images with c), then
    category id. ``absent_strategy`` is ``co-occurrence`` when every listed candidate has a
    positive score, ``co-occurrence+popularity`` when zero-score ones fill the list up (their
    score is 0), ``popularity`` when the image has no object or no candidate scores above 0
    (scores are then the share of images containing the category), and ``none`` when the
    source declares no categories or ``k`` is 0.
    """
    n, cat_ids = len(image_ids), categories["category_id"].sort().to_numpy()
    schema = {"image_id": pl.String, "absent": _ABSENT, "absent_strategy": pl.String}
    if k <= 0 or not len(cat_ids) or not n:
        return pl.DataFrame(
            {"image_id": image_ids, "absent": [[]] * n, "absent_strategy": ["none"] * n},
            schema=schema,
        )
    rows = pl.DataFrame({"image_id": image_ids}).with_row_index("row")
    cols = pl.DataFrame({"category_id": cat_ids}).with_row_index("col")
    idx = pairs.join(rows, on="image_id").join(cols, on="category_id")
    # float32 keeps the images x categories matrix small; counts stay exact below 2**24.
    present = np.zeros((n, len(cat_ids)), np.float32)
    present[idx["row"].to_numpy(), idx["col"].to_numpy()] = 1.0
    with_c = present.sum(axis=0, dtype=np.float64)
    together = (present.T @ present).astype(np.float64)
    conditional = np.divide(
        together, with_c[:, None], out=np.zeros_like(together), where=with_c[:, None] > 0
    )
    pop_rank = np.empty(len(cat_ids), np.int64)
    pop_rank[np.lexsort((cat_ids, -with_c))] = np.arange(len(cat_ids))
    parts = [
        _rank_absent(present[lo : lo + _TAG_CHUNK], conditional, pop_rank, with_c / n, k, lo)
        for lo in range(0, n, _TAG_CHUNK)
    ]
    long = pl.concat([p[0] for p in parts])
    strategy = np.concatenate([p[1] for p in parts])
    names = categories.select(pl.col("category_id").cast(pl.Int64), "name")
    absent = (
        long.with_columns(pl.Series("category_id", cat_ids[long["col"].to_numpy()]))
        .join(names, on="category_id", how="left", maintain_order="left")
        .group_by("row", maintain_order=True)
        .agg(pl.struct(pl.col("category_id").cast(pl.Int32), "name", "score").alias("absent"))
    )
    return (
        rows.join(absent, on="row", how="left", maintain_order="left")
        .with_columns(
            pl.col("absent").fill_null(pl.lit([], dtype=_ABSENT)),
            pl.Series("absent_strategy", strategy, pl.String),
        )
        .select("image_id", "absent", "absent_strategy")
        .cast(schema)  # type: ignore[arg-type]
    )


def _rank_absent(
    present: np.ndarray,
    conditional: np.ndarray,
    pop_rank: np.ndarray,
    popularity: np.ndarray,
    k: int,
    first_row: int,
) -> tuple[pl.DataFrame, np.ndarray]:
    """Long (row, col, score) of the chosen candidates of a block of images, and strategies."""
    present = present.astype(np.float64)
    n_present = present.sum(axis=1)
    score = np.divide(
        present @ conditional,
        n_present[:, None],
        out=np.zeros((len(present), len(pop_rank))),
        where=n_present[:, None] > 0,
    )
    order = np.lexsort((np.broadcast_to(pop_rank, score.shape), -score), axis=1)
    lacks = np.take_along_axis(present, order, axis=1) == 0
    chosen = lacks & (np.cumsum(lacks, axis=1) <= k)
    r, pos = np.nonzero(chosen)  # row-major: candidates come out best first per image
    c = order[r, pos]
    s = score[r, c]
    positive = np.bincount(r, weights=s > 0, minlength=len(present))
    total = np.bincount(r, minlength=len(present))
    by_popularity = (n_present == 0) | (positive == 0)
    strategy = np.where(
        by_popularity,
        "popularity",
        np.where(positive == total, "co-occurrence", "co-occurrence+popularity"),
    )
    values = np.where(by_popularity[r], popularity[c], s)
    long = pl.DataFrame(
        {"row": (r + first_row).astype(np.uint32), "col": c, "score": values.astype(np.float64)}
    )
    return long, strategy


def derive_tags(
    images: pl.DataFrame, objects: pl.DataFrame, categories: pl.DataFrame, *, k: int
) -> pl.DataFrame:
    """raw__tags: one row per image, its present categories with counts and ``k`` absent ones."""
    if not images.height:
        return RAW_TAGS.empty_frame()
    present = _present_tags(images, objects, categories)
    pairs = objects.select("image_id", "category_id").unique()
    pairs = pairs.filter(pl.col("category_id").is_in(categories["category_id"].implode()))
    image_ids = images["image_id"].to_list()
    absent = _absent_tags(image_ids, pairs, categories, k)
    tags = (
        images.select("image_id", "source", "run_id")
        .join(present, on="image_id", how="left", maintain_order="left")
        .join(absent, on="image_id", how="left", maintain_order="left")
        .with_columns(pl.col("present").fill_null(pl.lit([], dtype=_PRESENT)))
    )
    return _conform(RAW_TAGS, tags)


def balanced_sample(tags: pl.DataFrame, *, per_category_cap: int, seed: int) -> pl.DataFrame:
    """Image ids such that no present category is in more than ``per_category_cap`` of them.

    Greedy, rarest category first: each category takes its images in a seeded random order,
    skipping an image when any of its categories has reached the cap. Rare categories thus keep
    their images before the common ones fill up. Images without present categories are not
    sampled. The same tags and seed always give the same ids in the same order.
    """
    long = (
        tags.select("image_id", "present")
        .explode("present")
        .filter(pl.col("present").is_not_null())
        .select("image_id", pl.col("present").struct.field("category_id"))
    )
    images = sorted(set(long["image_id"].to_list()))
    if not images or per_category_cap <= 0:
        return pl.DataFrame({"image_id": []}, schema={"image_id": pl.String})
    position = dict(
        zip(images, np.random.default_rng(seed).permutation(len(images)).tolist(), strict=True)
    )
    cats_of: dict[str, list[int]] = {}
    members: dict[int, list[str]] = {}
    for image, cat in long.iter_rows():
        cats_of.setdefault(image, []).append(cat)
        members.setdefault(cat, []).append(image)
    taken: dict[int, int] = dict.fromkeys(members, 0)
    chosen: list[str] = []
    seen: set[str] = set()
    for cat in sorted(members, key=lambda c: (len(members[c]), c)):
        for image in sorted(members[cat], key=position.__getitem__):
            if taken[cat] >= per_category_cap:
                break
            if image in seen or any(taken[c] >= per_category_cap for c in cats_of[image]):
                continue
            seen.add(image)
            chosen.append(image)
            for c in cats_of[image]:
                taken[c] += 1
    return pl.DataFrame({"image_id": chosen}, schema={"image_id": pl.String})


# --------------------------------------------------------------------------------------------
# The whole source


def assemble(
    source: str,
    annotations: AnnotationTables,
    images: pl.DataFrame,
    image_rejects: pl.DataFrame,
    *,
    absent_k: int,
    run_id: str,
) -> CollectResult:
    """Combine validated annotations with the image check: cascade, ids, tags, rejects."""
    failed = image_rejects.select(
        pl.col("record_id").cast(pl.Int64).alias("coco_image_id"), "reason"
    )
    # Same bytes under two names: the copy's captions and objects move onto the kept image
    # (the copy decoded to the same size, so its boxes fit) instead of being dropped.
    moved = image_rejects.filter(pl.col("reason") == "image_duplicate_bytes").select(
        pl.col("record_id").cast(pl.Int64).alias("image_id"),
        pl.col("detail").str.extract(_DUPLICATE_OF).cast(pl.Int64).alias("_kept_id"),
    )
    failed = failed.filter(pl.col("reason") != "image_duplicate_bytes")
    captions = _move_to_kept(
        annotations.captions.rename({"coco_caption_id": "id", "coco_image_id": "image_id"}), moved
    )
    captions, cap_cascade = _cascade(
        captions, failed, file=annotations.captions_file, what="caption"
    )
    objects = _move_to_kept(
        annotations.objects.rename({"coco_annotation_id": "id", "coco_image_id": "image_id"}),
        moved,
    )
    objects, obj_cascade = _cascade(
        objects, failed, file=annotations.instances_file or "", what="object"
    )
    image_ids = dict(
        zip(images["coco_image_id"].to_list(), images["image_id"].to_list(), strict=True)
    )
    captions = captions.with_columns(
        pl.Series("caption_id", _stable_ids("cap", source, captions["id"]), pl.String),
        pl.col("image_id").replace_strict(image_ids, return_dtype=pl.String).alias("image_id"),
        pl.col("id").alias("coco_caption_id"),
        pl.col("image_id").alias("coco_image_id"),
    )
    categories = _add_source(annotations.categories, source, run_id)
    objects = (
        objects.with_columns(
            pl.Series("object_id", _stable_ids("obj", source, objects["id"]), pl.String)
        )
        .join(
            categories.select("category_id", pl.col("name").alias("category_name")),
            on="category_id",
            how="left",
            maintain_order="left",
        )
        .with_columns(
            pl.col("image_id").replace_strict(image_ids, return_dtype=pl.String).alias("image_id"),
            pl.col("id").alias("coco_annotation_id"),
            pl.col("image_id").alias("coco_image_id"),
        )
    )
    captions = _conform(RAW_CAPTIONS, _add_source(captions, source, run_id))
    objects = _conform(RAW_OBJECTS, _add_source(objects, source, run_id))
    cascaded = _finish_rejects(source, run_id, [cap_cascade, obj_cascade])
    rejects = pl.concat([annotations.rejects, cascaded, image_rejects])
    _check_unique_rejects(rejects)
    return CollectResult(
        images=images,
        captions=captions,
        objects=objects,
        categories=_conform(RAW_CATEGORIES, categories),
        tags=derive_tags(images, objects, categories, k=absent_k),
        rejects=rejects.sort("file", "record_id", "reason"),
    )


def collect_source(
    source: str, root: Path, config: CollectConfig = CollectConfig(), run_id: str = ""
) -> CollectResult:
    """Every raw__* frame of one COCO-layout source directory."""
    files = find_coco_files(Path(root), config.split)
    annotations = load_annotations(source, files, run_id)
    images, image_rejects = validate_images(
        source,
        files.image_dir,
        annotations.images,
        max_pixels=config.max_pixels,
        workers=config.workers,
        run_id=run_id,
    )
    return assemble(
        source, annotations, images, image_rejects, absent_k=config.absent_k, run_id=run_id
    )
