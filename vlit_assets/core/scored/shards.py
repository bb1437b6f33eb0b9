"""Scoring on a ShardMap: per-image shards for the metrics, batch-aligned shards for embedding.

Only work whose result for a row depends on nothing outside its image goes to the shards:
every rule metric, the text statistics, MinHash near-copies (paired only within one image and
box, see ``quality.dedup_group``) and the LLM checks. What reads the whole source stays in the
driver: the exact-duplicate key's first holder, semantic near-duplicates across images, relevance
(a dot product on vectors the driver already holds for those) and the dataset figures.

Embedding shards are whole encoder batches in the order SentenceTransformer batches a call, so
every text is encoded beside the same texts as in one local call, and its vector is the same to
the bit (batch padding is what would otherwise move the last float bits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from vlit_assets.core.shards import ShardMap, cut, shard_count

METRICS_STEP = "scored/metrics"
EMBED_STEP = "scored/embed"
MIN_ROWS_PER_SHARD = 500  # below this the per-task overhead outweighs the rows' scoring
MIN_BATCHES_PER_SHARD = 4


@dataclass(frozen=True)
class RowInputs:
    """One shard's conversations and the annotation rows of their images only."""

    conversations: pl.DataFrame
    objects: pl.DataFrame | None
    tags: pl.DataFrame | None
    categories: pl.DataFrame | None
    captions: pl.DataFrame | None
    images: pl.DataFrame | None
    verification: pl.DataFrame | None


def _image_key() -> pl.Expr:
    # Text-only rows (no image) share one key, as they share one MinHash group.
    return pl.col("image_id").cast(pl.String).fill_null("")


def image_groups(conversations: pl.DataFrame, parts: int) -> list[pl.DataFrame]:
    """The rows cut into at most ``parts`` shards of near-equal size, never splitting an image.

    Images are taken in order of first appearance; each shard keeps the input order of its rows.
    """
    sizes = (
        conversations.select(key=_image_key())
        .group_by("key", maintain_order=True)
        .len()
        .with_columns(before=pl.col("len").cum_sum() - pl.col("len"))
    )
    n = max(1, conversations.height)
    shard_of = sizes.select("key", shard=(pl.col("before") * parts // n).cast(pl.Int64))
    keyed = conversations.with_columns(_key=_image_key()).join(
        shard_of, left_on="_key", right_on="key", how="left", maintain_order="left"
    )
    return [
        part.drop("_key", "shard")
        for part in keyed.partition_by("shard", maintain_order=True, include_key=True)
    ]


def _only(frame: pl.DataFrame | None, images: pl.Series) -> pl.DataFrame | None:
    if frame is None or "image_id" not in frame.columns:
        return frame
    return frame.filter(pl.col("image_id").cast(pl.String).is_in(images.implode()))


def _shard_inputs(rows: pl.DataFrame, full: RowInputs) -> RowInputs:
    images = rows.get_column("image_id").cast(pl.String).drop_nulls().unique()
    objects = full.objects
    if objects is not None and "region_object_id" in rows.columns:
        # A region row names its object by id; keep that object even if filed under another image.
        boxed = rows.get_column("region_object_id").drop_nulls().implode()
        objects = objects.filter(
            pl.col("image_id").cast(pl.String).is_in(images.implode())
            | pl.col("object_id").is_in(boxed)
        )
    else:
        objects = _only(objects, images)
    verification = full.verification
    if verification is not None:
        ids = rows.get_column("conversation_id").implode()
        verification = verification.filter(pl.col("conversation_id").is_in(ids))
    return RowInputs(
        conversations=rows,
        objects=objects,
        tags=_only(full.tags, images),
        categories=full.categories,
        captions=_only(full.captions, images),
        images=_only(full.images, images),
        verification=verification,
    )


def map_row_metrics(
    mapper: ShardMap, fn: Callable[[RowInputs], pl.DataFrame], full: RowInputs
) -> pl.DataFrame:
    """``fn`` over image-group shards of ``full`` on ``mapper``, rows back in input order."""
    rows = full.conversations
    parts = shard_count(mapper, rows.height, min_items=MIN_ROWS_PER_SHARD)
    groups = image_groups(rows, parts) if rows.height else [rows]
    work = [_shard_inputs(g, full) for g in groups]
    outs = mapper.map(fn, work, step=METRICS_STEP, sizes=[g.height for g in groups])
    scored = pl.concat(outs, how="vertical_relaxed")
    return rows.select("conversation_id").join(
        scored, on="conversation_id", how="left", maintain_order="left"
    )


# Embedders loaded in this process, so a worker that runs many shards loads its model once.
_LOADED: dict[tuple[str, str, int], Any] = {}


def _worker_embedder(embedder: Any) -> Any:
    key = (type(embedder).__name__, embedder.model_name, int(getattr(embedder, "batch_size", 0)))
    if key not in _LOADED:
        if getattr(embedder, "device", None) == "cpu" and _cuda_here():
            embedder.device = "cuda"  # the task was given a GPU share: use it
        _LOADED[key] = embedder
    return _LOADED[key]


def _cuda_here() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def encode_batches(work: tuple[Any, list[list[str]]]) -> np.ndarray:
    """Vectors of each batch encoded on its own, in order (the task a shard of texts runs)."""
    embedder, batches = work
    model = _worker_embedder(embedder)
    return np.concatenate([model.encode(batch) for batch in batches])


class MappedEmbedder:
    """An Embedder whose ``encode`` runs on a ShardMap; the driver keeps only the cache.

    ``gpus`` is the GPU share each shard asks for where the cluster has GPUs (CPU otherwise).
    """

    def __init__(self, embedder: Any, mapper: ShardMap, *, gpus: float = 0.25) -> None:
        self.embedder = embedder
        self.mapper = mapper
        self.gpus = gpus

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    @property
    def model_name(self) -> str:
        return str(self.embedder.model_name)

    def encode(self, texts: list[str]) -> np.ndarray:
        n = len(texts)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        size = int(getattr(self.embedder, "batch_size", 0)) or n
        # The very call SentenceTransformer.encode makes to order a call's texts into batches.
        order = np.argsort([-len(t) for t in texts])
        batches = [order[i : i + size] for i in range(0, n, size)]
        parts = shard_count(self.mapper, len(batches), min_items=MIN_BATCHES_PER_SHARD)
        spans = cut(len(batches), parts)
        work = [
            (self.embedder, [[texts[i] for i in b] for b in batches[s : s + k]]) for s, k in spans
        ]
        sizes = [sum(len(b) for b in batches[s : s + k]) for s, k in spans]
        outs = self.mapper.map(encode_batches, work, step=EMBED_STEP, sizes=sizes, gpus=self.gpus)
        out = np.empty((n, self.dim), dtype=np.float32)
        out[np.concatenate(batches)] = np.concatenate(outs)
        return out
