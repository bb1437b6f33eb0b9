"""Relation claims against the boxes and grammar by rule (core/scored/claims.py), on every row."""

from __future__ import annotations

import polars as pl
import pytest

from vlit_assets.core.scored.claims import grammar_checks, parse_relations, relation_claims
from vlit_assets.core.scored.figures import rule_figures
from vlit_assets.core.scored.metrics import score_rules


def _conv(*pairs: tuple[str, str], cid: str = "c1", image: str = "1") -> dict:
    turns = []
    for q, a in pairs:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"conversation_id": cid, "image_id": image, "instruction_type": "global",
            "turns": turns}  # fmt: skip


# Image 1: a dog at the left, a cat at the right (same height), a car on top spanning both,
# and a person overlapping the dog. Image 2 has two dogs on either side of a cat, both
# higher in the picture than it.
OBJECTS = pl.DataFrame(
    [
        ("o1", "1", "dog", 0, 200, 100, 100),
        ("o2", "1", "cat", 300, 200, 100, 100),
        ("o3", "1", "car", 0, 0, 400, 100),
        ("o4", "1", "person", 50, 150, 100, 200),
        ("o5", "2", "dog", 0, 0, 50, 50),
        ("o6", "2", "dog", 400, 0, 50, 50),
        ("o7", "2", "cat", 200, 200, 50, 50),
    ],
    schema=["object_id", "image_id", "category_name", "bbox_x", "bbox_y", "bbox_w", "bbox_h"],
    orient="row",
).with_columns(iscrowd=pl.lit(False), bbox_x=pl.col("bbox_x").cast(pl.Float64))


def _relations(answer: str, image: str = "1") -> dict:
    frame = pl.DataFrame([_conv(("Where is it?", answer), image=image)])
    return relation_claims(frame, OBJECTS).row(0, named=True)


@pytest.mark.parametrize(
    ("answer", "judged", "contradicted"),
    [
        ("The dog is to the left of the cat.", 1, 0),
        ("The dog is to the right of the cat.", 1, 1),  # free wording, reversed
        ("From this viewpoint, the cat is further left in the picture than the dog.", 1, 1),
        ("Looking at the frame, the car is higher in the picture than the cat.", 1, 0),
        ("The cat sits below the car.", 1, 0),
        ("The car is beneath the dog.", 1, 1),
        ("The cat is on the left side of the dog, and the car is above the cat.", 2, 1),
        ("The person is above the dog.", 0, 0),  # boxes overlap on the axis: not judged
        ("The dog is not to the right of the cat.", 0, 0),  # negated: no claim
        ("The dog is to the left of the giraffe.", 0, 0),  # no giraffe box: CHAIR's job
        ("The dog, seen from afar, is to the left of the cat.", 0, 0),  # another clause
    ],
)
def test_relation_claims_are_judged_against_the_boxes(
    answer: str, judged: int, contradicted: int
) -> None:
    row = _relations(answer)
    assert (row["n_relation_claims"], row["n_relations_contradicted"]) == (judged, contradicted)
    if judged:
        assert row["relation_consistency"] == 1 - contradicted / judged
    else:
        assert row["relation_consistency"] is None


def test_a_contradiction_is_named_and_several_boxes_must_all_agree() -> None:
    row = _relations("The dog is to the right of the cat.")
    assert row["relations_contradicted"] == ["dog right of cat"]
    # Image 2: one dog is left of the cat, one right: which dog is meant is not guessed.
    assert _relations("The dog is to the left of the cat.", image="2")["n_relation_claims"] == 0
    # ... but every dog is higher than the cat, so a claim on that axis is judged.
    row = _relations("The dogs are below the cat.", image="2")
    assert (row["n_relation_claims"], row["n_relations_contradicted"]) == (1, 1)


def test_without_boxes_relations_are_not_judged() -> None:
    frame = pl.DataFrame([_conv(("Where?", "The dog is left of the cat."), image="9")])
    row = relation_claims(frame, OBJECTS).row(0, named=True)
    assert row["n_relation_claims"] is None and row["relation_consistency"] is None
    no_boxes = OBJECTS.select("object_id", "image_id", "category_name", "iscrowd")
    for objects in (None, no_boxes):
        out = relation_claims(pl.DataFrame([_conv(("Where?", "A dog."))]), objects)
        assert out.row(0, named=True)["n_relations_contradicted"] is None


def test_crowd_boxes_are_not_judged() -> None:
    crowd = OBJECTS.with_columns(iscrowd=pl.col("category_name") == "cat")
    frame = pl.DataFrame([_conv(("Where?", "The dog is to the right of the cat."))])
    assert relation_claims(frame, crowd).row(0, named=True)["n_relation_claims"] == 0


def test_parse_reads_template_and_free_wording() -> None:
    assert parse_relations("the dogs are further right in the picture than the pair of skis.") == [
        ("dog", "right", "skis")
    ]
    assert parse_relations("a man stands on top of the bench") == [("person", "above", "bench")]
    assert parse_relations("the dog is to the left of the other dog.") == []  # same category


def _grammar(*pairs: tuple[str, str]) -> list[str]:
    return grammar_checks(pl.DataFrame([_conv(*pairs)])).row(0, named=True)["grammar_errors"]


@pytest.mark.parametrize(
    ("question", "answer", "errors"),
    [
        ("What is in the kitchen?", "There is a oven and an sink.",
         ["article: a oven", "article: an sink"]),
        ("Count the dogs.", "I count two dog.", ["number: two dog"]),
        ("Count the dogs.", "I count 1 dogs and one people.",
         ["number: 1 dogs", "number: one people"]),
        ("Count the dogs.", "There is two dogs.", ["number: there is two"]),
        ("Count the cats.", "There are one cat here.", ["number: there are one cat"]),
        ("How many bottles are in the image?", "No, there are no bottles.",
         ["yes_no: how many bottles are in the image?"]),
        ("Where is the chair?", "Yes, it is by the wall.", ["yes_no: where is the chair?"]),
        ("What does this photo show?", "Sure. A cat on a bed.",
         ["sure: what does this photo show?"]),
        ("What can you see?", "Sure. A cat.", ["sure: what can you see?"]),
        ("Is there a dog?", "Sure, there is a dog.", ["sure: is there a dog?"]),
    ],
)  # fmt: skip
def test_grammar_errors_are_found(question: str, answer: str, errors: list[str]) -> None:
    assert _grammar((question, answer)) == sorted(errors)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is here?", "An SUV, an umbrella, a unicorn, an hour-long line and a one-way sign."),
        ("What is here?", "A man holds two dog leashes; plan A is fine."),
        (
            "How many sheep?",
            "I count two sheep and one pair of skis, and three pieces of broccoli.",
        ),
        ("How many bottles are in the image?", "No bottles are visible, so the count is zero."),
        ("Can you count four dogs in this picture?", "Yes, there are four dogs."),
        ("I think I see two cats. Is that right?", "No, there is one cat."),
        ("There is a dog here, right?", "Yes, a dog lies on the couch."),
        ("Tell me whether a cat is here.", "No, there is none."),
        ("Can you describe the scene?", "Sure. A dog runs on a beach."),
        ("Describe the image.", "Sure. Two people ride bikes."),
        ("Please list the objects.", "Sure: a cup, two bowls and a spoon."),
    ],
)
def test_correct_english_is_not_flagged(question: str, answer: str) -> None:
    assert _grammar((question, answer)) == []


def test_score_rules_carries_the_claims_and_reads_llm_counts() -> None:
    frame = pl.DataFrame(
        [
            _conv(("What do you see?", "There are three dogs. The cat is left of the dog.")),
            _conv(("What do you see?", "I can see a oven."), cid="c2", image="2"),
        ]
    )
    out = score_rules(frame, OBJECTS)
    first, second = out.rows(named=True)
    # LLM wording of a count is read like the templates': "three dogs" against one dog box
    assert (first["n_counts"], first["count_consistency"]) == (1, 0.0)
    assert first["relations_contradicted"] == ["cat left of dog"]
    assert second["grammar_errors"] == ["article: a oven"] and first["n_grammar_errors"] == 0
    figures = rule_figures(frame, out)  # shown with the other correctness figures
    assert figures["relation_consistency"] == 0.0 and figures["grammar_error_rate"] == 0.5
