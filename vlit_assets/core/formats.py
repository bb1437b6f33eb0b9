"""Converters between internal conversations and the LLaVA and paper-release instruction formats.

Internal form: rows of ``generated__conversations`` whose ``turns`` alternate human/gpt, starting
with human. Imports validate every record; a malformed record becomes a ``raw__rejects`` row that
names the file, the record and the field, and the rest of the file still imports.

Choices that callers rely on:

- An imported record that carries no instruction type (plain LLaVA data) gets
  ``instruction_type = "unlabelled"``: the type is not guessed from the text.
- An imported row keeps the record's own identifier in ``source_annotation_ids``
  (``"llava_id:<id>"`` or ``"paper_img_ids:<img_ids>"``) so that re-export writes it back
  unchanged; rows the pipeline generated export their ``conversation_id`` (LLaVA) or the digits
  of the image file name (paper ``img_ids``).
- ``to_llava`` writes an extra ``instruction_type`` key (LLaVA's loader ignores unknown keys), so
  a LLaVA round trip keeps the type.
"""

from __future__ import annotations

import codecs
import functools
import io
import json
import mmap
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import ijson
import ijson.backends.python as ijson_python
import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from vlit_assets.core.ids import stable_id
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, RAW_REJECTS
from vlit_assets.core.vocab import IMAGE_TOKEN, INSTRUCTION_TYPES, UNLABELLED

GENERATOR = "import"
LLAVA_ID_PREFIX = "llava_id:"
PAPER_IMG_IDS_PREFIX = "paper_img_ids:"

LLAVA_SPEAKERS = {"human": "human", "gpt": "gpt"}
PAPER_SPEAKERS = {"User": "human", "AI": "gpt"}
PAPER_FROM = {"human": "User", "gpt": "AI"}

# Reject codes this module adds to schemas.REJECT_REASONS ("annotation_bad_field" is shared).
IMPORT_REJECT_REASONS = {
    "record_unparseable": "a JSON Lines line is not valid JSON",
    "conversation_empty": "the record has no turns",
    "turn_unknown_speaker": "a turn's `from` is not a speaker of the file's format",
    "turns_not_alternating": "turns do not start with the user and alternate user/assistant",
    "turn_unanswered": "the last turn is the user's, so nothing answers it",
    "turn_empty": "a turn's value is empty or whitespace",
    "image_token_missing": "the first user turn lacks <image>, so LLaVA would never show the image",
    "image_token_misplaced": "<image> appears outside the first user turn or more than once",
    "instruction_type_unknown": "instruction_type is not one of global, negative, region",
    "conversation_duplicate_id": "the record maps to the id of an earlier record of the file",
    "text_invalid_unicode": "a text holds a lone UTF-16 surrogate, which UTF-8 cannot store",
    "turn_too_long": "a turn has more characters than ImportLimits.max_turn_chars",
    "conversation_too_long": "the turns have more characters than max_conversation_chars",
    "file_not_a_dataset": "a JSON file in the source is neither LLaVA nor paper format (a sidecar)",
}
_SURROGATE_DETAIL = "the text holds a lone UTF-16 surrogate (e.g. \\ud800), not valid Unicode"


@dataclass(frozen=True)
class ImportLimits:
    """Longest texts an imported conversation may hold; longer ones are rejected, not cut.

    LLaVA-1.5 trains on 2,048 tokens (about 8k characters) per conversation; the defaults leave
    room for long-context data while refusing multi-megabyte values that are no conversation.
    """

    max_turn_chars: int = 32_768
    max_conversation_chars: int = 131_072


CONVERSATION_SCHEMA = GENERATED_CONVERSATIONS.polars_schema
REJECT_SCHEMA = RAW_REJECTS.polars_schema


class InstructionFormatError(ValueError):
    """The file as a whole is unusable: not JSON, or neither LLaVA nor paper format."""

    def __init__(self, file: str | Path, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = str(file)
        self.key = key


@dataclass
class ImportResult:
    rows: pl.DataFrame  # generated__conversations columns, generator="import"
    rejects: pl.DataFrame  # raw__rejects columns

    def reject_counts(self) -> dict[str, int]:
        return dict(Counter(self.rejects["reason"].to_list()))


@dataclass(frozen=True)
class _Problem:
    field: str
    reason: str
    detail: str


# ---------------------------------------------------------------- validation


def _check_structure(raw: object, speakers: Mapping[str, str]) -> list[dict] | _Problem:
    """Turns mapped to human/gpt, or the first structural problem of the list."""
    if raw is None:
        return _Problem("conversations", "annotation_bad_field", "conversations is missing")
    if not isinstance(raw, list):
        kind = type(raw).__name__
        return _Problem("conversations", "annotation_bad_field", f"expected a list, got {kind}")
    if not raw:
        return _Problem("conversations", "conversation_empty", "the list of turns is empty")
    turns: list[dict] = []
    for k, turn in enumerate(raw):
        where = f"conversations[{k}]"
        if not isinstance(turn, dict):
            kind = type(turn).__name__
            return _Problem(where, "annotation_bad_field", f"expected an object, got {kind}")
        speaker = turn.get("from")
        if not isinstance(speaker, str) or speaker not in speakers:
            allowed = ", ".join(repr(s) for s in speakers)
            return _Problem(
                f"{where}.from",
                "turn_unknown_speaker",
                f"from is {speaker!r}; expected one of {allowed}",
            )
        value = turn.get("value")
        if not isinstance(value, str):
            kind = type(value).__name__
            return _Problem(f"{where}.value", "annotation_bad_field", f"value is {kind}, not text")
        if not _encodable(value):
            return _Problem(f"{where}.value", "text_invalid_unicode", _SURROGATE_DETAIL)
        role, expected = speakers[speaker], "human" if k % 2 == 0 else "gpt"
        if role != expected:
            return _Problem(
                f"{where}.from",
                "turns_not_alternating",
                f"turn {k} is from {speaker!r}; turns must start with the user and alternate",
            )
        turns.append({"from": role, "value": value})
    if turns[-1]["from"] == "human":
        return _Problem(
            f"conversations[{len(turns) - 1}]",
            "turn_unanswered",
            "the conversation ends with a user turn that nothing answers",
        )
    return turns


def _strip_image_token(turns: list[dict]) -> list[dict] | _Problem:
    """Remove LLaVA's image token from the first user turn, where it must appear exactly once."""
    for k, turn in enumerate(turns):
        n = turn["value"].count(IMAGE_TOKEN)
        if (k == 0 and n > 1) or (k > 0 and n > 0):
            return _Problem(
                f"conversations[{k}].value",
                "image_token_misplaced",
                f"{IMAGE_TOKEN} appears {n} time(s) in turn {k}; only once, in turn 0, is allowed",
            )
    first = turns[0]["value"]
    if IMAGE_TOKEN not in first:
        return _Problem(
            "conversations[0].value",
            "image_token_missing",
            f"the first user turn has no {IMAGE_TOKEN} token",
        )
    before, after = first.split(IMAGE_TOKEN, 1)
    if not before.strip():
        text = after[1:] if after.startswith("\n") else after
    elif not after.strip():
        text = before[:-1] if before.endswith("\n") else before
    else:
        text = before.rstrip() + " " + after.lstrip()
    return [{"from": "human", "value": text}, *turns[1:]]


def _check_no_token(turns: list[dict]) -> _Problem | None:
    for k, turn in enumerate(turns):
        if IMAGE_TOKEN in turn["value"]:
            return _Problem(
                f"conversations[{k}].value",
                "image_token_misplaced",
                f"{IMAGE_TOKEN} is LLaVA's placeholder and does not belong in this format",
            )
    return None


def _check_not_empty(turns: list[dict]) -> _Problem | None:
    for k, turn in enumerate(turns):
        if not turn["value"].strip():
            return _Problem(
                f"conversations[{k}].value", "turn_empty", f"turn {k} has no text (after <image>)"
            )
    return None


def _llava_turns(raw: object, *, has_image: bool) -> list[dict] | _Problem:
    turns = _check_structure(raw, LLAVA_SPEAKERS)
    if isinstance(turns, _Problem):
        return turns
    if has_image:
        turns = _strip_image_token(turns)
        if isinstance(turns, _Problem):
            return turns
    elif any(IMAGE_TOKEN in t["value"] for t in turns):
        return _Problem(
            "image",
            "annotation_bad_field",
            f"the turns hold {IMAGE_TOKEN} but the record names no image",
        )
    return _check_not_empty(turns) or turns


def _paper_turns(raw: object) -> list[dict] | _Problem:
    turns = _check_structure(raw, PAPER_SPEAKERS)
    if isinstance(turns, _Problem):
        return turns
    return _check_no_token(turns) or _check_not_empty(turns) or turns


def _encodable(text: str) -> bool:
    """False for text holding a lone surrogate (``"\\ud800"`` in JSON), which no UTF-8 can store."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_lengths(turns: list[dict], limits: ImportLimits) -> _Problem | None:
    total = 0
    for k, turn in enumerate(turns):
        n = len(turn["value"])
        total += n
        if n > limits.max_turn_chars:
            return _Problem(
                f"conversations[{k}].value",
                "turn_too_long",
                f"turn {k} has {n} characters; the limit is {limits.max_turn_chars}",
            )
    if total > limits.max_conversation_chars:
        return _Problem(
            "conversations",
            "conversation_too_long",
            f"the turns hold {total} characters; the limit is {limits.max_conversation_chars}",
        )
    return None


def _text_field(record: dict, key: str, *, allow_int: bool = False) -> str | _Problem:
    value = record.get(key)
    if isinstance(value, str) and value.strip():
        if not _encodable(value):
            return _Problem(key, "text_invalid_unicode", _SURROGATE_DETAIL)
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    got = "missing" if value is None else f"{type(value).__name__} {value!r}"[:80]
    return _Problem(key, "annotation_bad_field", f"{key} must be a non-empty string; got {got}")


def _check_type(value: object, *, required: bool) -> str | _Problem:
    if value is None and not required:
        return UNLABELLED
    allowed = INSTRUCTION_TYPES if required else (*INSTRUCTION_TYPES, UNLABELLED)
    if value in allowed:
        return str(value)
    return _Problem(
        "instruction_type",
        "instruction_type_unknown",
        f"instruction_type is {value!r}; expected one of {', '.join(allowed)}",
    )


# ---------------------------------------------------------------- rows


@functools.lru_cache(maxsize=1 << 16)
def _image_id(source: str, name: str) -> str:
    return stable_id("img", source, name)  # many conversations share an image: hash it once


def _conversation_row(
    *,
    source: str,
    image: str | None,
    base_image: str | None,
    instruction_type: str,
    key: str,
    index: int,
    turns: list[dict],
    original_id: str | None,
) -> dict:
    """The columns of an imported row that vary (``_VARYING``); the others are constant."""
    return {
        # a text-only record hashes "" where an image name would be
        "conversation_id": stable_id(
            "conv", source, image or "", instruction_type, GENERATOR, "", key
        ),
        "image_id": None if base_image is None else _image_id(source, base_image),
        "instruction_type": instruction_type,
        "variant": index,
        "turns": turns,
        "image_path": image,
        "source_annotation_ids": [original_id] if original_id else [],
    }


def _reject_row(source: str, file: str, record_id: str, problem: _Problem) -> dict:
    return {
        "reject_id": stable_id("rej", source, file, record_id, problem.field, problem.reason),
        "source": source,
        "file": file,
        "record_id": record_id,
        "field": problem.field,
        "reason": problem.reason,
        "detail": f"{file} record {record_id}: {problem.detail}",
        "run_id": None,
    }


_CHUNK_ROWS = 32_768  # rows held as Python lists before they become a frame: bounds memory
# What varies per imported row; source and generator are constant, every other column null.
_VARYING = (
    "conversation_id",
    "image_id",
    "instruction_type",
    "variant",
    "turns",
    "image_path",
    "source_annotation_ids",
)
_ARROW_TYPES = {
    "variant": pa.int32(),
    "turns": pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])),
    "source_annotation_ids": pa.list_(pa.string()),
}


class _Collector:
    """Accumulates rows and rejects of one file and keeps conversation ids unique."""

    def __init__(self, source: str, file: str, limits: ImportLimits | None = None) -> None:
        self.source, self.file = source, file
        self.limits = limits or ImportLimits()
        self.rejects: list[dict] = []
        self._columns: dict[str, list] = {name: [] for name in _VARYING}
        self._frames: list[pl.DataFrame] = []
        self._seen: dict[str, str] = {}

    def reject(self, record_id: str, problem: _Problem) -> None:
        self.rejects.append(_reject_row(self.source, self.file, record_id, problem))

    def reset(self) -> None:
        """Forget every row and reject: the file is read again from its start."""
        self.rejects = []
        self._columns = {name: [] for name in _VARYING}
        self._frames = []
        self._seen = {}

    def add(self, record_id: str, row: dict) -> None:
        cid = row["conversation_id"]
        if cid in self._seen:
            detail = f"it maps to the same conversation id as record {self._seen[cid]}"
            self.reject(record_id, _Problem("id", "conversation_duplicate_id", detail))
            return
        self._seen[cid] = record_id
        for name, values in self._columns.items():
            values.append(row[name])
        if len(self._columns["conversation_id"]) >= _CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        # column lists through Arrow: several times faster than polars building from dicts
        columns = self._columns
        if not columns["conversation_id"]:
            return
        arrays = {
            name: pa.array(values, type=_ARROW_TYPES.get(name, pa.string()))
            for name, values in columns.items()
        }
        frame = pl.from_arrow(pa.table(arrays))
        assert isinstance(frame, pl.DataFrame)
        constants = {"source": self.source, "generator": GENERATOR}
        self._frames.append(
            frame.with_columns(
                pl.lit(constants[c], CONVERSATION_SCHEMA[c]).alias(c)
                if c in constants
                else pl.lit(None, CONVERSATION_SCHEMA[c]).alias(c)
                for c in CONVERSATION_SCHEMA
                if c not in columns
            )
            .select(list(CONVERSATION_SCHEMA))
            .cast(CONVERSATION_SCHEMA)  # type: ignore[arg-type]
        )
        self._columns = {name: [] for name in _VARYING}

    def result(self) -> ImportResult:
        self._flush()
        return ImportResult(
            rows=pl.concat(self._frames, rechunk=True)
            if self._frames
            else pl.DataFrame(schema=CONVERSATION_SCHEMA),
            rejects=pl.DataFrame(self.rejects, schema=REJECT_SCHEMA, orient="row")
            if self.rejects
            else pl.DataFrame(schema=REJECT_SCHEMA),
        )


# ---------------------------------------------------------------- LLaVA


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


def _record_image(record: dict) -> str | None | _Problem:
    """The record's image name; None for a text-only record (no ``image``, as in LLaVA-1.5).

    Data-Juicer and Hugging Face style records name it in an ``images`` list instead; one
    image is supported, several are rejected.
    """
    if record.get("image") is not None or "images" not in record:
        return None if record.get("image") is None else _text_field(record, "image")
    images = record["images"]
    if images is None or images == []:
        return None
    if isinstance(images, list) and len(images) == 1:
        return _text_field({"images": images[0]}, "images")
    got = f"a list of {len(images)}" if isinstance(images, list) else type(images).__name__
    return _Problem("images", "annotation_bad_field", f"expected one image name, got {got}")


def _llava_record(out: _Collector, index: int, record: object, occurrences: Counter[str]) -> None:
    ref = f"[{index}]"
    if not isinstance(record, dict):
        kind = type(record).__name__
        out.reject(ref, _Problem("", "annotation_bad_field", f"expected an object, got {kind}"))
        return
    own_id = _text_field(record, "id", allow_int=True) if "id" in record else None
    if isinstance(own_id, _Problem):
        out.reject(ref, own_id)
        return
    key = _llava_key(index, own_id, occurrences)
    ref = ref if own_id is None else own_id
    image = _record_image(record)
    if isinstance(image, _Problem):
        out.reject(ref, image)
        return
    itype = _check_type(record.get("instruction_type"), required=False)
    turns = _llava_turns(record.get("conversations"), has_image=image is not None)
    for checked in (itype, turns):
        if isinstance(checked, _Problem):
            out.reject(ref, checked)
            return
    assert isinstance(itype, str) and isinstance(turns, list)
    too_long = _check_lengths(turns, out.limits)
    if too_long:
        out.reject(ref, too_long)
        return
    row = _conversation_row(
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


def _import_llava(items: Iterable[tuple[int, object]], out: _Collector) -> ImportResult:
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
    return _import_llava(enumerate(records), _Collector(source, file))


def _export_turns(row: Mapping) -> list[dict]:
    cid = row.get("conversation_id")
    if row.get("drop_reason"):
        raise ValueError(f"conversation {cid}: dropped ({row['drop_reason']}); filter it out first")
    turns = _check_structure(row.get("turns"), {"human": "human", "gpt": "gpt"})
    problem = turns if isinstance(turns, _Problem) else None
    if isinstance(turns, list):
        problem = _check_no_token(turns) or _check_not_empty(turns)
    if problem:
        raise ValueError(f"conversation {cid}: {problem.field}: {problem.detail}")
    assert isinstance(turns, list)
    return turns


def _llava_image(row: Mapping, image_root: Path | None) -> str:
    image = row.get("image_path")
    if not isinstance(image, str) or not image:
        raise ValueError(f"conversation {row.get('conversation_id')}: image_path is empty")
    if image_root is None:
        return image
    path = Path(image)
    if not path.is_absolute():
        return PurePosixPath(path).as_posix()
    try:
        return path.relative_to(image_root).as_posix()
    except ValueError:
        raise ValueError(
            f"conversation {row.get('conversation_id')}: {image} is not under {image_root}"
        ) from None


def _suspect_rows(rows: pl.DataFrame) -> pl.Expr:
    """True for rows ``_export_turns`` may refuse (a superset, columnar); false rows are fine."""
    turn = pl.element()
    role, value = turn.struct.field("from"), turn.struct.field("value")
    position = pl.int_range(pl.len())
    odd = (
        pl.when(position % 2 == 0).then(role != "human").otherwise(role != "gpt")
        | ~role.is_in(["human", "gpt"])
        | value.is_null()
        | (value.fill_null("").str.strip_chars() == "")
        | value.fill_null("").str.contains(IMAGE_TOKEN, literal=True)
    )
    return (
        pl.col("drop_reason").is_not_null()
        | pl.col("turns").is_null()
        | (pl.col("turns").list.len() == 0)
        | (pl.col("turns").list.len() % 2 == 1)
        | pl.col("turns").list.eval(odd).list.any()
    )


def _check_exportable(rows: pl.DataFrame) -> None:
    """Raise for the first row ``_export_turns`` would refuse; columnar, so clean data costs one
    pass over the turns and only suspicious rows go through the per-row check for its message."""
    if rows.is_empty():
        return
    for row in rows.filter(_suspect_rows(rows)).iter_rows(named=True):
        _export_turns(row)


def exportable(rows: pl.DataFrame) -> pl.Series:
    """Per row, whether the LLaVA and paper writers accept its turns (``_export_turns``)."""
    if rows.is_empty():
        return pl.Series("exportable", [], dtype=pl.Boolean)
    suspect = rows.select(_suspect_rows(rows).alias("s"))["s"].to_list()
    ok = []
    for flagged, row in zip(suspect, rows.iter_rows(named=True), strict=True):
        if flagged:
            try:
                _export_turns(row)
            except ValueError:
                ok.append(False)
                continue
        ok.append(True)
    return pl.Series("exportable", ok, dtype=pl.Boolean)


def _original_ids(prefix: str) -> pl.Expr:
    """The id a record had in its own file (kept in source_annotation_ids), else ours."""
    return (
        pl.col("source_annotation_ids")
        .list.eval(pl.element().filter(pl.element().str.starts_with(prefix)))
        .list.first()
        .str.slice(len(prefix))
    )


def _json_array(frame: pl.DataFrame) -> bytes:
    """Rows as a JSON array of objects, written by polars (no Python object per row)."""
    buffer = io.BytesIO()
    frame.write_json(buffer)
    return buffer.getvalue()


def _llava_frame(rows: pl.DataFrame, image_root: Path | None) -> pl.DataFrame:
    _check_exportable(rows)
    empty = rows.filter(pl.col("image_path") == "")
    if empty.height:
        raise ValueError(f"conversation {empty['conversation_id'][0]}: image_path is empty")
    images = {
        path: _llava_image({"image_path": path, "conversation_id": cid}, image_root)
        for path, cid in rows.group_by("image_path")
        .agg(pl.col("conversation_id").first())
        .filter(pl.col("image_path").is_not_null())
        .iter_rows()
    }
    first = pl.col("turns").list.first()
    lead = pl.when(pl.col("image_path").is_not_null()).then(pl.lit(f"{IMAGE_TOKEN}\n"))
    conversations = pl.concat_list(
        pl.struct(
            first.struct.field("from").alias("from"),
            pl.concat_str(lead.otherwise(pl.lit("")), first.struct.field("value")).alias("value"),
        ),
        pl.col("turns").list.slice(1),
    )
    return rows.select(
        id=pl.coalesce(_original_ids(LLAVA_ID_PREFIX), pl.col("conversation_id")),
        image=pl.col("image_path").replace_strict(images, default=None, return_dtype=pl.String),
        conversations=conversations,
        instruction_type=pl.col("instruction_type"),
    )


def llava_json(rows: pl.DataFrame, *, image_root: Path | None = None) -> bytes:
    """The LLaVA training file for ``rows``, as UTF-8 JSON bytes (see :func:`to_llava`).

    Records with an image come first, text-only ones after, each in ``rows`` order.
    """
    frame = _llava_frame(rows, image_root) if rows.height else None
    parts: list[bytes] = []
    for has_image in (True, False):
        for typed in (False, True):
            if frame is None:
                continue
            part = frame.filter(
                pl.col("image").is_not_null() == has_image,
                (pl.col("instruction_type") != UNLABELLED) == typed,
            )
            if part.height:
                columns = [
                    "id",
                    *(["image"] if has_image else []),
                    "conversations",
                    *(["instruction_type"] if typed else []),
                ]
                parts.append(_json_array(part.select(columns))[1:-1])
    return b"[" + b",".join(parts) + b"]"


def to_llava(rows: pl.DataFrame, *, image_root: Path | None = None) -> list[dict]:
    """LLaVA training records: ``<image>`` leads the first user turn; ``image`` is root-relative.

    A text-only row (no image) gets neither ``image`` nor the token, as in LLaVA-1.5's mix.
    """
    return json.loads(llava_json(rows, image_root=image_root))


# ---------------------------------------------------------------- paper release format

_TRAILING_IDS = re.compile(r"(\d+(?:_\d+)?)$")
_REGION_SUFFIX = re.compile(r"_\d+$")


def _paper_record(out: _Collector, index: int, record: object) -> None:
    ref = f"[{index}]"
    if not isinstance(record, dict):
        kind = type(record).__name__
        out.reject(ref, _Problem("", "annotation_bad_field", f"expected an object, got {kind}"))
        return
    img_ids = _text_field(record, "img_ids", allow_int=True)
    image = _text_field(record, "image")
    itype = _check_type(record.get("instruction_type"), required=True)
    turns = _paper_turns(record.get("conversations"))
    for checked in (img_ids, image, itype, turns):
        if isinstance(checked, _Problem):
            out.reject(ref, checked)
            return
    assert isinstance(image, str) and isinstance(itype, str) and isinstance(turns, list)
    too_long = _check_lengths(turns, out.limits)
    if too_long:
        out.reject(ref, too_long)
        return
    path = PurePosixPath(image)
    # a region image is the original with a box drawn in; its id names the original image
    base = image
    if itype == "region" and _REGION_SUFFIX.search(path.stem):
        base = str(path.with_stem(_REGION_SUFFIX.sub("", path.stem)))
    row = _conversation_row(
        source=out.source,
        image=image,
        base_image=base,
        instruction_type=itype,
        key=f"#{index}",
        index=index,
        turns=turns,
        original_id=f"{PAPER_IMG_IDS_PREFIX}{img_ids}",
    )
    out.add(ref, row)


def from_paper(doc: object, *, source: str, file: str) -> ImportResult:
    """Import the paper's release format; malformed annotations become rejects."""
    if not isinstance(doc, dict):
        raise InstructionFormatError(file, "", f"expected a JSON object, got {type(doc).__name__}")
    annotations = doc.get("annotations")
    if not isinstance(annotations, list):
        got = "missing" if annotations is None else type(annotations).__name__
        raise InstructionFormatError(file, "annotations", f"expected a list, got {got}")
    return _import_paper(enumerate(annotations), _Collector(source, file))


def _import_paper(items: Iterable[tuple[int, object]], out: _Collector) -> ImportResult:
    for index, record in items:
        _paper_record(out, index, record)
    return out.result()


def paper_json(rows: pl.DataFrame, *, image_source: str, construction_time: str) -> bytes:
    """The paper's release document as UTF-8 JSON bytes; every row needs a paper type."""
    _check_exportable(rows)
    untyped = rows.filter(~pl.col("instruction_type").is_in(INSTRUCTION_TYPES))
    if untyped.height:
        row = untyped.row(0, named=True)
        raise ValueError(
            f"conversation {row['conversation_id']}: instruction_type "
            f"{row['instruction_type']!r} has no place in the paper format "
            f"({', '.join(INSTRUCTION_TYPES)})"
        )
    imageless = rows.filter(pl.col("image_path").fill_null("") == "")
    if imageless.height:
        raise ValueError(f"conversation {imageless['conversation_id'][0]}: image_path is empty")
    stems = {
        path: _TRAILING_IDS.search(PurePosixPath(path).stem)
        for path in rows["image_path"].unique().to_list()
    }
    from_stem = {p: (m.group(1) if m else PurePosixPath(p).stem) for p, m in stems.items()}
    speaker = pl.element().struct.field("from").replace_strict(PAPER_FROM, return_dtype=pl.String)
    frame = rows.select(
        img_ids=pl.coalesce(
            _original_ids(PAPER_IMG_IDS_PREFIX),
            pl.col("image_path").replace_strict(from_stem, return_dtype=pl.String),
        ),
        image=pl.col("image_path"),
        instruction_type=pl.col("instruction_type"),
        conversations=pl.col("turns").list.eval(
            pl.struct(speaker.alias("from"), pl.element().struct.field("value").alias("value"))
        ),
    )
    head = json.dumps(
        {"image_source": image_source, "construction_time": construction_time},
        ensure_ascii=False,
    )
    return head[:-1].encode() + b', "annotations": ' + _json_array(frame) + b"}"


def to_paper(rows: pl.DataFrame, *, image_source: str, construction_time: str) -> dict:
    """The paper's release document; every row needs one of the paper's three types."""
    return json.loads(
        paper_json(rows, image_source=image_source, construction_time=construction_time)
    )


# ---------------------------------------------------------------- files


_HEAD_BYTES = 1 << 16
_FIRST_LINE_LIMIT = 1 << 26  # a JSON Lines record longer than 64 MB is no conversation
_BOM = b"\xef\xbb\xbf"
_RECORD_KEYS = ("conversations", "messages")
# Any \\uD800-\\uDFFF escape; whether it is half of a pair is decided around each match.
# (One regular expression with a look-behind tests every byte: 8 s on 130 MB; this pattern
# starts with a literal, so re skips to each "\\u" and most files have none.)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def has_lone_surrogate_escape(data) -> bool:
    """True when the JSON text holds a ``\\uD800``-``\\uDFFF`` escape that is not half of a
    high-low pair. ``data`` is bytes, an mmap or a memoryview."""
    expect_low_at = -1
    for match in _SURROGATE_ESCAPE.finditer(data):
        high = match.group()[3:4] in b"89abAB"
        if match.start() == expect_low_at:
            if high:
                return True
            expect_low_at = -1
            continue
        if expect_low_at >= 0 or not high:
            return True  # a high escape left unpaired, or a low one alone
        expect_low_at = match.end()
    return expect_low_at >= 0


def _jsonl_items(path: Path, out: _Collector) -> Iterator[tuple[int, object]]:
    """(line index, record) of each non-blank line; a line that is no JSON becomes a reject."""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            try:
                yield lineno - 1, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                # orjson refuses invalid UTF-8 and lone surrogates here too: one bad line is
                # one reject, never a crash of the file
                problem = _Problem(
                    f"line {lineno}", "record_unparseable", f"line {lineno} is not JSON: {exc}"
                )
                out.reject(f"[{lineno - 1}]", problem)


def _has_lone_surrogate(path: Path) -> bool:
    with path.open("rb") as fh:
        if fh.seek(0, io.SEEK_END) == 0:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return has_lone_surrogate_escape(data)


def _stream(path: Path, prefix: str, keys: list[str] | None = None) -> Iterator[tuple[int, object]]:
    """(index, value) of each item under ``prefix`` (ijson), read in constant memory.

    ijson's C backend turns a lone surrogate escape into "?"; a file that holds one (rare:
    checked with a regular expression first) is parsed by ijson's Python backend, which keeps
    it, so the record is rejected as ``text_invalid_unicode`` instead of silently altered.
    Top-level keys are appended to ``keys`` as they are met. A JSON error raises
    :class:`InstructionFormatError` naming the last record read.
    """
    backend = ijson_python if _has_lone_surrogate(path) else ijson
    index = -1
    with path.open("rb") as fh:
        if fh.read(3) != _BOM:
            fh.seek(0)
        events = backend.parse(fh, use_float=True)
        if keys is not None:
            events = _noting_keys(events, keys)
        try:
            for index, value in enumerate(backend.items(events, prefix)):  # noqa: B007
                yield index, value
        except (ijson.JSONError, ValueError) as exc:  # also json and UTF-8 decoding errors
            where = f"after record [{index}]" if index >= 0 else "before the first record"
            text = str(exc).split("\n")[0].strip(" b'\"")
            why = "not UTF-8 text" if "UTF8" in text or isinstance(exc, UnicodeDecodeError) else ""
            raise InstructionFormatError(path, "", f"not JSON ({where}): {why or text}") from exc


def _noting_keys(events: Iterator[tuple], keys: list[str]) -> Iterator[tuple]:
    for event in events:
        if event[0] == "" and event[1] == "map_key":
            keys.append(event[2])
        yield event


def _first_line(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.readline(_FIRST_LINE_LIMIT).removeprefix(_BOM)


def _second_line_is_record(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.readline(_FIRST_LINE_LIMIT)
        for line in fh:
            if line.strip():
                try:
                    return isinstance(orjson.loads(line), dict)
                except orjson.JSONDecodeError:
                    return False
    return False


def _not_a_dataset(out: _Collector, what: str) -> ImportResult:
    out.reject(
        "",
        _Problem(
            "",
            "file_not_a_dataset",
            f"{what}; neither a LLaVA list/JSON Lines nor a paper document ('annotations'), "
            "so it was skipped (a labels or metadata sidecar?)",
        ),
    )
    return out.result()


def _describe(doc: object) -> str:
    if isinstance(doc, dict):
        return f"top level has {sorted(doc)[:20]}"
    return f"top level is {type(doc).__name__}"


def _load_document(path: Path, out: _Collector) -> ImportResult:
    """A file that is one JSON object: a paper document, one LLaVA record, or a sidecar."""
    keys: list[str] = []
    result = _import_paper(_stream(path, "annotations.item", keys), out)
    if "annotations" in keys and (result.rows.height or result.rejects.height):
        return result
    try:
        doc = orjson.loads(path.read_bytes().removeprefix(_BOM))
    except orjson.JSONDecodeError as exc:  # the stream above parsed it: only a huge number
        raise InstructionFormatError(path, "", f"not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and "annotations" in doc:
        return from_paper(doc, source=out.source, file=out.file)  # an empty or non-list one
    if isinstance(doc, dict) and any(k in doc for k in _RECORD_KEYS):
        return _import_llava([(0, doc)], out)
    return _not_a_dataset(out, _describe(doc))


def load_instruction_file(
    path: Path,
    *,
    source: str,
    limits: ImportLimits | None = None,
    image_store: Callable[[bytes], str] | None = None,
) -> ImportResult:
    """Import a LLaVA (JSON list, JSON Lines, Parquet) or paper-format file.

    JSON formats are detected from the content; ``*.parquet`` is read as Hugging Face-style
    rows (:func:`_parquet_items`), whose image bytes go to ``image_store``.

    The file is streamed: JSON Lines line by line, a JSON list and a paper document's
    ``annotations`` item by item, so memory is bounded by the rows, not the text. A JSON
    file that parses but is no dataset (a top-level scalar, or an object without
    ``annotations`` or turns) becomes one ``file_not_a_dataset`` reject. Text that is not JSON
    raises :class:`InstructionFormatError`. Rejects and errors name the file by its base name
    (``path.name``) so that reject ids do not depend on where the file sits on a machine.
    """
    path = Path(path)
    out = _Collector(source, path.name, limits)
    if path.suffix.lower() == ".parquet":
        return _import_llava(_parquet_items(path, out, image_store), out)
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES).removeprefix(_BOM).lstrip()
    if not head:
        raise InstructionFormatError(path, "", "the file is empty")
    if head[:1] == b"[":
        return _import_llava(_stream(path, "item"), out)
    if head[:1] != b"{":
        try:
            doc = orjson.loads(path.read_bytes().removeprefix(_BOM))
        except orjson.JSONDecodeError as exc:
            why = "not UTF-8 text" if "UTF-8" in str(exc) else str(exc)
            raise InstructionFormatError(path, "", f"not JSON or JSON Lines: {why}") from exc
        return _not_a_dataset(out, _describe(doc))
    try:
        first = orjson.loads(_first_line(path))
    except orjson.JSONDecodeError:
        first = None
    if isinstance(first, dict) and "annotations" not in first:
        if any(k in first for k in _RECORD_KEYS) or _second_line_is_record(path):
            return _load_jsonl(path, out)
        return _not_a_dataset(out, _describe(first))
    if first is None and _second_line_is_record(path):
        return _load_jsonl(path, out)
    return _load_document(path, out)


# ---------------------------------------------------------------- Hugging Face-style Parquet

_PARQUET_BATCH = 4096
_HF_ROLES = {"user": "human", "assistant": "gpt", "human": "human", "gpt": "gpt"}
_TURN_COLUMNS = ("conversations", "messages")
_IMAGE_COLUMNS = ("image", "images")


def _hf_text(content: object) -> object:
    """A message's text; a list of parts (``{"type": "text"|"image", ...}``) is joined in order,
    an image part becoming ``<image>`` where it stands."""
    if not isinstance(content, list):
        return content
    pieces = []
    for part in content:
        if not isinstance(part, dict):
            return content  # left for the turn checks to reject
        kind = part.get("type")
        if kind == "image":
            pieces.append(IMAGE_TOKEN)
        elif kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        else:
            return content
    return "\n".join(pieces)


def _hf_turns(messages: object) -> object:
    """``messages`` (role/content) as LLaVA turns; anything malformed passes through unchanged,
    so the usual turn checks name it."""
    if not isinstance(messages, list):
        return messages
    turns = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            return messages
        role = message.get("role")
        turns.append({"from": _HF_ROLES.get(role, role), "value": _hf_text(message.get("content"))})
    return turns


def _hf_image(value: object, store: Callable[[bytes], str] | None) -> object:
    """An image cell as a name: a path string, or bytes (alone or in ``{"bytes", "path"}``)
    written through ``store``; a struct with only a path gives the path."""
    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if isinstance(value, bytes | bytearray):
        if store is None:
            return {"image bytes": len(value)}  # rejected by the record checks: no place to go
        return store(bytes(value))
    return value


def _parquet_items(
    path: Path, out: _Collector, store: Callable[[bytes], str] | None
) -> Iterator[tuple[int, object]]:
    """Hugging Face-style rows as LLaVA records, read in batches.

    Turns come from ``conversations`` (from/value) or ``messages`` (role/content, where
    user/assistant map to human/gpt and a content list of text and image parts is joined with
    ``<image>`` for the image part). The image comes from ``image`` or a one-element
    ``images``: a path (resolved like a JSON file's), or bytes written by ``store`` to a
    content-addressed file. When a row has an image but its turns have no ``<image>``, as in
    ``messages`` data with a plain-text content, the token is put before the first turn.
    """
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InstructionFormatError(path, "", f"not a readable Parquet file: {exc}") from exc
    names = set(parquet.schema_arrow.names)
    turn_col = next((c for c in _TURN_COLUMNS if c in names), None)
    if turn_col is None:
        raise InstructionFormatError(
            path, "conversations", f"no column {' or '.join(_TURN_COLUMNS)}; has {sorted(names)}"
        )
    wanted = [c for c in ("id", "instruction_type", turn_col, *_IMAGE_COLUMNS) if c in names]
    index = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
        for row in batch.to_pylist():
            record: dict = {k: row[k] for k in ("id", "instruction_type") if row.get(k) is not None}
            turns = row[turn_col] if turn_col == "conversations" else _hf_turns(row[turn_col])
            if row.get("image") is not None:
                record["image"] = _hf_image(row["image"], store)
            elif isinstance(row.get("images"), list):
                record["images"] = [_hf_image(v, store) for v in row["images"]]
            has_image = "image" in record or bool(record.get("images"))
            if (
                has_image
                and isinstance(turns, list)
                and turns
                and all(isinstance(t, dict) for t in turns)
                and not any(IMAGE_TOKEN in str(t.get("value")) for t in turns)
                and isinstance(turns[0].get("value"), str)
            ):
                turns = [{**turns[0], "value": f"{IMAGE_TOKEN}\n{turns[0]['value']}"}, *turns[1:]]
            record["conversations"] = turns
            yield index, record
            index += 1


# ---------------------------------------------------------------- JSON Lines, vectorised
#
# The per-record validation above costs about 30 us a record in Python. A JSON Lines file is
# first read whole by pyarrow with the schema of the keys we use, and the records that are
# certainly valid (every check above passes, decided by polars expressions) become rows
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


def bad_text(data: memoryview | bytes) -> bool:
    """True when the bytes hold invalid UTF-8 or a lone surrogate escape (``\\ud800``)."""
    data = memoryview(data)  # type: ignore[arg-type]  # slices of it are views, not copies
    if has_lone_surrogate_escape(data):
        return True
    if not (np.frombuffer(data, np.uint8) >= 0x80).any():
        return False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for off in range(0, len(data), _FAST_BLOCK):
            decoder.decode(data[off : off + _FAST_BLOCK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return True
    return False


def _load_jsonl(path: Path, out: _Collector) -> ImportResult:
    fast = _fast_jsonl(path, out)
    if fast is not None:
        return fast
    out.reset()
    return _import_llava(_jsonl_items(path, out), out)


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


def _fast_jsonl(path: Path, out: _Collector) -> ImportResult | None:
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
                if data[:3] == _BOM or blank or bad_text(view):
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
        self._fh = None
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
    image_ids = [None if image is None else _image_id(source, image) for image in images]
    first = pl.struct(pl.lit("human").alias("from"), pl.col("_text0").alias("value"))
    return (
        frame.select(
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
        ).cast(CONVERSATION_SCHEMA)  # type: ignore[arg-type]
    )
