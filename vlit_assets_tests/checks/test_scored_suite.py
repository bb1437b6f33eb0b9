"""The scored suite passes template output and fails a known-bad batch for every principle.

Good data is the template output on data/sample (and on coco-mini, where present), scored with
the real MiniLM model against the default thresholds; each bad batch is a rewrite of the
data/sample output that breaks one principle, scored the same way (the embedding cache keeps
rescoring to the new texts).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pytest

from vlit_assets.checks.gx_runner import SuiteOutcome
from vlit_assets.checks.scored_suite import (
    DATASET,
    SAMPLES,
    PrincipleThresholds,
    validate_scored,
    validate_scored_table,
)
from vlit_assets.core import warehouse
from vlit_assets.core.raw.collect import CollectResult
from vlit_assets.core.schemas import SCORED_CONVERSATIONS
from vlit_assets.core.scored.embed import EmbeddingCache, MiniLMEmbedder
from vlit_assets.core.scored.figures import dataset_figures
from vlit_assets.core.scored.quality import QualityResult, score_conversations
from vlit_assets.testing.defects import plant_defects
from vlit_assets.testing.planted import usable_templates

REPO = Path(__file__).resolve().parents[2]
SOURCE = "sample"

MEAN = "expect_column_mean_to_be_between"


@dataclass
class Scoring:
    raw: CollectResult
    good: pl.DataFrame
    scored: QualityResult
    score: Callable[[pl.DataFrame], QualityResult]


def template_scoring(source: str, root: Path, tmp: Path) -> Scoring:
    """Collect ``root``, generate its template conversations and score them with MiniLM."""
    raw, good = usable_templates(source, root, tmp / "regions")
    con = duckdb.connect(str(tmp / "cache.duckdb"))
    cache = EmbeddingCache(con)
    embedder = MiniLMEmbedder()

    def score(conversations: pl.DataFrame) -> QualityResult:
        return score_conversations(
            conversations,
            objects=raw.objects,
            tags=raw.tags,
            categories=raw.categories,
            captions=raw.captions,
            embedder=embedder,
            cache=cache,
            run_id="test",
        )

    return Scoring(raw, good, score(good), score)


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> Scoring:
    return template_scoring(SOURCE, REPO / "data" / "sample", tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def mini_scoring(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Scoring:
    return template_scoring("coco-mini", coco_mini, tmp_path_factory.mktemp("coco_mini"))


def failed_ids(outcome: SuiteOutcome) -> set[str]:
    return {o.expectation_id for o in outcome.failed}


def dataset_id(column: str) -> str:
    return f"{DATASET}.{MEAN}({column})"


def sample_id(expectation: str, column: str) -> str:
    return f"{SAMPLES}.{expectation}({column})"


# --------------------------------------------------------------------------- bad batches


def _map_turns(frame: pl.DataFrame, fn: Callable[[list[dict]], list[dict] | None]) -> pl.DataFrame:
    """Rewrite every conversation's turns; a row whose rewrite is None is left out."""
    rows = []
    for row in frame.to_dicts():
        turns = fn([dict(t) for t in row["turns"]])
        if turns is not None:
            rows.append({**row, "turns": turns})
    return pl.DataFrame(rows, schema=frame.schema)


def hallucination_heavy(s: Scoring) -> pl.DataFrame:
    bad, _ = plant_defects(
        s.good, s.raw.objects, s.raw.tags, seed=1, per_kind=s.good.height, kinds=("absent_object",)
    )
    return bad


def flipped_negatives(s: Scoring) -> pl.DataFrame:
    def flip(turns: list[dict]) -> list[dict]:
        for t in turns:
            if t["from"] == "gpt" and re.match(r"no\b", t["value"], re.I):
                t["value"] = "Yes, it is there."
        return turns

    return _map_turns(s.good.filter(pl.col("instruction_type") == "negative"), flip).vstack(
        s.good.filter(pl.col("instruction_type") != "negative")
    )


def all_one_type(s: Scoring) -> pl.DataFrame:
    return s.good.filter(pl.col("instruction_type") == "region")


def near_duplicate_heavy(s: Scoring) -> pl.DataFrame:
    copies, _ = plant_defects(
        s.good, s.raw.objects, s.raw.tags, seed=2, per_kind=s.good.height, kinds=("near_copy",)
    )
    return pl.concat([s.good, copies])


def yes_only_polar(s: Scoring) -> pl.DataFrame:
    """Every pair whose answer opens with "No" removed; conversations left empty go."""

    def keep_yes(turns: list[dict]) -> list[dict] | None:
        out = []
        for q, a in zip(turns[::2], turns[1::2], strict=True):
            if not re.match(r"(no|none)\b", a["value"], re.I):
                out += [q, a]
        return out or None

    return _map_turns(s.good, keep_yes)


OFF_TOPIC = (
    "Quarterly revenue grew by four percent thanks to lower shipping costs.",
    "The recipe needs flour, butter and a pinch of salt.",
    "Parliament will vote on the new tax law next Tuesday.",
    "The software update fixes a memory leak in the database driver.",
)


def off_topic_answers(s: Scoring) -> pl.DataFrame:
    def replace_answers(turns: list[dict]) -> list[dict]:
        k = 0
        for t in turns:
            if t["from"] == "gpt":
                t["value"] = OFF_TOPIC[k % len(OFF_TOPIC)]
                k += 1
        return turns

    return _map_turns(s.good, replace_answers)


def one_word_answers(s: Scoring) -> pl.DataFrame:
    def terse(turns: list[dict]) -> list[dict]:
        for t in turns:
            if t["from"] == "gpt":
                t["value"] = t["value"].split(" ")[0].strip(",.;:") + "."
        return turns

    return _map_turns(s.good, terse)


BAD_BATCHES = {
    # principle: correctness
    "hallucination_heavy": (
        hallucination_heavy,
        {dataset_id("chair_s_rate"), sample_id("expect_column_values_to_be_in_set", "chair_s")},
    ),
    "flipped_negatives": (flipped_negatives, {dataset_id("negative_consistency")}),
    # principle: balance
    "all_one_type": (all_one_type, {dataset_id("instruction_type_entropy_norm")}),
    "yes_only_polar": (yes_only_polar, {dataset_id("yes_ratio")}),
    # principle: diversity
    "near_duplicate_heavy": (near_duplicate_heavy, {dataset_id("near_duplicate_rate")}),
    # principle: relevance
    "off_topic_answers": (off_topic_answers, {dataset_id("relevance_mean")}),
    # principle: complexity
    "one_word_answers": (
        one_word_answers,
        {
            dataset_id("answer_words_mean"),
            sample_id("expect_column_values_to_be_between", "answer_words_min"),
        },
    ),
}


# --------------------------------------------------------------------------- tests


def _check_defaults_pass(scored: Scoring) -> None:
    outcome = validate_scored(scored.scored.scored, scored.scored.dataset)
    assert outcome.success, outcome.summary()
    observed = {o.column: o.observed for o in outcome.outcomes if o.frame == DATASET}
    # The generator balances polar answers (POPE-style confirmations between denials).
    assert abs(observed["yes_ratio"] - 0.5) < 0.1, observed["yes_ratio"]
    assert observed["chair_s_rate"] < 0.01  # caption quotes no longer count as hallucinations
    assert observed["negative_consistency"] == 1.0
    assert observed["count_consistency"] == 1.0
    assert 0.0 <= observed["near_duplicate_rate"] < 0.10


def test_defaults_pass_template_output_on_sample(scoring: Scoring) -> None:
    _check_defaults_pass(scoring)


@pytest.mark.slow
def test_defaults_pass_template_output_on_coco_mini(mini_scoring: Scoring) -> None:
    _check_defaults_pass(mini_scoring)


@pytest.mark.parametrize("batch", sorted(BAD_BATCHES))
def test_bad_batch_fails_its_principle(scoring: Scoring, batch: str) -> None:
    make, expected = BAD_BATCHES[batch]
    rows = make(scoring)
    assert rows.height > 0
    result = scoring.score(rows)
    outcome = validate_scored(result.scored, result.dataset)
    assert not outcome.success
    assert expected <= failed_ids(outcome), outcome.summary()
    good = validate_scored(scoring.scored.scored, scoring.scored.dataset)
    assert not expected & failed_ids(good)


def test_undefined_figures_are_reported_not_judged(scoring: Scoring) -> None:
    dataset = {**scoring.scored.dataset, "count_consistency": None, "yes_ratio": None}
    outcome = validate_scored(scoring.scored.scored, dataset)
    marked = {o.column: o for o in outcome.outcomes if o.observed_text.startswith("not judged")}
    assert set(marked) == {"count_consistency", "yes_ratio"}
    assert all(o.success and o.observed is None for o in marked.values())


def test_duplicate_ids_fail_the_sample_frame(scoring: Scoring) -> None:
    scored = scoring.scored.scored
    doubled = pl.concat([scored, scored.head(3)])
    outcome = validate_scored(doubled, scoring.scored.dataset)
    assert sample_id("expect_column_values_to_be_unique", "conversation_id") in failed_ids(outcome)


def test_missing_sample_column_is_named(scoring: Scoring) -> None:
    with pytest.raises(ValueError, match="relevance"):
        validate_scored(scoring.scored.scored.drop("relevance"), scoring.scored.dataset)


def test_table_validation_recomputes_the_same_figures(scoring: Scoring, tmp_path: Path) -> None:
    scored = scoring.scored.scored
    dropped = scored.head(1).with_columns(
        conversation_id=pl.lit("conv_dropped"),
        drop_reason=pl.lit("selected_out"),
        answer_words_min=pl.lit(1, dtype=pl.Int32),
    )
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        warehouse.replace_source(con, SCORED_CONVERSATIONS, pl.concat([scored, dropped]), SOURCE)
        from_table = validate_scored_table(con, SOURCE)
        empty = validate_scored_table(con, "no-such-source")
    in_memory = validate_scored(scored, scoring.scored.dataset)
    assert from_table.success, from_table.summary()
    observed = {o.expectation_id: o.observed for o in in_memory.outcomes}
    for o in from_table.outcomes:
        assert o.observed == pytest.approx(observed[o.expectation_id]), o.expectation_id
    assert not empty.success
    assert f"{SAMPLES}.expect_table_row_count_to_be_between()" in failed_ids(empty)


def test_stored_figures_match_scoring(scoring: Scoring) -> None:
    stored = dataset_figures(scoring.scored.scored)
    for key, value in stored.items():
        if key == "semantic_spread":  # needs the vectors, which stored rows do not hold
            continue
        assert value == pytest.approx(scoring.scored.dataset[key]), key


def test_an_image_on_both_sides_of_the_split_fails_the_final_bands(scoring: Scoring) -> None:
    final = PrincipleThresholds(max_images_in_both_splits=0.0)
    rows, figures = scoring.scored.scored, scoring.scored.dataset
    leaked = validate_scored(rows, {**figures, "images_in_both_splits": 3}, final)
    assert dataset_id("images_in_both_splits") in failed_ids(leaked)
    clean = validate_scored(rows, {**figures, "images_in_both_splits": 0}, final)
    assert dataset_id("images_in_both_splits") not in failed_ids(clean)
    # The scored stage has no split: the band is off there.
    scored = validate_scored(rows, {**figures, "images_in_both_splits": 3})
    assert dataset_id("images_in_both_splits") not in failed_ids(scored)
