"""The COCO surface-form map, mention extraction, negation scopes and their traps."""

from __future__ import annotations

import re
import subprocess
import sys

import polars as pl
import pytest

from vlit_assets.core.text.categories import COCO_CATEGORIES
from vlit_assets.core.text.inflect import plural
from vlit_assets.core.text.objects import (
    CATEGORY_NAMES,
    COUNT_PATTERN,
    COUNTABLE_FORMS,
    FORM_TO_CATEGORY,
    MENTION_PATTERN,
    NEGATION_SCOPE_PATTERN,
    category_of,
    extract_mentions,
)
from vlit_assets.core.text.reading import rx, with_category


def _found(text: str) -> list[tuple[str, str, bool]]:
    return [(m.category, text[m.span[0] : m.span[1]], m.negated) for m in extract_mentions(text)]


def test_vocab_covers_the_80_coco_categories() -> None:
    assert len(CATEGORY_NAMES) == 80
    assert set(CATEGORY_NAMES) == {name for _, name, _ in COCO_CATEGORIES}
    assert set(FORM_TO_CATEGORY.values()) == set(CATEGORY_NAMES)


@pytest.mark.parametrize("name", CATEGORY_NAMES)
def test_every_name_and_its_plural_map_back(name: str) -> None:
    for form in (name, plural(name)):
        if name == "orange" and form == "orange":
            form = "orange."  # the bare colour word needs a fruit context; see next tests
        assert category_of(form) == name
        found = _found(f"In the photo there is {form} near the wall.")
        assert [c for c, _, _ in found] == [name], form
        assert not found[0][2]


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("dog", "dogs"),
        ("bus", "buses"),
        ("knife", "knives"),
        ("mouse", "mice"),
        ("person", "people"),
        ("sheep", "sheep"),
        ("skis", "skis"),
        ("hot dog", "hot dogs"),
        ("wine glass", "wine glasses"),
        ("toothbrush", "toothbrushes"),
        ("pony", "ponies"),
        ("guy", "guys"),
        ("policeman", "policemen"),
        ("tv", "tvs"),
    ],
)
def test_plural(word: str, expected: str) -> None:
    assert plural(word) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A man eats a hot dog.", [("person", "man"), ("hot dog", "hot dog")]),
        ("Two hot-dogs on a plate", [("hot dog", "hot-dogs")]),
        ("A teddy bear on the bed", [("teddy bear", "teddy bear"), ("bed", "bed")]),
        ("A grizzly bear in a river", [("bear", "grizzly bear")]),
        ("He swings the baseball bat", [("baseball bat", "baseball bat")]),
        ("He swings the bat", [("baseball bat", "bat")]),
        ("A catcher's mitt", [("baseball glove", "catcher's mitt")]),
        ("A glass of red wine and a wine glass", [("wine glass", "wine glass")]),
        ("The microwave oven is open", [("microwave", "microwave oven")]),
        ("An old stove", [("oven", "stove")]),
        ("People wait at the bus stop", [("person", "people")]),
        ("The train tracks are empty", []),
        ("Keep the toilet paper dry", []),
        ("Bear in mind the light", []),
        (
            "A woman on a sofa with her smartphone",
            [("person", "woman"), ("couch", "sofa"), ("cell phone", "smartphone")],
        ),
        (
            "A TV, a television and a monitor",
            [("tv", "tv"), ("tv", "television"), ("tv", "monitor")],
        ),
        ("Several kittens and a puppy", [("cat", "kittens"), ("dog", "puppy")]),
        ("An orange shirt and orange juice", []),
        ("An orange and white cat", [("cat", "cat")]),
        ("She peels an orange.", [("orange", "orange")]),
        ("An orange is on the table", [("orange", "orange"), ("dining table", "table")]),
        ("A bowl of oranges", [("bowl", "bowl"), ("orange", "oranges")]),
        ("Orange slices", [("orange", "orange")]),
        ("A skier on skis near a ski lift", [("person", "skier"), ("skis", "skis")]),
        ("A baseball player", [("person", "player")]),
        ("Some broccoli", [("broccoli", "broccoli")]),
        ("A doggy", []),
    ],
)
def test_known_traps(text: str, expected: list[tuple[str, str]]) -> None:
    assert [(c, s.lower()) for c, s, _ in _found(text)] == expected


@pytest.mark.parametrize(
    ("text", "negated"),
    [
        ("There is no dog in the image.", {"dog": True}),
        ("There is a dog.", {"dog": False}),
        ("No, there is a dog.", {"dog": False}),
        ("No. A dog sleeps.", {"dog": False}),
        ("I don't see a dog.", {"dog": True}),
        ("I don\u2019t see a dog.", {"dog": True}),
        ("There isn't any cat here", {"cat": True}),
        ("There aren't cats", {"cat": True}),
        ("A room without a couch.", {"couch": True}),
        ("None of the people wear a tie", {"person": True, "tie": True}),
        ("Neither a cat nor a dog", {"cat": True, "dog": True}),
        ("There are no elephants, zebras or lions", {"elephant": True, "zebra": True}),
        ("There is no dog, but a cat sits there.", {"dog": True, "cat": False}),
        ("There is no dog. A cat sits there.", {"dog": True, "cat": False}),
        ("There is no dog; a cat sits there.", {"dog": True, "cat": False}),
        ("A cat and no dog", {"cat": False, "dog": True}),
        ("Not only a dog but a cat", {"dog": False, "cat": False}),
        ("It is a cat instead of a dog", {"cat": False, "dog": True}),
        ("The man is not holding an umbrella", {"person": False, "umbrella": True}),
        ("There's no indication of a dog", {"dog": True}),
    ],
)
def test_negation(text: str, negated: dict[str, bool]) -> None:
    found = {c: n for c, _, n in _found(text)}
    assert found == negated


def test_spans_point_into_the_original_text() -> None:
    text = "\u0130stanbul: TWO Dogs and an Orange."
    found = _found(text)
    assert found == [("dog", "Dogs", False), ("orange", "Orange", False)]


def test_every_form_is_reachable_and_countable_forms_are_whole_categories() -> None:
    for form, category in FORM_TO_CATEGORY.items():
        probe = form + "." if form == "orange" else form
        assert [m.category for m in extract_mentions(f"see {probe} here")] == [category], form
    assert "people" in COUNTABLE_FORMS and "dogs" in COUNTABLE_FORMS
    assert "boys" not in COUNTABLE_FORMS and "puppies" not in COUNTABLE_FORMS


_CORPUS = [
    "No, there is no cat in the picture. Only a single giraffe is present.",
    "Two hot dogs, a teddy bear and three oranges sit on the dining table",
    "I don't see any tv, but a laptop and a cell phone lie near the sofa.",
    "The man is not holding an umbrella; a woman holds a purse.",
    "An orange and white cat without a collar sits beside an orange.",
    "There aren't any buses at the bus stop, nor trucks",
    "a skier with skis, a snowboarder without a snowboard",
]


@pytest.mark.parametrize("text", _CORPUS)
def test_vectorized_path_agrees_with_extract_mentions(text: str) -> None:
    """score.py cuts negation scopes out with polars (Rust regex); the result must equal the
    Python path that checks each mention against the scopes."""
    lowered = pl.DataFrame({"text": [text.lower().replace("\u2019", "'")]})
    affirmed = lowered.select(
        form=pl.col("text")
        .str.replace_all(rx(NEGATION_SCOPE_PATTERN), " . ")
        .str.extract_all(rx(MENTION_PATTERN))
    ).explode("form", keep_nulls=False)
    negated = lowered.select(
        form=pl.col("text")
        .str.extract_all(rx(NEGATION_SCOPE_PATTERN))
        .list.join(" . ")
        .str.extract_all(rx(MENTION_PATTERN))
    ).explode("form", keep_nulls=False)
    expected = extract_mentions(text)
    assert with_category(affirmed, "form")["category"].to_list() == [
        m.category for m in expected if not m.negated
    ]
    assert with_category(negated, "form")["category"].to_list() == [
        m.category for m in expected if m.negated
    ]


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("there are two dogs", [("two", "dogs")]),
        ("3 people and two small brown horses", [("3", "people"), ("two", "small brown horses")]),
        # matched here; score.stated_counts discards it for the stopwords in the gap
        ("one of the dogs", [("one", "of the dogs")]),
        ("two boys", []),  # kinds are not whole-category counts
    ],
)
def test_count_pattern(text: str, counts: list[tuple[str, str]]) -> None:
    found = [
        (m.group("number"), m.group(0).split(" ", 1)[1]) for m in re.finditer(COUNT_PATTERN, text)
    ]
    assert found == counts


def test_vocab_does_not_import_dagster() -> None:
    code = (
        "import sys, vlit_assets.core.text.objects, vlit_assets.core.scored.metrics; "
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
