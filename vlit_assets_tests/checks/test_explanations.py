"""A check's metadata explains each expectation: observed value, pass band, principle, counts."""

from __future__ import annotations

import polars as pl

from vlit_assets.checks.factory import outcome_metadata
from vlit_assets.checks.gx_runner import describe_band, figure
from vlit_assets.checks.scored_suite import PrincipleThresholds, validate_scored


def _scored(n: int = 4, chair_s: list[bool | None] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(n)],
            "instruction_type": ["global"] * n,
            "format_valid": [True] * n,
            "chair_s": chair_s or [False] * n,
            "answer_words_min": [6] * n,
            "relevance": [0.4] * n,
            "cluster_size": [1] * n,
        },
        schema_overrides={"chair_s": pl.Boolean},
    )


def _metadata(scored: pl.DataFrame, dataset: dict) -> dict[str, str]:
    outcome = validate_scored(scored, dataset, PrincipleThresholds(min_relevance_mean=0.3))
    return {k: v.value for k, v in outcome_metadata(outcome).items()}


def test_a_figure_shows_its_value_and_band_to_four_significant_figures():
    meta = _metadata(_scored(), {"relevance_mean": 0.412345, "chair_s_rate": 0.0})
    assert meta["relevance/relevance_mean"] == "0.4123 (≥ 0.3)"
    assert meta["correctness/chair_s_rate"] == "0 (≤ 0.1)"


def test_a_failed_figure_says_so():
    meta = _metadata(_scored(), {"relevance_mean": 0.21})
    assert meta["relevance/relevance_mean"] == "0.21 (≥ 0.3) FAILED"
    assert meta["failed_expectations"] == 1


def test_failing_rows_are_counted_as_rows_with_their_allowance():
    meta = _metadata(_scored(chair_s=[True, False, False, False]), {})
    assert meta["correctness/chair_s"] == (
        "1 failing row of 4 (rows must be in {False}; ≤ 10% may fail) FAILED"
    )
    assert meta["format/conversation_id (unique)"] == "0 repeated rows of 4 (none allowed)"
    assert meta["format/conversation_id (not null)"] == "0 null rows of 4 (none allowed)"


def test_an_undefined_figure_is_not_judged_and_keeps_its_band():
    meta = _metadata(_scored(), {"relevance_mean": None})
    assert meta["relevance/relevance_mean"] == (
        "not judged: the figure is undefined on this data (≥ 0.3)"
    )


def test_entries_are_grouped_by_principle_in_a_fixed_order():
    meta = _metadata(_scored(), {"relevance_mean": 0.4, "yes_ratio": 0.5, "turns_mean": 4.0})
    groups = [k.split("/")[0] for k in meta if "/" in k]
    order = ["correctness", "diversity", "complexity", "balance", "relevance", "format"]
    seen = [g for i, g in enumerate(groups) if g not in groups[:i]]
    assert seen == [g for g in order if g in seen]
    assert {"correctness", "complexity", "balance", "relevance", "format"} <= set(seen)
    table = meta["expectations"]
    assert table.startswith("| principle | expectation | passed | observed | pass band |")
    assert "| relevance | `dataset.relevance_mean` | yes | 0.4 | ≥ 0.3 |" in table


def test_bands_and_figures_in_words():
    assert figure(0.123456) == "0.1235"
    assert figure(12345.678) == "12350"
    assert figure(0.000123456) == "0.0001235"
    assert figure(3.0) == "3"
    between = "expect_column_values_to_be_between"
    assert describe_band({"min_value": -1.0, "max_value": 1.0}, between) == (
        "rows must be in [-1, 1]; none may fail"
    )
    mean = "expect_column_mean_to_be_between"
    assert describe_band({"min_value": 0.35, "max_value": 0.65}, mean) == "[0.35, 0.65]"
    assert describe_band({"min_value": 0, "strict_min": True}, between) == (
        "rows must be > 0; none may fail"
    )
