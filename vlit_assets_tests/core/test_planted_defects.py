"""The metrics find planted defects: precision and recall per defect kind on coco-mini.

Good template conversations of coco-mini get copies with exactly one planted defect each
(``vlit_assets_tests.defects``); good and defective rows are scored together in one pass with
the real MiniLM model. Each kind has one rule over the scored columns (``RULE_FOR_KIND``):

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

from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pytest

from vlit_assets.core.generated.templates.run import TemplateConfig, generate_templates
from vlit_assets.core.raw.annotations import find_coco_files
from vlit_assets.core.raw.collect import CollectResult, collect_source
from vlit_assets.core.scored.embed import EmbeddingCache, MiniLMEmbedder
from vlit_assets.core.scored.neardup import DEFAULT_THRESHOLD
from vlit_assets.core.scored.quality import score_conversations
from vlit_assets.core.text.reading import caption_mentions
from vlit_assets_tests.defects import DEFECT_KINDS, plant_defects

SOURCE = "coco-mini"
PER_KIND = 30
SEED = 7
TARGET = 0.9

RULE_FOR_KIND = {
    "absent_object": "chair_s",
    "negative_flipped": "negative_inconsistent",
    "wrong_count": "count_inconsistent",
    "near_copy": "same_image_near_duplicate",
    "one_word_answer": "one_word_answer",
    "moved_image": "chair_i_majority",
    "present_denied": "negative_inconsistent",
}


@dataclass
class Planted:
    scored: pl.DataFrame  # scored__conversations of good + defective rows
    truth: pl.DataFrame  # conversation_id, defect, source_conversation_id
    captions: pl.DataFrame
    objects: pl.DataFrame
    good_ids: set[str]


def plant_and_score(
    root: Path, work: Path, *, per_kind: int = PER_KIND, seed: int = SEED
) -> Planted:
    """Collect, generate template conversations, plant every kind, score all rows once."""
    raw: CollectResult = collect_source(SOURCE, root)
    good = generate_templates(
        raw.images,
        raw.captions,
        raw.objects,
        raw.categories,
        raw.tags,
        source=SOURCE,
        image_root=find_coco_files(root).image_dir,
        regions_dir=work / "regions",
        config=TemplateConfig(render_regions=False),
    ).filter(pl.col("drop_reason").is_null())
    bad, truth = plant_defects(good, raw.objects, raw.tags, seed=seed, per_kind=per_kind)
    with duckdb.connect(str(work / "cache.duckdb")) as con:
        result = score_conversations(
            pl.concat([good, bad]),
            objects=raw.objects,
            tags=raw.tags,
            categories=raw.categories,
            captions=raw.captions,
            embedder=MiniLMEmbedder(),
            cache=EmbeddingCache(con),
            run_id="planted",
        )
    return Planted(result.scored, truth, raw.captions, raw.objects, set(good["conversation_id"]))


def defect_flags(scored: pl.DataFrame) -> pl.DataFrame:
    """One row per conversation: a boolean column per rule (null metric = not flagged)."""
    same_image = (
        scored.filter(pl.col("cluster_size") > 1)
        .with_columns(seen=pl.coalesce("image_path", "image_id"))
        .filter(pl.len().over("cluster_id", "seen") > 1)
        .select("conversation_id")
    )
    return scored.select(
        "conversation_id",
        chair_s=pl.col("chair_s").fill_null(False),
        negative_inconsistent=(pl.col("negative_consistency") < 1).fill_null(False),
        count_inconsistent=(pl.col("count_consistency") < 1).fill_null(False),
        near_duplicate=(pl.col("cluster_size") > 1).fill_null(False)
        | pl.col("exact_duplicate_of").is_not_null(),
        same_image_near_duplicate=pl.col("conversation_id").is_in(
            same_image["conversation_id"].implode()
        )
        | pl.col("exact_duplicate_of").is_not_null(),
        one_word_answer=(pl.col("answer_words_min") <= 1).fill_null(False),
        chair_i_majority=(pl.col("chair_i") >= 0.5).fill_null(False),
        low_relevance=(pl.col("relevance") < 0.2).fill_null(False),
        region_mismatch=(~pl.col("region_name_match")).fill_null(False),
    )


def labelled(planted: Planted) -> pl.DataFrame:
    """The flags with each row's defect ('good' for unplanted rows) and source row."""
    return (
        defect_flags(planted.scored)
        .join(planted.truth, on="conversation_id", how="left")
        .with_columns(pl.col("defect").fill_null("good"))
    )


def precision_recall(frame: pl.DataFrame, kind: str, rule: str) -> tuple[float, float, int]:
    """(precision, recall, flagged) of ``rule`` for ``kind``, counted as the module says."""
    truth = frame["defect"] == kind
    counted = truth | (frame["defect"] == "good")
    if kind == "near_copy":
        sources = frame.filter(truth)["source_conversation_id"].implode()
        other_sources = frame.filter(~truth & (frame["defect"] != "good"))[
            "source_conversation_id"
        ].implode()
        is_source = frame["conversation_id"].is_in(sources)
        touched = frame["conversation_id"].is_in(other_sources) & ~is_source
        truth = truth | is_source
        counted = (truth | (frame["defect"] == "good")) & ~touched
    flagged = frame[rule] & counted
    hits = int((flagged & truth).sum())
    total = int(flagged.sum())
    precision = hits / total if total else 0.0
    recall = int((frame[rule] & (frame["defect"] == kind)).sum()) / int(
        (frame["defect"] == kind).sum()
    )
    return precision, recall, total


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
