"""What the final stage reads before it decides: which sources are held back, image content
hashes, and the stored conversation vectors."""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import numpy as np
import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.final.split import IMAGE_HASH_COLUMN
from vlit_assets.core.schemas import META_CHECK_RESULTS, RAW_IMAGES
from vlit_assets.core.scored.embed import MINILM_DIM, Embedder, EmbeddingCache, conversation_vectors
from vlit_assets.core.vocab import SCORED_SUITE

GATING_CHECK = SCORED_SUITE


def failing_sources(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Sources whose rows must not ship, with why.

    A source is held back when the latest raw or generated suite of the source failed (a
    blocked run leaves the previous scores in place, which no longer match the data), when no
    scored_suite ran for its current scores, or when that check failed as a gate
    (``blocking: true``, recorded as severity ERROR). A failure recorded as WARN, the default,
    holds nothing back: the final rules filter the source's rows and final_suite guards what
    ships. Records from before severities existed (null) count as gates, as they were.
    """
    if not warehouse.table_exists(con, "scored__conversations"):
        return {}
    if not warehouse.table_exists(con, "meta__check_results"):
        sources = con.execute("SELECT DISTINCT source FROM scored__conversations").fetchall()
        return {s: "no check results recorded" for (s,) in sources}
    warehouse.ensure_table(con, META_CHECK_RESULTS)  # severity came later
    rows = con.execute(
        """
        WITH runs AS (
            SELECT source, run_id, check_name,
                   bool_and(coalesce(success, true))
                     OR bool_and(coalesce(severity, 'ERROR') = 'WARN') AS passed,
                   max(evaluated_at) AS checked_at
            FROM meta__check_results GROUP BY ALL
        ), latest AS (
            SELECT source, check_name, passed FROM runs
            QUALIFY row_number() OVER (PARTITION BY source, check_name ORDER BY checked_at DESC) = 1
        ), scored AS (
            SELECT source, any_value(scored_run_id) AS scored_run_id
            FROM scored__conversations GROUP BY source
        )
        SELECT s.source,
               CASE
                 WHEN EXISTS (SELECT 1 FROM latest l WHERE l.source = s.source
                              AND l.check_name IN ('raw_suite', 'generated_suite')
                              AND NOT l.passed)
                   THEN 'its latest raw or generated suite failed'
                 WHEN NOT EXISTS (SELECT 1 FROM runs r WHERE r.source = s.source
                                  AND r.check_name = ? AND r.run_id = s.scored_run_id
                                  AND r.passed)
                   THEN 'its scored_suite did not pass as a gate for its current scores'
               END AS reason
        FROM scored s
        """,
        [GATING_CHECK],
    ).fetchall()
    return {source: reason for source, reason in rows if reason is not None}


def with_image_hashes(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` plus ``image_sha256`` from raw__images (null where the image is unknown)."""
    hashes = (
        warehouse.read_source(con, RAW_IMAGES)
        .select("source", "image_id", pl.col("sha256").alias(IMAGE_HASH_COLUMN))
        .unique(["source", "image_id"])
    )
    return rows.join(hashes, on=["source", "image_id"], how="left", maintain_order="left")


def stored_vectors(
    scored: pl.DataFrame,
    embedder: Callable[[], Embedder],
    cache: EmbeddingCache,
    rows: pl.Series | None = None,
) -> np.ndarray:
    """Conversation vectors of the rows scoring embedded (from the cache: thresholds change
    without re-embedding, counted in ``cache.encoded``); NaN rows, never paired as semantic
    near duplicates, for rows it did not embed and rows outside the ``rows`` mask. The model
    (``embedder()``) is not loaded when no row needs a vector."""
    embedded = scored["embed_model"].is_not_null()
    if rows is not None:
        embedded = embedded & rows
    mask = embedded.to_numpy()
    vectors = np.full((scored.height, MINILM_DIM), np.nan, dtype=np.float32)
    if mask.any():
        wanted = scored.filter(pl.Series(mask))
        vectors[mask] = conversation_vectors(wanted, embedder(), cache).conversation
    return vectors
