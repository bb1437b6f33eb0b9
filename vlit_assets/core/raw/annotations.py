"""COCO annotations of a source: its files found, every record validated, image rejects cascaded.

A source is a COCO-layout directory: ``annotations/captions_<split>.json``, optionally
``annotations/instances_<split>.json`` (without it a source has no objects or categories), and
the images under ``<split>/``. This module reads and checks the annotation files; no image is
opened here (``collect.py`` does that). A problem in one record becomes one ``raw__rejects`` row
and every good record still proceeds; a file that is not COCO-shaped at all raises
``coco_json.SourceFormatError``.

Which record wins. The captions file declares the images; the instances file's image list
only adds ids the captions file does not declare (such images have no captions and are
rejected as ``image_without_captions``). For a duplicated id the first occurrence in file order
is kept and one reject row names the others. Each bad record gets exactly one reject row: the
first failing check in the order its validator lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from vlit_assets.core.raw.coco_json import Field, empty_records, read_coco_file
from vlit_assets.core.raw.rejects import cascade, finish_rejects, no_rejects, split_rejects

BOX_TOLERANCE_PX: float = 1.0
"""How far a box may pass the image edge: COCO boxes come from float polygons and a few end a
fraction of a pixel outside the image. Shared with the raw GX suite."""


MAX_CAPTION_CHARS: int = 4_096
"""Longer captions are rejected (annotation_bad_field): COCO captions run to about 250
characters, and a caption becomes the text of generated turns."""

MAX_NAME_BYTES: int = 255
"""The longest file or folder name Linux file systems store; a longer one cannot exist."""


@dataclass(frozen=True)
class CocoFiles:
    root: Path
    split: str
    captions: Path
    instances: Path | None
    image_dir: Path


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


_IMAGE_FIELDS = (
    Field("id", "int"),
    Field("file_name", "str"),
    Field("width", "int"),
    Field("height", "int"),
)
_CAPTION_FIELDS = (Field("id", "int"), Field("image_id", "int"), Field("caption", "str"))
_OBJECT_FIELDS = (
    Field("id", "int"),
    Field("image_id", "int"),
    Field("category_id", "int"),
    Field("bbox", "numlist"),
    Field("area", "num"),
    Field("iscrowd", "flag"),
)
_CATEGORY_FIELDS = (
    Field("id", "int"),
    Field("name", "str"),
    Field("supercategory", "str", required=False),
)
_INT32_MAX = 2**31 - 1  # raw__images sizes and category ids are INTEGER columns


def _drop_duplicate_ids(
    frame: pl.DataFrame, *, file: str, section: str, reason: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the first record of each id; one reject row per duplicated id names the others."""
    repeat = pl.col("id").is_not_null() & ~pl.col("id").is_first_distinct()
    flagged = frame.with_columns(repeat.alias("_repeat"))
    repeats = flagged.filter(pl.col("_repeat"))
    if not repeats.height:
        return frame, no_rejects()
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
    fields: Sequence[Field], checks: Sequence[tuple[str, pl.Expr, str]]
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
    fields: Sequence[Field],
    checks: Sequence[tuple[str, pl.Expr, str]],
    *,
    file: str,
    section: str,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    name, detail = _value_problem(fields, checks)
    frame = frame.with_columns(name.alias("_bad_field"), detail.alias("_bad_detail"))
    return split_rejects(
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
    kept, unknown = split_rejects(
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
    kept, empty = split_rejects(
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
    kept, unknown_image = split_rejects(
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
    kept, unknown_category = split_rejects(
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
    kept, nonpositive = split_rejects(
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
    kept, outside = split_rejects(
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
        no_instances = {key: empty_records(fields) for key, fields in _INSTANCE_ARRAYS.items()}
        return read_coco_file(files.captions, _CAPTION_ARRAYS), no_instances
    with ThreadPoolExecutor(max_workers=2) as pool:
        captions = pool.submit(read_coco_file, files.captions, _CAPTION_ARRAYS)
        instances = pool.submit(read_coco_file, files.instances, _INSTANCE_ARRAYS)
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
    captions, cascaded = cascade(
        captions, _image_reject_ids(image_rejects), file=cap_file, what="caption"
    )
    rejects.append(cascaded)

    images, uncaptioned = split_rejects(
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
    objects, cascaded = cascade(
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
        rejects=finish_rejects(source, run_id, rejects),
        captions_file=cap_file,
        instances_file=ins_file,
    )
