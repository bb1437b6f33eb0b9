"""The selection report: histograms, dataset figures and distributions before and after."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import polars as pl

from vlit_assets.core.final.balance import type_counts
from vlit_assets.core.final.rules import RULES
from vlit_assets.core.scored.figures import dataset_figures
from vlit_assets.core.vocab import TRAIN, VAL

# Principle -> dataset figures shown before/after selection (keys of selection_metrics).
PRINCIPLE_METRICS: dict[str, tuple[str, ...]] = {
    "correctness": (
        "chair_i",
        "chair_s_rate",
        "negative_consistency",
        "count_consistency",
        "relation_consistency",
        "grammar_error_rate",
        "region_name_match_rate",
        "format_valid_rate",
    ),
    "diversity": (
        "unique_tags",
        "tag_entropy_bits",
        "distinct_1",
        "distinct_2",
        "exact_duplicate_share",
        "semantic_spread",
        "mean_novelty",
    ),
    "complexity": (
        "turns_mean",
        "tags_per_conversation_mean",
        "reasoning_share_mean",
        "answer_words_mean",
    ),
    "balance": (
        "category_entropy_norm",
        "category_kl_uniform_bits",
        "instruction_type_entropy_norm",
        "instruction_type_kl_uniform_bits",
        "yes_ratio",
    ),
    "relevance": ("relevance_mean",),
}

# Fixed bins so that before/after (and runs) are comparable; values outside fall in the end bins.
DISTRIBUTIONS: dict[str, tuple[float, float, int]] = {
    "relevance": (-0.2, 1.0, 24),
    "novelty": (0.0, 0.5, 25),
    "answer_words_mean": (0.0, 100.0, 20),
}


def type_histogram(frame: pl.DataFrame) -> dict[str, int]:
    return type_counts(frame)


def category_histogram(frame: pl.DataFrame) -> dict[str, int]:
    """Rows mentioning each category, most frequent first (ties by name)."""
    hist = (
        frame.select(pl.col("mentioned_categories").alias("category"))
        .explode("category", keep_nulls=False)
        .group_by("category")
        .len()
        .sort(["len", "category"], descending=[True, False])
    )
    return dict(hist.iter_rows())


def _clean(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.floating | np.integer):
        return _clean(value.item())
    return value


def selection_metrics(frame: pl.DataFrame, vectors: np.ndarray | None) -> dict[str, object]:
    """``figures.dataset_figures`` of the rows (semantic spread over ``vectors``), and how many
    sources they come from; JSON-ready."""
    figures: dict[str, object] = dict(dataset_figures(frame, vectors))
    figures["n_sources"] = frame["source"].n_unique()
    return {k: _clean(v) for k, v in figures.items()}


def distribution(values: pl.Series, lo: float, hi: float, bins: int) -> dict:
    """Counts over fixed bins (values outside [lo, hi] go to the end bins) and nulls."""
    arr = values.cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(arr, lo, hi), bins=edges)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "counts": counts.astype(int).tolist(),
        "nulls": int(values.len() - arr.size),
    }


def _distributions(before: pl.DataFrame, after: pl.DataFrame) -> dict:
    out = {}
    for column, (lo, hi, bins) in DISTRIBUTIONS.items():
        if column not in before.columns:
            continue
        out[column] = {
            "before": distribution(before[column], lo, hi, bins),
            "after": distribution(after[column], lo, hi, bins),
        }
    return out


def build_report(
    scored: pl.DataFrame,
    kept: pl.DataFrame,
    cands: pl.DataFrame,
    decisions: pl.DataFrame,
    vectors: np.ndarray | None,
    kept_vectors: np.ndarray | None,
) -> dict:
    first = Counter(decisions["first_failing_rule"].drop_nulls().to_list())
    listed = Counter(decisions["failing_rules"].explode().drop_nulls().to_list())
    return {
        "counts": {
            "scored": decisions.height,
            "kept": kept.height,
            "dropped": decisions.height - kept.height,
            "split": {s: int((kept["split"] == s).sum()) for s in (TRAIN, VAL)},
            "sources": dict(kept.group_by("source").len().sort("source").iter_rows()),
        },
        "drops_by_first_rule": {r: first.get(r, 0) for r in RULES},
        "rows_failing_rule": {r: listed.get(r, 0) for r in RULES},
        "histograms": {
            "instruction_type": {
                "before": type_histogram(scored),
                "before_balance": type_histogram(cands),
                "after": type_histogram(kept),
            },
            "category": {
                "before": category_histogram(scored),
                "before_balance": category_histogram(cands),
                "after": category_histogram(kept),
            },
        },
        "metrics": {
            "before": selection_metrics(scored, vectors),
            "after": selection_metrics(kept, kept_vectors),
        },
        "distributions": _distributions(scored, kept),
    }


# Figures the final rules cannot restore in someone else's dataset without dropping good rows
# (polarity, the type mix, how many rounds and tags a conversation has): on what we generated
# they gate; on imported rows they are reported, and type caps or a target mix in FinalConfig
# enforce a balance when wanted.
GENERATED_ONLY_FIGURES = (
    "instruction_type_entropy_norm",
    "yes_ratio",
    "turns_mean",
    "tags_per_conversation_mean",
)


def final_figures(rows: pl.DataFrame) -> tuple[dict, dict[str, str]]:
    """Dataset figures of what ships, and the figures left unjudged with why.

    Balance figures that imported rows cannot be held to are computed over generated rows.
    """
    figures = dataset_figures(rows)
    generated = rows.filter(pl.col("generator") != "import")
    unjudged: dict[str, str] = {}
    if generated.height == rows.height:
        return figures, unjudged
    if generated.is_empty():
        reason = "imported rows only: balance is reported, not gated"
        unjudged = {name: reason for name in GENERATED_ONLY_FIGURES}
        return figures, unjudged
    own = dataset_figures(generated)
    for name in GENERATED_ONLY_FIGURES:
        figures[name] = own[name]
    return figures, unjudged
