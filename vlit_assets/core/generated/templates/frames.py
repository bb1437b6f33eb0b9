"""Template inputs: the raw tables of a source checked, sorted and turned into per-image records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import polars as pl

from vlit_assets.core.generated.templates.scene import ImageRecord
from vlit_assets.core.text.inflect import NUMBER_WORDS
from vlit_assets.core.text.reading import stated_counts, turns_long

_NUMBER_HINT = r"(?i)[0-9]|\b(?:" + "|".join(NUMBER_WORDS) + r")\b"


def _require(frame: pl.DataFrame, table: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{table}: frame lacks columns {missing}")


def _first_bad(frame: pl.DataFrame, mask: pl.Expr, key: str) -> str | None:
    bad = frame.filter(mask)
    return None if bad.is_empty() else str(bad[key][0])


def _validate(
    images: pl.DataFrame, captions: pl.DataFrame, objects: pl.DataFrame, categories: pl.DataFrame
) -> None:
    checks = [
        (
            images,
            "raw__images",
            "image_id",
            "width",
            pl.col("width").is_null() | (pl.col("width") <= 0),
        ),
        (
            images,
            "raw__images",
            "image_id",
            "height",
            pl.col("height").is_null() | (pl.col("height") <= 0),
        ),
        (images, "raw__images", "image_id", "file_name", pl.col("file_name").is_null()),
        (
            captions,
            "raw__captions",
            "caption_id",
            "caption",
            pl.col("caption").is_null() | (pl.col("caption").str.strip_chars() == ""),
        ),
        (
            objects,
            "raw__objects",
            "object_id",
            "bbox_w",
            pl.col("bbox_w").is_null() | (pl.col("bbox_w") <= 0),
        ),
        (
            objects,
            "raw__objects",
            "object_id",
            "bbox_h",
            pl.col("bbox_h").is_null() | (pl.col("bbox_h") <= 0),
        ),
        (objects, "raw__objects", "object_id", "iscrowd", pl.col("iscrowd").is_null()),
        (
            objects,
            "raw__objects",
            "object_id",
            "category_id",
            ~pl.col("category_id").is_in(categories["category_id"].implode()),
        ),
        (
            objects,
            "raw__objects",
            "object_id",
            "image_id",
            ~pl.col("image_id").is_in(images["image_id"].implode()),
        ),
        (
            captions,
            "raw__captions",
            "caption_id",
            "image_id",
            ~pl.col("image_id").is_in(images["image_id"].implode()),
        ),
    ]
    for frame, table, key, field, mask in checks:
        bad = _first_bad(frame, mask, key)
        if bad is not None:
            raise ValueError(f"{table}: record {key}={bad} has a bad {field!r}")


def _ranges(frame: pl.DataFrame) -> dict[str, tuple[int, int]]:
    runs = frame.group_by("image_id", maintain_order=True).len()
    out: dict[str, tuple[int, int]] = {}
    start = 0
    for image_id, n in zip(runs["image_id"].to_list(), runs["len"].to_list(), strict=True):
        out[image_id] = (start, start + n)
        start += n
    return out


class Frames(NamedTuple):
    images: pl.DataFrame
    captions: pl.DataFrame
    objects: pl.DataFrame
    tags: pl.DataFrame


def prepare_frames(
    images: pl.DataFrame,
    captions: pl.DataFrame,
    objects: pl.DataFrame,
    categories: pl.DataFrame,
    tags: pl.DataFrame,
    source: str,
) -> Frames:
    """The source's rows, checked (a bad record raises naming it) and sorted by image id."""
    _require(images, "raw__images", ("image_id", "source", "file_name", "width", "height"))
    _require(captions, "raw__captions", ("caption_id", "source", "image_id", "caption"))
    _require(
        objects,
        "raw__objects",
        (
            "object_id",
            "source",
            "image_id",
            "category_id",
            "category_name",
            "bbox_x",
            "bbox_y",
            "bbox_w",
            "bbox_h",
            "iscrowd",
        ),
    )
    _require(categories, "raw__categories", ("source", "category_id", "name"))
    _require(tags, "raw__tags", ("image_id", "source", "absent"))
    of_source = pl.col("source") == source
    images = images.filter(of_source).sort("image_id")
    captions = captions.filter(of_source).sort("image_id", "caption_id")
    objects = objects.filter(of_source).sort("image_id", "object_id")
    categories = categories.filter(of_source)
    _validate(images, captions, objects, categories)
    return Frames(images, captions, objects, tags.filter(of_source))


def quotable_captions(
    captions: pl.DataFrame, objects: pl.DataFrame, categories: pl.Series
) -> pl.DataFrame:
    """The captions minus those stating a count the boxes contradict ("two giraffes" of zebras).

    Counts are read as the scorer reads them (``text.reading.stated_counts``) and judged as it
    judges them: only for the source's ``categories``, never for a category with a crowd box,
    and an unboxed category counts zero.
    """
    # Only a caption holding a digit or a number word can state a count.
    maybe = captions.filter(pl.col("caption").str.contains(_NUMBER_HINT))
    if maybe.is_empty():
        return captions
    quoted = maybe.select(
        conversation_id="caption_id",
        image_id="image_id",
        turns=pl.concat_list(
            pl.struct(pl.lit("gpt").alias("from"), pl.col("caption").alias("value"))
        ),
    )
    counts = stated_counts(turns_long(quoted)).filter(
        pl.col("category").is_in(categories.implode())
    )
    if counts.is_empty():
        return captions
    # Casts: a frame built from empty Python lists has Null columns.
    crowd = pl.col("iscrowd").cast(pl.Boolean)
    boxes = objects.group_by(
        pl.col("image_id").cast(pl.String),
        pl.col("category_name").cast(pl.String).alias("category"),
    ).agg(n=(~crowd).sum().cast(pl.Int64), crowd=crowd.any())
    wrong = (
        counts.join(boxes, on=["image_id", "category"], how="left")
        .filter(~pl.col("crowd").fill_null(False) & (pl.col("stated") != pl.col("n").fill_null(0)))
        .get_column("conversation_id")
    )
    if wrong.is_empty():
        return captions
    return captions.filter(~pl.col("caption_id").is_in(wrong.implode()))


def to_images(frames: Frames, named: pl.DataFrame) -> list[ImageRecord]:
    """Per-image Python records from prepared frames (sorted by image id).

    ``named`` (image_id, category) are categories the captions name; they leave the absent
    candidates.
    """
    images, captions, objects, tags = frames
    cap_rows = list(
        zip(captions["caption_id"].to_list(), captions["caption"].to_list(), strict=True)
    )
    obj_rows = list(
        zip(
            objects["object_id"].to_list(),
            objects["category_name"].to_list(),
            objects["bbox_x"].to_list(),
            objects["bbox_y"].to_list(),
            objects["bbox_w"].to_list(),
            objects["bbox_h"].to_list(),
            objects["iscrowd"].to_list(),
            strict=True,
        )
    )
    cap_at, obj_at = _ranges(captions), _ranges(objects)
    names = pl.col("absent").list.eval(pl.element().struct.field("name"))
    if tags.schema["absent"] == pl.List(pl.Null):  # every list empty: no struct to read
        names = pl.col("absent").cast(pl.List(pl.String))
    absent_names = tags.select("image_id", names.alias("names"))
    absent = dict(
        zip(absent_names["image_id"].to_list(), absent_names["names"].to_list(), strict=True)
    )
    by_image: dict[str, set[str]] = {}
    for image_id, category in named.iter_rows():
        by_image.setdefault(image_id, set()).add(category)
    for image_id, names_of in by_image.items():
        if absent.get(image_id):
            absent[image_id] = [n for n in absent[image_id] if n not in names_of]
    out = []
    none = (0, 0)
    for image_id, file_name, width, height in images.select(
        "image_id", "file_name", "width", "height"
    ).iter_rows():
        cs, ce = cap_at.get(image_id, none)
        os_, oe = obj_at.get(image_id, none)
        out.append(
            ImageRecord(
                image_id,
                file_name,
                width,
                height,
                cap_rows[cs:ce],
                obj_rows[os_:oe],
                absent.get(image_id) or [],
            )
        )
    return out
