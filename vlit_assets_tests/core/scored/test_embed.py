"""Embedding cache, the real MiniLM model and caption relevance."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from vlit_assets.core.scored.embed import (
    EMBED_CACHE,
    EmbeddingCache,
    MiniLMEmbedder,
    conversation_vectors,
    embed_texts,
    relevance,
)

CAPTIONS = pl.DataFrame(
    {
        "image_id": ["img_kitchen"] * 3 + ["img_surf"] * 3,
        "caption": [
            "A woman is chopping vegetables on a wooden cutting board in a kitchen.",
            "Someone cooking dinner next to a stove with pots and pans.",
            "A kitchen counter covered with carrots, onions and a knife.",
            "A surfer riding a large wave in the ocean.",
            "A man on a surfboard catching a wave near the beach.",
            "Person surfing on blue water under a clear sky.",
        ],
    }
)

KITCHEN_TURNS = [
    {"from": "human", "value": "What is the person in the image doing?"},
    {"from": "gpt", "value": "She is cutting carrots and onions with a knife on a board."},
    {"from": "human", "value": "Where is this taking place?"},
    {"from": "gpt", "value": "In a home kitchen, beside a stove with a pot on it."},
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder(batch_size=16)


class UnnormalizedEmbedder:
    dim = 4
    model_name = "broken"

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.full((len(texts), 4), 2.0, dtype=np.float32)


def _conversations(image_for_kitchen: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "conversation_id": ["conv_a", "conv_nocap", "conv_noanswer"],
            "image_id": [image_for_kitchen, "img_unknown", "img_surf"],
            "turns": [
                KITCHEN_TURNS,
                KITCHEN_TURNS,
                [{"from": "human", "value": "Describe the image."}, {"from": "gpt", "value": " "}],
            ],
        }
    )


def test_second_embedding_of_same_texts_encodes_nothing(embedder, tmp_path):
    texts = ["a red bus", "two dogs play in snow", "a red bus", "a bowl of soup"]
    db = tmp_path / "cache.duckdb"
    with duckdb.connect(str(db)) as con:
        cache = EmbeddingCache(con)
        first = embed_texts(texts, embedder, cache)
        assert (cache.encoded, cache.hits) == (3, 0)
        before = embedder.texts_encoded
        again = embed_texts(list(reversed(texts)), embedder, cache)
        assert embedder.texts_encoded == before
        assert (cache.encoded, cache.hits) == (3, 3)
        np.testing.assert_array_equal(again, first[::-1])
    with duckdb.connect(str(db)) as con:
        reopened = EmbeddingCache(con)
        stored = con.execute(f'SELECT count(*), min(dim) FROM "{EMBED_CACHE.name}"').fetchone()
        assert stored == (3, 384)
        third = embed_texts(texts + ["a new sentence"], embedder, reopened)
        assert (reopened.encoded, reopened.hits) == (1, 3)
    np.testing.assert_array_equal(third[:4], first)


def test_vectors_are_unit_length_and_in_input_order(embedder):
    texts = ["b", "a longer sentence about a cat", "b"]
    vectors = embed_texts(texts, embedder)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])


def test_similar_sentences_are_closer_than_unrelated(embedder):
    a, b, c = embed_texts(
        [
            "A dog is running across a grassy park.",
            "A puppy runs through the grass in a park.",
            "Interest rates were raised by the central bank.",
        ],
        embedder,
    )
    assert a @ b > 0.6
    assert a @ b > a @ c + 0.4


def test_relevance_prefers_the_image_the_conversation_is_about(embedder):
    own = relevance(_conversations("img_kitchen"), CAPTIONS, embedder)
    moved = relevance(_conversations("img_surf"), CAPTIONS, embedder)
    own_score = own.filter(pl.col("conversation_id") == "conv_a")["relevance"].item()
    moved_score = moved.filter(pl.col("conversation_id") == "conv_a")["relevance"].item()
    assert own_score > moved_score + 0.3
    assert own.columns == ["conversation_id", "relevance", "relevance_null_reason"]
    nulls = dict(zip(own["conversation_id"], own["relevance_null_reason"], strict=True))
    assert nulls == {"conv_a": None, "conv_nocap": "no_captions", "conv_noanswer": "no_answer"}
    assert own.filter(pl.col("relevance").is_null()).height == 2


def test_conversation_vectors_reuse_cached_turns(embedder):
    con = duckdb.connect()
    cache = EmbeddingCache(con)
    convs = _conversations("img_kitchen")
    vectors = conversation_vectors(convs, embedder, cache)
    # conv_a and conv_nocap share their four turns; the blank answer is not embedded.
    assert cache.encoded == 5
    np.testing.assert_array_equal(vectors.conversation[0], vectors.conversation[1])
    assert np.isnan(vectors.answers[2]).all() and np.isfinite(vectors.conversation[2]).all()
    relevance(convs, CAPTIONS, embedder, cache, vectors=vectors)
    assert cache.encoded == 5 + CAPTIONS.height


def test_bad_turn_role_names_the_conversation():
    convs = pl.DataFrame(
        {
            "conversation_id": ["conv_x"],
            "image_id": ["img"],
            "turns": [[{"from": "assistant", "value": "hi"}]],
        }
    )
    with pytest.raises(ValueError, match=r"conversation conv_x: turn 0 has from='assistant'"):
        conversation_vectors(convs, UnnormalizedEmbedder())


def test_non_string_text_and_unnormalized_embedder_are_errors():
    with pytest.raises(TypeError, match="text 1 is NoneType"):
        embed_texts(["ok", None], UnnormalizedEmbedder())  # type: ignore[list-item]
    with pytest.raises(ValueError, match="broken: 1 vectors from encode are not unit-length"):
        embed_texts(["ok"], UnnormalizedEmbedder())


def test_cache_keeps_models_apart():
    con = duckdb.connect()
    cache = EmbeddingCache(con)
    vec = np.eye(3, dtype=np.float32)
    assert cache.store("m1", ["h1", "h2", "h3"], vec) == 3
    assert cache.store("m1", ["h1"], vec[:1]) == 0
    hashes, found = cache.lookup("m1", ["h3", "h1", "nope"])
    got = dict(zip(hashes, found.tolist(), strict=True))
    assert got == {"h1": [1.0, 0.0, 0.0], "h3": [0.0, 0.0, 1.0]}
    assert cache.lookup("m2", ["h1"])[0] == []
