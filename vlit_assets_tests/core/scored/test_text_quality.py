"""Text filters and MinHash near copies (core/text_quality.py)."""

import random

import polars as pl
import pytest

from vlit_assets.core.schemas import GENERATED_CONVERSATIONS
from vlit_assets.core.scored.text_quality import (
    MinHashConfig,
    minhash_clusters,
    text_statistics,
    word_repetition,
)


def frame(convs: list[list[tuple[str, str]]], images: list[str] | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "conversation_id": [f"c{i:03d}" for i in range(len(convs))],
            "image_id": images or ["img"] * len(convs),
            "variant": list(range(len(convs))),
            "turns": [[{"from": f, "value": v} for f, v in turns] for turns in convs],
        },
        schema_overrides={"turns": GENERATED_CONVERSATIONS.polars_schema["turns"]},
    )


def test_word_repetition_counts_repeated_ngrams_with_multiplicity():
    # 12 words, 10-grams: 3; none repeats
    assert word_repetition(pl.Series(["a b c d e f g h i j k l"]))[0] == 0.0
    # "x y" repeated: 2-grams "x y" x3, "y x" x2 -> all 5 repeat
    assert word_repetition(pl.Series(["x y x y x y"]), rep_len=2)[0] == 1.0
    # "a b c a b d": 2-grams ab, bc, ca, ab, bd -> "a b" twice of 5
    assert word_repetition(pl.Series(["A b, c. a B d"]), rep_len=2)[0] == pytest.approx(2 / 5)
    # fewer words than rep_len: 0, not null
    assert word_repetition(pl.Series(["too short", ""]), rep_len=10).tolist() == [0.0, 0.0]


def test_text_statistics_per_conversation_and_per_answer():
    loop = " ".join(["the cat sat on the mat"] * 6)
    convs = [
        [("human", "<image>\nWhat is here?"), ("gpt", "A cat on a mat.")],
        [("human", "Describe it."), ("gpt", loop), ("human", "And?"), ("gpt", "Nothing more.")],
        [("human", "Price?"), ("gpt", "\u00a7\u00a7\u00a7 \u2603\u2603 ok")],
    ]
    stats = text_statistics(frame(convs), rep_len=3).to_dicts()
    first, looping, symbols = stats
    assert first["text_words"] == 8  # the image token is not a word
    assert first["text_chars"] == len("What is here?\nA cat on a mat.")
    assert first["word_rep_ratio"] == 0.0 and first["answer_rep_ratio"] == 0.0
    # the looping answer repeats all its 3-grams; the whole conversation a little less
    assert looping["answer_rep_ratio"] == 1.0
    assert 0.5 < looping["word_rep_ratio"] < 1.0
    assert symbols["special_char_ratio"] == pytest.approx(
        5 / len("Price?\n\u00a7\u00a7\u00a7 \u2603\u2603 ok")
    )
    assert first["special_char_ratio"] == 0.0


def test_a_conversation_without_answers_has_null_answer_repetition():
    stats = text_statistics(frame([[("human", "Only a question here?")]]))
    assert stats["answer_rep_ratio"].to_list() == [None]


def _sentence(rng: random.Random, n: int) -> str:
    words = ["red", "blue", "cat", "dog", "sits", "runs", "near", "the", "a", "big", "small"]
    words += [f"w{k}" for k in range(200)]
    return " ".join(rng.choice(words) for _ in range(n))


def test_minhash_finds_one_word_edits_keeps_the_first_and_respects_the_threshold():
    rng = random.Random(3)
    originals = [_sentence(rng, 60) for _ in range(40)]
    convs = [[("human", "Describe the image."), ("gpt", text)] for text in originals]
    # near copies: one word of the answer replaced, appended after all originals
    for text in originals[:10]:
        words = text.split()
        words[30] = "zebra"
        convs.append([("human", "Describe the image."), ("gpt", " ".join(words))])
    convs.append(convs[5])  # a verbatim copy
    out = minhash_clusters(frame(convs), order="variant").to_dicts()
    for k in range(10):
        copy = out[40 + k]
        assert copy["text_cluster_id"] == f"c{k:03d}"  # the earlier original represents it
        assert copy["text_dup_jaccard"] >= 0.7
    assert out[50]["text_cluster_id"] == "c005" and out[50]["text_dup_jaccard"] == 1.0
    # unrelated random texts stay alone
    assert all(r["text_cluster_size"] == 1 for r in out[10:40])
    assert all(r["text_dup_jaccard"] is None for r in out[10:40])
    # a threshold above every edit's Jaccard separates them again
    strict = minhash_clusters(frame(convs), order="variant", config=MinHashConfig(threshold=0.99))
    assert strict["text_cluster_size"].to_list()[40:50] == [1] * 10


def test_minhash_pairs_only_within_the_given_column():
    text = "a photo of a small dog sitting on a red couch in a bright room"
    convs = [[("human", "What is shown?"), ("gpt", text)]] * 2
    same = minhash_clusters(frame(convs, ["i1", "i1"]), order="variant", within="image_id")
    apart = minhash_clusters(frame(convs, ["i1", "i2"]), order="variant", within="image_id")
    assert same["text_cluster_size"].to_list() == [2, 2]
    assert apart["text_cluster_size"].to_list() == [1, 1]


def test_minhash_handles_empty_and_very_short_texts():
    convs = [
        [("human", ""), ("gpt", "")],
        [("human", "Hi"), ("gpt", "Yes.")],
        [("human", "hi"), ("gpt", "yes.")],  # same tokens after lowercasing
    ]
    out = minhash_clusters(frame(convs), order="variant")
    assert out["text_cluster_size"].to_list() == [1, 2, 2]
    assert out["text_cluster_id"].to_list() == ["c000", "c001", "c001"]


def test_minhash_config_is_validated():
    with pytest.raises(ValueError, match="threshold"):
        MinHashConfig(threshold=0.0)
    with pytest.raises(ValueError, match="shingle"):
        MinHashConfig(shingle=0)
