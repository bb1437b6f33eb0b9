"""The generated-stage suite: well-formed conversations before anything is scored or shipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import great_expectations.expectations as gxe
import pandas as pd
import polars as pl

from vlit_assets.checks.gx_runner import SuiteOutcome, run_suite
from vlit_assets.core import warehouse
from vlit_assets.core.formats.writers import exportable
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS
from vlit_assets.core.vocab import GENERATED_SUITE, GENERATORS, INSTRUCTION_TYPES, UNLABELLED

SUITE_NAME = GENERATED_SUITE


def conversation_frame(rows: pl.DataFrame) -> pd.DataFrame:
    """Per usable conversation, the structural facts the suite checks (dropped rows excluded)."""
    usable = rows.filter(pl.col("drop_reason").is_null())
    froms = pl.col("turns").list.eval(pl.element().struct.field("from"))
    expected = (
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("human")).otherwise(pl.lit("gpt"))
    )
    frame = usable.select(
        "conversation_id",
        "instruction_type",
        "generator",
        "image_path",
        pl.col("turns").list.len().alias("n_messages"),
        (froms.list.first() == "human").fill_null(False).alias("starts_with_human"),
        froms.list.eval(pl.element() == expected).list.all().alias("alternates"),
        (froms.list.last() == "gpt").fill_null(False).alias("ends_with_answer"),
        pl.col("turns")
        .list.eval(pl.element().struct.field("value").str.strip_chars().str.len_chars())
        .list.min()
        .fill_null(0)
        .alias("min_text_chars"),
    )
    region_ok = [
        None if t != "region" else bool(p) and Path(p).is_file()
        for t, p in zip(frame["instruction_type"], frame["image_path"], strict=True)
    ]
    # The LLaVA writer leads the first turn with the token for every row it accepts that has an
    # image; a text-only row gets none. So the check is "the exporter accepts the row".
    frame = frame.with_columns(
        pl.Series("region_image_exists", region_ok, dtype=pl.Boolean),
        exportable(usable).alias("llava_first_turn_has_image"),
    ).drop("image_path")
    return frame.to_pandas()


def generated_expectations() -> dict[str, list[Any]]:
    return {
        "conversations": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToBeUnique(column="conversation_id"),
            gxe.ExpectColumnValuesToBeInSet(
                column="instruction_type", value_set=[*INSTRUCTION_TYPES, UNLABELLED]
            ),
            gxe.ExpectColumnValuesToBeInSet(column="generator", value_set=list(GENERATORS)),
            gxe.ExpectColumnValuesToBeBetween(column="n_messages", min_value=2),
            gxe.ExpectColumnValuesToBeInSet(column="starts_with_human", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="alternates", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="ends_with_answer", value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(column="min_text_chars", min_value=1),
            # null for global/negative rows; GX skips nulls in value-set expectations
            gxe.ExpectColumnValuesToBeInSet(column="region_image_exists", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="llava_first_turn_has_image", value_set=[True]),
        ]
    }


def validate_frame(frame: pd.DataFrame) -> SuiteOutcome:
    """Validate a ``conversation_frame`` (tests hand it known-bad frames directly)."""
    return run_suite(SUITE_NAME, {"conversations": frame}, generated_expectations())


def validate_rows(rows: pl.DataFrame) -> SuiteOutcome:
    return validate_frame(conversation_frame(rows))


def validate_generated(con: duckdb.DuckDBPyConnection, source: str) -> SuiteOutcome:
    return validate_rows(warehouse.read_source(con, GENERATED_CONVERSATIONS, source))
