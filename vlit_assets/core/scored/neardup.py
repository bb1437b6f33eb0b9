"""Near-duplicate clusters, nearest-neighbour novelty and semantic spread over unit embeddings.

Candidate pairs come from a tiled scan in a PCA subspace. Projecting onto orthonormal directions
never lengthens a difference vector, so ``|P(x - y)|^2 <= |x - y|^2 = 2 (1 - cos(x, y))``: every
pair whose true cosine reaches the threshold also lies within the projected radius. The scan
therefore finds all near-duplicate pairs (recall 1, up to float32 rounding, which a small margin
covers); exact cosines on the candidates remove the false ones. The same scan gives each sample
its nearest neighbour in the subspace, whose exact cosine defines novelty. See
docs/metrics_embeddings.md for definitions and measured accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DEFAULT_THRESHOLD = 0.95
# 62 principal directions + the 2 augmentation columns make the scan's GEMM 64 wide.
DEFAULT_DIMS = 62
DEFAULT_TILE = 2048
# Slack on the projected radius so float32 rounding in the scan cannot lose a true pair.
_RADIUS_MARGIN = 1e-4
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Neighbours:
    """Index-level result: verified pairs (i < j, cosine >= threshold) and each row's neighbour."""

    pair_i: np.ndarray
    pair_j: np.ndarray
    pair_cosine: np.ndarray
    nearest: np.ndarray  # index of the nearest other row found, -1 when there is none
    nearest_cosine: np.ndarray  # exact cosine to it, NaN when there is none
    candidates: int  # pairs whose exact cosine was computed to verify them


def check_unit_vectors(vectors: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
    """The vectors as C-contiguous float32, or a ValueError naming the first bad row."""
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, got shape {vectors.shape}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1.0) > _NORM_TOLERANCE))
    if bad.size:
        row = int(bad[0])
        name = f"conversation {ids[row]}" if ids is not None else f"row {row}"
        raise ValueError(
            f"{name}: embedding is not a finite unit vector (norm {norms[row]:.4f}); "
            f"{bad.size} such rows"
        )
    return vectors


def pca_basis(vectors: np.ndarray, dims: int) -> np.ndarray:
    """The ``dims`` directions of largest variance, as a (d, dims) orthonormal matrix."""
    centered = vectors - vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
    scatter = (centered.T @ centered).astype(np.float64)  # float32 GEMM: fine for directions
    _, eigvecs = np.linalg.eigh(scatter)
    return np.ascontiguousarray(eigvecs[:, ::-1][:, :dims], dtype=np.float32)


def _distance_factors(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left/right factors whose product is the squared distance matrix of the rows of ``z``.

    ``[z, |z|^2, 1] . [-2z, 1, |z|^2] = |z_i|^2 + |z_j|^2 - 2 z_i.z_j``, so one GEMM per tile
    yields distances with no extra elementwise pass.
    """
    sq = np.einsum("ij,ij->i", z, z).reshape(-1, 1)
    ones = np.ones_like(sq)
    left = np.ascontiguousarray(np.hstack([z, sq, ones]), dtype=np.float32)
    right = np.ascontiguousarray(np.hstack([-2.0 * z, ones, sq]), dtype=np.float32)
    return left, right


@dataclass
class _ScanState:
    best: np.ndarray  # smallest projected squared distance seen per row
    best_block: np.ndarray  # start of the column block it came from
    pair_i: list[np.ndarray]
    pair_j: list[np.ndarray]

    def offer(self, start: int, mins: np.ndarray, block: int) -> None:
        window = self.best[start : start + mins.size]
        better = mins < window
        window[better] = mins[better]
        self.best_block[start : start + mins.size][better] = block


def _collect_pairs(
    state: _ScanState, dist: np.ndarray, row_min: np.ndarray, a: int, b: int, radius2: float
) -> None:
    rows = np.flatnonzero(row_min <= radius2)
    if not rows.size:
        return
    r, c = np.nonzero(dist[rows] <= radius2)
    i, j = a + rows[r], b + c
    keep = i < j  # diagonal tiles see each pair twice
    state.pair_i.append(i[keep])
    state.pair_j.append(j[keep])


def _resolve_nearest(
    state: _ScanState, left: np.ndarray, right: np.ndarray, tile: int
) -> np.ndarray:
    """Index of each row's nearest row, recomputed once against the block that held it.

    Tracking only the block during the scan keeps argmin (slow along columns) out of the
    inner loop; this pass costs one extra tile row per row.
    """
    n = left.shape[0]
    nearest = np.full(n, -1, np.int64)
    for block in np.unique(state.best_block[state.best_block >= 0]):
        rows = np.flatnonzero(state.best_block == block)
        for s in range(0, rows.size, tile):
            part = rows[s : s + tile]
            dist = left[part] @ right[block : block + tile].T
            own = (part >= block) & (part < block + tile)
            dist[np.flatnonzero(own), part[own] - block] = np.inf
            nearest[part] = block + dist.argmin(axis=1)
    return nearest


def _scan(z: np.ndarray, radius2: float, tile: int) -> tuple[_ScanState, np.ndarray]:
    """Upper-triangle tiled scan: all pairs within ``radius2`` and each row's nearest row."""
    n = z.shape[0]
    left, right = _distance_factors(z)
    state = _ScanState(np.full(n, np.inf, np.float32), np.full(n, -1, np.int64), [], [])
    buffer = np.empty((tile, tile), dtype=np.float32)
    for a in range(0, n, tile):
        left_a = left[a : a + tile]
        for b in range(a, n, tile):
            right_b = right[b : b + tile]
            full = left_a.shape[0] == tile and right_b.shape[0] == tile
            dist = np.matmul(left_a, right_b.T, out=buffer if full else None)
            if a == b:
                np.fill_diagonal(dist, np.inf)
            row_min = dist.min(axis=1)
            state.offer(a, row_min, b)
            if a != b:
                state.offer(b, dist.min(axis=0), a)
            _collect_pairs(state, dist, row_min, a, b, radius2)
    return state, _resolve_nearest(state, left, right, tile)


def _row_dots(vectors: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(i.size, dtype=np.float32)
    for s in range(0, i.size, chunk):
        out[s : s + chunk] = np.einsum(
            "ij,ij->i", vectors[i[s : s + chunk]], vectors[j[s : s + chunk]]
        )
    return out


def _nearest_exact(
    vectors: np.ndarray, scan_nearest: np.ndarray, pi: np.ndarray, pj: np.ndarray, pc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best exact neighbour per row among its scan neighbour and its verified pairs."""
    n = vectors.shape[0]
    rows = np.flatnonzero(scan_nearest >= 0)
    node = np.concatenate([rows, pi, pj])
    other = np.concatenate([scan_nearest[rows], pj, pi])
    cos = np.concatenate([_row_dots(vectors, rows, scan_nearest[rows]), pc, pc])
    order = np.lexsort((-cos, node))
    first = order[np.r_[True, node[order][1:] != node[order][:-1]]] if order.size else order
    nearest = np.full(n, -1, np.int64)
    nearest_cos = np.full(n, np.nan, np.float32)
    nearest[node[first]] = other[first]
    nearest_cos[node[first]] = cos[first]
    return nearest, nearest_cos


def find_neighbours(
    vectors: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    dims: int | None = DEFAULT_DIMS,
    tile: int = DEFAULT_TILE,
) -> Neighbours:
    """All pairs with cosine >= ``threshold`` and an approximate nearest neighbour per row.

    ``dims=None`` (or ``dims >= d``) scans in the full space: exact pairs and exact neighbours.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    vectors = check_unit_vectors(vectors)
    n, d = vectors.shape
    if n and dims is not None and dims < d:
        z = (vectors - vectors.mean(axis=0, dtype=np.float64).astype(np.float32)) @ pca_basis(
            vectors, dims
        )
    else:
        z = vectors
    radius2 = 2.0 * (1.0 - threshold) + _RADIUS_MARGIN
    scan, scan_nearest = _scan(np.ascontiguousarray(z, dtype=np.float32), radius2, tile)
    ci = np.concatenate(scan.pair_i) if scan.pair_i else np.empty(0, np.int64)
    cj = np.concatenate(scan.pair_j) if scan.pair_j else np.empty(0, np.int64)
    cc = _row_dots(vectors, ci, cj)
    keep = cc >= threshold
    pi, pj, pc = ci[keep], cj[keep], cc[keep]
    nearest, nearest_cos = _nearest_exact(vectors, scan_nearest, pi, pj, pc)
    return Neighbours(pi, pj, pc, nearest, nearest_cos, int(ci.size))


def cluster_labels(n: int, pair_i: np.ndarray, pair_j: np.ndarray) -> np.ndarray:
    """Connected-component label per row of the near-duplicate graph."""
    if n == 0:
        return np.empty(0, np.int64)
    graph = coo_matrix((np.ones(pair_i.size, np.int8), (pair_i, pair_j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def near_duplicates(
    ids: Sequence[str],
    vectors: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    dims: int | None = DEFAULT_DIMS,
    tile: int = DEFAULT_TILE,
) -> pl.DataFrame:
    """One row per sample: near-duplicate cluster, nearest other sample and novelty.

    ``cluster_id`` is the smallest id in the cluster, so it does not move when unrelated rows
    are added. ``novelty`` is ``1 - nearest_cosine``; both are null for a lone sample.
    """
    ids = list(ids)
    if len(ids) != vectors.shape[0]:
        raise ValueError(f"{len(ids)} ids but {vectors.shape[0]} embeddings")
    if len(set(ids)) != len(ids) or any(i is None for i in ids):
        raise ValueError("conversation ids must be unique and non-null")
    vectors = check_unit_vectors(vectors, ids)
    found = find_neighbours(vectors, threshold, dims=dims, tile=tile)
    labels = cluster_labels(len(ids), found.pair_i, found.pair_j)
    nearest_id = [ids[k] if k >= 0 else None for k in found.nearest.tolist()]
    nearest_cos = pl.Series("nearest_cosine", found.nearest_cosine, pl.Float64).fill_nan(None)
    frame = pl.DataFrame(
        {"conversation_id": ids, "label": labels, "nearest_id": nearest_id},
        schema={"conversation_id": pl.String, "label": pl.Int64, "nearest_id": pl.String},
    ).with_columns(nearest_cos)
    return frame.select(
        "conversation_id",
        pl.col("conversation_id").min().over("label").alias("cluster_id"),
        pl.len().over("label").cast(pl.Int64).alias("cluster_size"),
        "nearest_id",
        "nearest_cosine",
        (1.0 - pl.col("nearest_cosine")).alias("novelty"),
    )


def mean_pairwise_cosine(vectors: np.ndarray) -> float | None:
    """Exact mean cosine over all pairs i != j of unit vectors, in O(n d).

    For unit rows, ``sum_{i != j} x_i . x_j = |sum_i x_i|^2 - n``, so no sampling is needed.
    """
    n = vectors.shape[0]
    if n < 2:
        return None
    total = vectors.sum(axis=0, dtype=np.float64)
    return float((total @ total - n) / (n * (n - 1)))
