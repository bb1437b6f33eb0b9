"""score_conversations on imported data: no embedder needed, types inferred, nulls not zeros."""

import polars as pl
import pytest

from vlit_assets.core.schemas import GENERATED_CONVERSATIONS
from vlit_assets.core.scored.figures import rule_figures
from vlit_assets.core.scored.metrics import score_rules
from vlit_assets.core.scored.quality import QualityConfig, needs_vectors, score_conversations
from vlit_assets.core.vocab import UNLABELLED


def imported(rows: list[tuple[str, str, list[tuple[str, str]]]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "conversation_id": cid,
                "source": "mine",
                "image_id": "img_1",
                "instruction_type": itype,
                "generator": "import",
                "variant": i,
                "turns": [{"from": f, "value": v} for f, v in turns],
                "image_path": "/x/img_1.jpg",
            }
            for i, (cid, itype, turns) in enumerate(rows)
        ],
        schema=GENERATED_CONVERSATIONS.polars_schema,
    )


ROWS = [
    (
        "c1",
        UNLABELLED,
        [
            ("human", "<image>\nIs there a giraffe in the picture?"),
            ("gpt", "No, there is no giraffe in this picture."),
        ],
    ),
    (
        "c2",
        UNLABELLED,
        [
            ("human", "<image>\nDescribe the scene in detail."),
            ("gpt", "A man rides a bicycle down a quiet street at dusk."),
        ],
    ),
    (
        "c3",
        "region",
        [
            ("human", "<image>\nWhat is in the red box?"),
            ("gpt", "A bicycle leaning against the wall."),
        ],
    ),
]


def test_without_captions_nothing_is_embedded_and_relevance_is_null():
    conversations = imported(ROWS)
    assert not needs_vectors(QualityConfig(), None)
    result = score_conversations(
        conversations,
        objects=None,
        tags=None,
        categories=None,
        captions=None,
        embedder=None,
        cache=None,
    )
    scored = result.scored
    assert scored["relevance"].null_count() == 3
    assert scored["embed_model"].null_count() == 3
    assert result.dataset["relevance_mean"] is None
    assert result.encoded_texts == 0
    # the untyped rows got types from their text; the declared one kept its own
    by_id = {r["conversation_id"]: r for r in scored.to_dicts()}
    assert by_id["c1"]["instruction_type"] == "negative" and by_id["c1"]["type_inferred"]
    assert by_id["c2"]["instruction_type"] == "global" and by_id["c2"]["type_inferred"]
    assert by_id["c3"]["instruction_type"] == "region" and not by_id["c3"]["type_inferred"]
    assert by_id["c1"]["task_kinds"] == ["absent_object"]


def test_semantic_on_needs_an_embedder():
    with pytest.raises(ValueError, match="embedder"):
        score_conversations(
            imported(ROWS),
            objects=None,
            tags=None,
            categories=None,
            captions=None,
            embedder=None,
            cache=None,
            config=QualityConfig(semantic="on"),
        )
    with pytest.raises(ValueError, match="semantic"):
        QualityConfig(semantic="sometimes")


def test_type_balance_of_untyped_rows_is_null_not_zero():
    conversations = imported([(cid, UNLABELLED, turns) for cid, _, turns in ROWS])
    figures = rule_figures(conversations, score_rules(conversations))
    assert figures["instruction_type_entropy_norm"] is None
    assert figures["yes_ratio"] is not None  # one polar question, answered No
