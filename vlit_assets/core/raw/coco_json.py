"""Reading COCO annotation JSON without materializing it: pyarrow, the bracket scan, typed fields.

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

Why the scan stays here while instruction files (``core/formats/files.py``) use ijson: ijson
hands back every record as Python objects, segmentation polygons included, where the scan hands
64 MB groups of raw bytes to pyarrow and only a refused group is parsed in Python. On LLaVA
records, which are all kept, ijson wins (a 130 MB list: 0.5 s with ijson, 1.5 s scan + orjson);
on COCO files, whose bulk is polygons we drop, the scan is the cheaper way to find the records.
Bytes pyarrow would pass through unchecked (invalid UTF-8, a lone ``\\uD800`` escape) send their
group to the Python path, which rejects the record holding them.
"""

from __future__ import annotations

import io
import json
import math
import mmap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pa_json

from vlit_assets.core.formats.encoding import bad_text


class SourceFormatError(ValueError):
    """An annotation file is not COCO-shaped; the message names the file and the key."""


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


def _read_whole(
    path: Path, arrays: Mapping[str, Sequence[Field]]
) -> dict[str, pl.DataFrame] | None:
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
        ).select(empty_records(fields).columns)
    return frames


def read_coco_file(path: Path, arrays: Mapping[str, Sequence[Field]]) -> dict[str, pl.DataFrame]:
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

    def readinto(self, out) -> int:
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
class Field:
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
_POLARS_TYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(),
    "str": pl.String(),
    "num": pl.Float64(),
    "numlist": pl.List(pl.Float64()),
    "flag": pl.Int64(),
}
_INT64 = (-(2**63), 2**63 - 1)


def empty_records(fields: Sequence[Field]) -> pl.DataFrame:
    schema = {"_index": pl.Int64(), **{f.name: _POLARS_TYPES[f.kind] for f in fields}}
    schema |= {"_bad_field": pl.String(), "_bad_detail": pl.String()}
    return pl.DataFrame(schema=schema)


def _read_fast(
    doc: _JsonFile, starts: np.ndarray, ends: np.ndarray, fields: Sequence[Field], first: int
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
    fields: Sequence[Field],
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


def _read_records(doc: _JsonFile, key: str, fields: Sequence[Field]) -> pl.DataFrame:
    """One row per object of array ``key``: the fields typed (null when absent or mistyped),
    ``_index`` (position in the array) and ``_bad_field``/``_bad_detail`` for a mistyped field."""
    starts, ends = _element_spans(doc, key)
    columns = empty_records(fields).columns
    parts = [empty_records(fields)]
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
