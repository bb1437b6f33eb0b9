"""Instruction files read from disk: format detection, streamed JSON, JSON Lines, Parquet rows."""

from __future__ import annotations

import io
import mmap
from collections.abc import Callable, Iterator
from pathlib import Path

import ijson
import ijson.backends.python as ijson_python
import orjson
import pyarrow as pa

from vlit_assets.core.formats.encoding import BOM, has_lone_surrogate_escape
from vlit_assets.core.formats.llava import import_llava, load_jsonl
from vlit_assets.core.formats.paper import from_paper, import_paper
from vlit_assets.core.formats.records import (
    Collector,
    ImportLimits,
    ImportResult,
    InstructionFormatError,
    Problem,
)
from vlit_assets.core.vocab import IMAGE_TOKEN

_HEAD_BYTES = 1 << 16
_FIRST_LINE_LIMIT = 1 << 26  # a JSON Lines record longer than 64 MB is no conversation
_RECORD_KEYS = ("conversations", "messages")


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
        if fh.read(3) != BOM:
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
        return fh.readline(_FIRST_LINE_LIMIT).removeprefix(BOM)


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


def _not_a_dataset(out: Collector, what: str) -> ImportResult:
    out.reject(
        "",
        Problem(
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


def _load_document(path: Path, out: Collector) -> ImportResult:
    """A file that is one JSON object: a paper document, one LLaVA record, or a sidecar."""
    keys: list[str] = []
    result = import_paper(_stream(path, "annotations.item", keys), out)
    if "annotations" in keys and (result.rows.height or result.rejects.height):
        return result
    try:
        doc = orjson.loads(path.read_bytes().removeprefix(BOM))
    except orjson.JSONDecodeError as exc:  # the stream above parsed it: only a huge number
        raise InstructionFormatError(path, "", f"not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and "annotations" in doc:
        return from_paper(doc, source=out.source, file=out.file)  # an empty or non-list one
    if isinstance(doc, dict) and any(k in doc for k in _RECORD_KEYS):
        return import_llava([(0, doc)], out)
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
    out = Collector(source, path.name, limits)
    if path.suffix.lower() == ".parquet":
        return import_llava(_parquet_items(path, out, image_store), out)
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES).removeprefix(BOM).lstrip()
    if not head:
        raise InstructionFormatError(path, "", "the file is empty")
    if head[:1] == b"[":
        return import_llava(_stream(path, "item"), out)
    if head[:1] != b"{":
        try:
            doc = orjson.loads(path.read_bytes().removeprefix(BOM))
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
            return load_jsonl(path, out)
        return _not_a_dataset(out, _describe(first))
    if first is None and _second_line_is_record(path):
        return load_jsonl(path, out)
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
        role = message["role"]
        speaker = _HF_ROLES.get(role, role) if isinstance(role, str) else role
        turns.append({"from": speaker, "value": _hf_text(message.get("content"))})
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
    path: Path, out: Collector, store: Callable[[bytes], str] | None
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
