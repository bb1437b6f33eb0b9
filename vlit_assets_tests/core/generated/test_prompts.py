"""Prompt builder and reply parser: message layout, input validation, malformed replies."""

from __future__ import annotations

import json

import pytest

from vlit_assets.core.generated import prompts
from vlit_assets.core.generated.prompts import (
    EXAMPLES,
    PROMPT_VERSION,
    SYSTEM_PROMPTS,
    build_messages,
)
from vlit_assets.core.generated.replies import FAILURES, parse_reply

GOOD = {
    "conversation": [
        {"q": "What is on the table?", "a": "A bowl of fruit."},
        {"q": "Is there a cat on the table?", "a": "No, there is no cat; only the bowl."},
    ]
}
GOOD_JSON = json.dumps(GOOD)
GOOD_TURNS = [
    {"from": "human", "value": "What is on the table?"},
    {"from": "gpt", "value": "A bowl of fruit."},
    {"from": "human", "value": "Is there a cat on the table?"},
    {"from": "gpt", "value": "No, there is no cat; only the bowl."},
]

ANNOTATIONS = {
    "captions": ["A bowl of fruit on a wooden table.", "Fruit in a bowl."],
    "objects": [
        {"category": "bowl", "bbox": (0.2, 0.31234, 0.6, 0.7)},
        {"category": "apple", "bbox": [0.3, 0.35, 0.4, 0.45]},
    ],
    "present": ["bowl", "apple"],
    "absent": ["cat", "knife"],
}


def test_prompt_version_and_one_system_prompt_and_example_per_type() -> None:
    assert PROMPT_VERSION
    assert set(SYSTEM_PROMPTS) == set(EXAMPLES) == {"global", "negative", "region"}
    assert len(set(SYSTEM_PROMPTS.values())) == 3
    for examples in EXAMPLES.values():
        assert 1 <= len(examples) <= 2


@pytest.mark.parametrize("itype", ["global", "negative"])
def test_build_messages_layout(itype: str) -> None:
    messages = build_messages(itype, region=None, **ANNOTATIONS)
    roles = [m["role"] for m in messages]
    n_examples = len(EXAMPLES[itype])
    assert roles == ["system"] + ["user", "assistant"] * n_examples + ["user"]
    assert messages[0]["content"] == SYSTEM_PROMPTS[itype]
    last = messages[-1]["content"]
    assert "- A bowl of fruit on a wooden table." in last
    assert "- bowl: [0.200, 0.312, 0.600, 0.700]" in last  # 3 decimals
    assert "Present categories: bowl, apple" in last
    assert "Absent categories: cat, knife" in last
    assert "Region" not in last
    # The in-context answers are themselves replies the parser accepts.
    for example_reply in messages[2 : 1 + 2 * n_examples : 2]:
        assert parse_reply(example_reply["content"]).ok


def test_build_messages_region_names_the_boxed_object() -> None:
    region = {"category": "apple", "bbox": (0.3, 0.35, 0.4, 0.45)}
    messages = build_messages("region", region=region, **ANNOTATIONS)
    assert messages[-1]["content"].endswith(
        "Region (in the red box): apple: [0.300, 0.350, 0.400, 0.450]"
    )


@pytest.mark.parametrize(
    ("itype", "region", "overrides", "message"),
    [
        ("caption", None, {}, "instruction_type 'caption'"),
        ("region", None, {}, "region must be given"),
        ("global", {"category": "bowl", "bbox": (0, 0, 1, 1)}, {}, "region must be given"),
        ("global", None, {"objects": [{"category": "bowl", "bbox": (0.5, 0.1, 0.4, 0.2)}]},
         r"objects\[0\].bbox"),
        ("global", None, {"objects": [{"category": "bowl", "bbox": (10, 10, 200, 300)}]},
         "not normalised"),
        ("global", None, {"objects": [{"name": "bowl", "bbox": (0.1, 0.1, 0.2, 0.2)}]},
         "needs 'category' and 'bbox'"),
        ("global", None, {"objects": [{"category": "bowl", "bbox": (0.1, 0.2)}]},
         "4 numbers"),
    ],
)  # fmt: skip
def test_build_messages_rejects_bad_input(
    itype: str, region: dict | None, overrides: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_messages(itype, region=region, **(ANNOTATIONS | overrides))


@pytest.mark.parametrize(
    "text",
    [
        GOOD_JSON,
        f"```json\n{GOOD_JSON}\n```",
        f"```\n{GOOD_JSON}\n```",
        f"Here is the conversation you asked for:\n\n{GOOD_JSON}\n\nLet me know if you need more.",
        f"Sure [as requested]! {GOOD_JSON}",
        GOOD_JSON.replace('"}]}', '"},]}').replace('fruit."}', 'fruit.",}'),  # trailing commas
        json.dumps(GOOD["conversation"]),  # a bare list of pairs
        json.dumps({"conversation": [{"question": p["q"], "answer": p["a"]}
                                     for p in GOOD["conversation"]]}),
        json.dumps({"conversations": [
            {"from": "human" if i % 2 == 0 else "gpt", "value": t["value"]}
            for i, t in enumerate(GOOD_TURNS)]}),
        json.dumps({"conversation": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": t["value"]}
            for i, t in enumerate(GOOD_TURNS)]}),
        json.dumps(GOOD, indent=2),
    ],
    ids=["plain", "fenced-json", "fenced", "prose-around", "bracketed-prose", "trailing-commas",
         "bare-list", "long-keys", "from-value-turns", "role-content-turns", "indented"],
)  # fmt: skip
def test_parse_reply_accepts_recoverable_replies(text: str) -> None:
    reply = parse_reply(text)
    assert reply.failure is None, reply
    assert reply.turns == GOOD_TURNS


@pytest.mark.parametrize(
    ("text", "failure"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        (None, "empty"),
        ("I'm sorry, but I can't help with that request.", "refusal"),
        ("I cannot describe this image [policy].", "refusal"),
        ("As an AI language model, I am unable to see images.", "refusal"),
        ("The image shows a bowl of fruit on a table.", "no_json"),
        (GOOD_JSON[:-25], "truncated_json"),
        ('{"conversation": [{"q": "What is shown?", "a": "A kitchen with a wom', "truncated_json"),
        (f"```json\n{GOOD_JSON[:40]}", "truncated_json"),
        ('{"conversation": [{"q": "What is it?" "a": "A cat."}]}', "bad_json"),
        ("{'conversation': [{'q': 'x', 'a': 'y'}]}", "bad_json"),
        ('{"dialogue": [{"q": "a?", "a": "b"}, {"q": "c?", "a": "d"}]}', "bad_shape"),
        ('{"conversation": [{"question_text": "a?", "reply": "b"}, '
         '{"question_text": "c?", "reply": "d"}]}', "bad_shape"),
        ('{"conversation": "What is it? A cat."}', "bad_shape"),
        ('{"conversation": []}', "bad_shape"),
        ('{"conversation": [{"q": "a?", "a": 3}, {"q": "c?", "a": "d"}]}', "bad_shape"),
        ('[{"from": "human", "value": "a?"}, {"from": "human", "value": "b?"}]',
         "non_alternating"),
        ('[{"from": "gpt", "value": "a"}, {"from": "human", "value": "b?"}]', "non_alternating"),
        ('[{"from": "human", "value": "a?"}, {"from": "gpt", "value": "b"}, '
         '{"from": "human", "value": "c?"}]', "non_alternating"),
        ('{"conversation": [{"q": "a?", "a": "b"}, {"q": "c?", "a": "  "}]}', "empty_turn"),
        ('{"conversation": [{"q": "What is it?", "a": "A cat."}]}', "too_few_turns"),
    ],
    ids=["empty", "blank", "none", "refusal", "refusal-brackets", "refusal-as-ai", "prose-only",
         "cut-mid-list", "cut-mid-string", "fenced-cut", "missing-comma", "single-quotes",
         "wrong-top-key", "wrong-turn-keys", "string-not-list", "empty-list", "non-string",
         "two-humans", "gpt-first", "odd-turns", "blank-answer", "one-turn"],
)  # fmt: skip
def test_parse_reply_reports_why(text: str | None, failure: str) -> None:
    reply = parse_reply(text)
    assert reply.failure == failure, reply
    assert reply.turns == []
    assert not reply.ok
    assert failure in FAILURES


def test_min_exchanges_is_configurable() -> None:
    one = '{"conversation": [{"q": "What is it?", "a": "A cat."}]}'
    assert parse_reply(one, min_exchanges=1).turns == [
        {"from": "human", "value": "What is it?"},
        {"from": "gpt", "value": "A cat."},
    ]


def test_parse_reply_looks_past_a_bracketed_aside_without_json() -> None:
    text = f"Note {{this}} first. {GOOD_JSON}"
    assert parse_reply(text).turns == GOOD_TURNS


def test_examples_are_our_own_and_mention_no_annotation_words() -> None:
    # The examples teach the model to speak as if it saw the image.
    for examples in prompts.EXAMPLES.values():
        for example in examples:
            for q, a in example.conversation:
                for word in ("caption", "annotation", "bounding box", "coordinate"):
                    assert word not in (q + a).lower()


# ------------------------------------------------------------------------------ repair


@pytest.mark.parametrize("cut", ["}", "]}", "}]}"])
def test_reply_missing_only_closing_brackets_is_closed_when_the_model_stopped(cut: str) -> None:
    assert GOOD_JSON.endswith(cut)
    text = GOOD_JSON.removesuffix(cut)
    repaired = parse_reply(text, finish_reason="stop")
    assert repaired.ok and repaired.turns == parse_reply(GOOD_JSON).turns
    assert repaired.repaired is not None and "closed" in repaired.repaired


def test_the_same_text_cut_by_the_length_limit_stays_truncated() -> None:
    cut = parse_reply(GOOD_JSON[:-1], finish_reason="length")
    assert cut.failure == "truncated_json" and "finish_reason=length" in (cut.detail or "")
    assert cut.repaired is None


def test_a_stop_reply_ending_inside_a_string_is_not_mended() -> None:
    text = '{"conversation": [{"q": "What is shown?", "a": "A kitchen with a wom'
    reply = parse_reply(text, finish_reason="stop")
    assert reply.failure == "truncated_json"
    assert "finish_reason=stop" in (reply.detail or "") and "inside a string" in reply.detail


def test_closing_does_not_paper_over_a_bad_shape() -> None:
    reply = parse_reply('{"conversation": [{"question_text": "x"}', finish_reason="stop")
    assert reply.failure == "truncated_json" and "does not give a valid reply" in reply.detail
