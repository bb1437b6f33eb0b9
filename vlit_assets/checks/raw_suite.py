"""The raw-stage suite: what collected data must satisfy before any instruction is built on it."""

from __future__ import annotations

from typing import Any

import duckdb
import great_expectations.expectations as gxe
import pandas as pd

from vlit_assets.checks.gx_runner import SuiteOutcome, run_suite
from vlit_assets.core import sources
from vlit_assets.core.raw.annotations import BOX_TOLERANCE_PX
from vlit_assets.core.schemas import (
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_TAGS,
)
from vlit_assets.core.vocab import RAW_SUITE
from vlit_assets.core.warehouse import ensure_table

SUITE_NAME = RAW_SUITE


def raw_frames(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, pd.DataFrame]:
    """The frames the suite validates, with the derived columns its expectations read."""
    for table in (RAW_IMAGES, RAW_CAPTIONS, RAW_OBJECTS, RAW_CATEGORIES, RAW_TAGS):
        ensure_table(con, table)
    images = con.execute(
        """
        SELECT i.image_id, i.file_name, i.width, i.height,
               count(c.caption_id) AS n_captions
        FROM raw__images i LEFT JOIN raw__captions c
          ON c.image_id = i.image_id AND c.source = i.source
        WHERE i.source = ?
        GROUP BY ALL
        """,
        [source],
    ).df()
    objects = con.execute(
        """
        SELECT o.object_id, o.category_id, o.bbox_w, o.bbox_h,
               greatest(0.0, -o.bbox_x, -o.bbox_y,
                        o.bbox_x + o.bbox_w - i.width, o.bbox_y + o.bbox_h - i.height)
                 AS box_overshoot_px,
               i.image_id IS NOT NULL AS has_image
        FROM raw__objects o LEFT JOIN raw__images i
          ON i.image_id = o.image_id AND i.source = o.source
        WHERE o.source = ?
        """,
        [source],
    ).df()
    # has_image: a caption, object or tag row whose image is not in raw__images is an orphan
    # (e.g. tables written by different runs); the suite fails on any.
    captions = con.execute(
        """
        SELECT c.caption_id, c.image_id, c.caption, i.image_id IS NOT NULL AS has_image
        FROM raw__captions c LEFT JOIN raw__images i
          ON i.image_id = c.image_id AND i.source = c.source
        WHERE c.source = ?
        """,
        [source],
    ).df()
    categories = con.execute(
        "SELECT category_id, name FROM raw__categories WHERE source = ?", [source]
    ).df()
    tags = con.execute(
        """
        SELECT t.image_id, i.image_id IS NOT NULL AS has_image
        FROM raw__tags t LEFT JOIN raw__images i ON i.image_id = t.image_id AND i.source = t.source
        WHERE t.source = ?
        """,
        [source],
    ).df()
    return {
        "images": images,
        "objects": objects,
        "captions": captions,
        "categories": categories,
        "tags": tags,
    }


def raw_expectations(
    declared_category_ids: list[int], *, require_captions: bool = True
) -> dict[str, list[Any]]:
    """``require_captions`` is off for imported instruction datasets, which carry no captions."""
    images = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="image_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="file_name"),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=1),
    ]
    if require_captions:
        images.append(gxe.ExpectColumnValuesToBeBetween(column="n_captions", min_value=1))
    return {
        "images": images,
        "captions": [
            gxe.ExpectColumnValuesToBeUnique(column="caption_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="caption"),
            gxe.ExpectColumnValuesToBeInSet(column="has_image", value_set=[True]),
        ],
        "objects": [
            gxe.ExpectColumnValuesToBeUnique(column="object_id"),
            gxe.ExpectColumnValuesToBeInSet(column="category_id", value_set=declared_category_ids),
            gxe.ExpectColumnValuesToBeBetween(
                column="box_overshoot_px", min_value=0, max_value=BOX_TOLERANCE_PX
            ),
            gxe.ExpectColumnValuesToBeBetween(column="bbox_w", min_value=0, strict_min=True),
            gxe.ExpectColumnValuesToBeBetween(column="bbox_h", min_value=0, strict_min=True),
            gxe.ExpectColumnValuesToBeInSet(column="has_image", value_set=[True]),
        ],
        "categories": [gxe.ExpectColumnValuesToBeUnique(column="category_id")],
        "tags": [
            gxe.ExpectColumnValuesToBeUnique(column="image_id"),
            gxe.ExpectColumnValuesToBeInSet(column="has_image", value_set=[True]),
        ],
    }


def validate_frames(frames: dict[str, pd.DataFrame], *, imported: bool = False) -> SuiteOutcome:
    declared = [int(x) for x in frames["categories"]["category_id"].tolist()]
    return run_suite(SUITE_NAME, frames, raw_expectations(declared, require_captions=not imported))


def validate_raw(con: duckdb.DuckDBPyConnection, source: str) -> SuiteOutcome:
    record = sources.lookup(con, source)
    imported = record is not None and record.kind == "import"
    return validate_frames(raw_frames(con, source), imported=imported)
