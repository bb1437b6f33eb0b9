"""Conversations written out: LLaVA training files and the paper's release document."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import polars as pl

from vlit_assets.core.formats.records import (
    LLAVA_ID_PREFIX,
    PAPER_FROM,
    PAPER_IMG_IDS_PREFIX,
    Problem,
    check_no_token,
    check_not_empty,
    check_structure,
)
from vlit_assets.core.vocab import IMAGE_TOKEN, INSTRUCTION_TYPES, UNLABELLED

_TRAILING_IDS = re.compile(r"(\d+(?:_\d+)?)$")


def _export_turns(row: Mapping) -> list[dict]:
    cid = row.get("conversation_id")
    if row.get("drop_reason"):
        raise ValueError(f"conversation {cid}: dropped ({row['drop_reason']}); filter it out first")
    turns = check_structure(row.get("turns"), {"human": "human", "gpt": "gpt"})
    problem = turns if isinstance(turns, Problem) else None
    if isinstance(turns, list):
        problem = check_no_token(turns) or check_not_empty(turns)
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
