"""Rule-based metrics on hand-built conversations with known answers, plus planted defects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from vlit_assets.core.scored.figures import distinct_n, histogram_balance, rule_figures
from vlit_assets.core.scored.metrics import (
    FORMAT_ERRORS,
    SCORE_COLUMNS,
    score_rules,
)
from vlit_assets.core.text.reading import caption_mentions
from vlit_assets.testing.defects import DEFECT_KINDS, plant_defects

TURNS = pl.List(pl.Struct({"from": pl.String, "value": pl.String}))
CONV_SCHEMA = {
    "conversation_id": pl.String,
    "source": pl.String,
    "image_id": pl.String,
    "instruction_type": pl.String,
    "turns": TURNS,
    "region_object_id": pl.String,
}

# img_a: 3 dogs, 1 couch, 2 persons; img_b: annotated, no objects; img_c: a crowd of persons
# plus 1 person box; img_x: no annotations at all.
OBJECTS = pl.DataFrame(
    [
        ("o_d1", "img_a", "dog", False),
        ("o_d2", "img_a", "dog", False),
        ("o_d3", "img_a", "dog", False),
        ("o_c1", "img_a", "couch", False),
        ("o_p1", "img_a", "person", False),
        ("o_p2", "img_a", "person", False),
        ("o_p3", "img_c", "person", True),
        ("o_p4", "img_c", "person", False),
    ],
    schema=["object_id", "image_id", "category_name", "iscrowd"],
    orient="row",
)
PRESENT = pl.Struct({"category_id": pl.Int32, "name": pl.String, "count": pl.Int32})
TAGS = pl.DataFrame(
    {
        "image_id": ["img_a", "img_b", "img_c"],
        "present": [
            [
                {"category_id": 18, "name": "dog", "count": 3},
                {"category_id": 63, "name": "couch", "count": 1},
                {"category_id": 1, "name": "person", "count": 2},
            ],
            [],
            [{"category_id": 1, "name": "person", "count": 1}],
        ],
    },
    schema={"image_id": pl.String, "present": pl.List(PRESENT)},
)


def conv(
    *turns: str,
    cid: str = "c1",
    image: str = "img_a",
    itype: str = "global",
    region: str | None = None,
    roles: tuple[str, ...] | None = None,
) -> dict:
    roles = roles or tuple("human" if i % 2 == 0 else "gpt" for i in range(len(turns)))
    return {
        "conversation_id": cid,
        "source": "s",
        "image_id": image,
        "instruction_type": itype,
        "turns": [{"from": r, "value": v} for r, v in zip(roles, turns, strict=True)],
        "region_object_id": region,
    }


def frame(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=CONV_SCHEMA)


def score_one(row: dict, objects: pl.DataFrame | None = OBJECTS, tags=TAGS) -> dict:
    return score_rules(frame(row), objects, tags).row(0, named=True)


# --- correctness: CHAIR ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "chair_i", "chair_s", "hallucinated"),
    [
        ("A dog lies on the couch.", 0.0, False, []),
        ("A cat lies on the couch.", 0.5, True, ["cat"]),
        ("There is no cat in the image.", None, False, []),
        ("No, there is no cat. Two puppies sleep on the sofa.", 0.0, False, []),
        ("A man and a woman pet the dogs.", 0.0, False, []),
        ("A hot dog is on the table.", 1.0, True, ["dining table", "hot dog"]),
        ("A teddy bear, a cat and a dog.", 2 / 3, True, ["cat", "teddy bear"]),
        ("The dog watches; a cat hides. The cat sleeps.", 2 / 3, True, ["cat"]),
        ("The scene is calm.", None, False, []),
    ],
)
def test_chair(answer: str, chair_i: float | None, chair_s: bool, hallucinated: list[str]) -> None:
    s = score_one(conv("What do you see?", answer))
    assert s["chair_s"] is chair_s
    assert s["hallucinated_objects"] == hallucinated
    if chair_i is None:
        assert s["chair_i"] is None
    else:
        assert s["chair_i"] == pytest.approx(chair_i)


def test_chair_ignores_questions() -> None:
    s = score_one(conv("Is there a cat or an elephant?", "No, only dogs."))
    assert s["chair_s"] is False and s["n_object_mentions"] == 1


def test_image_with_no_objects_is_annotated_and_empty() -> None:
    s = score_one(conv("What is there?", "A dog.", image="img_b"))
    assert s["chair_i"] == 1.0 and s["hallucinated_objects"] == ["dog"]


# --- correctness: CHAIR with captions as ground truth ----------------------------------------

# img_a's captions name a cat (no cat box) and deny a television; img_x has a caption but no
# annotations at all.
CAPTIONS = pl.DataFrame(
    {
        "image_id": ["img_a", "img_a", "img_x"],
        "caption": ["Three dogs and a kitten on a sofa.", "A room with no television.", "A horse."],
    }
)


def test_caption_mentions_are_affirmed_categories_once() -> None:
    got = caption_mentions(CAPTIONS).sort("image_id", "category").rows()
    assert got == [("img_a", "cat"), ("img_a", "couch"), ("img_a", "dog"), ("img_x", "horse")]


@pytest.mark.parametrize(
    ("answer", "chair_i", "chair_s", "hallucinated"),
    [
        ("A cat lies on the couch.", 0.0, False, []),  # the caption's kitten
        ("A cat and a horse.", 0.5, True, ["horse"]),  # another image's caption does not count
        ("A tv is on.", 1.0, True, ["tv"]),  # the caption denies it
        ("Three dogs rest.", 0.0, False, []),
    ],
)
def test_chair_counts_caption_mentions_as_present(
    answer: str, chair_i: float, chair_s: bool, hallucinated: list[str]
) -> None:
    row = score_rules(frame(conv("What do you see?", answer)), OBJECTS, TAGS, captions=CAPTIONS)
    s = row.row(0, named=True)
    assert (s["chair_i"], s["chair_s"], s["hallucinated_objects"]) == (
        pytest.approx(chair_i),
        chair_s,
        hallucinated,
    )
    without = score_one(conv("What do you see?", answer))
    assert without["n_object_mentions"] == s["n_object_mentions"]
    assert without["n_hallucinated"] >= s["n_hallucinated"]


def test_captions_do_not_make_an_image_annotated_nor_change_counts_or_denials() -> None:
    rows = frame(
        conv("What is there?", "A horse.", cid="x", image="img_x"),
        conv("How many cats?", "Two cats.", cid="count"),
        conv("Is there a cat?", "No, there is no cat.", cid="deny", itype="negative"),
    )
    s = {
        r["conversation_id"]: r for r in score_rules(rows, OBJECTS, TAGS, None, CAPTIONS).to_dicts()
    }
    assert s["x"]["chair_s"] is None and s["x"]["chair_i"] is None  # still not annotated
    assert s["count"]["count_consistency"] == 0.0  # counts come from boxes only
    assert s["count"]["chair_s"] is False
    assert s["deny"]["negative_consistency"] == 1.0  # denials are judged against boxes
    alone = score_rules(rows, None, None, None, CAPTIONS)
    assert alone["chair_s"].null_count() == 3  # captions alone judge nothing


def test_bad_captions_frame_names_the_table() -> None:
    with pytest.raises(ValueError, match=r"raw__captions: missing columns \['caption'\]"):
        score_rules(frame(conv("Q?", "A.")), OBJECTS, TAGS, captions=CAPTIONS.drop("caption"))


# --- correctness: negative answers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "answer", "expected"),
    [
        ("Is there a cat in the image?", "No, there is no cat.", 1.0),
        ("Is there a cat in the image?", "Yes, there is a cat.", 0.0),
        ("Are there any cats?", "There's no indication of a cat here.", 1.0),
        ("Are there any cats?", "I don't see any cats in the picture.", 1.0),
        ("Are there any kittens?", "Sure, a kitten sleeps there.", 0.0),
        ("Is the dog sitting next to a cat?", "No, the dog is alone.", 1.0),
        ("Is there a dog?", "Yes, there are three dogs.", None),  # dog is present
        # Denying what the boxes hold is wrong whatever the question ("no park bench" case).
        ("Is there a dog?", "No, there is no dog.", 0.0),
        ("What is on the couch?", "Nothing; there is no couch here.", 0.0),
        ("Is there a cat in the image?", "No, there is no cat and no dog.", 0.5),
        ("What is the cat doing?", "There is no cat.", None),  # not a polar question
        ("Can you describe the cat?", "There is no cat.", None),  # a request, not polar
    ],
)
def test_negative_consistency(question: str, answer: str, expected: float | None) -> None:
    s = score_one(conv(question, answer, itype="negative"))
    assert s["negative_consistency"] == expected


@pytest.mark.parametrize(
    ("question", "polar"),
    [
        ("And is there a cat?", True),
        ("So, are there any cats?", True),
        ("And can you describe the cat?", False),  # a request
        ("Andrew is there?", False),
        ("Where is the cat?", False),
    ],
)
def test_polar_questions_may_open_with_a_linking_word(question: str, polar: bool) -> None:
    assert score_one(conv(question, "No, there is no cat."))["n_polar"] == int(polar)


def test_negative_consistency_pools_questions() -> None:
    row = conv(
        "Is there a cat?",
        "No.",
        "Is there a horse?",
        "Yes, a horse stands by the door.",
        "Is there a dog?",
        "Yes.",
    )
    s = score_one(row)
    assert (s["n_negative_questions"], s["n_negative_denied"]) == (2, 1)
    assert s["negative_consistency"] == 0.5
    assert (s["n_polar"], s["n_polar_yes"], s["n_polar_no"]) == (3, 2, 1)


# --- correctness: counts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "image", "expected"),
    [
        ("There are two dogs.", "img_a", 0.0),
        ("There are three dogs.", "img_a", 1.0),
        ("There are 3 dogs and one couch.", "img_a", 1.0),
        ("Three large brown dogs and 2 people.", "img_a", 1.0),
        ("Two sofas and three hounds.", "img_a", 0.0),
        ("Two cats.", "img_a", 0.0),  # annotated count of cat is 0
        ("Two boys play.", "img_a", None),  # a kind: says nothing about all persons
        ("One of the dogs barks.", "img_a", None),
        ("There are no two dogs alike.", "img_a", None),  # negated
        ("Two people wave.", "img_c", None),  # a crowd box makes the count unknowable
        ("The dogs bark.", "img_a", None),
    ],
)
def test_count_consistency(answer: str, image: str, expected: float | None) -> None:
    assert score_one(conv("How many?", answer, image=image))["count_consistency"] == expected


# --- correctness: region --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "region", "itype", "expected"),
    [
        ("It is a puppy lying down.", "o_d1", "region", True),
        ("The boxed object is a dog.", "o_d1", "region", True),
        ("It is a cat.", "o_d1", "region", False),
        ("It is not a dog.", "o_d1", "region", False),
        ("A sofa.", "o_c1", "region", True),
        ("It is a dog.", "o_unknown", "region", None),
        ("It is a dog.", None, "region", None),
        ("It is a dog.", "o_d1", "global", None),
    ],
)
def test_region_name_match(
    answer: str, region: str | None, itype: str, expected: bool | None
) -> None:
    row = conv("What is in the red box?", answer, "And then?", "A cat.", itype=itype, region=region)
    assert score_one(row)["region_name_match"] is expected


# --- format ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("turns", "roles", "error"),
    [
        (("<image>\nQ?", "A."), None, None),
        (("Q?\n<image>", "A."), None, None),
        (("Q?", "A.", "Q2?", "A2."), None, None),
        ((), (), "no_turns"),
        (("Q?",), None, "too_few_turns"),
        (("Q?", "A."), ("human", "assistant"), "unknown_role"),
        (("Q?", "  "), None, "empty_turn"),
        (("A.", "Q?"), ("gpt", "human"), "first_not_human"),
        (("Q?", "Q2?", "A."), ("human", "human", "gpt"), "not_alternating"),
        (("Q?", "A.", "Q2?"), None, "ends_with_human"),
        (("<image> Q? <image>", "A."), None, "image_token_repeated"),
        (("Q <image> here?", "A."), None, "image_token_misplaced"),
        (("Q?", "A <image>."), None, "image_token_misplaced"),
    ],
)
def test_format(turns: tuple[str, ...], roles: tuple[str, ...] | None, error: str | None) -> None:
    s = score_one(conv(*turns, roles=roles))
    assert s["format_error"] == error
    assert s["format_valid"] is (error is None)
    assert error is None or error in FORMAT_ERRORS


def test_null_turns_are_a_format_error_not_a_crash() -> None:
    row = conv("Q?", "A.")
    row["turns"] = None
    s = score_one(row)
    assert s["format_error"] == "no_turns" and s["n_turns"] == 0


# --- complexity and polarity ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "reasoning"),
    [
        ("Why is the dog on the couch?", True),
        ("How does the man feel?", True),
        ("How many dogs are there?", False),
        ("What if it rains?", True),
        ("What would the dog do next?", True),
        ("Could the man be the owner?", True),
        ("Could you describe the image?", False),
        ("Can you explain what the dog is doing?", True),
        ("What color is the couch?", False),
        ("Is there a cat?", False),
        ("What should the owner do?", True),
    ],
)
def test_reasoning_share(question: str, reasoning: bool) -> None:
    s = score_one(conv(question, "An answer."))
    assert s["reasoning_share"] == (1.0 if reasoning else 0.0)


def test_complexity_counts() -> None:
    row = conv(
        "<image>\nDescribe the image.",
        "Three dogs and two people sit on a couch.",
        "Why are they there?",
        "They rest.",
        "Is there a cat?",
        "No.",
    )
    s = score_one(row)
    assert s["n_turns"] == 3
    assert s["mentioned_categories"] == ["cat", "couch", "dog", "person"]
    assert s["tags_per_conversation"] == 4
    assert s["reasoning_share"] == pytest.approx(1 / 3)
    assert s["answer_words_mean"] == pytest.approx((9 + 2 + 1) / 3)
    assert s["answer_words_min"] == 1


# --- duplicates -----------------------------------------------------------------------------


def test_norm_text_hash_ignores_case_spacing_punctuation_and_image_token() -> None:
    a = conv("<image>\nWhat is there?", "Two dogs, one couch.", cid="a")
    b = conv("what   is there", "TWO dogs one couch!!", cid="b")
    c = conv("What is there?", "Two dogs, one chair.", cid="c")
    s = score_rules(frame(a, b, c), OBJECTS, TAGS)
    h = s["norm_text_hash"].to_list()
    assert h[0] == h[1] != h[2]


# --- null semantics and contract -------------------------------------------------------------

ANNOTATION_METRICS = (
    "chair_i",
    "chair_s",
    "hallucinated_objects",
    "n_object_mentions",
    "negative_consistency",
    "count_consistency",
    "region_name_match",
)


@pytest.mark.parametrize(("objects", "tags"), [(None, None), (OBJECTS, TAGS)])
def test_annotation_metrics_are_null_without_annotations(objects, tags) -> None:
    row = conv(
        "Is there a cat?",
        "Yes, there are two cats.",
        image="img_x",
        itype="region",
        region="o_d1" if objects is None else None,
    )
    s = score_one(row, objects, tags)
    for column in ANNOTATION_METRICS:
        assert s[column] is None, column
    assert s["format_valid"] is True and s["n_turns"] == 1 and s["n_polar_yes"] == 1
    assert s["mentioned_categories"] == ["cat"]


def test_tags_alone_give_presence_and_counts() -> None:
    s = score_one(conv("What?", "Three dogs and a cat."), objects=None)
    assert s["hallucinated_objects"] == ["cat"] and s["count_consistency"] == 1.0


def test_categories_limit_what_is_judged() -> None:
    categories = pl.DataFrame({"source": ["s", "s"], "name": ["dog", "couch"]})
    s = score_rules(frame(conv("What?", "A dog and a cat.")), OBJECTS, TAGS, categories)
    assert s["chair_i"].to_list() == [0.0] and s["n_object_mentions"].to_list() == [1]


def test_rows_are_kept_in_order_with_all_columns() -> None:
    rows = [conv("Q?", f"A dog number {i}.", cid=f"id_{i}") for i in range(5, 0, -1)]
    rows.append(conv(cid="empty"))
    s = score_rules(frame(*rows), OBJECTS, TAGS)
    assert s.columns == list(SCORE_COLUMNS)
    assert s["conversation_id"].to_list() == [r["conversation_id"] for r in rows]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop("turns"), "missing columns ['turns']"),
        (lambda f: pl.concat([f, f]), "is not unique"),
        (lambda f: f.with_columns(conversation_id=pl.lit(None, pl.String)), "is null"),
    ],
)
def test_bad_conversation_frames_are_refused(mutate, message: str) -> None:
    with pytest.raises(ValueError, match="generated__conversations") as info:
        score_rules(mutate(frame(conv("Q?", "A."))), OBJECTS, TAGS)
    assert message in str(info.value)


def test_bad_objects_frame_names_the_table() -> None:
    with pytest.raises(ValueError, match=r"raw__objects: missing columns \['iscrowd'\]"):
        score_rules(frame(conv("Q?", "A.")), OBJECTS.drop("iscrowd"), TAGS)


# --- dataset level ---------------------------------------------------------------------------


def test_histogram_balance() -> None:
    assert histogram_balance([5, 5, 5], 3) == (pytest.approx(1.0), pytest.approx(0.0))
    norm, kl = histogram_balance([9, 1], 4)
    h = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert norm == pytest.approx(h / 2) and kl == pytest.approx(2 - h)
    assert histogram_balance([], 3) == (None, None)


def test_distinct_n() -> None:
    texts = pl.Series(["a b a b", "A b c"])
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)  # ab, ba, ab | ab, bc
    assert distinct_n(pl.Series([""], dtype=pl.String), 2) is None


def test_rule_figures() -> None:
    rows = [
        conv("Is there a cat?", "No, there is no cat.", cid="n1", itype="negative"),
        conv("Is there a dog?", "Yes, a dog.", cid="n2", itype="negative"),
        conv("Describe it.", "Three dogs on a couch.", cid="g1"),
        conv("Describe it.", "Three dogs on a couch.", cid="g2"),
        conv("What is boxed?", "A dog.", cid="r1", itype="region", region="o_d1"),
        conv("What is boxed?", "A cat.", cid="r2", itype="region", region="o_d2"),
    ]
    convs = frame(*rows)
    d = rule_figures(convs, score_rules(convs, OBJECTS, TAGS))
    assert d["n_conversations"] == 6
    assert d["unique_tags"] == 3  # cat, dog, couch
    # conversations mentioning each category: cat 2 (n1, r2), dog 4, couch 2 (g1, g2)
    h = -sum(p * math.log2(p) for p in (2 / 8, 4 / 8, 2 / 8))
    assert d["tag_entropy_bits"] == pytest.approx(h)
    assert d["category_entropy_norm"] == pytest.approx(h / math.log2(80))
    assert d["category_kl_uniform_bits"] == pytest.approx(math.log2(80) - h)
    assert d["instruction_type_entropy_norm"] == pytest.approx(1.0)
    assert d["instruction_type_kl_uniform_bits"] == pytest.approx(0.0)
    assert d["yes_ratio"] == 0.5
    assert d["exact_duplicate_share"] == pytest.approx(1 / 6)
    assert d["negative_consistency"] == 1.0
    assert d["region_name_match_rate"] == 0.5
    assert d["chair_s_rate"] == pytest.approx(1 / 6)  # r2's cat
    assert d["count_consistency"] == 1.0
    assert d["format_valid_rate"] == 1.0
    assert 0 < d["distinct_1"] <= 1 and 0 < d["distinct_2"] <= 1


def test_rule_figures_undefined_figures_are_none() -> None:
    convs = frame(conv("Describe it.", "Calm.", image="img_x"))
    d = rule_figures(convs, score_rules(convs))
    assert d["yes_ratio"] is None and d["chair_i"] is None and d["unique_tags"] == 0
    assert d["tag_entropy_bits"] is None and d["category_entropy_norm"] is None


# --- planted defects -------------------------------------------------------------------------


def _good() -> pl.DataFrame:
    rows = []
    for i in range(12):
        rows.append(
            conv(
                "<image>\nDescribe the image.",
                "Three dogs rest on a couch while two people watch them quietly.",
                "Is there a horse in the picture?",
                "No, there is no horse in the picture.",
                cid=f"good_{i}",
                image="img_a",
                itype="negative",
            )
        )
    return frame(*rows)


def test_planted_defects_are_found_by_their_metric() -> None:
    good = _good()
    bad, truth = plant_defects(good, OBJECTS, TAGS, seed=3, per_kind=2)
    assert truth["defect"].value_counts().sort("defect")["count"].to_list() == [2] * len(
        DEFECT_KINDS
    )
    assert set(truth["defect"]) == set(DEFECT_KINDS)
    assert bad["conversation_id"].to_list() == truth["conversation_id"].to_list()
    scored = score_rules(pl.concat([good, bad]), OBJECTS, TAGS)
    baseline = scored.filter(pl.col("conversation_id").is_in(good["conversation_id"].implode()))
    assert not baseline["chair_s"].any()
    assert baseline["negative_consistency"].min() == 1.0
    assert baseline["answer_words_min"].min() > 1
    s = scored.join(truth, on="conversation_id")
    by_kind = {k: s.filter(pl.col("defect") == k) for k in DEFECT_KINDS}
    assert by_kind["absent_object"]["chair_s"].all()
    assert by_kind["moved_image"]["chair_s"].all()
    assert (by_kind["negative_flipped"]["negative_consistency"] < 1).all()
    assert (by_kind["present_denied"]["negative_consistency"] < 1).all()
    assert not by_kind["present_denied"]["chair_s"].any()  # CHAIR reads only what is claimed
    assert (by_kind["wrong_count"]["count_consistency"] < 1).all()
    assert (by_kind["one_word_answer"]["answer_words_min"] == 1).all()
    near = by_kind["near_copy"].join(
        scored.select("conversation_id", src_hash="norm_text_hash"),
        left_on="source_conversation_id",
        right_on="conversation_id",
    )
    assert (near["norm_text_hash"] != near["src_hash"]).all()
    assert not near["chair_s"].any()


def test_planted_near_copy_changes_exactly_one_word() -> None:
    good = _good()
    bad, truth = plant_defects(good, OBJECTS, TAGS, seed=5, per_kind=3, kinds=("near_copy",))
    sources = {r["conversation_id"]: r for r in good.to_dicts()}
    for row, src_id in zip(bad.to_dicts(), truth["source_conversation_id"], strict=True):
        old = " ".join(t["value"] for t in sources[src_id]["turns"]).split(" ")
        new = " ".join(t["value"] for t in row["turns"]).split(" ")
        assert len(old) == len(new)
        assert sum(a != b for a, b in zip(old, new, strict=True)) == 1


def test_plant_defects_is_deterministic() -> None:
    good = _good()
    a = plant_defects(good, OBJECTS, TAGS, seed=7)
    b = plant_defects(good, OBJECTS, TAGS, seed=7)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    with pytest.raises(ValueError, match="unknown defect kinds"):
        plant_defects(good, OBJECTS, TAGS, seed=7, kinds=("typo",))


# --- the paper's released examples (QC-only: no annotations) --------------------------------


def test_paper_examples_score_without_annotations(paper_examples: Path) -> None:
    data = json.loads((paper_examples / "examples.json").read_text())
    roles = {"User": "human", "AI": "gpt"}
    rows = [
        {
            "conversation_id": f"paper_{a['img_ids']}",
            "source": "paper",
            "image_id": a["img_ids"],
            "instruction_type": a["instruction_type"],
            "turns": [{"from": roles[t["from"]], "value": t["value"]} for t in a["conversations"]],
            "region_object_id": None,
        }
        for a in data["annotations"]
    ]
    s = score_rules(frame(*rows)).to_dicts()
    by_type = {r["instruction_type"]: s[i] for i, r in enumerate(rows)}
    assert all(r["format_valid"] for r in s)
    assert all(r["chair_i"] is None and r["negative_consistency"] is None for r in s)
    assert by_type["global"]["n_turns"] == 4 and "bear" in by_type["global"]["mentioned_categories"]
    assert by_type["negative"]["n_polar_no"] >= 3 and by_type["negative"]["n_polar_yes"] == 0
    assert "elephant" in by_type["negative"]["mentioned_categories"]
    assert by_type["region"]["mentioned_categories"][:1] == ["car"]
    assert by_type["global"]["reasoning_share"] > 0
