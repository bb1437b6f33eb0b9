"""Which member of a near-duplicate pair should stay: measured on planted near copies.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/neardup_representative.py [--seeds 7 1 2]``.
For each seed it plants near copies (one answer word swapped) into coco-mini's template
conversations, scores everything once with MiniLM, and for every copy that landed in one
near-duplicate cluster with its original asks each candidate rule which of the two it keeps:

- ``relevance``: higher answer-caption cosine (the rule before this benchmark);
- ``typicality``: higher mean log document frequency of the answer words in the batch
  (``select.typicality``), relevance breaking ties;
- ``fewest_rare``: fewer answer words seen in at most two rows of the batch, relevance
  breaking ties;
- ``longest``: more answer characters (a control: a swap barely changes the length).

It prints, per rule, how often the original is kept. Conversation ids are hashes, so "earliest
in source order" is not a rule the final stage can apply; with two members a medoid is a tie.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from vlit_assets.core.final.dedup import answer_word_frequencies, typicality  # noqa: E402
from vlit_assets.testing.planted import plant_and_score  # noqa: E402

RULES = ("relevance", "typicality", "fewest_rare", "longest")


def _rare_counts(scored: pl.DataFrame) -> pl.Series:
    rare = (
        answer_word_frequencies(scored)
        .group_by("_row")
        .agg((pl.col("_df") <= 2).sum().alias("rare"))
    )
    rows = pl.DataFrame({"_row": pl.int_range(scored.height, eager=True)})
    return rows.join(rare, on="_row", how="left", maintain_order="left")["rare"].fill_null(0)


def judge(scored: pl.DataFrame, truth: pl.DataFrame) -> dict[str, int]:
    """Per rule, how many clustered (original, copy) pairs keep the original; plus 'pairs'."""
    table = scored.with_columns(
        typicality(scored),
        _rare_counts(scored).alias("rare"),
        pl.col("turns")
        .list.eval(pl.element().struct.field("value").str.len_chars())
        .list.sum()
        .alias("chars"),
    ).select("conversation_id", "cluster_id", "relevance", "typicality", "rare", "chars")
    pairs = (
        truth.filter(pl.col("defect") == "near_copy")
        .join(table, on="conversation_id")
        .join(
            table,
            left_on="source_conversation_id",
            right_on="conversation_id",
            suffix="_orig",
        )
        .filter(pl.col("cluster_id") == pl.col("cluster_id_orig"))
    )
    out = {"pairs": pairs.height}
    for row in pairs.iter_rows(named=True):
        rel = row["relevance_orig"] >= row["relevance"]
        keys = {
            "relevance": rel,
            "typicality": row["typicality_orig"] > row["typicality"]
            or (row["typicality_orig"] == row["typicality"] and rel),
            "fewest_rare": row["rare_orig"] < row["rare"]
            or (row["rare_orig"] == row["rare"] and rel),
            "longest": row["chars_orig"] >= row["chars"],
        }
        for rule, kept in keys.items():
            out[rule] = out.get(rule, 0) + int(kept)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 1, 2])
    parser.add_argument("--per-kind", type=int, default=30)
    parser.add_argument("--coco-mini", type=Path, default=REPO.parent / "shared" / "coco-mini")
    args = parser.parse_args()
    totals: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            planted = plant_and_score(args.coco_mini, Path(tmp), per_kind=args.per_kind, seed=seed)
            result = judge(planted.scored, planted.truth)
            for k, v in result.items():
                totals[k] = totals.get(k, 0) + v
            kept = ", ".join(f"{r} {result.get(r, 0)}" for r in RULES)
            print(f"seed {seed}: {result['pairs']} clustered pairs; original kept by {kept}")
    n = totals.get("pairs", 0)
    print(f"\nAll seeds: {n} clustered pairs (original, near copy)")
    for rule in RULES:
        kept = totals.get(rule, 0)
        print(f"  {rule:12s} keeps the original in {kept}/{n} ({kept / n:.0%})" if n else rule)


if __name__ == "__main__":
    main()
