"""Planted LLM-style defects against the llm_checks and claims rules, on coco-mini.

Run: ``.venv/bin/python benchmarks/llm_defects.py [--per-kind 30] [--seeds 11 1 2]``. For each
seed it plants every kind of ``vlit_assets.testing.llm_defects`` into copies of the template
conversations, runs ``llm_checks``, ``relation_claims`` and ``grammar_checks`` once over good
and defective rows, and prints how many
rows of each kind each rule flags, then each rule's precision and recall for its kind (counted
as vlit_assets_tests/core/test_llm_checks.py does: both import rules and counting from
``vlit_assets.testing.planted``).
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

from vlit_assets.testing.llm_defects import LLM_DEFECT_KINDS  # noqa: E402
from vlit_assets.testing.planted import (  # noqa: E402
    LLM_RULE,
    llm_precision_recall,
    plant_and_check,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11])
    args = parser.parse_args()
    root = Path(os.environ.get("VLIT_COCO_MINI", REPO.parent / "shared" / "coco-mini"))
    rules = list(LLM_RULE.values())
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            frame = plant_and_check(root, Path(tmp), per_kind=args.per_kind, seed=seed)
        print(f"\nseed {seed}: rows flagged per rule (columns) and planted kind (rows)")
        table = frame.group_by("defect").agg(
            pl.len().alias("rows"), *(pl.col(r).sum() for r in rules)
        )
        print(table.sort("defect"))
        print(f"{'kind':<20}{'rule':<20}{'precision':>10}{'recall':>8}{'flagged':>9}")
        for kind in LLM_DEFECT_KINDS:
            precision, recall, flagged = llm_precision_recall(frame, kind, LLM_RULE[kind])
            print(f"{kind:<20}{LLM_RULE[kind]:<20}{precision:>10.3f}{recall:>8.3f}{flagged:>9}")


if __name__ == "__main__":
    main()
