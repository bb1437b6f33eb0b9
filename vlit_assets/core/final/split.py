"""The train/val split: hashing ids (or image content) into a side that never moves."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from vlit_assets.core.vocab import TRAIN, VAL


@dataclass(frozen=True)
class SplitConfig:
    """Validation share and hash salt; changing either reshuffles every split."""

    val_ratio: float = 0.05
    salt: str = "vlit-split-v1"
    # Column hashed for the split. "image_id" (the default) is a group split: an image and
    # all its conversations land on one side. When the frame has an ``image_sha256`` column
    # (raw__images.sha256, joined by the final stage) the image's content hash is hashed
    # instead, so the same picture under two names or in two sources stays together.
    key: str = "image_id"

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {self.val_ratio}")
        if not self.salt:
            raise ValueError("salt must be a non-empty string")


def unit_hashes(prefix: str, values: list[str]) -> np.ndarray:
    """BLAKE2b of ``prefix + value`` mapped to [0, 1): a uniform draw fixed by the value."""
    base = hashlib.blake2b(prefix.encode("utf-8"), digest_size=8)
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        h = base.copy()
        h.update(value.encode("utf-8"))
        out[i] = int.from_bytes(h.digest(), "big") / 2.0**64
    return out


def assign_split(conversation_ids: pl.Series, cfg: SplitConfig) -> pl.Series:
    """``"val"`` when the hash of (salt, id) falls below ``val_ratio``, else ``"train"``.

    Nothing but the id and the salt enters the hash, so a row's split never depends on which
    other rows exist.
    """
    if conversation_ids.null_count():
        raise ValueError(f"assign_split: {conversation_ids.name or 'ids'} has null values")
    draws = unit_hashes(f"{cfg.salt}\x1f", conversation_ids.cast(pl.String).to_list())
    return pl.Series("split", np.where(draws < cfg.val_ratio, VAL, TRAIN), dtype=pl.String)


IMAGE_HASH_COLUMN = "image_sha256"


def split_group_expr(key: str, columns: list[str] | tuple[str, ...]) -> pl.Expr:
    """What the split hashes for ``key``: the image content hash when known (key image_id)."""
    if key == "image_id" and IMAGE_HASH_COLUMN in columns:
        return (
            pl.when(pl.col(IMAGE_HASH_COLUMN).is_not_null())
            .then(pl.lit("sha256:") + pl.col(IMAGE_HASH_COLUMN))
            .otherwise(pl.col("image_id").cast(pl.String))
        )
    return pl.col(key).cast(pl.String)


def images_in_both_splits(rows: pl.DataFrame) -> int:
    """Images (by content hash when known, else image_id) with rows in both train and val."""
    if rows.is_empty():
        return 0
    group = split_group_expr("image_id", rows.columns).alias("_image")
    sides = (
        rows.filter(pl.col("split").is_not_null())
        .group_by(group)
        .agg(pl.col("split").n_unique().alias("_sides"))
    )
    return int((sides["_sides"] > 1).sum())
