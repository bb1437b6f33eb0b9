"""The scoring stage over the warehouse: read a source and its annotations, score, store."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import polars as pl

from vlit_assets.core import sources, warehouse
from vlit_assets.core.metadata import Metadata
from vlit_assets.core.raw.imports import link_annotations
from vlit_assets.core.schemas import (
    GENERATED_CONVERSATIONS,
    GENERATED_LLM_VERIFICATION,
    RAW_CAPTIONS,
    RAW_CATEGORIES,
    RAW_IMAGES,
    RAW_OBJECTS,
    RAW_TAGS,
    SCORED_CONVERSATIONS,
)
from vlit_assets.core.scored.embed import Embedder, EmbeddingCache
from vlit_assets.core.scored.figures import record_dataset_metrics
from vlit_assets.core.scored.image_text import ImageTextScorer
from vlit_assets.core.scored.quality import (
    QualityConfig,
    QualityResult,
    needs_vectors,
    score_conversations,
)
from vlit_assets.core.shards import ShardMap

ANNOTATION_TABLES = (RAW_CAPTIONS, RAW_OBJECTS, RAW_TAGS, RAW_CATEGORIES)
# The figures the summary line names: one per principle the suite judges.
SUMMARY_FIGURES = (
    "format_valid_rate",
    "chair_s_rate",
    "relevance_mean",
    "near_duplicate_rate",
    "text_near_duplicate_rate",
    "exact_duplicate_share",
)


@dataclass
class ScoreOutcome:
    source: str
    result: QualityResult
    embeddings: str  # computed, or why not
    annotations: str  # whose annotations judged the rows
    seconds: float

    def summary(self) -> str:
        """One line for the log: rows, time, and the headline figures (4 significant)."""
        figures = ", ".join(
            f"{name} {value:.4g}"
            for name in SUMMARY_FIGURES
            if (value := self.result.dataset.get(name)) is not None
        )
        rows = self.result.scored.height
        return f"scored {self.source}: {rows} rows in {self.seconds:.1f} s; {figures}"

    def metadata(self) -> Metadata:
        """Rows, embedding work, whose annotations judged them, and the defined figures."""
        return {
            "dagster/row_count": self.result.scored.height,
            "texts_embedded": self.result.encoded_texts,
            "embeddings": self.embeddings,
            "annotations": self.annotations,
            **{f"metric/{k}": float(v) for k, v in self.result.dataset.items() if v is not None},
        }


def annotations_for(
    con: duckdb.DuckDBPyConnection, record: sources.SourceRecord
) -> dict[str, pl.DataFrame] | None:
    """The annotation frames that judge a source's conversations, or None when it has none."""
    if record.kind != "import":
        return {t.name: warehouse.read_source(con, t, record.source) for t in ANNOTATION_TABLES}
    if not record.annotations_source:
        return None
    other = record.annotations_source
    frames = {t.name: warehouse.read_source(con, t, other) for t in ANNOTATION_TABLES}
    return link_annotations(
        warehouse.read_source(con, RAW_IMAGES, record.source),
        warehouse.read_source(con, RAW_IMAGES, other),
        frames,
        source=record.source,
    )


def score_source(
    con: duckdb.DuckDBPyConnection,
    source: str,
    *,
    config: QualityConfig,
    embedder: Callable[[], Embedder],
    image_text: ImageTextScorer | None,
    run_id: str,
    mapper: ShardMap | None = None,
) -> ScoreOutcome:
    """Score a registered source's conversations and replace its scored rows and figures.

    Raises LookupError when the source is not registered. ``embedder()`` is only called when
    the settings need conversation vectors (see ``quality.needs_vectors``). ``mapper`` runs
    the per-image metrics and the encoding of uncached texts as shards (None: here).
    """
    start = time.perf_counter()
    record = sources.lookup(con, source)
    if record is None:
        raise LookupError(f"source {source!r} is not registered; materialize its raw stage first")
    conversations = warehouse.read_source(con, GENERATED_CONVERSATIONS, source)
    annotations = annotations_for(con, record) or {}
    captions = annotations.get(RAW_CAPTIONS.name)
    embed = needs_vectors(config, captions)
    result = score_conversations(
        conversations,
        objects=annotations.get(RAW_OBJECTS.name),
        tags=annotations.get(RAW_TAGS.name),
        categories=annotations.get(RAW_CATEGORIES.name),
        captions=captions,
        embedder=embedder() if embed else None,
        cache=EmbeddingCache(con),
        config=config,
        run_id=run_id,
        image_text=image_text,
        images=warehouse.read_source(con, RAW_IMAGES, source),
        verification=warehouse.read_source(con, GENERATED_LLM_VERIFICATION, source),
        mapper=mapper,
    )
    with warehouse.transaction(con):  # the scores and their dataset figures, or neither
        warehouse.replace_source(con, SCORED_CONVERSATIONS, result.scored, source)
        record_dataset_metrics(
            con, result.dataset, run_id=run_id, asset=SCORED_CONVERSATIONS.name, source=source
        )
    if embed:
        embeddings = "computed"
    elif config.semantic == "auto":
        embeddings = "skipped: no metric needs them (no captions; semantic='auto')"
    else:
        embeddings = "off"
    if record.kind != "import":
        whose = "own"
    else:
        whose = record.annotations_source or "none: correctness metrics are null"
    return ScoreOutcome(source, result, embeddings, whose, time.perf_counter() - start)
