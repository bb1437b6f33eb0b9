"""Final-stage selection: thresholds over scored metrics, dedup, balancing caps and the split.

Scoring keeps every row; this module decides. :func:`decide` runs the rules of :data:`RULES` in
their documented order over ``scored__conversations`` rows of any number of sources and returns
one decision per row (kept or not, every rule it fails, the first one, its split and its
near-duplicate cluster), the kept rows, and a JSON-ready report with drops per rule and the
dataset figures before and after. :func:`assign_split` hashes ids into train/val so that adding a
batch never moves an existing conversation. See docs/selection.md.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from vlit_assets.core.final.balance import Balance, balance_drops
from vlit_assets.core.final.dedup import (
    exact_duplicates,
    near_duplicates,
    semantic_dedup_possible,
    text_near_copies,
    typicality,
)
from vlit_assets.core.final.report import build_report
from vlit_assets.core.final.rules import (
    BALANCE_RULES,
    GATE_RULES,
    REQUIRED_COLUMNS,
    RULES,
    Thresholds,
    relevance_floors,
    row_rule_exprs,
    with_optional,
)
from vlit_assets.core.final.split import SplitConfig, assign_split, split_group_expr

DECISIONS_SCHEMA = pl.Schema(
    {
        "conversation_id": pl.String(),
        "source": pl.String(),
        "kept": pl.Boolean(),
        "first_failing_rule": pl.String(),
        "failing_rules": pl.List(pl.String()),
        "split": pl.String(),
        "cluster_id": pl.String(),
        "representative_id": pl.String(),
        "exact_representative_id": pl.String(),
    }
)


@dataclass
class Selection:
    decisions: pl.DataFrame  # DECISIONS_SCHEMA, one row per scored row, in input order
    kept: pl.DataFrame  # the kept scored rows, every column, plus `split`
    report: dict = field(default_factory=dict)  # JSON-ready; see docs/selection.md


def _check_input(
    scored: pl.DataFrame, vectors: np.ndarray | None, t: Thresholds, split: SplitConfig
) -> None:
    needed = [*REQUIRED_COLUMNS, *([t.neardup_within] if t.neardup_within else []), split.key]
    needed = list(dict.fromkeys(needed))
    missing = [c for c in needed if c not in scored.columns]
    if missing:
        raise ValueError(f"scored__conversations frame lacks columns {missing}")
    ids = scored["conversation_id"]
    if ids.null_count():
        raise ValueError("scored__conversations: conversation_id is null in some rows")
    if ids.n_unique() != ids.len():
        dup = ids.filter(ids.is_duplicated()).first()
        raise ValueError(f"scored__conversations: conversation_id {dup!r} is not unique")
    if t.neardup_threshold is None:
        return
    if vectors is None:
        raise ValueError(
            "near-duplicate selection needs the conversation vectors; pass them "
            "(embed.conversation_vectors(...).conversation) or set neardup_threshold=None"
        )
    if vectors.ndim != 2 or vectors.shape[0] != scored.height:
        raise ValueError(
            f"vectors have shape {vectors.shape}; expected one row per scored row "
            f"({scored.height}), in scored-row order"
        )


def _failing_lists(work: pl.DataFrame) -> pl.DataFrame:
    names = [pl.when(pl.col(r)).then(pl.lit(r)) for r in RULES]
    return work.with_columns(
        pl.concat_list(names).list.drop_nulls().alias("failing_rules")
    ).with_columns(pl.col("failing_rules").list.first().alias("first_failing_rule"))


def _settings(t: Thresholds, b: Balance, s: SplitConfig) -> dict:
    return {"thresholds": asdict(t), "balance": asdict(b), "split": asdict(s)}


def held_back_decisions(held: pl.DataFrame) -> pl.DataFrame:
    """A decision row for each conversation of a held-back source, so none vanishes unexplained."""
    return held.select(
        "conversation_id",
        "source",
        pl.lit(False).alias("kept"),
        pl.lit(GATE_RULES[0]).alias("first_failing_rule"),
        pl.lit(list(GATE_RULES)).alias("failing_rules"),
        pl.lit(None, pl.String).alias("split"),
        pl.lit(None, pl.String).alias("cluster_id"),
        pl.lit(None, pl.String).alias("representative_id"),
        pl.lit(None, pl.String).alias("exact_representative_id"),
    ).cast(DECISIONS_SCHEMA)


def decide(
    scored: pl.DataFrame,
    vectors: np.ndarray | None,
    thresholds: Thresholds = Thresholds(),  # noqa: B008 (frozen)
    balance: Balance = Balance(),  # noqa: B008 (frozen)
    split: SplitConfig = SplitConfig(),  # noqa: B008 (frozen)
    held_back: Collection[str] = (),
) -> Selection:
    """Apply every rule of :data:`RULES` in order and split the kept rows.

    ``vectors`` are the conversation vectors (``ConversationVectors.conversation``) in
    scored-row order; rows of NaN (no turns) are never near duplicates. Rows of the sources in
    ``held_back`` fail ``source_held_back`` and are set aside before any other rule, so they
    never pair with, rank against or calibrate the rows that are judged (their vectors are
    not read). Their decisions follow the others'.
    """
    _check_input(scored, vectors, thresholds, split)
    gated = scored["source"].is_in(sorted(held_back))
    held = scored.filter(gated)
    if held.height:
        scored = scored.filter(~gated)
        vectors = vectors[~gated.to_numpy()] if vectors is not None else None
    if vectors is not None:
        vectors = np.asarray(vectors, dtype=np.float32)
    keep_cols = ["conversation_id", "source", "instruction_type", "norm_text_hash"]
    scored = with_optional(scored)
    extra = [thresholds.neardup_within] if thresholds.neardup_within else []
    extra += ["region_object_id"] if "region_object_id" in scored.columns else []
    floors = relevance_floors(scored, thresholds)
    floor_of = pl.col("instruction_type").replace_strict(
        floors, default=None, return_dtype=pl.Float64
    )
    work = (
        scored.with_columns(floor_of.alias("_relevance_floor"))
        .select(
            *dict.fromkeys(
                [
                    *keep_cols,
                    *extra,
                    "relevance",
                    "n_turns",
                    "mentioned_categories",
                    "variant",
                    "text_cluster_id",
                ]
            ),
            *row_rule_exprs(thresholds).values(),
            # the held-back rows were set aside above
            *(pl.lit(False).alias(rule) for rule in GATE_RULES),
        )
        .with_columns(
            # only the semantic near-duplicate representative uses it (copies and MinHash
            # groups tie on it or go by source order): skip it when no row can be paired
            typicality(scored)
            if semantic_dedup_possible(vectors, thresholds)
            else pl.lit(None, pl.Float64).alias("typicality")
        )
    )
    work = exact_duplicates(work, thresholds)
    work = text_near_copies(work, thresholds)
    work, neardup_info = near_duplicates(work, vectors, thresholds)
    passed = ~pl.any_horizontal([pl.col(r) for r in RULES if r not in BALANCE_RULES])
    cands = work.filter(passed)
    drops, balance_info = balance_drops(cands, balance)
    rule_of = pl.col("conversation_id").replace_strict(drops, default=None, return_dtype=pl.String)
    work = work.with_columns(rule_of.alias("_balance"))
    work = work.with_columns(
        (pl.col("_balance") == r).fill_null(False).alias(r) for r in BALANCE_RULES
    )
    work = _failing_lists(work).with_columns(pl.col("first_failing_rule").is_null().alias("kept"))
    split_of = assign_split(
        scored.select(split_group_expr(split.key, scored.columns).alias(split.key)).to_series(),
        split,
    )
    work = work.with_columns(pl.when(pl.col("kept")).then(split_of).otherwise(None).alias("split"))
    decisions = work.select([pl.col(c).cast(t) for c, t in DECISIONS_SCHEMA.items()])
    mask = decisions["kept"]
    kept = scored.filter(mask).with_columns(decisions["split"].filter(mask))
    kept_vectors = vectors[mask.to_numpy()] if vectors is not None else None
    decisions = pl.concat([decisions, held_back_decisions(held)], how="vertical")
    report = build_report(scored, kept, cands, decisions, vectors, kept_vectors)
    report["settings"] = _settings(thresholds, balance, split)
    report["neardup"] = neardup_info
    report["relevance_floors"] = floors
    report["balance"] = balance_info
    return Selection(decisions=decisions, kept=kept, report=report)
