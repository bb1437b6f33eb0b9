"""The final stage over the warehouse: gate, decide and store decisions, kept rows and figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.final.balance import Balance
from vlit_assets.core.final.gating import failing_sources, stored_vectors, with_image_hashes
from vlit_assets.core.final.rules import Thresholds
from vlit_assets.core.final.select import Selection, decide
from vlit_assets.core.final.split import IMAGE_HASH_COLUMN, SplitConfig
from vlit_assets.core.metadata import Metadata
from vlit_assets.core.schemas import (
    FINAL_CONVERSATIONS,
    FINAL_DECISIONS,
    FINAL_RUNS,
    SCORED_CONVERSATIONS,
)
from vlit_assets.core.scored.embed import Embedder, EmbeddingCache
from vlit_assets.core.scored.figures import Figures, dataset_figures, record_dataset_metrics

ALL_SOURCES = "*"  # the metric-history source of figures over every source


@dataclass
class FinalOutcome:
    selection: Selection
    decisions: pl.DataFrame  # final__decisions rows as written
    kept: pl.DataFrame  # final__conversations rows as written
    held_back: dict[str, str]  # source -> why its rows do not ship
    figures: Figures  # dataset figures of the kept rows
    texts_embedded: int  # texts the embedder encoded (not found in the cache)

    def decisions_metadata(self) -> Metadata:
        """Rows, drops per first failing rule, embedding work and held-back sources."""
        dropped = self.decisions.filter(~pl.col("kept")).group_by("first_failing_rule").len()
        held = "; ".join(f"{k}: {v}" for k, v in sorted(self.held_back.items()))
        return {
            "dagster/row_count": self.decisions.height,
            "dropped": self.decisions.height - self.kept.height,
            "texts_embedded": self.texts_embedded,
            "sources_held_back": held or "none",
            **{f"drops/{r}": n for r, n in dropped.sort("first_failing_rule").iter_rows()},
        }

    def kept_metadata(self) -> Metadata:
        """Kept rows, rows per split and the defined dataset figures of what ships."""
        splits = self.kept.group_by("split").len().sort("split")
        return {
            "dagster/row_count": self.kept.height,
            **{f"split/{s}": n for s, n in splits.iter_rows()},
            **{f"metric/{k}": float(v) for k, v in self.figures.items() if v is not None},
        }


def select_and_store(
    con: duckdb.DuckDBPyConnection,
    *,
    embedder: Callable[[], Embedder],
    thresholds: Thresholds,
    balance: Balance,
    split: SplitConfig,
    run_id: str,
) -> FinalOutcome:
    """One decision per scored conversation of every source, the kept rows with their split,
    the run's report and the kept rows' figures, written in one transaction."""
    gated = failing_sources(con)
    scored = warehouse.read_source(con, SCORED_CONVERSATIONS).sort("conversation_id")
    scored = with_image_hashes(con, scored)
    cache = EmbeddingCache(con)
    judged = ~scored["source"].is_in(sorted(gated))
    vectors = stored_vectors(scored, embedder, cache, rows=judged)
    selection = decide(scored, vectors, thresholds, balance, split, held_back=gated)
    decisions = selection.decisions.with_columns(pl.lit(run_id).alias("run_id"))
    kept = selection.kept.drop(IMAGE_HASH_COLUMN).with_columns(pl.lit(run_id).alias("final_run_id"))
    figures = dataset_figures(kept)
    # Decisions, kept rows, the run report and the figures commit together: a failure
    # part-way leaves the previous split whole.
    with warehouse.transaction(con):
        warehouse.replace_all(con, FINAL_DECISIONS, decisions)
        warehouse.replace_all(con, FINAL_CONVERSATIONS, kept)
        warehouse.upsert(
            con,
            FINAL_RUNS,
            pl.DataFrame(
                {
                    "final_run_id": [run_id],
                    "report": [json.dumps(selection.report, default=str)],
                    "held_back": [[f"{k}: {v}" for k, v in sorted(gated.items())]],
                    "created_at": [datetime.now(UTC).replace(tzinfo=None)],
                },
                schema=FINAL_RUNS.polars_schema,
            ),
        )
        record_dataset_metrics(
            con, figures, run_id=run_id, asset=FINAL_CONVERSATIONS.name, source=ALL_SOURCES
        )
    return FinalOutcome(selection, decisions, kept, gated, figures, cache.encoded)
