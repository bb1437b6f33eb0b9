"""core/scored/stage: what the scoring step reports when it ends."""

import polars as pl

from vlit_assets.core.scored.quality import QualityResult
from vlit_assets.core.scored.stage import ScoreOutcome


def _outcome(dataset: dict) -> ScoreOutcome:
    scored = pl.DataFrame({"conversation_id": ["c1", "c2", "c3"]})
    result = QualityResult(scored=scored, dataset=dataset, encoded_texts=7)
    return ScoreOutcome("coco", result, "computed", "own", seconds=2.345)


def test_summary_is_one_line_with_rows_time_and_defined_figures():
    out = _outcome({"relevance_mean": 0.412345678, "chair_s_rate": None, "n_conversations": 3.0})
    line = out.summary()
    assert "\n" not in line
    assert line == "scored coco: 3 rows in 2.3 s; relevance_mean 0.4123"


def test_metadata_keeps_defined_figures_only():
    meta = _outcome({"relevance_mean": 0.5, "chair_s_rate": None}).metadata()
    assert meta["dagster/row_count"] == 3 and meta["texts_embedded"] == 7
    assert meta["metric/relevance_mean"] == 0.5
    assert "metric/chair_s_rate" not in meta
