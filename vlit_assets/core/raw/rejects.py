"""Reject rows of the raw stage, and the ids, source columns and column types of every raw table."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from vlit_assets.core.ids import stable_id, stable_ids
from vlit_assets.core.schemas import RAW_REJECTS, Table

REJECT_COLUMNS = {
    "file": pl.String,
    "record_id": pl.String,
    "field": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}


def no_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECT_COLUMNS)


def _record_id(section: str, frame: pl.DataFrame) -> pl.Expr:
    if "_index" not in frame.columns:  # validated records: the id is never null
        return pl.col("id").cast(pl.String)
    return (
        pl.when(pl.col("id").is_not_null())
        .then(pl.col("id").cast(pl.String))
        .otherwise(pl.format(f"{section}[{{}}]", pl.col("_index")))
    )


def split_rejects(
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


def cascade(
    frame: pl.DataFrame, rejected_images: pl.DataFrame, *, file: str, what: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Move the annotations of rejected images out, one ``parent_image_rejected`` row each."""
    if not rejected_images.height or not frame.height:
        return frame, no_rejects()
    parents = rejected_images.select(
        pl.col("coco_image_id").alias("image_id"), pl.col("reason").alias("_parent_reason")
    )
    joined = frame.join(parents, on="image_id", how="left", maintain_order="left")
    kept, rejects = split_rejects(
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


def source_ids(prefix: str, source: str, values: Iterable[object]) -> list[str]:
    if isinstance(values, pl.Series):
        values = values.to_list()
    return stable_ids(prefix, source, values)


def conform(table: Table, frame: pl.DataFrame) -> pl.DataFrame:
    """Exactly the table's columns, in order, with its types."""
    return frame.select([pl.col(c).cast(t) for c, t in table.polars_schema.items()])


def finish_rejects(source: str, run_id: str, parts: Iterable[pl.DataFrame]) -> pl.DataFrame:
    frames = [p.select(list(REJECT_COLUMNS)) for p in parts if p.height]
    if not frames:
        return RAW_REJECTS.empty_frame()
    rejects = pl.concat(frames)
    keys = rejects.select("file", "record_id", "field", "reason").iter_rows()
    rejects = rejects.with_columns(
        pl.Series("reject_id", [stable_id("rej", source, *k) for k in keys], pl.String),
        pl.lit(source).alias("source"),
        pl.lit(run_id).alias("run_id"),
    )
    check_unique_rejects(rejects)
    return conform(RAW_REJECTS, rejects)


def check_unique_rejects(rejects: pl.DataFrame) -> None:
    clashes = rejects.filter(pl.col("reject_id").is_duplicated())
    if clashes.height:  # a validator reported one problem twice: a bug here, not in the data
        raise RuntimeError(f"duplicate reject rows: {clashes.head(5).to_dicts()}")


def add_source(frame: pl.DataFrame, source: str, run_id: str) -> pl.DataFrame:
    return frame.with_columns(pl.lit(source).alias("source"), pl.lit(run_id).alias("run_id"))
