"""LLaVA records read into conversations: record by record, or a JSON Lines file vectorised."""

from __future__ import annotations

import io
import mmap
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from vlit_assets.core.formats.encoding import BOM, bad_text
from vlit_assets.core.formats.records import (
    CONVERSATION_SCHEMA,
    GENERATOR,
    LLAVA_ID_PREFIX,
    Collector,
    ImportLimits,
    ImportResult,
    InstructionFormatError,
    Problem,
    check_lengths,
    check_type,
    conversation_row,
    imported_image_id,
    llava_turns,
    text_field,
)
from vlit_assets.core.ids import stable_id
from vlit_assets.core.vocab import IMAGE_TOKEN, INSTRUCTION_TYPES, UNLABELLED


def _llava_key(index: int, own_id: str | None, occurrences: Counter[str]) -> str:
    """The record's part of its conversation id: its own id when it has one."""
    if own_id is None:
        return f"#{index}"
    # LLaVA-Instruct repeats an id for each conversation about the same image; the k-th repeat
    # gets its own key, counted over valid and rejected records alike so fixing a bad record
    # does not renumber the others
    seen = occurrences[own_id]
    occurrences[own_id] += 1
    return own_id if seen == 0 else f"{own_id}#{seen}"


def _record_image(record: dict) -> str | None | Problem:
    """The record's image name; None for a text-only record (no ``image``, as in LLaVA-1.5).

    Data-Juicer and Hugging Face style records name it in an ``images`` list instead; one
    image is supported, several are rejected.
    """
    if record.get("image") is not None or "images" not in record:
        return None if record.get("image") is None else text_field(record, "image")
    images = record["images"]
    if images is None or images == []:
        return None
    if isinstance(images, list) and len(images) == 1:
        return text_field({"images": images[0]}, "images")
    got = f"a list of {len(images)}" if isinstance(images, list) else type(images).__name__
    return Problem("images", "annotation_bad_field", f"expected one image name, got {got}")


def _llava_record(out: Collector, index: int, record: object, occurrences: Counter[str]) -> None:
    ref = f"[{index}]"
    if not isinstance(record, dict):
        kind = type(record).__name__
        out.reject(ref, Problem("", "annotation_bad_field", f"expected an object, got {kind}"))
        return
    own_id = text_field(record, "id", allow_int=True) if "id" in record else None
    if isinstance(own_id, Problem):
        out.reject(ref, own_id)
        return
    key = _llava_key(index, own_id, occurrences)
    ref = ref if own_id is None else own_id
    image = _record_image(record)
    if isinstance(image, Problem):
        out.reject(ref, image)
        return
    itype = check_type(record.get("instruction_type"), required=False)
    turns = llava_turns(record.get("conversations"), has_image=image is not None)
    for checked in (itype, turns):
        if isinstance(checked, Problem):
            out.reject(ref, checked)
            return
    assert isinstance(itype, str) and isinstance(turns, list)
    too_long = check_lengths(turns, out.limits)
    if too_long:
        out.reject(ref, too_long)
        return
    row = conversation_row(
        source=out.source,
        image=image,
        base_image=image,
        instruction_type=itype,
        key=key,
        index=index,
        turns=turns,
        original_id=None if own_id is None else LLAVA_ID_PREFIX + own_id,
    )
    out.add(ref if own_id is None else f"{own_id} [{index}]", row)


def import_llava(items: Iterable[tuple[int, object]], out: Collector) -> ImportResult:
    occurrences: Counter[str] = Counter()
    for index, record in items:
        _llava_record(out, index, record, occurrences)
    return out.result()


def from_llava(records: object, *, source: str, file: str) -> ImportResult:
    """Import a LLaVA JSON list; malformed records become rejects, the rest become rows."""
    if not isinstance(records, list):
        raise InstructionFormatError(
            file, "", f"expected a JSON list of LLaVA records, got {type(records).__name__}"
        )
    return import_llava(enumerate(records), Collector(source, file))


def _jsonl_items(path: Path, out: Collector) -> Iterator[tuple[int, object]]:
    """(line index, record) of each non-blank line; a line that is no JSON becomes a reject."""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1:
                line = line.removeprefix(BOM)
            if not line.strip():
                continue
            try:
                yield lineno - 1, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                # orjson refuses invalid UTF-8 and lone surrogates here too: one bad line is
                # one reject, never a crash of the file
                problem = Problem(
                    f"line {lineno}", "record_unparseable", f"line {lineno} is not JSON: {exc}"
                )
                out.reject(f"[{lineno - 1}]", problem)


# ---------------------------------------------------------------- JSON Lines, vectorised
#
# The per-record validation above costs about 30 us a record in Python. A JSON Lines file is
# first read whole by pyarrow with the schema of the keys we use, and the records that are
# certainly valid (every check of records.py passes, decided by polars expressions) become rows
# without a Python loop; every other record goes through the per-record code, so rejects
# and their messages are the same. Whatever the fast path cannot decide exactly, it leaves:
# a record without an id (absent and null look alike in Arrow), an ``images`` list, text
# holding U+001C-U+001F (whitespace to Python, not to polars), and any file with invalid UTF-8,
# a lone surrogate escape, a blank line, a non-string id or a repeated conversation id.

_LLAVA_ARROW = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("images", pa.list_(pa.string())),
        ("instruction_type", pa.string()),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
    ]
)
_PY_ONLY_SPACE = "[\x1c-\x1f]"  # whitespace to str.strip(), not to polars' strip_chars()
_FAST_BLOCK = 1 << 24


def load_jsonl(path: Path, out: Collector) -> ImportResult:
    fast = _fast_jsonl(path, out)
    if fast is not None:
        return fast
    out.reset()
    return import_llava(_jsonl_items(path, out), out)


def _has_text(expr: pl.Expr) -> pl.Expr:
    return expr.is_not_null() & (expr.str.strip_chars() != "")


def _certain(frame: pl.DataFrame, limits: ImportLimits) -> pl.DataFrame:
    """The frame with ``_fast`` (certainly valid) and ``_text0`` (turn 0 with its token out)."""
    conv = pl.col("conversations")
    n = conv.list.len()
    values = conv.list.eval(pl.element().struct.field("value"))
    froms = conv.list.eval(pl.element().struct.field("from"))
    expected = (
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("human")).otherwise(pl.lit("gpt"))
    )
    first = values.list.first()
    parts = first.str.splitn(IMAGE_TOKEN, 2)
    before, after = parts.struct.field("field_0"), parts.struct.field("field_1")
    has_image = pl.col("image").is_not_null()
    stripped = (
        pl.when(before.str.strip_chars() == "")
        .then(after.str.strip_prefix("\n"))
        .when(after.str.strip_chars() == "")
        .then(before.str.strip_suffix("\n"))
        .otherwise(before.str.strip_chars_end() + " " + after.str.strip_chars_start())
    )
    text0 = pl.when(has_image).then(stripped).otherwise(first)
    tokens = values.list.eval(pl.element().str.count_matches(IMAGE_TOKEN, literal=True))
    rest = values.list.slice(1)
    rest_lengths = rest.list.eval(pl.element().str.len_chars())
    ok = (
        _has_text(pl.col("id"))
        & ~pl.col("id").str.contains(_PY_ONLY_SPACE)
        & (pl.col("images").is_null() | pl.col("image").is_not_null())  # image wins
        & (pl.col("image").is_null() | (_has_text(pl.col("image"))))
        & (~pl.col("image").str.contains(_PY_ONLY_SPACE)).fill_null(True)
        & (
            pl.col("instruction_type").is_null()
            | pl.col("instruction_type").is_in([*INSTRUCTION_TYPES, UNLABELLED])
        )
        & (n >= 2)
        & (n % 2 == 0)
        & ~conv.list.eval(pl.element().is_null()).list.any()
        & froms.list.eval((pl.element() == expected).fill_null(False)).list.all()
        & ~values.list.eval(pl.element().is_null()).list.any()
        & ~values.list.eval(pl.element().str.contains(_PY_ONLY_SPACE)).list.any()
        & pl.when(has_image)
        .then((tokens.list.first() == 1) & (tokens.list.sum() == 1))
        .otherwise(tokens.list.sum() == 0)
        & _has_text(text0)
        & ~rest.list.eval(pl.element().str.strip_chars() == "").list.any()
        & (text0.str.len_chars() <= limits.max_turn_chars)
        & (rest_lengths.list.max().fill_null(0) <= limits.max_turn_chars)
        & (text0.str.len_chars() + rest_lengths.list.sum() <= limits.max_conversation_chars)
    )
    return frame.with_columns(ok.fill_null(False).alias("_fast"), text0.alias("_text0"))


def _fast_jsonl(path: Path, out: Collector) -> ImportResult | None:
    """The file's rows and rejects with certainly-valid records vectorised, or None to use the
    per-record path for the whole file (see the comment above)."""
    import pyarrow.json as pa_json

    with path.open("rb") as fh:
        if fh.seek(0, io.SEEK_END) == 0:
            return None
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                blank = data.find(b"\n\n") >= 0 or data[:1] == b"\n"
                if data[:3] == BOM or blank or bad_text(view):
                    return None
                newlines = int(np.count_nonzero(np.frombuffer(view, np.uint8) == 10))
                lines = newlines + (0 if data[-1:] == b"\n" else 1)
            finally:
                view.release()
    try:
        reader = pa_json.open_json(
            path,
            read_options=pa_json.ReadOptions(block_size=_FAST_BLOCK),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_LLAVA_ARROW, unexpected_field_behavior="ignore"
            ),
        )
        # one block of records at a time: memory is bounded by the rows, not the file
        occurrences: Counter[str] = Counter()
        cursor = _LineCursor(path)
        parts: list[pl.DataFrame] = []
        first = 0
        for batch in _closing_batches(reader, cursor):
            frame = pl.from_arrow(pa.Table.from_batches([batch]))
            assert isinstance(frame, pl.DataFrame)
            frame = _certain(frame.with_row_index("_index", offset=first), out.limits)
            keys: list[str] = []
            ids = frame["id"].to_list()
            for k, ok in enumerate(frame["_fast"].to_list()):
                if ok:
                    keys.append(_llava_key(first + k, ids[k], occurrences))
                    continue
                record = cursor.record(first + k)
                if record is _UNREADABLE:
                    return None
                _llava_record(out, first + k, record, occurrences)
            parts.append(_fast_rows(frame.filter(pl.col("_fast")), keys, out.source))
            first += frame.height
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowCapacityError):
        return None
    if first != lines:
        return None
    checked = out.result()
    merged = pl.concat([*parts, checked.rows]).sort("variant")
    if not merged["conversation_id"].is_unique().all():
        return None  # a repeated id: the per-record path says which record repeats which
    return ImportResult(rows=merged, rejects=checked.rejects)


_UNREADABLE = object()


def _closing_batches(reader, cursor: _LineCursor):
    """The reader's batches; the cursor's file is closed however the loop ends."""
    try:
        yield from reader
    finally:
        cursor.close()


class _LineCursor:
    """Lines of a file read forward only, parsed on request (the records polars left over)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO | None = None
        self._next = 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def record(self, index: int) -> object:
        if self._fh is None:
            self._fh = self.path.open("rb")
        line = b""
        while self._next <= index:
            line = self._fh.readline()
            self._next += 1
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            return _UNREADABLE


def _fast_rows(frame: pl.DataFrame, keys: list[str], source: str) -> pl.DataFrame:
    images = frame["image"].to_list()
    itypes = frame["instruction_type"].fill_null(UNLABELLED).to_list()
    ids = [
        stable_id("conv", source, image or "", itype, GENERATOR, "", key)
        for image, itype, key in zip(images, itypes, keys, strict=True)
    ]
    image_ids = [None if image is None else imported_image_id(source, image) for image in images]
    first = pl.struct(pl.lit("human").alias("from"), pl.col("_text0").alias("value"))
    return frame.select(
        pl.Series("conversation_id", ids, pl.String),
        pl.lit(source, pl.String).alias("source"),
        pl.Series("image_id", image_ids, pl.String),
        pl.Series("instruction_type", itypes, pl.String),
        pl.lit(GENERATOR, pl.String).alias("generator"),
        pl.col("_index").cast(pl.Int32).alias("variant"),
        pl.concat_list([first, pl.col("conversations").list.slice(1)]).alias("turns"),
        pl.col("image").alias("image_path"),
        *[pl.lit(None, CONVERSATION_SCHEMA[c]).alias(c) for c in ("region_object_id",)],
        pl.concat_list([pl.lit(LLAVA_ID_PREFIX) + pl.col("id")]).alias("source_annotation_ids"),
        *[
            pl.lit(None, CONVERSATION_SCHEMA[c]).alias(c)
            for c in (
                "model",
                "prompt_version",
                "prompt_tokens",
                "completion_tokens",
                "latency_ms",
                "cache_hit",
                "drop_reason",
                "drop_detail",
                "run_id",
            )
        ],
    ).cast(CONVERSATION_SCHEMA)
