"""What every instruction format shares on import: limits, errors, record checks, row collector."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
class Problem:
    field: str
    reason: str
    detail: str


# ---------------------------------------------------------------- validation


def check_structure(raw: object, speakers: Mapping[str, str]) -> list[dict] | Problem:
    """Turns mapped to human/gpt, or the first structural problem of the list."""
    if raw is None:
        return Problem("conversations", "annotation_bad_field", "conversations is missing")
    if not isinstance(raw, list):
        kind = type(raw).__name__
        return Problem("conversations", "annotation_bad_field", f"expected a list, got {kind}")
    if not raw:
        return Problem("conversations", "conversation_empty", "the list of turns is empty")
    turns: list[dict] = []
    for k, turn in enumerate(raw):
        where = f"conversations[{k}]"
        if not isinstance(turn, dict):
            kind = type(turn).__name__
            return Problem(where, "annotation_bad_field", f"expected an object, got {kind}")
        speaker = turn.get("from")
        if not isinstance(speaker, str) or speaker not in speakers:
            allowed = ", ".join(repr(s) for s in speakers)
            return Problem(
                f"{where}.from",
                "turn_unknown_speaker",
                f"from is {speaker!r}; expected one of {allowed}",
            )
        value = turn.get("value")
        if not isinstance(value, str):
            kind = type(value).__name__
            return Problem(f"{where}.value", "annotation_bad_field", f"value is {kind}, not text")
        if not _encodable(value):
            return Problem(f"{where}.value", "text_invalid_unicode", _SURROGATE_DETAIL)
        role, expected = speakers[speaker], "human" if k % 2 == 0 else "gpt"
        if role != expected:
            return Problem(
                f"{where}.from",
                "turns_not_alternating",
                f"turn {k} is from {speaker!r}; turns must start with the user and alternate",
            )
        turns.append({"from": role, "value": value})
    if turns[-1]["from"] == "human":
        return Problem(
            f"conversations[{len(turns) - 1}]",
            "turn_unanswered",
            "the conversation ends with a user turn that nothing answers",
        )
    return turns


def _strip_image_token(turns: list[dict]) -> list[dict] | Problem:
    """Remove LLaVA's image token from the first user turn, where it must appear exactly once."""
    for k, turn in enumerate(turns):
        n = turn["value"].count(IMAGE_TOKEN)
        if (k == 0 and n > 1) or (k > 0 and n > 0):
            return Problem(
                f"conversations[{k}].value",
                "image_token_misplaced",
                f"{IMAGE_TOKEN} appears {n} time(s) in turn {k}; only once, in turn 0, is allowed",
            )
    first = turns[0]["value"]
    if IMAGE_TOKEN not in first:
        return Problem(
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


def check_no_token(turns: list[dict]) -> Problem | None:
    for k, turn in enumerate(turns):
        if IMAGE_TOKEN in turn["value"]:
            return Problem(
                f"conversations[{k}].value",
                "image_token_misplaced",
                f"{IMAGE_TOKEN} is LLaVA's placeholder and does not belong in this format",
            )
    return None


def check_not_empty(turns: list[dict]) -> Problem | None:
    for k, turn in enumerate(turns):
        if not turn["value"].strip():
            return Problem(
                f"conversations[{k}].value", "turn_empty", f"turn {k} has no text (after <image>)"
            )
    return None


def llava_turns(raw: object, *, has_image: bool) -> list[dict] | Problem:
    turns = check_structure(raw, LLAVA_SPEAKERS)
    if isinstance(turns, Problem):
        return turns
    if has_image:
        turns = _strip_image_token(turns)
        if isinstance(turns, Problem):
            return turns
    elif any(IMAGE_TOKEN in t["value"] for t in turns):
        return Problem(
            "image",
            "annotation_bad_field",
            f"the turns hold {IMAGE_TOKEN} but the record names no image",
        )
    return check_not_empty(turns) or turns


def paper_turns(raw: object) -> list[dict] | Problem:
    turns = check_structure(raw, PAPER_SPEAKERS)
    if isinstance(turns, Problem):
        return turns
    return check_no_token(turns) or check_not_empty(turns) or turns


def _encodable(text: str) -> bool:
    """False for text holding a lone surrogate (``"\\ud800"`` in JSON), which no UTF-8 can store."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_lengths(turns: list[dict], limits: ImportLimits) -> Problem | None:
    total = 0
    for k, turn in enumerate(turns):
        n = len(turn["value"])
        total += n
        if n > limits.max_turn_chars:
            return Problem(
                f"conversations[{k}].value",
                "turn_too_long",
                f"turn {k} has {n} characters; the limit is {limits.max_turn_chars}",
            )
    if total > limits.max_conversation_chars:
        return Problem(
            "conversations",
            "conversation_too_long",
            f"the turns hold {total} characters; the limit is {limits.max_conversation_chars}",
        )
    return None


def text_field(record: dict, key: str, *, allow_int: bool = False) -> str | Problem:
    value = record.get(key)
    if isinstance(value, str) and value.strip():
        if not _encodable(value):
            return Problem(key, "text_invalid_unicode", _SURROGATE_DETAIL)
        return value
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    got = "missing" if value is None else f"{type(value).__name__} {value!r}"[:80]
    return Problem(key, "annotation_bad_field", f"{key} must be a non-empty string; got {got}")


def check_type(value: object, *, required: bool) -> str | Problem:
    if value is None and not required:
        return UNLABELLED
    allowed = INSTRUCTION_TYPES if required else (*INSTRUCTION_TYPES, UNLABELLED)
    if value in allowed:
        return str(value)
    return Problem(
        "instruction_type",
        "instruction_type_unknown",
        f"instruction_type is {value!r}; expected one of {', '.join(allowed)}",
    )


# ---------------------------------------------------------------- rows


@functools.lru_cache(maxsize=1 << 16)
def imported_image_id(source: str, name: str) -> str:
    return stable_id("img", source, name)  # many conversations share an image: hash it once


def conversation_row(
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
        "image_id": None if base_image is None else imported_image_id(source, base_image),
        "instruction_type": instruction_type,
        "variant": index,
        "turns": turns,
        "image_path": image,
        "source_annotation_ids": [original_id] if original_id else [],
    }


def _reject_row(source: str, file: str, record_id: str, problem: Problem) -> dict:
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


class Collector:
    """Accumulates rows and rejects of one file and keeps conversation ids unique."""

    def __init__(self, source: str, file: str, limits: ImportLimits | None = None) -> None:
        self.source, self.file = source, file
        self.limits = limits or ImportLimits()
        self.rejects: list[dict] = []
        self._columns: dict[str, list] = {name: [] for name in _VARYING}
        self._frames: list[pl.DataFrame] = []
        self._seen: dict[str, str] = {}

    def reject(self, record_id: str, problem: Problem) -> None:
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
            self.reject(record_id, Problem("id", "conversation_duplicate_id", detail))
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
            .cast(CONVERSATION_SCHEMA)
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
