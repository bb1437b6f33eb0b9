"""Template conversations: English helpers, fact rules on hand-made frames, and coco-mini checks.

The coco-mini checks read the answers back with parsers written here, independently of the
generator, and hold every stated count, relation, position and denial against the boxes.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from vlit_assets.core.generated.templates import phrasing, run
from vlit_assets.core.generated.templates.frames import quotable_captions
from vlit_assets.core.generated.templates.run import (
    TEMPLATE_VERSION,
    TemplateConfig,
    generate_templates,
)
from vlit_assets.core.ids import stable_id
from vlit_assets.core.raw.annotations import find_coco_files
from vlit_assets.core.raw.collect import collect_source
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS
from vlit_assets.core.text.categories import COCO_CATEGORIES
from vlit_assets.core.text.inflect import NUMBER_NAMES, a_phrase, count_phrase, plural, the_phrase

PLURALS = {
    "person": "people", "bicycle": "bicycles", "car": "cars", "motorcycle": "motorcycles",
    "airplane": "airplanes", "bus": "buses", "train": "trains", "truck": "trucks",
    "boat": "boats", "traffic light": "traffic lights", "fire hydrant": "fire hydrants",
    "stop sign": "stop signs", "parking meter": "parking meters", "bench": "benches",
    "bird": "birds", "cat": "cats", "dog": "dogs", "horse": "horses", "sheep": "sheep",
    "cow": "cows", "elephant": "elephants", "bear": "bears", "zebra": "zebras",
    "giraffe": "giraffes", "backpack": "backpacks", "umbrella": "umbrellas",
    "handbag": "handbags", "tie": "ties", "suitcase": "suitcases", "frisbee": "frisbees",
    "skis": "skis", "snowboard": "snowboards", "sports ball": "sports balls", "kite": "kites",
    "baseball bat": "baseball bats", "baseball glove": "baseball gloves",
    "skateboard": "skateboards", "surfboard": "surfboards", "tennis racket": "tennis rackets",
    "bottle": "bottles", "wine glass": "wine glasses", "cup": "cups", "fork": "forks",
    "knife": "knives", "spoon": "spoons", "bowl": "bowls", "banana": "bananas",
    "apple": "apples", "sandwich": "sandwiches", "orange": "oranges", "broccoli": "broccoli",
    "carrot": "carrots", "hot dog": "hot dogs", "pizza": "pizzas", "donut": "donuts",
    "cake": "cakes", "chair": "chairs", "couch": "couches", "potted plant": "potted plants",
    "bed": "beds", "dining table": "dining tables", "toilet": "toilets", "tv": "tvs",
    "laptop": "laptops", "mouse": "mice", "remote": "remotes", "keyboard": "keyboards",
    "cell phone": "cell phones", "microwave": "microwaves", "oven": "ovens",
    "toaster": "toasters", "sink": "sinks", "refrigerator": "refrigerators", "book": "books",
    "clock": "clocks", "vase": "vases", "scissors": "scissors", "teddy bear": "teddy bears",
    "hair drier": "hair driers", "toothbrush": "toothbrushes",
}  # fmt: skip

NUMBERS = {w: i for i, w in enumerate(NUMBER_NAMES)}
NUM = r"(\d+|" + "|".join(NUMBER_NAMES) + r")"


def test_plural_is_right_for_all_80_coco_names() -> None:
    names = [name for _, name, _ in COCO_CATEGORIES]
    assert len(names) == 80 and set(names) == set(PLURALS)
    assert {name: plural(name) for name in names} == PLURALS


def test_noun_phrases() -> None:
    assert count_phrase(1, "dog") == "one dog"
    assert count_phrase(3, "person") == "three people"
    assert count_phrase(2, "skis", other=True) == "two other pairs of skis"
    assert count_phrase(14, "sheep") == "14 sheep"
    assert a_phrase("elephant") == "an elephant"
    assert a_phrase("skis") == "a pair of skis"
    assert a_phrase("broccoli") == "some broccoli"
    assert a_phrase("sheep") == "a sheep" and a_phrase("oven") == "an oven"
    assert count_phrase(3, "broccoli") == "three pieces of broccoli"
    assert the_phrase("broccoli", 3) == ("the broccoli", "is")
    assert the_phrase("person", 2, boxed=True) == ("the boxed people", "are")


# --------------------------------------------------------------------------- hand-made frames

SRC = "hand"


def _frames(
    objects: list[tuple[str, float, float, float, float, bool]],
    *,
    captions: tuple[str, ...] = ("A test scene.", "Another view of it."),
    absent: tuple[str, ...] = ("giraffe", "zebra", "kite", "clock"),
    size: tuple[int, int] = (1000, 800),
) -> tuple[pl.DataFrame, ...]:
    ids = {name: cid for cid, name, _ in COCO_CATEGORIES}
    images = pl.DataFrame(
        {"image_id": ["img_a"], "source": [SRC], "file_name": ["a.jpg"],
         "width": [size[0]], "height": [size[1]]}
    )  # fmt: skip
    caps = pl.DataFrame(
        {"caption_id": [f"cap_{i}" for i in range(len(captions))], "source": SRC,
         "image_id": "img_a", "caption": list(captions)}
    )  # fmt: skip
    objs = pl.DataFrame(
        {
            "object_id": [f"obj_{i}" for i in range(len(objects))],
            "source": SRC,
            "image_id": "img_a",
            "category_id": pl.Series([ids[o[0]] for o in objects], dtype=pl.Int32),
            "category_name": pl.Series([o[0] for o in objects], dtype=pl.String),
            "bbox_x": pl.Series([o[1] for o in objects], dtype=pl.Float64),
            "bbox_y": pl.Series([o[2] for o in objects], dtype=pl.Float64),
            "bbox_w": pl.Series([o[3] for o in objects], dtype=pl.Float64),
            "bbox_h": pl.Series([o[4] for o in objects], dtype=pl.Float64),
            "iscrowd": pl.Series([o[5] for o in objects], dtype=pl.Boolean),
        }
    )
    cats = pl.DataFrame(
        {"source": SRC, "category_id": [c for c, _, _ in COCO_CATEGORIES],
         "name": [n for _, n, _ in COCO_CATEGORIES]}
    )  # fmt: skip
    tags = pl.DataFrame(
        {"image_id": ["img_a"], "source": [SRC],
         "absent": [[{"category_id": ids[n], "name": n, "score": 1.0} for n in absent]]}
    )  # fmt: skip
    return images, caps, objs, cats, tags


def _run(frames: tuple[pl.DataFrame, ...], tmp_path: Path, **config: object) -> pl.DataFrame:
    cfg = TemplateConfig(render_regions=False, **config)  # type: ignore[arg-type]
    return generate_templates(
        *frames, source=SRC, image_root=tmp_path, regions_dir=tmp_path / "regions", config=cfg
    )


def _answers(df: pl.DataFrame, itype: str) -> list[str]:
    rows = df.filter(pl.col("instruction_type") == itype)["turns"].to_list()
    return [t["value"] for turns in rows for t in turns if t["from"] == "gpt"]


def _all_text(df: pl.DataFrame) -> str:
    return "\n".join(t["value"] for turns in df["turns"].to_list() for t in turns)


def test_crowd_categories_are_never_given_a_number(tmp_path: Path) -> None:
    frames = _frames(
        [("person", 10, 10, 300, 300, True), ("person", 50, 50, 100, 200, False),
         ("dog", 600, 500, 200, 200, False)]
    )  # fmt: skip
    texts = []
    for seed in range(40):
        df = _run(frames, tmp_path, seed=seed, types=("global", "negative", "region"))
        texts.append(_all_text(df))
    text = "\n".join(texts)
    assert not re.search(NUM + r" (other )?(people|person)\b", text)
    assert "a crowd of people" in text or "crowd of other people" in text
    assert "one dog" in text


SIDES = ("further left", "further right", "higher in", "lower in")


def test_relations_need_boxes_apart_on_the_axis(tmp_path: Path) -> None:
    # Boxes overlap horizontally (x 100-200 and 150-250) but are 200 px apart vertically.
    close = _frames([("cat", 100, 100, 100, 100, False), ("dog", 150, 400, 100, 100, False)])
    text = "\n".join(_all_text(_run(close, tmp_path, seed=s)) for s in range(30))
    assert "further left" not in text and "further right" not in text
    assert "higher in the picture than" in text or "lower in the picture than" in text
    assert "larger in" not in text and "smaller in" not in text  # same area
    # Physical words are never used for image-plane positions.
    assert not re.search(r"\b(above|below|to the (left|right) of)\b", text)


def test_no_side_relation_for_overlapping_or_nested_boxes(tmp_path: Path) -> None:
    # The cup lies inside the person's box; the surfboard overlaps the person's feet: neither
    # may be said to be left of, right of, higher or lower than the person.
    for other in (("cup", 560, 380, 40, 40, False), ("surfboard", 50, 600, 300, 120, False)):
        frames = _frames([("person", 100, 100, 600, 600, False), other])
        text = "\n".join(_all_text(_run(frames, tmp_path, seed=s)) for s in range(30))
        for rel in SIDES:
            assert rel not in text, (other, rel)
    assert "larger in the picture than" in text or "smaller in the picture than" in text


def test_boxes_just_apart_need_the_gap(tmp_path: Path) -> None:
    # 10 px apart on a 1000 px image (1%): under the 3% gap. 60 px apart: stated.
    for gap, said in ((10, False), (60, True)):
        frames = _frames(
            [("cat", 100, 100, 200, 200, False), ("dog", 300 + gap, 150, 200, 200, False)]
        )
        text = "\n".join(_all_text(_run(frames, tmp_path, seed=s)) for s in range(30))
        assert ("further left" in text or "further right" in text) == said, gap


def test_absent_candidates_that_are_annotated_are_skipped(tmp_path: Path) -> None:
    frames = _frames([("dog", 10, 10, 200, 200, False)], absent=("dog", "cat", "bird", "cow"))
    for seed in range(20):
        for answer in _answers(_run(frames, tmp_path, seed=seed), "negative"):
            assert answer.startswith("Yes") or _denies(answer)
            assert "no dogs" not in answer and "any dogs" not in answer


def test_negative_conversations_deny_first_and_also_confirm(tmp_path: Path) -> None:
    frames = _frames(
        [("dog", 10, 10, 200, 200, False), ("dog", 300, 10, 200, 200, False),
         ("cat", 700, 500, 250, 250, False)]
    )  # fmt: skip
    sides: dict[str, int] = {"Yes": 0, "No": 0}
    for seed in range(40):
        (row,) = _run(frames, tmp_path, seed=seed, types=("negative",))["turns"].to_list()
        answers = [t["value"] for t in row[1::2]]
        questions = [t["value"] for t in row[0::2]]
        assert _denies(answers[0]) and not questions[0].startswith("And")
        for q, a in zip(questions, answers, strict=True):
            side = "Yes" if a.startswith("Yes") else "No"
            assert a.startswith("Yes") or _denies(a)
            sides[side] += 1
            if side == "Yes":  # a confirmation names only annotated things, truthfully
                assert not re.search(r"giraffe|zebra|kite|clock", q + a)
                assert not re.search(r"\b(one|three|four|five) dogs?\b|\b(two|three) cats?\b", a)
    # the last pair leans to "no": about 2.3 denials to 1.7 confirmations per conversation
    assert 0.3 < sides["Yes"] / (sides["Yes"] + sides["No"]) < 0.5, sides


def test_negative_conversation_without_a_denial_is_not_made(tmp_path: Path) -> None:
    # Only crowds and nothing ranked absent: no count, relation or absent object to deny, and
    # confirmations alone do not make a negative conversation.
    frames = _frames(
        [("person", 10, 10, 300, 300, True), ("boat", 500, 10, 300, 300, True),
         ("car", 10, 500, 300, 200, True)],
        absent=(),
    )  # fmt: skip
    for seed in range(10):
        df = _run(frames, tmp_path, seed=seed, types=("negative",))
        assert df["drop_reason"][0] == "too_few_facts"
        assert df["turns"][0].len() == 0


def test_what_a_caption_names_is_never_denied(tmp_path: Path) -> None:
    # COCO drew no cat box, but a caption names one: CHAIR counts it present, so no denial.
    frames = _frames(
        [("dog", 10, 10, 200, 200, False)],
        captions=("A dog and a kitten on a rug.", "A dog with no giraffe nearby."),
        absent=("cat", "giraffe"),
    )
    text = "\n".join(
        "\n".join(_answers(_run(frames, tmp_path, seed=s, types=("negative",)), "negative"))
        for s in range(20)
    )
    assert "giraffes" in text  # a negated mention leaves it deniable
    assert "cat" not in text


def test_captions_with_contradicted_counts_are_not_quoted(tmp_path: Path) -> None:
    frames = _frames(
        [("zebra", 10, 10, 300, 300, False), ("zebra", 600, 300, 300, 300, False),
         ("person", 10, 500, 100, 200, True)],
        captions=("Two giraffes eating grass.", "Three zebras in a field.",
                  "Two zebras grazing.", "A crowd of 5 people near two zebras."),
    )  # fmt: skip
    text = "\n".join(_all_text(_run(frames, tmp_path, seed=s)) for s in range(30))
    assert "Two giraffes" not in text and "Three zebras" not in text
    assert "Two zebras grazing." in text  # true count
    assert "A crowd of 5 people near two zebras." in text  # a crowd cannot be contradicted
    images, caps, objs, cats, _ = frames
    kept = quotable_captions(caps, objs, cats["name"])
    assert kept["caption_id"].to_list() == ["cap_2", "cap_3"]
    only_dogs = quotable_captions(caps, objs, pl.Series(["dog", "zebra"]))
    assert only_dogs["caption_id"].to_list() == ["cap_0", "cap_2", "cap_3"]  # giraffe: not judged


def test_too_few_facts_is_a_row_with_a_reason(tmp_path: Path) -> None:
    frames = _frames([], captions=("Just one caption.",), absent=())
    df = _run(frames, tmp_path, types=("global", "negative"))
    assert df.height == 2
    assert df["drop_reason"].to_list() == ["too_few_facts"] * 2
    assert df["drop_detail"].to_list() == [
        f"the annotations support {n} of the 3 question/answer pairs a {t} conversation needs"
        for n, t in ((1, "global"), (0, "negative"))
    ]
    assert df["turns"].list.len().to_list() == [0, 0]


@pytest.mark.parametrize(
    ("table", "column", "value", "match"),
    [
        ("objects", "bbox_w", -1.0, "raw__objects: record object_id=obj_0 has a bad 'bbox_w'"),
        ("objects", "image_id", "img_zz", "raw__objects: record object_id=obj_0 .*'image_id'"),
        ("objects", "category_id", 999, "object_id=obj_0 has a bad 'category_id'"),
        ("captions", "caption", "  ", "raw__captions: record caption_id=cap_0 .*'caption'"),
        ("images", "width", 0, "raw__images: record image_id=img_a has a bad 'width'"),
    ],
)
def test_bad_records_fail_with_their_name(
    tmp_path: Path, table: str, column: str, value: object, match: str
) -> None:
    images, caps, objs, cats, tags = _frames([("dog", 10, 10, 200, 200, False)])
    frames = {"images": images, "captions": caps, "objects": objs}
    bad = frames[table]
    frames[table] = bad.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit(value))
        .otherwise(pl.col(column))
        .cast(bad.schema[column])
        .alias(column)
    )
    with pytest.raises(ValueError, match=match):
        _run((frames["images"], frames["captions"], frames["objects"], cats, tags), tmp_path)


def test_missing_column_and_unknown_type_fail(tmp_path: Path) -> None:
    images, caps, objs, cats, tags = _frames([("dog", 10, 10, 200, 200, False)])
    with pytest.raises(ValueError, match="raw__objects: frame lacks columns \\['iscrowd'\\]"):
        _run((images, caps, objs.drop("iscrowd"), cats, tags), tmp_path)
    with pytest.raises(ValueError, match="unknown instruction types \\['caption'\\]"):
        _run((images, caps, objs, cats, tags), tmp_path, types=("caption",))


def test_per_image_variants_have_their_own_ids(tmp_path: Path) -> None:
    frames = _frames([("dog", 10, 10, 200, 200, False), ("cat", 600, 400, 300, 300, False)])
    df = _run(frames, tmp_path, per_image=3, types=("global", "negative"))
    assert df.height == 6 and df["conversation_id"].n_unique() == 6
    assert sorted(df["variant"].to_list()) == [0, 0, 1, 1, 2, 2]


def test_region_selection_respects_area_and_limit(tmp_path: Path) -> None:
    frames = _frames(
        [("dog", 0, 0, 100, 100, False),  # 1.25% of the image: too small
         ("cat", 300, 300, 300, 300, False), ("cat", 10, 400, 250, 250, False),
         ("bench", 600, 50, 350, 200, False), ("person", 0, 0, 900, 700, True)]
    )  # fmt: skip
    df = _run(frames, tmp_path, types=("region",), max_regions_per_image=2)
    # largest first, distinct categories first: the big cat, then the bench
    assert df["region_object_id"].to_list() == ["obj_1", "obj_3"]
    assert df["image_path"].to_list() == [
        str((tmp_path / "regions" / SRC / f"a_{k}.jpg").resolve()) for k in range(2)
    ]
    df3 = _run(frames, tmp_path, types=("region",), max_regions_per_image=3)
    assert df3["region_object_id"].to_list() == ["obj_1", "obj_3", "obj_2"]


# --------------------------------------------------------------------------- coco-mini


@dataclass
class Mini:
    df: pl.DataFrame
    images: pl.DataFrame
    captions: pl.DataFrame
    objects: pl.DataFrame
    tags: pl.DataFrame
    image_root: Path
    regions_dir: Path
    hashes_before: dict[str, str]
    hashes_after: dict[str, str]
    frames: tuple[pl.DataFrame, ...]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _collect(coco_mini: Path) -> tuple[tuple[pl.DataFrame, ...], Path]:
    result = collect_source("coco-mini", coco_mini)
    frames = (result.images, result.captions, result.objects, result.categories, result.tags)
    return frames, find_coco_files(coco_mini).image_dir


@pytest.fixture(scope="module")
def mini(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Mini:
    frames, image_root = _collect(coco_mini)
    regions_dir = tmp_path_factory.mktemp("regions")
    before = _tree_hashes(coco_mini)
    df = generate_templates(
        *frames,
        source="coco-mini",
        image_root=image_root,
        regions_dir=regions_dir,
        config=TemplateConfig(render_workers=2),
    )
    after = _tree_hashes(coco_mini)
    images, captions, objects, _, tags = frames
    return Mini(df, images, captions, objects, tags, image_root, regions_dir, before, after,
                frames)  # fmt: skip


def _nouns() -> dict[str, str]:
    out = {}
    for _, name, _ in COCO_CATEGORIES:
        out[name] = name
        out[plural(name)] = name
    return out


NOUNS = _nouns()
NOUN_RE = "|".join(sorted((re.escape(n) for n in NOUNS), key=len, reverse=True))
REL = (
    r"further left in the picture than|further right in the picture than|higher in the picture "
    r"than|lower in the picture than|larger in the picture than|smaller in the picture than"
)
COUNT_RE = re.compile(rf"\b{NUM} (other )?(?:(?:pair|piece)s? of )?({NOUN_RE})\b", re.IGNORECASE)
ONLY_RE = re.compile(rf"\bthe only ({NOUN_RE})\b")
RELATION_RE = re.compile(
    rf"\b(?:the (boxed )?(?:(?:pair|piece) of )?({NOUN_RE})|(It)) (?:is|are) (?:also )?({REL}) "
    rf"the (?:(?:pair|piece) of )?({NOUN_RE})\b"
)
MENTION_RE = re.compile(rf"\b({NOUN_RE})\b")
THIRDS_RE = re.compile(r"\b(?:(top|middle|bottom)-(left|centre|right) part|the (centre))\b")
PERCENT_RE = re.compile(r"(\d+)% of the")


class Truth:
    """The annotations of one image, queried the plain way (no code shared with generate)."""

    def __init__(self, objects: pl.DataFrame, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.rows = objects.select(
            "object_id", "category_name", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "iscrowd"
        ).rows()
        self.names = {r[1] for r in self.rows}

    def count(self, name: str) -> int:
        return sum(1 for r in self.rows if r[1] == name and not r[6])

    def has_crowd(self, name: str) -> bool:
        return any(r[1] == name and r[6] for r in self.rows)

    def boxes(self, name: str) -> list[tuple[float, float, float, float]]:
        return [r[2:6] for r in self.rows if r[1] == name and not r[6]]

    def box(self, object_id: str) -> tuple[float, float, float, float]:
        return next(r[2:6] for r in self.rows if r[0] == object_id)

    def holds(self, a: list, b: list, rel: str) -> bool:
        """Side relations: every A box ends 3% of the image before every B box begins on the
        axis (no overlap, so no containment either); sizes: a factor of two in area."""
        if not a or not b:
            return False
        gx, gy = 0.03 * self.w, 0.03 * self.h
        for ax, ay, aw, ah in a:
            for bx, by, bw, bh in b:
                ok = {
                    "further left in the picture than": ax + aw + gx <= bx,
                    "further right in the picture than": bx + bw + gx <= ax,
                    "higher in the picture than": ay + ah + gy <= by,
                    "lower in the picture than": by + bh + gy <= ay,
                    "larger in the picture than": aw * ah >= 2 * bw * bh,
                    "smaller in the picture than": 2 * aw * ah <= bw * bh,
                }[rel]
                if not ok:
                    return False
        return True


def _truths(m: Mini) -> dict[str, Truth]:
    objs = {k[0]: g for k, g in m.objects.group_by("image_id")}
    empty = m.objects.clear()
    return {
        image_id: Truth(objs.get(image_id, empty), w, h)
        for image_id, w, h in m.images.select("image_id", "width", "height").iter_rows()
    }


def _description_answers(turns: list[dict]) -> set[int]:
    describe = set(phrasing.DESCRIBE_Q) | set(phrasing.REDESCRIBE_Q)
    return {i + 1 for i, t in enumerate(turns) if t["from"] == "human" and t["value"] in describe}


def test_all_types_well_formed(mini: Mini) -> None:
    df = mini.df
    assert df.columns == list(GENERATED_CONVERSATIONS.columns)
    assert set(df["instruction_type"]) == {"global", "negative", "region"}
    counts = dict(df.group_by("instruction_type").len().iter_rows())
    assert counts["global"] == counts["negative"] == mini.images.height == 80
    assert counts["region"] >= 80
    assert df["drop_reason"].null_count() == df.height
    assert (df["generator"] == "template").all()
    assert (df["prompt_version"] == TEMPLATE_VERSION).all()
    assert df["model"].null_count() == df["cache_hit"].null_count() == df.height
    for row in df.iter_rows(named=True):
        turns = row["turns"]
        assert len(turns) >= 6 and len(turns) % 2 == 0
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(t["value"].strip() for t in turns)
        assert row["conversation_id"] == stable_id(
            "conv", "coco-mini", row["image_id"], row["instruction_type"], "template",
            TEMPLATE_VERSION, row["variant"],
        )  # fmt: skip
        assert row["source_annotation_ids"]


def test_source_annotation_ids_belong_to_the_image(mini: Mini) -> None:
    owner = dict(mini.objects.select("object_id", "image_id").iter_rows())
    owner.update(mini.captions.select("caption_id", "image_id").iter_rows())
    for image_id, ids in mini.df.select("image_id", "source_annotation_ids").iter_rows():
        assert all(owner[i] == image_id for i in ids)
    regions = mini.df.filter(pl.col("instruction_type") == "region")
    for oid, ids in regions.select("region_object_id", "source_annotation_ids").iter_rows():
        assert oid in ids


def test_every_count_is_the_annotated_count(mini: Mini) -> None:
    truths = _truths(mini)
    checked = 0
    for image_id, turns in mini.df.select("image_id", "turns").rows():
        truth = truths[image_id]
        skip = _description_answers(turns)
        for i, turn in enumerate(turns):
            if turn["from"] != "gpt" or i in skip:
                continue
            for number, other, noun in COUNT_RE.findall(turn["value"]):
                name = NOUNS[noun.lower()]
                n = int(number) if number.isdigit() else NUMBERS[number.lower()]
                assert not truth.has_crowd(name), turn["value"]
                expected = truth.count(name) - (1 if other else 0)
                assert n == expected, (image_id, turn["value"])
                checked += 1
            for noun in ONLY_RE.findall(turn["value"]):
                assert truth.count(NOUNS[noun]) == 1 and not truth.has_crowd(NOUNS[noun])
    assert checked >= 150


def test_every_stated_relation_is_true_of_the_boxes(mini: Mini) -> None:
    truths = _truths(mini)
    checked = 0
    rows = mini.df.select("image_id", "instruction_type", "region_object_id", "turns").rows()
    for image_id, itype, region_oid, turns in rows:
        truth = truths[image_id]
        skip = _description_answers(turns)
        for i, turn in enumerate(turns):
            if turn["from"] != "gpt" or i in skip:
                continue
            for boxed, subj, it, rel, obj in RELATION_RE.findall(turn["value"]):
                if boxed or it:
                    assert itype == "region"
                    a = [truth.box(region_oid)]
                else:
                    a = truth.boxes(NOUNS[subj])
                    assert not truth.has_crowd(NOUNS[subj])
                assert not truth.has_crowd(NOUNS[obj])
                assert truth.holds(a, truth.boxes(NOUNS[obj]), rel), (image_id, turn["value"])
                checked += 1
    assert checked >= 60


OPPOSITE_REL = {
    "further left in the picture than": "further right in the picture than",
    "higher in the picture than": "lower in the picture than",
    "larger in the picture than": "smaller in the picture than",
}
OPPOSITE_REL |= {v: k for k, v in OPPOSITE_REL.items()}


def _check_negative_pair(truth: Truth, absent: set[str], question: str, answer: str) -> bool:
    """Hold one negative-conversation pair against the boxes; True when it asks about an absent
    object. A "No" answers a false premise and a "Yes" a true one, never the other way."""
    yes = answer.startswith("Yes")
    polar = re.match(
        r"(and )?(is|are|does|can you see|can you count|would) |i think", question, re.I
    )
    # Only a polar question is answered yes or no ("How many ...?", "Where is ...?" are not).
    assert bool(polar) == bool(re.match(r"(Yes|No)\b", answer)), (question, answer)
    named = {NOUNS[m] for m in MENTION_RE.findall(question)}
    missing = named - truth.names
    if missing:
        assert not yes and missing <= absent and len(named) == 1, (question, answer)
    if yes:
        assert named and named <= truth.names, (question, answer)
    for match in MENTION_RE.finditer(answer):
        name = NOUNS[match.group(1)]
        denied = re.search(r"\b(?:no|any) (?:(?:pair|piece)s? of )?$", answer[: match.start()])
        assert bool(denied) == (name not in truth.names), answer
    for number, _, noun in COUNT_RE.findall(question):
        n = int(number) if number.isdigit() else NUMBERS[number.lower()]
        name = NOUNS[noun.lower()]
        assert not truth.has_crowd(name)
        assert (n == truth.count(name)) == yes, (question, answer)  # a true or a false count
    for subj, rel, obj in re.findall(
        rf"the ({NOUN_RE}) (?:is |are )?({REL}) the ({NOUN_RE})", question
    ):
        a_boxes, b_boxes = truth.boxes(NOUNS[subj]), truth.boxes(NOUNS[obj])
        assert truth.holds(a_boxes, b_boxes, rel) == yes, (question, answer)
        assert truth.holds(a_boxes, b_boxes, rel if yes else OPPOSITE_REL[rel])
    return bool(missing)


def test_negative_questions_are_answered_truly_and_absent_objects_never_affirmed(
    mini: Mini,
) -> None:
    truths = _truths(mini)
    absent_ranked = {
        image_id: set(names)
        for image_id, names in mini.tags.select(
            "image_id", pl.col("absent").list.eval(pl.element().struct.field("name"))
        ).iter_rows()
    }
    negative = mini.df.filter(pl.col("instruction_type") == "negative")
    absent_questions = non_polar = 0
    sides = {"Yes": 0, "No": 0}
    for image_id, turns in negative.select("image_id", "turns").iter_rows():
        truth = truths[image_id]
        asked_absent = 0
        assert _denies(turns[1]["value"])  # every negative conversation opens denying
        for q, a in zip(turns[::2], turns[1::2], strict=True):
            asked_absent += _check_negative_pair(
                truth, absent_ranked[image_id], q["value"], a["value"]
            )
            sides["Yes" if a["value"].startswith("Yes") else "No"] += 1
            non_polar += not re.match(r"(Yes|No)\b", a["value"])
        assert asked_absent >= 1
        absent_questions += asked_absent
    assert absent_questions >= 120
    assert sides["Yes"] >= 90 and sides["No"] >= 160, sides
    assert non_polar >= 20  # how-many and where questions about absent objects, answered so


def _denies(answer: str) -> bool:
    return answer.startswith(("No", "None", "Zero", "Nowhere", "There is no", "There are no",
                              "I can't", "There is nothing"))  # fmt: skip


REGION_WHERE_POLAR_RE = re.compile(
    r"\b(?:boxed|outlined|highlighted) .* in the (?:(top|middle|bottom)-(left|centre|right) "
    r"part|(centre)) of the"
)
REGION_REL_POLAR_RE = re.compile(
    rf"\b(?:boxed|outlined|highlighted) (?:(?:pair|piece) of )?(?:{NOUN_RE}) (?:is )?({REL}) "
    rf"the (?:(?:pair|piece) of )?({NOUN_RE})\?"
)


def _check_region_polar(truth: Truth, oid: str, name: str, cell: tuple[int, int], q: str,
                        a: str) -> bool:  # fmt: skip
    """Hold a yes/no region question's answer against the boxes; True when it was one."""
    if not re.match(r"(Is|Are|Does|Would) ", q):
        return False
    yes = a.startswith("Yes")
    assert yes or a.startswith("No"), (q, a)
    where = REGION_WHERE_POLAR_RE.search(q)
    rel = REGION_REL_POLAR_RE.search(q)
    if where:
        row, col, centre = where.groups()
        asked = (1, 1) if centre else (["top", "middle", "bottom"].index(row),
                                       ["left", "centre", "right"].index(col))  # fmt: skip
        assert (asked == cell) == yes, (q, a)
    elif rel:
        holds = truth.holds([truth.box(oid)], truth.boxes(NOUNS[rel.group(2)]), rel.group(1))
        assert holds == yes, (q, a)
    elif "the only" in q:
        assert (truth.count(name) == 1 and not truth.has_crowd(name)) == yes, (q, a)
    else:
        assert re.match(r"Are there (more|any other) ", q), q
        assert (truth.count(name) > 1 or truth.has_crowd(name)) == yes, (q, a)
    return True


def test_region_answers_match_the_boxed_object(mini: Mini) -> None:
    truths = _truths(mini)
    regions = mini.df.filter(pl.col("instruction_type") == "region")
    area = dict(mini.objects.select("object_id", pl.col("bbox_w") * pl.col("bbox_h")).iter_rows())
    sizes = {i: (w, h) for i, w, h in mini.images.select("image_id", "width", "height").rows()}
    polar = {True: 0, False: 0}
    for image_id, oid, turns in regions.select("image_id", "region_object_id", "turns").rows():
        truth = truths[image_id]
        name = next(r[1] for r in truth.rows if r[0] == oid)
        assert not next(r[6] for r in truth.rows if r[0] == oid)
        w, h = sizes[image_id]
        assert area[oid] >= 0.02 * w * h
        assert {NOUNS[m] for m in MENTION_RE.findall(turns[1]["value"])} == {name}
        x, y, bw, bh = truth.box(oid)
        cx, cy = (x + bw / 2) / w, (y + bh / 2) / h
        cell = (min(2, int(cy * 3)), min(2, int(cx * 3)))
        for q, a in zip(turns[2::2], turns[3::2], strict=True):
            polar[_check_region_polar(truth, oid, name, cell, q["value"], a["value"])] += 1
        for turn in turns[1::2]:
            for row, col, centre in THIRDS_RE.findall(turn["value"]):
                if centre:
                    assert 1 / 3 <= cx < 2 / 3 and 1 / 3 <= cy < 2 / 3
                else:
                    assert ["left", "centre", "right"].index(col) == min(2, int(cx * 3))
                    assert ["top", "middle", "bottom"].index(row) == min(2, int(cy * 3))
            for pct in PERCENT_RE.findall(turn["value"]):
                assert abs(int(pct) - 100 * area[oid] / (w * h)) <= 0.5 + 1e-9
    per_image = regions.group_by("image_id").len()["len"]
    assert per_image.max() <= 2
    assert polar[True] >= 150 and polar[False] >= 150, polar


def _is_red(pixel: tuple[int, int, int]) -> bool:
    r, g, b = pixel
    return r > 170 and g < 90 and b < 90


def test_region_images_have_the_box_on_the_object(mini: Mini) -> None:
    boxes = {
        r[0]: r[1:]
        for r in mini.objects.select("object_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h").rows()
    }
    files = dict(mini.images.select("image_id", "file_name").iter_rows())
    regions = mini.df.filter(pl.col("instruction_type") == "region")
    for image_id, oid, path, variant in regions.select(
        "image_id", "region_object_id", "image_path", "variant"
    ).rows():
        stem = Path(files[image_id]).stem
        assert path == str(mini.regions_dir.resolve() / "coco-mini" / f"{stem}_{variant}.jpg")
        rendered = Image.open(path).convert("RGB")
        original = Image.open(mini.image_root / files[image_id]).convert("RGB")
        assert rendered.size == original.size
        x, y, w, h = boxes[oid]
        x0, y0 = round(x), round(y)
        x1, y1 = min(rendered.width - 1, round(x + w)), min(rendered.height - 1, round(y + h))
        edge = [(x0 + (x1 - x0) * k // 10, yy) for k in range(11) for yy in (y0, y1)]
        edge += [(xx, y0 + (y1 - y0) * k // 10) for k in range(11) for xx in (x0, x1)]
        assert all(_is_red(rendered.getpixel(p)) for p in edge), (path, oid)
        cx, cy = round(x + w / 2), round(y + h / 2)
        centre_diff = sum(
            abs(a - b)
            for a, b in zip(rendered.getpixel((cx, cy)), original.getpixel((cx, cy)), strict=True)
        )
        assert centre_diff < 60  # the inside is the photo, not paint


def test_originals_are_untouched(mini: Mini) -> None:
    assert mini.hashes_before == mini.hashes_after
    assert len(mini.hashes_before) >= 80


def test_same_seed_same_rows_and_another_seed_other_phrasing(mini: Mini, tmp_path: Path) -> None:
    def run(seed: int) -> pl.DataFrame:
        return generate_templates(
            *mini.frames, source="coco-mini", image_root=mini.image_root,
            regions_dir=mini.regions_dir, config=TemplateConfig(seed=seed, render_regions=False),
        )  # fmt: skip

    again = run(0)
    assert again.equals(mini.df)
    assert again.write_ipc(None).getvalue() == mini.df.write_ipc(None).getvalue()
    other = run(1)
    assert other["conversation_id"].to_list() == mini.df["conversation_id"].to_list()
    changed = sum(
        a != b for a, b in zip(other["turns"].to_list(), mini.df["turns"].to_list(), strict=True)
    )
    assert changed > 0.8 * mini.df.height


def _template_of(text: str) -> str:
    text = MENTION_RE.sub("X", text)
    return re.sub(rf"\b{NUM}\b", "N", text)


@pytest.mark.parametrize(("itype", "bound"), [("global", 30), ("negative", 25), ("region", 20)])
def test_phrasings_vary(mini: Mini, itype: str, bound: int) -> None:
    rows = mini.df.filter(pl.col("instruction_type") == itype)["turns"].to_list()
    questions = {_template_of(t["value"]) for turns in rows for t in turns[0::2]}
    answers = {_template_of(t["value"]) for turns in rows for t in turns[1::2]}
    assert len(questions) >= bound
    assert len(answers) >= bound
    first_questions = {turns[0]["value"] for turns in rows}
    assert len(first_questions) >= 5


def test_region_images_are_rendered_and_failures_become_reasons(tmp_path: Path) -> None:
    frames = _frames([("cat", 300, 300, 300, 300, False), ("bench", 600, 50, 350, 200, False)])
    Image.new("RGB", (1000, 800), (0, 90, 0)).save(tmp_path / "a.jpg", "JPEG")
    config = TemplateConfig(types=("region",), render_workers=1)
    args = {"source": SRC, "image_root": tmp_path, "regions_dir": tmp_path / "regions"}
    df = generate_templates(*frames, **args, config=config)
    assert df["drop_reason"].null_count() == 2 and df["drop_detail"].null_count() == 2
    for path in df["image_path"]:
        with Image.open(path) as im:
            assert im.size == (1000, 800)
    (tmp_path / "a.jpg").unlink()
    for path in df["image_path"]:
        Path(path).unlink()
    failed = generate_templates(*frames, **args, config=config)
    assert failed["drop_reason"].to_list() == ["region_render_failed"] * 2
    assert "a.jpg" in failed["drop_detail"][0]
    assert failed["turns"].list.len().min() >= 6


def test_generation_split_over_processes_gives_the_serial_rows(mini: Mini, tmp_path: Path) -> None:
    # A copy of the photos where the last image with a region is unreadable, so a render
    # failure in a helper's chunk must land on that image's rows after the parts are joined.
    root = tmp_path / "images"
    shutil.copytree(mini.image_root, root)
    region_rows = mini.df.filter(pl.col("instruction_type") == "region")
    broken_id = region_rows["image_id"].sort()[-1]
    (broken_name,) = mini.images.filter(pl.col("image_id") == broken_id)["file_name"]
    (root / broken_name).write_bytes(b"not an image")

    def run(workers: int, regions: str) -> pl.DataFrame:
        config = TemplateConfig(workers=workers, render_workers=2)
        return generate_templates(*mini.frames, source="coco-mini", image_root=root,
                                  regions_dir=tmp_path / regions, config=config)  # fmt: skip

    serial, split = run(1, "serial"), run(3, "split")
    assert split.drop("image_path").equals(serial.drop("image_path"))
    moved = split["image_path"].str.replace(str(tmp_path / "split"), str(tmp_path / "serial"))
    assert moved.to_list() == serial["image_path"].to_list()
    failed = split.filter(pl.col("drop_reason") == "region_render_failed")
    assert failed.height > 0 and set(failed["image_id"]) == {broken_id}
    rendered = split.filter(
        (pl.col("instruction_type") == "region") & pl.col("drop_reason").is_null()
    )
    assert rendered.height == region_rows.filter(pl.col("image_id") != broken_id).height
    assert all(Path(p).is_file() for p in rendered["image_path"])


def test_generation_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        run._check_config(TemplateConfig(workers=0))
