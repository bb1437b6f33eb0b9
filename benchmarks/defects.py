"""Confusion table of planted defects against every quality rule, on coco-mini.

Run: ``.venv/bin/python benchmarks/defects.py [--per-kind 30] [--seeds 7 1 2]``. For each seed it
plants every defect kind into copies of the template conversations, scores good and defective
rows in one pass with the real MiniLM model, and prints

1. how many rows of each kind (and of the good rows) each rule flags, and
2. per kind, the precision and recall of its rule and of the other candidate rules,

counted as vlit_assets_tests/core/test_planted_defects.py defines them (both import the rules
from ``vlit_assets.testing.planted``, so the benchmark and the test cannot drift apart).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from vlit_assets.testing.defects import DEFECT_KINDS  # noqa: E402
from vlit_assets.testing.planted import (  # noqa: E402
    RULE_FOR_KIND,
    labelled,
    plant_and_score,
    precision_recall,
)

RULES = (
    "chair_s",
    "chair_s_uncaptioned",
    "negative_inconsistent",
    "count_inconsistent",
    "near_duplicate",
    "same_image_near_duplicate",
    "one_word_answer",
    "chair_i_majority",
    "low_relevance",
    "region_mismatch",
)
# Candidate rules shown beside the chosen one, so the choice can be checked.
ALTERNATIVES = {
    "absent_object": ("chair_s",),
    "near_copy": ("near_duplicate",),
    "moved_image": ("chair_s", "low_relevance", "region_mismatch"),
}


def confusion(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows flagged by each rule, per planted kind and for the good rows."""
    order = {k: i for i, k in enumerate(("good", *DEFECT_KINDS))}
    return (
        frame.group_by("defect")
        .agg(pl.len().alias("rows"), *[pl.col(r).sum() for r in RULES])
        .sort(pl.col("defect").replace_strict(order, return_dtype=pl.Int32))
    )


def print_confusion(table: pl.DataFrame) -> None:
    short = [r.replace("_", " ")[:11] for r in RULES]
    print(f"{'defect':<17} {'rows':>5} " + " ".join(f"{s:>11}" for s in short))
    for row in table.iter_rows(named=True):
        cells = " ".join(f"{row[r]:>11}" for r in RULES)
        print(f"{row['defect']:<17} {row['rows']:>5} {cells}")
    print("columns: " + ", ".join(RULES))


def print_scores(frame: pl.DataFrame) -> list[tuple[str, float, float]]:
    print(
        f"{'defect':<17} {'rule':<27} {'chosen':>6} {'flagged':>8} {'precision':>9} {'recall':>7}"
    )
    chosen = []
    for kind in DEFECT_KINDS:
        for rule in (RULE_FOR_KIND[kind], *ALTERNATIVES.get(kind, ())):
            precision, recall, flagged = precision_recall(frame, kind, rule)
            mark = "yes" if rule == RULE_FOR_KIND[kind] else ""
            print(f"{kind:<17} {rule:<27} {mark:>6} {flagged:>8} {precision:>9.3f} {recall:>7.3f}")
            if mark:
                chosen.append((kind, precision, recall))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 1, 2])
    parser.add_argument("--coco-mini", type=Path, default=None)
    args = parser.parse_args()
    root = args.coco_mini or Path(
        os.environ.get("VLIT_COCO_MINI", REPO.parent / "shared" / "coco-mini")
    )
    if not root.exists():
        raise SystemExit(f"coco-mini not found at {root}: pass --coco-mini or set VLIT_COCO_MINI")
    worst: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            planted = plant_and_score(
                root, Path(tmp), per_kind=args.per_kind, seed=seed
            )  # the cache persists across seeds: later seeds embed only new texts
            frame = labelled(planted)
            print(
                f"\n== seed {seed}: {len(planted.good_ids)} good rows, "
                f"{args.per_kind} planted per kind =="
            )
            print_confusion(confusion(frame))
            print()
            for kind, p, r in print_scores(frame):
                old = worst.get(kind, (1.0, 1.0))
                worst[kind] = (min(old[0], p), min(old[1], r))
    print(f"\n== worst over seeds {args.seeds} (chosen rule) ==")
    print(f"{'defect':<17} {'rule':<27} {'precision':>9} {'recall':>7}")
    for kind in DEFECT_KINDS:
        p, r = worst[kind]
        print(f"{kind:<17} {RULE_FOR_KIND[kind]:<27} {p:>9.3f} {r:>7.3f}")


if __name__ == "__main__":
    main()
