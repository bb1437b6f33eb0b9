"""The metrics find planted defects: precision and recall per defect kind on coco-mini.

Good template conversations of coco-mini get copies with exactly one planted defect each
(``vlit_assets.testing.defects``); good and defective rows are scored together in one pass with
the real MiniLM model. Each kind has one rule over the scored columns (``RULE_FOR_KIND``, in
``vlit_assets.testing.planted``):

- absent_object -> ``chair_s``: CHAIR-s scored with the captions as ground truth too, as in the
  original CHAIR (Rohrbach et al. 2018), so good template rows that quote a caption naming
  something COCO did not box are not flagged. The planted object is drawn from categories
  neither boxed nor mentioned in the conversation; one a caption happens to name is present
  by that definition, which costs recall, not precision.
- negative_flipped -> ``negative_consistency < 1``.
- present_denied -> ``negative_consistency < 1``: a denial of an object the boxes hold counts
  as a wrong negative claim (the "No, there is no park bench." about a bench).
- wrong_count -> ``count_consistency < 1``.
- near_copy -> ``same_image_near_duplicate``: an exact duplicate, or a near-duplicate cluster
  (cosine >= 0.95) holding another conversation of the same input image (``image_path``, so
  two region conversations about different boxes of one photo are different inputs). A copy
  keeps its source's image; near-duplicates across inputs are template phrasing (region
  conversations about two cows of one photo score 0.96-0.98) that the suite measures as
  ``near_duplicate_rate``. Counting any cluster membership instead gives precision 0.67.
- one_word_answer -> ``answer_words_min <= 1``.
- moved_image -> ``chair_i >= 0.5``: most claimed objects are absent from the image (neither
  boxed nor captioned). A moved conversation talks about another scene, so nearly all its
  claims fail; one hallucinated sentence in an otherwise grounded conversation
  (absent_object) stays far below half. The rule is the same as before captions counted:
  a claim the new image's captions happen to name is no longer a hallucination, and the
  threshold was not retuned for that.

Precision is counted over the good rows and the rows of the kind itself: rows of other planted
kinds are defective as well (a flipped negative does assert an absent object), so flagging them
is neither right nor wrong for this kind; benchmarks/defects.py prints the whole confusion
table. For near_copy the truth is pair membership: a near-duplicate pair has two members, so
the copy *and* its source are positives, and good rows that other kinds were copied from are
left out like the other kinds' rows.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from vlit_assets.core.scored.neardup import DEFAULT_THRESHOLD
from vlit_assets.core.text.reading import caption_mentions
from vlit_assets.testing.defects import DEFECT_KINDS
from vlit_assets.testing.planted import (
    PER_KIND,
    RULE_FOR_KIND,
    Planted,
    labelled,
    plant_and_score,
    precision_recall,
)

# One scoring pass of coco-mini with the real model, shared by every test here.
pytestmark = pytest.mark.slow

TARGET = 0.9


@pytest.fixture(scope="session")
def planted(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return plant_and_score(coco_mini, tmp_path_factory.mktemp("planted"))


def test_every_kind_was_planted(planted: Planted) -> None:
    counts = dict(planted.truth.group_by("defect").len().iter_rows())
    assert counts == dict.fromkeys(DEFECT_KINDS, PER_KIND)
    assert planted.scored.height == len(planted.good_ids) + planted.truth.height


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_metric_flags_its_defect(planted: Planted, kind: str) -> None:
    precision, recall, flagged = precision_recall(labelled(planted), kind, RULE_FOR_KIND[kind])
    assert recall >= TARGET, f"{kind}: recall {recall:.3f}"
    assert precision >= TARGET, f"{kind}: precision {precision:.3f} over {flagged} flagged"


def test_good_rows_are_not_flagged_by_the_correctness_rules(planted: Planted) -> None:
    good = labelled(planted).filter(pl.col("defect") == "good")
    for rule in ("negative_inconsistent", "count_inconsistent", "one_word_answer"):
        assert not good[rule].any(), rule


def test_chair_s_spares_caption_quotes_and_catches_planted_objects(planted: Planted) -> None:
    """No good row is a CHAIR-s hallucination once captions count as ground truth, though some
    quote a caption naming an object COCO did not box (boxes alone flagged about 3% of rows)."""
    frame = labelled(planted)
    good = frame.filter(pl.col("defect") == "good")
    assert not good["chair_s"].any()
    named = caption_mentions(planted.captions).with_columns(captioned=pl.lit(True))
    unboxed_quotes = (
        planted.scored.filter(pl.col("conversation_id").is_in(list(planted.good_ids)))
        .select("conversation_id", "image_id", category="mentioned_categories")
        .explode("category", keep_nulls=False)
        .join(named, on=["image_id", "category"])
        .join(
            planted.objects.select("image_id", category="category_name").unique(),
            on=["image_id", "category"],
            how="anti",
        )
    )
    assert unboxed_quotes.height > 0  # the case the captions decide exists in the data
    planted_absent = frame.filter(pl.col("defect") == "absent_object")
    assert planted_absent["chair_s"].mean() >= TARGET


def test_near_copy_points_at_its_source(planted: Planted) -> None:
    """A copy's nearest neighbour is its source (or another copy of it), above the threshold."""
    scored = planted.scored.select("conversation_id", "nearest_id", "nearest_cosine")
    family = planted.truth.select("conversation_id", "source_conversation_id")
    copies = (
        planted.truth.filter(pl.col("defect") == "near_copy")
        .join(scored, on="conversation_id")
        .join(
            family.rename({"conversation_id": "nearest_id", "source_conversation_id": "n_src"}),
            on="nearest_id",
            how="left",
        )
    )
    right = (pl.col("nearest_id") == pl.col("source_conversation_id")) | (
        pl.col("n_src") == pl.col("source_conversation_id")
    )
    share = copies.select((right & (pl.col("nearest_cosine") >= DEFAULT_THRESHOLD)).mean()).item()
    assert share >= TARGET


def test_moved_conversations_lose_relevance(planted: Planted) -> None:
    """Relevance drops for moved rows, though it alone cannot tell them from region rows."""
    frame = planted.scored.join(planted.truth, on="conversation_id", how="left")
    moved = frame.filter(pl.col("defect") == "moved_image")["relevance"].mean()
    good = frame.filter(pl.col("defect").is_null())["relevance"].mean()
    assert moved < good - 0.2
