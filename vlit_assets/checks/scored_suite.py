"""The scored-stage suite: the paper's quality principles as GX expectations on scored data.

Two frames are validated. ``samples`` has one row per scored conversation and carries the
per-sample expectations (ids, format, CHAIR-s, one-word answers), where a failing row is worth
showing. ``dataset`` has exactly one row holding the dataset-level figures of
``core.scored.figures.dataset_figures``; each is checked with ``ExpectColumnMeanToBeBetween``
on that row, so the observed value GX reports is the metric itself.

A dataset figure that is undefined on the data (None: no annotated image, no polar question,
no caption) cannot be judged; it is reported as an outcome with ``observed_text`` saying so,
never silently left out and never counted as zero.

Default thresholds were measured on template output (data/sample, 88 conversations, and
coco-mini, 295; template-3) and sit with a margin on the good side of both, which pass every
default; see ``PrincipleThresholds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import polars as pl

from vlit_assets.checks.gx_runner import (
    ExpectationOutcome,
    SuiteOutcome,
    describe_band,
    run_suite,
)
from vlit_assets.core import warehouse
from vlit_assets.core.schemas import SCORED_CONVERSATIONS
from vlit_assets.core.scored.figures import dataset_figures
from vlit_assets.core.vocab import INSTRUCTION_TYPES, SCORED_SUITE, UNLABELLED

SUITE_NAME = SCORED_SUITE
SAMPLES = "samples"
DATASET = "dataset"

SAMPLE_COLUMNS = (
    "conversation_id",
    "instruction_type",
    "format_valid",
    "chair_s",
    "answer_words_min",
    "relevance",
    "cluster_size",
)


@dataclass(frozen=True)
class PrincipleThresholds:
    """Pass bands per principle. Measured on template output (data/sample | coco-mini).

    A threshold of None switches its expectation off.
    """

    # correctness
    max_chair_s_rate: float = 0.10  # measured 0.000 | 0.000 (captions count as ground truth)
    min_negative_consistency: float = 0.95  # 1.0 | 1.0
    min_count_consistency: float = 0.95  # 1.0 | 1.0
    min_region_name_match: float = 0.95  # 1.0 | 1.0
    min_format_valid_rate: float = 0.99  # 1.0 | 1.0
    # balance
    min_type_entropy_norm: float = 0.80  # 0.971 | 0.970
    min_category_entropy_norm: float | None = 0.50  # 0.770 | 0.888 (K = 80 categories)
    yes_ratio_min: float = 0.35  # measured 0.559 | 0.524 (POPE-style confirmations)
    yes_ratio_max: float = 0.65
    # diversity
    max_near_duplicate_rate: float = 0.35  # 0.034 | 0.034
    max_exact_duplicate_share: float = 0.02  # 0.0 | 0.0
    # relevance
    min_relevance_mean: float | None = 0.25  # 0.442 | 0.407
    # complexity
    min_answer_words_mean: float = 5.0  # 10.7 | 10.3
    min_turns_mean: float = 2.0  # 4.0 | 3.92
    min_tags_per_conversation_mean: float = 1.0  # 3.76 | 3.02
    max_one_word_answer_share: float = 0.05
    # split (what ships only): images with conversations in both train and val; None = off
    max_images_in_both_splits: float | None = None
    # Distribution figures (entropies, yes-ratio, duplicate rate) of fewer conversations than
    # this say little about a dataset; they are reported as "not judged" instead of gating.
    min_samples_for_distribution: int = 30  # 0 | 0 (answer_words_min is 4 at least)


# Which principle each dataset figure and per-sample column speaks for (reporting and tests).
PRINCIPLES: dict[str, str] = {
    "chair_s_rate": "correctness",
    "negative_consistency": "correctness",
    "count_consistency": "correctness",
    "region_name_match_rate": "correctness",
    "format_valid_rate": "correctness",
    "format_valid": "correctness",
    "chair_s": "correctness",
    "instruction_type_entropy_norm": "balance",
    "category_entropy_norm": "balance",
    "yes_ratio": "balance",
    "near_duplicate_rate": "diversity",
    "text_near_duplicate_rate": "diversity",
    "exact_duplicate_share": "diversity",
    "cluster_size": "diversity",
    "relevance_mean": "relevance",
    "relevance": "relevance",
    "answer_words_mean": "complexity",
    "turns_mean": "complexity",
    "tags_per_conversation_mean": "complexity",
    "answer_words_min": "complexity",
    "conversation_id": "format",
    "instruction_type": "format",
    "images_in_both_splits": "split",
}


def _figure(value: Any) -> float:
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def scored_frames(scored: pl.DataFrame, dataset: dict) -> dict[str, pd.DataFrame]:
    """The per-sample frame and the one-row dataset frame (undefined figures are NaN)."""
    missing = [c for c in SAMPLE_COLUMNS if c not in scored.columns]
    if missing:
        raise ValueError(f"scored__conversations frame lacks columns {missing}")
    samples = scored.select(SAMPLE_COLUMNS).to_pandas()
    figures = {k: _figure(v) for k, v in dataset.items() if isinstance(v, int | float | None)}
    return {SAMPLES: samples, DATASET: pd.DataFrame([figures], dtype="float64")}


def _band(column: str, low: float | None = None, high: float | None = None) -> Any:
    return gxe.ExpectColumnMeanToBeBetween(
        column=column, min_value=low, max_value=high, meta={"principle": PRINCIPLES[column]}
    )


def _dataset_expectations(t: PrincipleThresholds) -> list[Any]:
    bands: list[tuple[str, float | None, float | None]] = [
        ("chair_s_rate", None, t.max_chair_s_rate),
        ("negative_consistency", t.min_negative_consistency, None),
        ("count_consistency", t.min_count_consistency, None),
        ("region_name_match_rate", t.min_region_name_match, None),
        ("format_valid_rate", t.min_format_valid_rate, None),
        ("instruction_type_entropy_norm", t.min_type_entropy_norm, None),
        ("category_entropy_norm", t.min_category_entropy_norm, None),
        ("yes_ratio", t.yes_ratio_min, t.yes_ratio_max),
        ("near_duplicate_rate", None, t.max_near_duplicate_rate),
        ("text_near_duplicate_rate", None, t.max_near_duplicate_rate),
        ("exact_duplicate_share", None, t.max_exact_duplicate_share),
        ("relevance_mean", t.min_relevance_mean, None),
        ("answer_words_mean", t.min_answer_words_mean, None),
        ("turns_mean", t.min_turns_mean, None),
        ("tags_per_conversation_mean", t.min_tags_per_conversation_mean, None),
        ("images_in_both_splits", None, t.max_images_in_both_splits),
    ]
    return [
        _band(column, low, high)
        for column, low, high in bands
        if low is not None or high is not None
    ]


def _sample_expectations(t: PrincipleThresholds) -> list[Any]:
    def meta(column: str) -> dict[str, str]:
        return {"principle": PRINCIPLES[column]}

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"principle": "format"}),
        gxe.ExpectColumnValuesToNotBeNull(column="conversation_id", meta=meta("conversation_id")),
        gxe.ExpectColumnValuesToBeUnique(column="conversation_id", meta=meta("conversation_id")),
        gxe.ExpectColumnValuesToBeInSet(
            column="instruction_type",
            value_set=[*INSTRUCTION_TYPES, UNLABELLED],
            meta=meta("instruction_type"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="format_valid",
            value_set=[True],
            mostly=t.min_format_valid_rate,
            meta=meta("format_valid"),
        ),
        # null (image not annotated) is skipped by GX: it cannot be judged
        gxe.ExpectColumnValuesToBeInSet(
            column="chair_s",
            value_set=[False],
            mostly=1.0 - t.max_chair_s_rate,
            meta=meta("chair_s"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="answer_words_min",
            min_value=2,
            mostly=1.0 - t.max_one_word_answer_share,
            meta=meta("answer_words_min"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="relevance", min_value=-1.0, max_value=1.0, meta=meta("relevance")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="cluster_size", min_value=1, meta=meta("cluster_size")
        ),
    ]


def scored_expectations(t: PrincipleThresholds = PrincipleThresholds()) -> dict[str, list]:  # noqa: B008
    return {SAMPLES: _sample_expectations(t), DATASET: _dataset_expectations(t)}


DISTRIBUTION_FIGURES = frozenset(
    {
        "instruction_type_entropy_norm",
        "category_entropy_norm",
        "yes_ratio",
        "near_duplicate_rate",
        "text_near_duplicate_rate",
    }
)


def _not_judged(
    expectation: Any, why: str = "the figure is undefined on this data"
) -> ExpectationOutcome:
    config = expectation.configuration
    return ExpectationOutcome(
        frame=DATASET,
        expectation=config.type,
        column=expectation.column,
        success=True,
        observed=None,
        observed_text=f"not judged: {why}",
        unexpected_count=None,
        element_count=None,
        judged=False,
        principle=(config.meta or {}).get("principle"),
        band=describe_band(config.kwargs, config.type),
    )


def validate_scored(
    scored: pl.DataFrame,
    dataset: dict,
    thresholds: PrincipleThresholds = PrincipleThresholds(),  # noqa: B008 (frozen)
    *,
    unjudged: dict[str, str] | None = None,
    suite: str = SUITE_NAME,
) -> SuiteOutcome:
    """Run the suite on a ``score_conversations`` result (its ``scored`` and ``dataset``).

    ``suite`` names the outcome: the final suite runs these expectations on what ships.

    ``unjudged`` names dataset figures the caller does not want judged here, with why; they
    are reported as "not judged" with that reason and their value.
    """
    frames = scored_frames(scored, dataset)
    expectations = scored_expectations(thresholds)
    row = frames[DATASET].iloc[0] if len(frames[DATASET].columns) else pd.Series(dtype=float)
    small = scored.height < thresholds.min_samples_for_distribution
    unjudged = unjudged or {}
    judged, skipped = [], []
    for expectation in expectations[DATASET]:
        value = row.get(expectation.column, math.nan)
        if np.isnan(value):
            skipped.append((expectation, "the figure is undefined on this data"))
        elif expectation.column in unjudged:
            skipped.append((expectation, f"{unjudged[expectation.column]} (observed {value:.4g})"))
        elif small and expectation.column in DISTRIBUTION_FIGURES:
            why = (
                f"{scored.height} conversations, fewer than "
                f"{thresholds.min_samples_for_distribution}"
            )
            skipped.append((expectation, why))
        else:
            judged.append(expectation)
    outcome = run_suite(suite, frames, {SAMPLES: expectations[SAMPLES], DATASET: judged})
    outcome.outcomes.extend(_not_judged(e, why) for e, why in skipped)
    return outcome


def validate_scored_table(
    con: duckdb.DuckDBPyConnection,
    source: str,
    thresholds: PrincipleThresholds = PrincipleThresholds(),  # noqa: B008 (frozen)
) -> SuiteOutcome:
    """Validate the usable rows (``drop_reason`` null) of a source in ``scored__conversations``.

    No model runs here: every figure comes from stored columns (``figures.dataset_figures``).
    Near-duplicate figures are over the usable rows, while scoring counted every row with
    turns, so they can differ slightly when rows were dropped after scoring.
    """
    rows = warehouse.read_source(con, SCORED_CONVERSATIONS, source).filter(
        pl.col("drop_reason").is_null()
    )
    return validate_scored(rows, dataset_figures(rows), thresholds)
