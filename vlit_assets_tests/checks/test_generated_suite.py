"""The generated GX suite passes good conversations and fails each kind of known-bad frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from vlit_assets.checks.generated_suite import conversation_frame, validate_frame, validate_rows


def good_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "conversation_id": ["c1", "c2", "c3"],
            "instruction_type": ["global", "negative", "region"],
            "generator": ["template", "llm", "template"],
            "n_messages": [4, 2, 2],
            "starts_with_human": [True, True, True],
            "alternates": [True, True, True],
            "ends_with_answer": [True, True, True],
            "min_text_chars": [12, 7, 20],
            "region_image_exists": pd.array([None, None, True], dtype="boolean"),
            "llava_first_turn_has_image": [True, True, True],
        }
    )


def test_good_frame_passes_and_every_expectation_reports_an_observed_value():
    outcome = validate_frame(good_frame())
    assert outcome.success, outcome.summary()
    assert len(outcome.outcomes) == 11
    assert all(o.observed_text and o.band for o in outcome.outcomes)


@pytest.mark.parametrize(
    ("column", "value", "failing"),
    [
        ("conversation_id", "c1", "expect_column_values_to_be_unique(conversation_id)"),
        ("instruction_type", "tour", "expect_column_values_to_be_in_set(instruction_type)"),
        ("generator", "handmade", "expect_column_values_to_be_in_set(generator)"),
        ("n_messages", 1, "expect_column_values_to_be_between(n_messages)"),
        ("starts_with_human", False, "expect_column_values_to_be_in_set(starts_with_human)"),
        ("alternates", False, "expect_column_values_to_be_in_set(alternates)"),
        ("ends_with_answer", False, "expect_column_values_to_be_in_set(ends_with_answer)"),
        ("min_text_chars", 0, "expect_column_values_to_be_between(min_text_chars)"),
        ("region_image_exists", False, "expect_column_values_to_be_in_set(region_image_exists)"),
        (
            "llava_first_turn_has_image",
            False,
            "expect_column_values_to_be_in_set(llava_first_turn_has_image)",
        ),
    ],
)
def test_each_known_bad_frame_fails_the_matching_expectation(column, value, failing):
    frame = good_frame()
    frame.loc[2, column] = value
    outcome = validate_frame(frame)
    assert [o.expectation_id for o in outcome.failed] == [f"conversations.{failing}"]
    # a repeated id makes both of its rows repeated rows
    expected = "2 repeated rows of 3" if "unique" in failing else "1 failing row of 3"
    assert outcome.failed[0].observed_text == expected


def test_an_empty_frame_fails_the_row_count():
    outcome = validate_frame(good_frame().iloc[0:0])
    assert "conversations.expect_table_row_count_to_be_between()" in {
        o.expectation_id for o in outcome.failed
    }


def _rows(tmp_path: Path, turns_of_c2: list[dict], region_image: str) -> pl.DataFrame:
    good = [
        {"from": "human", "value": "What is shown?"},
        {"from": "gpt", "value": "A dog."},
    ]
    return pl.DataFrame(
        {
            "conversation_id": ["c1", "c2", "c3"],
            "instruction_type": ["global", "negative", "region"],
            "generator": ["template", "template", "template"],
            "image_path": [str(tmp_path / "a.jpg"), str(tmp_path / "a.jpg"), region_image],
            "turns": [good, turns_of_c2, good],
            "drop_reason": [None, None, None],
        },
        schema_overrides={"drop_reason": pl.String},
    )


def test_rows_are_read_into_the_facts_the_suite_checks(tmp_path: Path):
    region = tmp_path / "region.jpg"
    region.write_bytes(b"x")
    good = [{"from": "human", "value": "Is there a cat?"}, {"from": "gpt", "value": "No."}]
    assert validate_rows(_rows(tmp_path, good, str(region))).success

    # gpt speaks first, and the region row's image is missing
    swapped = [{"from": "gpt", "value": "No."}, {"from": "human", "value": "Is there a cat?"}]
    frame = conversation_frame(_rows(tmp_path, swapped, str(tmp_path / "gone.jpg")))
    assert frame["starts_with_human"].tolist() == [True, False, True]
    assert frame["alternates"].tolist() == [True, False, True]
    assert frame["region_image_exists"].tolist()[2] is False
    failed = {o.column for o in validate_rows(_rows(tmp_path, swapped, "gone.jpg")).failed}
    assert failed == {
        "starts_with_human",
        "alternates",
        "ends_with_answer",
        "region_image_exists",
        "llava_first_turn_has_image",
    }
