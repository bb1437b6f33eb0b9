"""Text filters a Data-Juicer user expects, as per-conversation metrics, and MinHash near-copies.

Everything here measures; the final stage decides (core/final/dedup.py and rules.py). The
conversation text is the values of all its turns, joined by newlines, with the image token
removed. Definitions (also in docs/metrics.md):

- ``text_chars``: characters of that text.
- ``text_words``: whitespace-separated words of that text.
- ``word_rep_ratio``: over the lowercased words with punctuation stripped from their ends, the
  word n-grams (n = ``rep_len``, default 10) that occur more than once in the conversation,
  counted with multiplicity, divided by all its n-grams; 0 when it has fewer than n words.
  This is Data-Juicer's ``word_repetition_filter`` statistic, so its thresholds carry over.
- ``special_char_ratio``: share of characters that are neither letters, digits, whitespace nor
  ordinary punctuation (``.,;:!?'"-()[]/%&``): symbols, control characters, emoji, mojibake.
- MinHash near-copies (:func:`minhash_clusters`): Jaccard similarity of the sets of word
  ``shingle``-grams (default 5, lowercased, whitespace tokens, as Data-Juicer's
  ``document_minhash_deduplicator``). Signatures come from ``rensa`` (measured 20x faster than
  ``datasketch`` here, benchmarks/qc_bench.py); banding is LSH with ``bands`` x ``rows``; every
  candidate pair is then checked with its exact Jaccard, so the threshold is exact and a pair
  below it is never merged by an unlucky signature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from vlit_assets.core.vocab import IMAGE_TOKEN

# Letters, digits, whitespace and ordinary punctuation are text; everything else is "special".
_SPECIAL = r"[^\p{L}\p{N}\s.,;:!?'\"\-()\[\]/%&\u2019\u2018\u201c\u201d]"
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for rolling n-gram hashes


def conversation_text(turns: pl.Expr) -> pl.Expr:
    """All turn values joined by newlines, image token removed (null turns count as empty)."""
    return (
        turns.list.eval(pl.element().struct.field("value").fill_null(""))
        .list.join("\n")
        .fill_null("")
        .str.replace_all(IMAGE_TOKEN, "", literal=True)
        .str.strip_chars()
    )


# Tokens are whitespace-separated, as Data-Juicer's. For the repetition ratios a word is a token
# with the punctuation at its ends stripped (Data-Juicer's words_refinement); MinHash shingles
# use the tokens as they are.
_WHITESPACE = ["\n", "\t", "\r", "\u00a0"]
_EDGE_PUNCTUATION = ".,;:!?\"'()[]{}<>*#`~_-\u2018\u2019\u201c\u201d\u2026"


def _token_hashes(texts: pl.Series, *, strip: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, hash) of every lowercased whitespace token of ``texts``, in order (see above)."""
    token = pl.col("token")
    if strip:
        token = token.str.strip_chars(_EDGE_PUNCTUATION)
    tokens = (
        pl.DataFrame({"text": texts})
        .select(
            row=pl.int_range(pl.len(), dtype=pl.UInt32),
            token=pl.col("text")
            .str.to_lowercase()
            .str.replace_many(_WHITESPACE, [" "] * len(_WHITESPACE))
            .str.split(" "),
        )
        .explode("token", keep_nulls=False)
        .select("row", token=token)
        .filter(pl.col("token") != "")
    )
    return tokens["row"].to_numpy(), tokens["token"].hash(seed=seed).to_numpy()


def _rolling(hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of ``n`` consecutive tokens: h_0 * M^(n-1) + ... + h_(n-1), wrapping."""
    m = hashes.size - n + 1
    gram = np.zeros(max(m, 0), dtype=np.uint64)
    if m <= 0:
        return gram
    with np.errstate(over="ignore"):
        for k in range(n):
            np.multiply(gram, _MIX, out=gram)
            np.add(gram, hashes[k : k + m], out=gram)
    return gram


def _gram_hashes(rows: np.ndarray, hashes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word n-grams that lie inside one row, and the row of each (``rows`` sorted,
    as the exploded tokens are)."""
    gram = _rolling(hashes, n)
    if gram.size == 0:
        return np.empty(0, np.uint32), gram
    inside = rows[: gram.size] == rows[n - 1 :]
    return rows[: gram.size][inside], gram[inside]


def _repeated_share(rows: np.ndarray, grams: np.ndarray, n: int) -> np.ndarray:
    """Per row, the share of its n-grams that occur more than once in that row (0 if none).

    Row and gram go into one sortable 64-bit key (row in the top bits, 64 - row bits of the
    gram hash below), so one sort finds the repeated grams of every row at once.
    """
    total = np.bincount(rows, minlength=n).astype(np.float64)
    if grams.size == 0:
        return np.zeros(n)
    shift = np.uint64(64 - max(int(n).bit_length(), 1))
    key = (rows.astype(np.uint64) << shift) | (grams >> np.uint64(64 - int(shift)))
    key.sort()
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    lengths = np.diff(np.r_[starts, key.size])
    repeated = lengths > 1
    counts = np.bincount(
        (key[starts[repeated]] >> shift).astype(np.int64),
        weights=lengths[repeated],
        minlength=n,
    )
    return np.divide(counts, total, out=np.zeros(n), where=total > 0)


def word_repetition(texts: pl.Series, rep_len: int = 10) -> np.ndarray:
    """Per text, the share of its word ``rep_len``-grams that occur more than once in it."""
    rows, hashes = _token_hashes(texts, strip=True, seed=7)
    return _repeated_share(*_gram_hashes(rows, hashes, rep_len), texts.len())


def text_statistics(conversations: pl.DataFrame, rep_len: int = 10) -> pl.DataFrame:
    """One row per conversation, in input order: text_chars, text_words, word_rep_ratio,
    answer_rep_ratio and special_char_ratio (module docstring).

    The words of every turn are hashed once; the conversation ratio takes n-grams across its
    turns, the answer ratio n-grams inside each answer, and keeps the highest answer.
    """
    n = conversations.height
    text = conversations.select(text=conversation_text(pl.col("turns")))
    chars = pl.col("text").str.len_chars()
    stats = text.select(
        text_chars=chars.cast(pl.Int32),
        text_words=pl.col("text").str.count_matches(r"\S+").cast(pl.Int32),
        special_char_ratio=pl.when(chars > 0).then(
            pl.col("text").str.count_matches(_SPECIAL) / chars.cast(pl.Float64)
        ),
    )
    turns = (
        conversations.select(conv=pl.int_range(pl.len(), dtype=pl.UInt32), turn=pl.col("turns"))
        .explode("turn", keep_nulls=False)
        .select(
            "conv",
            answer=pl.col("turn").struct.field("from") == "gpt",
            value=pl.col("turn")
            .struct.field("value")
            .fill_null("")
            .str.replace_all(IMAGE_TOKEN, "", literal=True),
        )
    )
    turn_rows, hashes = _token_hashes(turns["value"], strip=True, seed=7)
    conv_of_turn = turns["conv"].to_numpy()
    conv_rows = conv_of_turn[turn_rows]
    # one rolling pass; a gram is inside a conversation, and possibly inside one turn
    gram = _rolling(hashes, rep_len)
    m = gram.size
    in_conv = conv_rows[:m] == conv_rows[rep_len - 1 :] if m else np.zeros(0, bool)
    in_turn = turn_rows[:m] == turn_rows[rep_len - 1 :] if m else np.zeros(0, bool)
    whole = _repeated_share(conv_rows[:m][in_conv], gram[in_conv], n)
    per_turn = _repeated_share(turn_rows[:m][in_turn], gram[in_turn], turns.height)
    answers = turns["answer"].fill_null(False).to_numpy()
    best = np.full(n, -1.0)
    np.maximum.at(best, conv_of_turn[answers], per_turn[answers])
    return pl.concat(
        [
            conversations.select("conversation_id"),
            stats,
            pl.DataFrame(
                {"word_rep_ratio": whole, "answer_rep_ratio": np.where(best < 0, np.nan, best)}
            ).with_columns(pl.col("answer_rep_ratio").fill_nan(None)),
        ],
        how="horizontal",
    ).select(
        "conversation_id",
        "text_chars",
        "text_words",
        "word_rep_ratio",
        "answer_rep_ratio",
        "special_char_ratio",
    )


@dataclass(frozen=True)
class MinHashConfig:
    threshold: float = 0.7  # exact word-shingle Jaccard at or above which two are near-copies
    shingle: int = 5  # words per shingle
    bands: int = 32  # LSH bands x rows = permutations; 32 x 4 finds a 0.68 pair with p > 0.999
    rows: int = 4
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"minhash threshold must be in (0, 1], got {self.threshold}")
        if self.shingle < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError("minhash shingle, bands and rows must be >= 1")


def _shingle_sets(texts: pl.Series, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of every text, flat and grouped by text, with offsets (len n + 1).

    A text shorter than one shingle is one shingle of all its tokens; an empty text has none.
    A text's shingles may repeat in the flat array (MinHash ignores repeats; the Jaccard check
    makes them distinct).
    """
    n = texts.len()
    rows, hashes = _token_hashes(texts, strip=False, seed=11)
    gram_rows, grams = _gram_hashes(rows, hashes, size)
    lengths = np.bincount(rows, minlength=n)
    short = np.flatnonzero((lengths > 0) & (lengths < size))
    if short.size:
        starts = np.concatenate([[0], np.cumsum(lengths)])
        extra = np.zeros(short.size, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i, r in enumerate(short):
                for h in hashes[starts[r] : starts[r + 1]]:
                    extra[i] = extra[i] * _MIX + h
        gram_rows = np.concatenate([gram_rows, short.astype(np.uint32)])
        grams = np.concatenate([grams, extra])
        order = np.argsort(gram_rows, kind="stable")
        gram_rows, grams = gram_rows[order], grams[order]
    offsets = np.zeros(n + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum(np.bincount(gram_rows, minlength=n))
    return grams, offsets


def _band_candidates(
    digests: np.ndarray, groups: np.ndarray | None, cfg: MinHashConfig
) -> np.ndarray:
    """Distinct candidate pairs (i < j) that share a band (and a group when given)."""
    n = digests.shape[0]
    found: list[pl.DataFrame] = []
    index = pl.int_range(n, dtype=pl.UInt32, eager=True).alias("i")
    wide = digests.astype(np.uint64)
    for b in range(cfg.bands):
        key = np.zeros(n, dtype=np.uint64) if groups is None else groups.astype(np.uint64)
        with np.errstate(over="ignore"):
            for r in range(cfg.rows):
                key = key * _MIX + wide[:, b * cfg.rows + r]
        frame = pl.DataFrame({"k": key, "i": index})
        shared = frame.filter(pl.col("k").is_duplicated())
        if shared.height:
            found.append(
                shared.join(shared, on="k", suffix="_j")
                .filter(pl.col("i") < pl.col("i_j"))
                .select("i", "i_j")
            )
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = pl.concat(found).unique()
    return np.stack([pairs["i"].to_numpy(), pairs["i_j"].to_numpy()], axis=1).astype(np.int64)


def _exact_jaccard(flat: np.ndarray, offsets: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    off = offsets.astype(np.int64)
    sets: dict[int, np.ndarray] = {}

    def shingles(i: int) -> np.ndarray:
        if i not in sets:
            sets[i] = np.unique(flat[off[i] : off[i + 1]])
        return sets[i]

    out = np.empty(pairs.shape[0])
    for k, (i, j) in enumerate(pairs.tolist()):
        a, b = shingles(i), shingles(j)
        inter = np.intersect1d(a, b, assume_unique=True).size
        union = a.size + b.size - inter
        out[k] = inter / union if union else 0.0
    return out


def _verified_pairs(
    texts: pl.Series, groups: np.ndarray | None, config: MinHashConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of distinct texts whose exact shingle Jaccard reaches the threshold."""
    flat, offsets = _shingle_sets(texts, config.shingle)
    idx = np.flatnonzero(np.diff(offsets) > 0)  # texts with at least one shingle
    if idx.size < 2:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    from rensa import RMinHash  # imported here: only scoring needs it

    lengths = np.diff(offsets)[idx]
    sub_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
    sub_flat = (
        flat
        if idx.size == texts.len()
        else np.concatenate([flat[int(offsets[i]) : int(offsets[i + 1])] for i in idx])
    )
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(
        sub_flat, sub_offsets, num_perm=config.bands * config.rows, seed=config.seed
    )
    digests = np.asarray(matrix.to_rows(), dtype=np.uint32)
    local = _band_candidates(digests, None if groups is None else groups[idx], config)
    if not local.size:
        return np.empty((0, 2), dtype=np.int64), np.empty(0)
    pairs = idx[local]
    jaccard = _exact_jaccard(flat, offsets, pairs)
    keep = jaccard >= config.threshold
    return pairs[keep], jaccard[keep]


def minhash_clusters(
    conversations: pl.DataFrame,
    *,
    order: str,
    within: str | None = None,
    config: MinHashConfig = MinHashConfig(),  # noqa: B008 (frozen)
) -> pl.DataFrame:
    """Near-copy groups by word-shingle Jaccard, one row per input conversation, in input order.

    Columns: ``text_cluster_id`` (the group's representative: the member first by ``order``,
    then by id), ``text_cluster_size`` and ``text_dup_jaccard`` (the highest exact Jaccard to
    another member; 1.0 for a verbatim copy; null when alone). ``within`` names a column two
    rows must share (e.g. ``image_id``) to be paired. Verbatim copies are grouped before the
    signatures, so each distinct text is hashed once. Conversations without words are alone.
    """
    frame = conversations.select(
        "conversation_id",
        _order=pl.col(order),
        _group=pl.col(within).cast(pl.String).fill_null("") if within else pl.lit(""),
        _text=conversation_text(pl.col("turns")),
    )
    distinct = frame.select("_group", "_text").unique(maintain_order=True)
    distinct = distinct.with_columns(_d=pl.int_range(pl.len(), dtype=pl.Int64))
    groups = distinct["_group"].hash(seed=3).to_numpy() if within else None
    pairs, jaccard = _verified_pairs(distinct["_text"], groups, config)
    n = distinct.height
    graph = coo_matrix(
        (np.ones(pairs.shape[0], dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n)
    )
    _, labels = connected_components(graph, directed=False)
    best = np.full(n, np.nan)
    if pairs.size:
        np.fmax.at(best, pairs[:, 0], jaccard)
        np.fmax.at(best, pairs[:, 1], jaccard)
    distinct = distinct.with_columns(
        _label=pl.Series(labels, dtype=pl.Int64), _best=pl.Series(best).fill_nan(None)
    )
    rows = frame.join(distinct, on=["_group", "_text"], how="left", maintain_order="left")
    first = pl.col("conversation_id").sort_by(["_order", "conversation_id"]).first()
    size = pl.len().over("_label")
    copies = pl.len().over("_d")
    return rows.select(
        "conversation_id",
        text_cluster_id=first.over("_label"),
        text_cluster_size=size.cast(pl.Int32),
        text_dup_jaccard=pl.when(copies > 1).then(pl.lit(1.0)).otherwise(pl.col("_best")),
    )
