"""raw__tags: present categories with counts, ranked plausible absent ones, the balanced sample."""

from __future__ import annotations

import numpy as np
import polars as pl

from vlit_assets.core.raw.rejects import conform
from vlit_assets.core.schemas import RAW_TAGS

_PRESENT = RAW_TAGS.polars_schema["present"]
_ABSENT = RAW_TAGS.polars_schema["absent"]


def _present_tags(
    images: pl.DataFrame, objects: pl.DataFrame, categories: pl.DataFrame
) -> pl.DataFrame:
    counts = (
        objects.group_by("image_id", "category_id")
        .len("count")
        .join(
            categories.select("category_id", "name"),
            on="category_id",
            how="left",
            maintain_order="left",
        )
        .sort(["image_id", "count", "category_id"], descending=[False, True, False])
        .group_by("image_id", maintain_order=True)
        .agg(
            pl.struct(
                pl.col("category_id").cast(pl.Int32), "name", pl.col("count").cast(pl.Int32)
            ).alias("present")
        )
    )
    return images.select("image_id").join(counts, on="image_id", how="left", maintain_order="left")


_TAG_CHUNK = 1 << 15  # images ranked at once: bounds the images x categories score matrix


def _absent_tags(
    image_ids: list[str], pairs: pl.DataFrame, categories: pl.DataFrame, k: int
) -> pl.DataFrame:
    """Rank, per image, the declared categories it lacks by co-occurrence with those it has.

    score(c | image) = mean over the image's present categories p of P(c | p), where
    P(c | p) = (#images with both) / (#images with p), counted over the source. Ties, and
    candidates with no co-occurrence signal, are ordered by popularity (#images with c), then
    category id. ``absent_strategy`` is ``co-occurrence`` when every listed candidate has a
    positive score, ``co-occurrence+popularity`` when zero-score ones fill the list up (their
    score is 0), ``popularity`` when the image has no object or no candidate scores above 0
    (scores are then the share of images containing the category), and ``none`` when the
    source declares no categories or ``k`` is 0.
    """
    n, cat_ids = len(image_ids), categories["category_id"].sort().to_numpy()
    schema = pl.Schema({"image_id": pl.String(), "absent": _ABSENT, "absent_strategy": pl.String()})
    if k <= 0 or not len(cat_ids) or not n:
        return pl.DataFrame(
            {"image_id": image_ids, "absent": [[]] * n, "absent_strategy": ["none"] * n},
            schema=schema,
        )
    rows = pl.DataFrame({"image_id": image_ids}).with_row_index("row")
    cols = pl.DataFrame({"category_id": cat_ids}).with_row_index("col")
    idx = pairs.join(rows, on="image_id").join(cols, on="category_id")
    # float32 keeps the images x categories matrix small; counts stay exact below 2**24.
    present = np.zeros((n, len(cat_ids)), np.float32)
    present[idx["row"].to_numpy(), idx["col"].to_numpy()] = 1.0
    with_c = present.sum(axis=0, dtype=np.float64)
    together = (present.T @ present).astype(np.float64)
    conditional = np.divide(
        together, with_c[:, None], out=np.zeros_like(together), where=with_c[:, None] > 0
    )
    pop_rank = np.empty(len(cat_ids), np.int64)
    pop_rank[np.lexsort((cat_ids, -with_c))] = np.arange(len(cat_ids))
    parts = [
        _rank_absent(present[lo : lo + _TAG_CHUNK], conditional, pop_rank, with_c / n, k, lo)
        for lo in range(0, n, _TAG_CHUNK)
    ]
    long = pl.concat([p[0] for p in parts])
    strategy = np.concatenate([p[1] for p in parts])
    names = categories.select(pl.col("category_id").cast(pl.Int64), "name")
    absent = (
        long.with_columns(pl.Series("category_id", cat_ids[long["col"].to_numpy()]))
        .join(names, on="category_id", how="left", maintain_order="left")
        .group_by("row", maintain_order=True)
        .agg(pl.struct(pl.col("category_id").cast(pl.Int32), "name", "score").alias("absent"))
    )
    return (
        rows.join(absent, on="row", how="left", maintain_order="left")
        .with_columns(
            pl.col("absent").fill_null(pl.lit([], dtype=_ABSENT)),
            pl.Series("absent_strategy", strategy, pl.String),
        )
        .select("image_id", "absent", "absent_strategy")
        .cast(schema)
    )


def _rank_absent(
    present: np.ndarray,
    conditional: np.ndarray,
    pop_rank: np.ndarray,
    popularity: np.ndarray,
    k: int,
    first_row: int,
) -> tuple[pl.DataFrame, np.ndarray]:
    """Long (row, col, score) of the chosen candidates of a block of images, and strategies."""
    present = present.astype(np.float64)
    n_present = present.sum(axis=1)
    score = np.divide(
        present @ conditional,
        n_present[:, None],
        out=np.zeros((len(present), len(pop_rank))),
        where=n_present[:, None] > 0,
    )
    order = np.lexsort((np.broadcast_to(pop_rank, score.shape), -score), axis=1)
    lacks = np.take_along_axis(present, order, axis=1) == 0
    chosen = lacks & (np.cumsum(lacks, axis=1) <= k)
    r, pos = np.nonzero(chosen)  # row-major: candidates come out best first per image
    c = order[r, pos]
    s = score[r, c]
    positive = np.bincount(r, weights=s > 0, minlength=len(present))
    total = np.bincount(r, minlength=len(present))
    by_popularity = (n_present == 0) | (positive == 0)
    strategy = np.where(
        by_popularity,
        "popularity",
        np.where(positive == total, "co-occurrence", "co-occurrence+popularity"),
    )
    values = np.where(by_popularity[r], popularity[c], s)
    long = pl.DataFrame(
        {"row": (r + first_row).astype(np.uint32), "col": c, "score": values.astype(np.float64)}
    )
    return long, strategy


def derive_tags(
    images: pl.DataFrame, objects: pl.DataFrame, categories: pl.DataFrame, *, k: int
) -> pl.DataFrame:
    """raw__tags: one row per image, its present categories with counts and ``k`` absent ones."""
    if not images.height:
        return RAW_TAGS.empty_frame()
    present = _present_tags(images, objects, categories)
    pairs = objects.select("image_id", "category_id").unique()
    pairs = pairs.filter(pl.col("category_id").is_in(categories["category_id"].implode()))
    image_ids = images["image_id"].to_list()
    absent = _absent_tags(image_ids, pairs, categories, k)
    tags = (
        images.select("image_id", "source", "run_id")
        .join(present, on="image_id", how="left", maintain_order="left")
        .join(absent, on="image_id", how="left", maintain_order="left")
        .with_columns(pl.col("present").fill_null(pl.lit([], dtype=_PRESENT)))
    )
    return conform(RAW_TAGS, tags)


def balanced_sample(tags: pl.DataFrame, *, per_category_cap: int, seed: int) -> pl.DataFrame:
    """Image ids such that no present category is in more than ``per_category_cap`` of them.

    Greedy, rarest category first: each category takes its images in a seeded random order,
    skipping an image when any of its categories has reached the cap. Rare categories thus keep
    their images before the common ones fill up. Images without present categories are not
    sampled. The same tags and seed always give the same ids in the same order.
    """
    long = (
        tags.select("image_id", "present")
        .explode("present")
        .filter(pl.col("present").is_not_null())
        .select("image_id", pl.col("present").struct.field("category_id"))
    )
    images = sorted(set(long["image_id"].to_list()))
    if not images or per_category_cap <= 0:
        return pl.DataFrame({"image_id": []}, schema={"image_id": pl.String})
    position = dict(
        zip(images, np.random.default_rng(seed).permutation(len(images)).tolist(), strict=True)
    )
    cats_of: dict[str, list[int]] = {}
    members: dict[int, list[str]] = {}
    for image, cat in long.iter_rows():
        cats_of.setdefault(image, []).append(cat)
        members.setdefault(cat, []).append(image)
    taken: dict[int, int] = dict.fromkeys(members, 0)
    chosen: list[str] = []
    seen: set[str] = set()
    for cat in sorted(members, key=lambda c: (len(members[c]), c)):
        for image in sorted(members[cat], key=position.__getitem__):
            if taken[cat] >= per_category_cap:
                break
            if image in seen or any(taken[c] >= per_category_cap for c in cats_of[image]):
                continue
            seen.add(image)
            chosen.append(image)
            for c in cats_of[image]:
                taken[c] += 1
    return pl.DataFrame({"image_id": chosen}, schema={"image_id": pl.String})
