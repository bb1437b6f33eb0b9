"""Which rows are duplicates: exact copies, MinHash text near copies, semantic near duplicates.

This is the one place where duplicates are decided. Scoring measures (``norm_text_hash``,
``text_cluster_id`` at the MinHash threshold, and semantic clusters at the fixed
``neardup.DEFAULT_THRESHOLD`` that only describe a source: ``near_duplicate_rate``,
``cluster_size``); the final stage decides here, with the one knob
``Thresholds.neardup_threshold``. Final is the place because only it sees every source at once
(a copy across sources, the image content hash of ``neardup_within``), and because a changed
threshold then needs no rescoring: the vectors come from the embedding cache. With the default
threshold the decisions are those made before the scoring-side knob was removed.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from vlit_assets.core.final.rules import ROW_RULES, Thresholds
from vlit_assets.core.scored.neardup import check_unit_vectors, cluster_labels, find_neighbours


def answer_word_frequencies(scored: pl.DataFrame) -> pl.DataFrame:
    """(``_row``, ``_df``): each distinct answer word of each row, with the number of rows in
    the batch whose answers use it (its document frequency). Words are counted by hash."""
    words = (
        scored.select(
            pl.int_range(pl.len()).alias("_row"),
            pl.col("turns")
            .list.eval(
                pl.element()
                .filter(pl.element().struct.field("from") == "gpt")
                .struct.field("value")
            )
            .list.join(" ")
            .str.to_lowercase()
            .str.extract_all(r"[a-z][a-z']*")
            .list.eval(pl.element().hash(seed=5))
            .alias("_word"),
        )
        .explode("_word")
        .drop_nulls("_word")
        .unique(["_row", "_word"])
    )
    df = words.group_by("_word").len("_df")
    return words.join(df, on="_word").select("_row", "_df")


def typicality(scored: pl.DataFrame) -> pl.Series:
    """Mean log document frequency, within the batch, of the words of a row's answers.

    A near copy with one word garbled or swapped carries a word the rest of the batch rarely
    uses, so it is less typical than its original, whose words the batch shares. Null for a
    row without answer words.
    """
    per_row = (
        answer_word_frequencies(scored)
        .group_by("_row")
        .agg(pl.col("_df").cast(pl.Float64).log().mean().alias("typicality"))
    )
    rows = pl.DataFrame({"_row": pl.int_range(scored.height, eager=True)})
    joined = rows.join(per_row, on="_row", how="left", maintain_order="left")
    return joined["typicality"]


def semantic_dedup_possible(vectors: np.ndarray | None, t: Thresholds) -> bool:
    """Whether semantic near duplicates can pair any rows: on, and two rows have vectors."""
    if t.neardup_threshold is None or vectors is None or vectors.shape[0] < 2:
        return False
    return int(np.isfinite(vectors[:, 0]).sum()) >= 2


def _rank(frame: pl.DataFrame, failed: list[str]) -> pl.Series:
    """Representative order: fewest failed rules, most typical words (see :func:`typicality`),
    highest relevance, most turns, earliest in source order (``variant``: a copy comes after
    what it copies), smallest id.

    Typicality comes before relevance: on planted near copies of coco-mini, ranking by
    relevance kept the garbled copy over its original in 42 of 90 pairs (see
    docs/selection.md for the measured figures).
    """
    typ = pl.col("typicality") if "typicality" in frame.columns else pl.lit(None, pl.Float64)
    order = frame.select(
        pl.sum_horizontal([pl.col(r).cast(pl.Int32) for r in failed]).alias("_fails"),
        typ.fill_nan(None).round(9).alias("_typ"),
        pl.col("relevance").fill_nan(None).alias("_rel"),
        pl.col("n_turns").alias("_turns"),
        pl.col("variant").alias("_order")
        if "variant" in frame.columns
        else pl.lit(0).alias("_order"),
        "conversation_id",
    ).with_row_index("_row")
    ranked = order.sort(
        ["_fails", "_typ", "_rel", "_turns", "_order", "conversation_id"],
        descending=[False, True, True, True, False, False],
        nulls_last=True,
    )
    rank = np.empty(frame.height, dtype=np.int64)
    rank[ranked["_row"].to_numpy()] = np.arange(frame.height)
    return pl.Series("_rank", rank)


def _best_of(group: str) -> pl.Expr:
    return pl.col("conversation_id").sort_by("_rank").first().over(group)


def exact_duplicates(work: pl.DataFrame, t: Thresholds) -> pl.DataFrame:
    work = work.with_columns(_rank(work, list(ROW_RULES)))
    rep = (
        pl.when(pl.col("norm_text_hash").is_not_null())
        .then(_best_of("norm_text_hash"))
        .otherwise(pl.col("conversation_id"))
    )
    work = work.with_columns(rep.alias("exact_representative_id"))
    dup = pl.col("exact_representative_id") != pl.col("conversation_id")
    return work.with_columns(
        (dup if t.drop_exact_duplicates else pl.lit(False)).alias("exact_duplicate")
    ).drop("_rank")


def text_near_copies(work: pl.DataFrame, t: Thresholds) -> pl.DataFrame:
    """Within each MinHash cluster the first row in source order that passes the row rules and
    is no exact copy stays; the rest are near copies. Source order, not a quality score, picks
    the survivor: a one-word edit can look as good as its original to every metric."""
    fails = pl.sum_horizontal([pl.col(r).cast(pl.Int32) for r in [*ROW_RULES, "exact_duplicate"]])
    group = pl.coalesce("text_cluster_id", "conversation_id")
    best = (
        pl.col("conversation_id")
        .sort_by([fails, pl.col("variant"), pl.col("conversation_id")], nulls_last=True)
        .first()
        .over(group)
    )
    copy = (best != pl.col("conversation_id")) & t.drop_text_near_copies
    return work.with_columns(copy.alias("near_copy_text"))


def neardup_labels(
    ids: list[str], vectors: np.ndarray, threshold: float, groups: list | None = None
) -> tuple[np.ndarray, int]:
    """Connected-component label per row over pairs with cosine >= threshold, and pair count.

    Rows with non-finite vectors (conversations without turns) are never paired. With
    ``groups``, a pair counts only when both rows have the same non-null group value.
    """
    n = len(ids)
    finite = np.flatnonzero(np.isfinite(vectors).all(axis=1)) if n else np.empty(0, np.int64)
    pi = pj = np.empty(0, np.int64)
    if finite.size >= 2:
        sub = check_unit_vectors(vectors[finite], [ids[i] for i in finite])
        found = find_neighbours(sub, threshold)
        pi, pj = finite[found.pair_i], finite[found.pair_j]
    if groups is not None and pi.size:
        keys = np.asarray(groups, dtype=object)
        same = np.fromiter(
            (a is not None and a == b for a, b in zip(keys[pi], keys[pj], strict=True)),
            bool,
            pi.size,
        )
        pi, pj = pi[same], pj[same]
    return cluster_labels(n, pi, pj), int(pi.size)


def _neardup_groups(work: pl.DataFrame, t: Thresholds) -> list | None:
    """Rows that may be near duplicates share this key: ``neardup_within`` and, for a region
    row, its box (``region_object_id``): two region conversations about two bananas of one
    photo read alike but are about different things."""
    if not t.neardup_within:
        return None
    key = pl.col(t.neardup_within).cast(pl.String)
    if "region_object_id" in work.columns:
        box = pl.col("region_object_id")
        key = pl.when(box.is_not_null()).then(key + pl.lit("\x1fbox:") + box).otherwise(key)
    return work.select(key.alias("_group"))["_group"].to_list()


def near_duplicates(
    work: pl.DataFrame, vectors: np.ndarray | None, t: Thresholds
) -> tuple[pl.DataFrame, dict]:
    info: dict = {"threshold": t.neardup_threshold, "within": t.neardup_within}
    if t.neardup_threshold is None:
        labels, pairs = np.arange(work.height, dtype=np.int64), 0
    else:
        assert vectors is not None
        ids = work["conversation_id"].to_list()
        groups = _neardup_groups(work, t)
        labels, pairs = neardup_labels(ids, vectors, t.neardup_threshold, groups)
    work = work.with_columns(
        pl.Series("_label", labels),
        _rank(work, [*ROW_RULES, "exact_duplicate", "near_copy_text"]),
    )
    work = work.with_columns(
        pl.col("conversation_id").min().over("_label").alias("cluster_id"),
        _best_of("_label").alias("representative_id"),
        pl.len().over("_label").alias("_size"),
    )
    dup = pl.col("representative_id") != pl.col("conversation_id")
    work = work.with_columns(
        (dup if t.neardup_threshold is not None else pl.lit(False)).alias("near_duplicate")
    )
    info |= {
        "pairs": pairs,
        "clusters_with_copies": work.filter(pl.col("_size") > 1)["cluster_id"].n_unique(),
        "rows_in_clusters_with_copies": int((work["_size"] > 1).sum()),
    }
    return work.drop("_label", "_rank", "_size"), info
