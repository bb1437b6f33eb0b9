"""A COCO source collected whole: annotations loaded, image files checked, raw__* frames built.

A source is a COCO-layout directory: ``annotations/captions_<split>.json``, optionally
``annotations/instances_<split>.json`` (without it a source has no objects or categories), and
the images under ``<split>/``. :func:`collect_source` turns it into the ``raw__*`` frames of
``schemas.py``: ``annotations.py`` reads and validates the annotation files (``coco_json.py``
parses them), this module checks the image files and joins the two, ``tags.py`` derives the tags.
A problem in one record becomes one ``raw__rejects`` row and every good record still proceeds; a
file that is not COCO-shaped at all raises ``coco_json.SourceFormatError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from vlit_assets.core.raw.annotations import AnnotationTables, find_coco_files, load_annotations
from vlit_assets.core.raw.images import ImageJob, inspect_images
from vlit_assets.core.raw.rejects import (
    add_source,
    cascade,
    check_unique_rejects,
    conform,
    finish_rejects,
    source_ids,
)
from vlit_assets.core.raw.tags import derive_tags
from vlit_assets.core.schemas import RAW_CAPTIONS, RAW_CATEGORIES, RAW_IMAGES, RAW_OBJECTS
from vlit_assets.core.shards import ShardMap

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


@dataclass(frozen=True)
class CollectConfig:
    split: str | None = None
    max_pixels: int = 89_478_485  # Pillow's own default limit
    workers: int = 2
    absent_k: int = 8


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
    mapper: ShardMap | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Open and fully decode every image record: (raw__images rows, reject rows).

    ``records`` has coco_image_id, file_name, width, height (declared). Reject rows name the
    image file relative to the source root (the parent of ``image_root``). Of images with
    identical bytes the one with the lowest coco id is kept. A ``mapper`` runs the checks as
    shards (``images.inspect_images``) instead of ``workers`` processes.
    """
    image_root = Path(image_root)
    records = records.sort("coco_image_id")
    jobs = [
        ImageJob(str(image_root), name, width, height)
        for name, width, height in records.select("file_name", "width", "height").iter_rows()
    ]
    reports = inspect_images(jobs, max_pixels=max_pixels, workers=workers, mapper=mapper)
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
        pl.Series("image_id", source_ids("img", source, valid["coco_image_id"]), pl.String),
        pl.lit(source).alias("source"),
        pl.lit(run_id).alias("run_id"),
    )
    return conform(RAW_IMAGES, valid), finish_rejects(source, run_id, [rejects])


def _move_to_kept(frame: pl.DataFrame, moved: pl.DataFrame) -> pl.DataFrame:
    """``image_id`` of annotations of a duplicate image replaced by the kept image's id."""
    if not moved.height or not frame.height:
        return frame
    return (
        frame.join(moved, on="image_id", how="left", maintain_order="left")
        .with_columns(pl.coalesce("_kept_id", "image_id").alias("image_id"))
        .drop("_kept_id")
    )


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
    captions, cap_cascade = cascade(
        captions, failed, file=annotations.captions_file, what="caption"
    )
    objects = _move_to_kept(
        annotations.objects.rename({"coco_annotation_id": "id", "coco_image_id": "image_id"}),
        moved,
    )
    objects, obj_cascade = cascade(
        objects, failed, file=annotations.instances_file or "", what="object"
    )
    image_ids = dict(
        zip(images["coco_image_id"].to_list(), images["image_id"].to_list(), strict=True)
    )
    captions = captions.with_columns(
        pl.Series("caption_id", source_ids("cap", source, captions["id"]), pl.String),
        pl.col("image_id").replace_strict(image_ids, return_dtype=pl.String).alias("image_id"),
        pl.col("id").alias("coco_caption_id"),
        pl.col("image_id").alias("coco_image_id"),
    )
    categories = add_source(annotations.categories, source, run_id)
    objects = (
        objects.with_columns(
            pl.Series("object_id", source_ids("obj", source, objects["id"]), pl.String)
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
    captions = conform(RAW_CAPTIONS, add_source(captions, source, run_id))
    objects = conform(RAW_OBJECTS, add_source(objects, source, run_id))
    cascaded = finish_rejects(source, run_id, [cap_cascade, obj_cascade])
    rejects = pl.concat([annotations.rejects, cascaded, image_rejects])
    check_unique_rejects(rejects)
    return CollectResult(
        images=images,
        captions=captions,
        objects=objects,
        categories=conform(RAW_CATEGORIES, categories),
        tags=derive_tags(images, objects, categories, k=absent_k),
        rejects=rejects.sort("file", "record_id", "reason"),
    )


def collect_source(
    source: str,
    root: Path,
    config: CollectConfig = CollectConfig(),
    run_id: str = "",
    *,
    mapper: ShardMap | None = None,
) -> CollectResult:
    """Every raw__* frame of one COCO-layout source directory; ``mapper``: see validate_images."""
    files = find_coco_files(Path(root), config.split)
    annotations = load_annotations(source, files, run_id)
    images, image_rejects = validate_images(
        source,
        files.image_dir,
        annotations.images,
        max_pixels=config.max_pixels,
        workers=config.workers,
        run_id=run_id,
        mapper=mapper,
    )
    return assemble(
        source, annotations, images, image_rejects, absent_k=config.absent_k, run_id=run_id
    )
