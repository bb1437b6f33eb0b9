"""llm_checks: what real small models get wrong, per conversation, and planted-defect recall.

Rules per planted kind (the final stage can use the same):

- denied_present -> ``n_denied_present > 0``
- example_copy -> ``example_copy``
- annotation_leak -> ``annotation_leak``
- repeated_question -> ``n_repeated_questions > 0``
- unjudged_claim -> ``n_unjudged_claims > 0`` (template rows quote captions, so none of
  the good rows has an unjudged attribute or action)
- wrong_relation -> ``n_relations_contradicted > 0`` (core/scored/claims.py)
- article_error / number_error / answer_form_error -> a ``grammar_errors`` entry of code
  article / number / yes_no or sure; the final rule ``grammar_error`` is their union
  (``n_grammar_errors > 0``), measured too
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from vlit_assets.core.schemas import LLM_CHECK_COLUMNS
from vlit_assets.core.scored.llm_checks import example_grams, llm_checks
from vlit_assets.testing.llm_defects import LLM_DEFECT_KINDS
from vlit_assets.testing.planted import (
    LLM_RULE,
    PER_KIND,
    llm_precision_recall,
    plant_and_check,
)

TARGET = 0.9


def _conv(*pairs: tuple[str, str], cid: str = "c1", image: str = "1") -> dict:
    turns = []
    for q, a in pairs:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"conversation_id": cid, "image_id": image, "source": "s", "turns": turns}


OBJECTS = pl.DataFrame({"object_id": ["o1", "o2"], "image_id": ["1", "1"],
                        "category_name": ["dog", "person"], "iscrowd": [False, False]})  # fmt: skip
CAPTIONS = pl.DataFrame({"image_id": ["1"], "caption": ["A man holding dog food beside a dog."]})


def _one(conv: dict, **kwargs) -> dict:
    frame = pl.DataFrame([conv])
    return llm_checks(frame, OBJECTS, None, CAPTIONS, **kwargs).row(0, named=True)


def test_the_field_report_examples_are_caught() -> None:
    row = _one(
        _conv(
            ("Why might the oven door be open?", "To let the heat out."),
            ("Is there a dog?", "No, there is no person or dog in the picture."),
            ("What is on the table?", "There is no mention of a table in the scene."),
            ("why might the oven door be open", "Because someone is baking."),
            ("What are they doing?", "The dogs are juggling bright purple cans."),
        )
    )
    assert row["example_copy"] and row["example_overlap"] == 1.0
    assert row["denied_present_objects"] == ["dog", "person"] and row["n_denied_present"] == 2
    assert row["annotation_leak"] and row["annotation_leak_terms"] == ["mention"]
    assert row["n_repeated_questions"] == 1
    assert row["unjudged_claims"] == ["baking", "bright", "juggling", "purple"]


def test_a_clean_conversation_passes_and_denials_of_absent_objects_are_fine() -> None:
    row = _one(
        _conv(
            ("What is the object in the red box?", "It is a dog, next to a man holding food."),
            ("Is there a cat?", "No, there is no cat; only the dog and the man."),
        )
    )
    assert row["n_denied_present"] == 0 and not row["example_copy"]
    assert not row["annotation_leak"] and row["n_repeated_questions"] == 0
    assert row["n_unjudged_claims"] == 0  # "holding" is a caption's word


def test_without_annotations_denials_are_unknown_and_claims_unjudged() -> None:
    frame = pl.DataFrame([_conv(("Is it red?", "No, there is no dog; it is red."))])
    row = llm_checks(frame).row(0, named=True)
    assert row["n_denied_present"] is None and row["denied_present_objects"] is None
    assert row["unjudged_claims"] == ["red"]


def test_prescribed_wording_is_not_counted_as_copying() -> None:
    grams = example_grams()
    assert "in the red box" not in grams  # the system prompt asks for it
    assert "why might the oven" in grams


def test_one_row_per_input_row_in_order_with_the_declared_columns() -> None:
    convs = pl.DataFrame([_conv(("Q?", "A."), cid=f"c{i}") for i in (3, 1, 2)])
    out = llm_checks(convs, OBJECTS, None, CAPTIONS)
    assert out["conversation_id"].to_list() == ["c3", "c1", "c2"]
    assert out.columns == ["conversation_id", *LLM_CHECK_COLUMNS]


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match=r"lack columns \['turns'\]"):
        llm_checks(pl.DataFrame({"conversation_id": ["a"], "image_id": ["1"]}))


@pytest.fixture(scope="module")
def planted(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    return plant_and_check(coco_mini, tmp_path_factory.mktemp("planted"))


GRAMMAR_KINDS = ("article_error", "number_error", "answer_form_error")


@pytest.mark.slow
def test_good_template_rows_trip_none_of_the_rules(planted: pl.DataFrame) -> None:
    good = planted.filter(pl.col("defect") == "good")
    assert good.height > 100
    rules = [*LLM_RULE.values(), "grammar_error"]
    assert {rule: int(good[rule].sum()) for rule in rules} == dict.fromkeys(rules, 0)
    # the relation metric did judge template claims (and found every one supported)
    assert good["n_relation_claims"].sum() > 20


@pytest.mark.slow
@pytest.mark.parametrize("kind", LLM_DEFECT_KINDS)
def test_each_planted_kind_is_found_with_precision_and_recall(
    planted: pl.DataFrame, kind: str
) -> None:
    precision, recall, flagged = llm_precision_recall(planted, kind, LLM_RULE[kind])
    assert planted.filter(pl.col("defect") == kind).height == PER_KIND
    assert recall >= TARGET, f"{kind}: recall {recall:.3f}"
    assert precision >= TARGET, f"{kind}: precision {precision:.3f} of {flagged}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", GRAMMAR_KINDS)
def test_the_grammar_rule_finds_each_grammar_kind(planted: pl.DataFrame, kind: str) -> None:
    precision, recall, flagged = llm_precision_recall(planted, kind, "grammar_error")
    assert recall >= TARGET and precision >= TARGET, (kind, precision, recall, flagged)
