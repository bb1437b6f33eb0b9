"""Balancing caps over the rows that pass every other rule: per category, type mix, type share."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import polars as pl

from vlit_assets.core.final.split import unit_hashes


@dataclass(frozen=True)
class Balance:
    """Caps applied to the rows that pass every other rule; None switches a cap off."""

    # No instruction type may exceed this share of the kept rows.
    max_share_per_type: float | None = None
    # Keep the largest subset whose type counts follow these weights (normalized; types not
    # named get weight 0 and are dropped).
    target_type_mix: dict[str, float] | None = None
    # At most this many kept rows may mention any one category.
    max_per_category: int | None = None
    # Which rows a cap drops: rows are ranked by a hash of (seed, conversation_id).
    seed: int = 0

    def __post_init__(self) -> None:
        share = self.max_share_per_type
        if share is not None and not 0.0 < share <= 1.0:
            raise ValueError(f"max_share_per_type must be in (0, 1], got {share}")
        if self.target_type_mix is not None:
            weights = self.target_type_mix
            bad = {k: w for k, w in weights.items() if not (w >= 0 and math.isfinite(w))}
            if bad or not weights or sum(weights.values()) <= 0:
                raise ValueError(
                    f"target_type_mix needs finite weights >= 0 with a positive sum, got {weights}"
                )
        if self.max_per_category is not None and self.max_per_category < 1:
            raise ValueError(f"max_per_category must be >= 1, got {self.max_per_category}")


def _category_cap(cands: pl.DataFrame, cap: int) -> set[str]:
    """Greedy in priority order: a row is dropped when one of its categories is full."""
    counts: Counter[str] = Counter()
    dropped: set[str] = set()
    for cid, cats in cands.select("conversation_id", "mentioned_categories").iter_rows():
        cats = cats or []
        if any(counts[c] >= cap for c in cats):
            dropped.add(cid)
            continue
        counts.update(cats)
    return dropped


def _keep_first_per_type(cands: pl.DataFrame, quota: dict[str, int]) -> set[str]:
    """Ids beyond each type's quota, dropping the lowest-priority rows (cands are sorted)."""
    position = pl.int_range(pl.len()).over("instruction_type")
    limit = pl.col("instruction_type").replace_strict(quota, default=0, return_dtype=pl.Int64)
    over = cands.filter(position >= limit)
    return set(over["conversation_id"].to_list())


def _mix_quota(counts: dict[str, int], mix: dict[str, float]) -> dict[str, int]:
    total = sum(mix.values())
    weights = {k: w / total for k, w in mix.items() if w > 0}
    missing = sorted(k for k in weights if counts.get(k, 0) == 0)
    if missing:
        raise ValueError(
            f"target_type_mix asks for {missing} but no row that passed the other rules has "
            f"that instruction_type (available: {dict(sorted(counts.items()))})"
        )
    scale = min(counts[k] / w for k, w in weights.items())
    # The epsilon keeps the limiting type's own quota from rounding down to n - 1.
    return {k: min(counts[k], math.floor(w * scale + 1e-9)) for k, w in weights.items()}


def _share_quota(counts: dict[str, int], share: float) -> int:
    """Largest per-type count c with c <= share * sum_t min(n_t, c): the share cap's quota."""
    if share * len(counts) < 1.0 - 1e-12 and len(counts) > 0:
        raise ValueError(
            f"max_share_per_type {share} is unreachable with {len(counts)} instruction "
            f"types {sorted(counts)}: every type would be dropped"
        )

    def feasible(c: int) -> bool:
        return c <= share * sum(min(n, c) for n in counts.values()) + 1e-9

    lo, hi = 0, max(counts.values(), default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid - 1)
    return lo


def type_counts(frame: pl.DataFrame) -> dict[str, int]:
    return dict(frame.group_by("instruction_type").len().sort("instruction_type").iter_rows())


def balance_drops(cands: pl.DataFrame, b: Balance) -> tuple[dict[str, str], dict]:
    """Rule per dropped id, applying category cap, then type mix, then type share cap.

    ``cands`` are the rows that passed every other rule. Rows are ranked by a hash of
    (seed, conversation_id), so a cap drops the same rows whatever the input order.
    """
    priority = unit_hashes(f"balance\x1f{b.seed}\x1f", cands["conversation_id"].to_list())
    cands = cands.with_columns(pl.Series("_priority", priority)).sort(
        "_priority", "conversation_id"
    )
    drops: dict[str, str] = {}
    info: dict = {}

    def drop(ids: set[str], rule: str) -> None:
        nonlocal cands
        drops.update(dict.fromkeys(ids, rule))
        cands = cands.filter(~pl.col("conversation_id").is_in(list(ids)))

    if b.max_per_category is not None:
        drop(_category_cap(cands, b.max_per_category), "category_cap")
    if b.target_type_mix is not None and cands.height:
        quota = _mix_quota(type_counts(cands), b.target_type_mix)
        info["type_mix_quota"] = quota
        drop(_keep_first_per_type(cands, quota), "type_mix")
    if b.max_share_per_type is not None:
        counts = type_counts(cands)
        cap = _share_quota(counts, b.max_share_per_type)
        info["type_share_quota"] = cap
        drop(_keep_first_per_type(cands, dict.fromkeys(counts, cap)), "type_share_cap")
    return drops, info
