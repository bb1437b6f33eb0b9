"""The final suite: the scored suite's expectations on what ships, with stricter bands (no Dagster).

What ships is every source's kept rows together, so this suite runs once, unpartitioned. It
adds the split's own figure (images on both sides of the split) and judges balance only on the
rows we generated (``core.final.report.final_figures``).
"""

from __future__ import annotations

import duckdb

from vlit_assets.checks.gx_runner import SuiteOutcome
from vlit_assets.checks.scored_suite import PrincipleThresholds, validate_scored
from vlit_assets.core import warehouse
from vlit_assets.core.final.gating import with_image_hashes
from vlit_assets.core.final.report import final_figures
from vlit_assets.core.final.split import images_in_both_splits
from vlit_assets.core.schemas import FINAL_CONVERSATIONS
from vlit_assets.core.vocab import FINAL_SUITE

SUITE_NAME = FINAL_SUITE

# Stricter than the scored suite: what ships must hold the principles.
FINAL_THRESHOLDS = PrincipleThresholds(
    max_chair_s_rate=0.0,
    min_region_name_match=1.0,
    min_format_valid_rate=1.0,
    min_negative_consistency=1.0,
    min_count_consistency=1.0,
    min_type_entropy_norm=0.85,
    max_exact_duplicate_share=0.0,
    min_relevance_mean=0.30,
    max_one_word_answer_share=0.0,
    max_images_in_both_splits=0.0,  # no image on both sides of the split
)


def validate_final(
    con: duckdb.DuckDBPyConnection,
    thresholds: PrincipleThresholds = FINAL_THRESHOLDS,
) -> SuiteOutcome:
    """Validate final__conversations (every source's kept rows) against ``thresholds``."""
    shipped = warehouse.read_source(con, FINAL_CONVERSATIONS)
    leaked = images_in_both_splits(with_image_hashes(con, shipped))
    rows = shipped.drop("split", "final_run_id")
    figures, unjudged = final_figures(rows)
    figures["images_in_both_splits"] = leaked
    return validate_scored(rows, figures, thresholds, unjudged=unjudged, suite=SUITE_NAME)
