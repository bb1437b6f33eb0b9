"""Annotation adaptation: global, negative and region conversations written from templates.

Every sentence a template answer states is derived from the annotations, and the rules that
decide what may be said are these (the tests check them on coco-mini):

- Counts exclude crowd annotations (``iscrowd``), which box an uncounted group. A category
  with any crowd box in the image is never given a number: presence answers call it "a crowd
  of people" ("a group of boats": scorers read "crowd" as people) and it is not asked about
  in counting, false-count or relation questions.
- Relations are worded in the picture's frame ("further left in the picture than", "higher in
  the picture than", "larger in the picture than"): the boxes show where things are drawn, not
  how they stand in the world (trucks in the background are higher in the picture than a car,
  not above it). A side relation is stated only when, on that axis, every A box ends at least
  ``SPATIAL_GAP`` of the image width (height) before every B box begins: boxes that overlap on
  the axis, or contain one another, are never left/right/higher/lower (a person standing on a
  surfboard, a cup in a hand). "The dogs" means all of them.
- "A is larger in the picture than B" needs every A box to have at least ``SIZE_RATIO`` times
  the area of every B box.
- English comes from ``vocab``'s one inflector: "people", "a pair of skis", "some broccoli"
  (a mass noun: "the broccoli is", "three pieces of broccoli"), "a sheep", "an oven".
- A question gets an answer of its form: only a polar question is answered "Yes"/"No" (a
  how-many question about an absent object gets "There are no ..., so the count is zero", a
  where-question "There is no ... in this image"), and only a request ("Describe ...",
  "Can you ...?") may be answered "Sure.".
- An inventory lists the most numerous categories; when it leaves some out it ends "among
  other things", so it never reads as complete when it is not.
- Region positions use image thirds of the box centre; coverage is the box area over the image
  area. Coordinates are those of the stored pixels, as COCO boxes are. Region objects are the
  largest non-crowd boxes covering at least ``region_min_area_frac`` of the image, distinct
  categories first; the count answer gives the total with the boxed one ("three bananas in
  all: the boxed one and two others"), never "N other <noun>", which reads as a count of N.
  Yes/no region questions ask the true position or the opposite third, the relation that
  holds or its opposite, "the only one?" or "any others?"; the answer states the truth.
- Negative questions about absent objects use the top of the ``raw__tags.absent`` ranking
  (co-occurring, so plausible), minus anything annotated in the image or named by one of its
  captions (``score.caption_mentions``: CHAIR counts those as present); the answer denies and
  then lists what is annotated. False counts ask for the true count plus 1 to 3 and answer
  with the true count; false relations ask the opposite of a relation that holds.
- Balance (POPE): a negative conversation opens with a denial (an absent object when the
  ranking has one) and then alternates confirmations and denials, the last side drawn with
  "no" twice as likely (global conversations add yes-answers). Confirmations ask about an
  annotated category, its true count or a relation that holds, in the same question forms as
  the denials, so the form never gives the answer away. A negative conversation without a
  denial is not made (``too_few_facts``).
- Captions are quoted (whitespace tidied, first letter capitalised, a full stop added), never
  attributed; they are the only text not derived from boxes, so a caption may name something
  the boxes lack. A caption stating a count the boxes contradict ("two giraffes" over two
  zebras) is never quoted (``quotable_captions``). Attributes (adjective + category) are not
  generated yet.
- A conversation needs ``MIN_PAIRS`` question/answer pairs; one the annotations cannot fill is
  kept as a row with empty turns and ``drop_reason`` "too_few_facts: ...". A region image that
  fails to render keeps its turns and gets ``drop_reason`` "region_render_failed: ...".

Phrasings are drawn per conversation from pools by a stream of bytes hashed from
``(seed, conversation_id)``, so a seed fixes every row byte for byte, on any machine.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import polars as pl
import pyarrow as pa

from vlit_assets.core.generated.regions import (
    RenderJob,
    choose_regions,
    region_stems,
    render_regions,
)
from vlit_assets.core.ids import stable_id
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS
from vlit_assets.core.text.objects import (
    MASS,
    NUMBER_NAMES,
    NUMBER_WORDS,
    a_phrase,
    count_noun,
    count_phrase,
    no_phrase,
    number_word,
    plural,
    the_phrase,
    unit_noun,
)
from vlit_assets.core.text.reading import caption_mentions, stated_counts, turns_long
from vlit_assets.core.vocab import INSTRUCTION_TYPES

TEMPLATE_VERSION = "template-4"  # bump whenever a template, rule or selection changes
GENERATOR = "template"
SPATIAL_GAP = 0.03  # share of the image width (height) between boxes stated apart
SIZE_RATIO = 2.0
MIN_PAIRS = 3
MAX_PAIRS = 4
ABSENT_POOL = 5  # absent categories drawn from the top of the ranking

OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String(),
    "source": pl.String(),
    "image_id": pl.String(),
    "instruction_type": pl.String(),
    "generator": pl.String(),
    "variant": pl.Int32(),
    "turns": pl.List(pl.Struct({"from": pl.String(), "value": pl.String()})),
    "image_path": pl.String(),
    "region_object_id": pl.String(),
    "source_annotation_ids": pl.List(pl.String()),
    "model": pl.String(),
    "prompt_version": pl.String(),
    "prompt_tokens": pl.Int32(),
    "completion_tokens": pl.Int32(),
    "latency_ms": pl.Float64(),
    "cache_hit": pl.Boolean(),
    "drop_reason": pl.String(),
    "run_id": pl.String(),
}
assert tuple(OUTPUT_SCHEMA) == tuple(GENERATED_CONVERSATIONS.columns)


@dataclass(frozen=True)
class TemplateConfig:
    types: tuple[str, ...] = ("global", "negative", "region")
    per_image: int = 1  # conversations per image for global and negative
    seed: int = 0
    region_min_area_frac: float = 0.02  # box area over image area
    max_regions_per_image: int = 2  # region conversations per image (variant = region index)
    render_regions: bool = True
    render_workers: int | None = None  # None: every core
    # Processes that write conversations; None: every core once a source has at least
    # PARALLEL_MIN_IMAGES images (below that, starting a process costs more than it saves).
    workers: int | None = None


PARALLEL_MIN_IMAGES = 20_000


# --------------------------------------------------------------------------- English


_NUMBER_HINT = r"(?i)[0-9]|\b(?:" + "|".join(NUMBER_WORDS) + r")\b"
_NUMBER_WORDS = NUMBER_NAMES
# The phrase helpers are vocab's (the project's one inflector); cached here, where they run
# several times per conversation.
plural = lru_cache(maxsize=2048)(plural)
count_phrase = lru_cache(maxsize=8192)(count_phrase)
a_phrase = lru_cache(maxsize=2048)(a_phrase)
count_noun = lru_cache(maxsize=2048)(count_noun)
the_phrase = lru_cache(maxsize=8192)(the_phrase)
unit_noun = lru_cache(maxsize=2048)(unit_noun)


@lru_cache(maxsize=2048)
def crowd_phrase(name: str, *, other: bool = False) -> str:
    """An uncounted group: "a crowd of people", "a group of boats"."""
    # "crowd" alone reads as people (scorers map it to `person`), so other things are a group.
    word = "crowd" if name == "person" else "group"
    return f"a {word} of {'other ' if other else ''}{plural(name)}"


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(caption: str) -> str:
    text = " ".join(caption.split())
    text = _cap(text)
    return text if text[-1:] in ".!?" else f"{text}."


# Relations are said in the picture's frame: "higher in the picture" is what the boxes show,
# "above" would claim a physical arrangement (trucks in the background are not above a car).
REL_SHORT = {
    "left": "further left",
    "right": "further right",
    "above": "higher",
    "below": "lower",
    "larger": "larger",
    "smaller": "smaller",
}
REL_TEXT = {k: f"{v} in the picture than" for k, v in REL_SHORT.items()}
OPPOSITE = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "larger": "smaller",
    "smaller": "larger",
}
_AXIS = {"left": "h", "right": "h", "above": "v", "below": "v", "larger": "s", "smaller": "s"}


# --------------------------------------------------------------------------- phrasing pools

DESCRIBE_Q = (
    "Can you describe the scene in the image?",
    "What is happening in this picture?",
    "Describe the image briefly.",
    "What does this photo show?",
    "Give me a short description of the image.",
    "What can you see in this picture?",
    "Summarize the content of the image in one sentence.",
    "Tell me what is going on in this photo.",
)
DESCRIBE_A = (
    "{c}",
    "Here is what it shows: {c}",
    "In short, the scene is this: {c}",
    "The photo can be summed up like this: {c}",
)
# Only a request ("Describe ...", "Can you ...?") is answered "Sure."; "What does this photo
# show?" is a question, not a request.
DESCRIBE_REQUEST_A = (*DESCRIBE_A, "Sure. {c}")
REQUEST_STARTS = ("Can you", "Could you", "Would you", "Describe", "Give", "Summarize", "Tell")
REDESCRIBE_Q = (
    "Can you describe it in a different way?",
    "How else would you describe the image?",
    "Could you give another description of the scene?",
)
PRESENCE_Q = (
    "Is there {a} in the image?",
    "Can you see any {pl} in this picture?",
    "Does the photo contain {a}?",
    "Do you notice {a} anywhere in the picture?",
    "Are there any {pl} in the scene?",
)
PRESENCE_A = (
    "Yes, there {be} {cp} in the image.",
    "Yes. I can see {cp}.",
    "Yes, the picture contains {cp}.",
    "Yes, {cp} {be} visible.",
)
PRESENCE_CROWD_A = (
    "Yes, there is {crowd} in the image.",
    "Yes. I can see {crowd}, too many to count exactly.",
    "Yes, the picture shows {crowd}.",
)
COUNT_Q = (
    "How many {cn} are there in the image?",
    "How many {cn} can you count?",
    "Count the {cn} in this picture.",
    "What is the number of {cn} in the photo?",
    "How many {cn} does the picture show?",
)
COUNT_A = (
    "There {be} {cp}.",
    "I count {cp}.",
    "The image shows {cp}.",
    "{Cp} in total.",
)
INVENTORY_Q = (
    "What objects can you see, and how many of each?",
    "List the objects in the picture with their counts.",
    "Which things are in the image, and how many of them?",
)
INVENTORY_A = (
    "I can see {inv}.",
    "The picture contains {inv}.",
    "There {be} {inv}.",
)
RELATION_Q = {
    "h": (
        "In the picture, {be} {a} further left or further right than {b}?",
        "Where {be} {a} in the picture relative to {b}?",
        "How {be} {a} positioned in the frame compared with {b}?",
        "Describe where {a} {be} in the picture in relation to {b}.",
    ),
    "v": (
        "In the picture, {be} {a} higher or lower than {b}?",
        "Where {be} {a} in the picture relative to {b}?",
        "How {be} {a} placed vertically in the frame compared with {b}?",
        "Describe where {a} {be} in the picture in relation to {b}.",
    ),
    "s": (
        "Which looks bigger in the picture, {a} or {b}?",
        "How does the size of {a} in the picture compare with {b}?",
        "{Be} {a} larger or smaller in the picture than {b}?",
    ),
}
RELATION_A = (
    "{A} {be} {rel} {b}.",
    "From this viewpoint, {a} {be} {rel} {b}.",
    "Looking at the frame, {a} {be} {rel} {b}.",
)
# Questions about an absent object, each with the answers that fit its form: only a polar
# question is answered "No"; "how many" gets a count of none, "where" and "point out" a
# statement that there is none.
ABSENT_POLAR_A = (
    "No, there {be} no {no} in this image.",
    "No, I don't see any {no} here.",
    "No. The picture does not contain any {no}.",
    "No, there {be} no {no} in the picture.",
)
ABSENT_COUNT_A = (
    "There {be} no {no} in this image, so the count is zero.",
    "None: I can't see any {no} in the picture.",
    "Zero. There {be} no {no} here.",
)
ABSENT_WHERE_A = (
    "There is no {x} in this image.",
    "I can't find any {no} in the picture; there is none.",
    "Nowhere: the photo does not show any {no}.",
)
ABSENT_POINT_A = (
    "I can't: there is no {x} in the picture.",
    "There is nothing to point out; the image does not contain any {no}.",
)
ABSENT_Q = (
    ("Is there {a} in the image?", ABSENT_POLAR_A),
    ("Can you see any {pl} in this picture?", ABSENT_POLAR_A),
    ("Where is the {x} in this photo?", ABSENT_WHERE_A),
    ("Can you point out the {x} in the picture?", ABSENT_POINT_A),
    ("Does the picture include {a}?", ABSENT_POLAR_A),
    ("How many {cn} are in the image?", ABSENT_COUNT_A),
    ("And is there {a}?", ABSENT_POLAR_A),  # last: never the opening question (see _n_absent)
)
# POPE-style probes about present objects. The polar forms are those of ABSENT_Q, so the
# wording of a question never tells whether the answer is yes or no.
CONFIRM_Q = (
    "Is there {a} in the image?",
    "Can you see any {pl} in this picture?",
    "Does the picture include {a}?",
    "And is there {a}?",
)
CONFIRM_A = (
    "Yes, there {be} {cp} in the image.",
    "Yes. I can see {cp}.",
    "Yes, the picture includes {cp}.",
)
CONFIRM_CROWD_A = (
    "Yes, there is {crowd} in the image.",
    "Yes. I can see {crowd}, too many to count exactly.",
)
INVENTORY_TAIL = (
    " It shows {inv}.",
    " Instead, I can see {inv}.",
    " What it does show: {inv}.",
    " The image contains {inv}.",
)
# Asked with the true count too (TRUE_COUNT_A), so a stated number does not give the answer away.
FALSE_COUNT_Q = (
    "{Be} there {mcp} in the image?",
    "Can you count {mcp} in this picture?",
    "I think I see {mcp}. Is that right?",
    "Does the photo show {mcp}?",
)
FALSE_COUNT_A = (
    "No, there {be} {cp}, not {m}.",
    "No. I count {cp}, not {m}.",
    "No, the image shows only {cp}.",
)
FALSE_RELATION_Q = (
    "{Be} {a} {frel} {b}?",
    "Is it true that {a} {be} {frel} {b}?",
    "Would you say {a} {be} {frel} {b}?",
)
TRUE_COUNT_A = (
    "Yes, there {be} exactly {cp}.",
    "Yes, that is right: I count {cp}.",
    "Yes. The image shows {cp}.",
)
# FALSE_RELATION_Q is asked with the relation that holds too, answered by TRUE_RELATION_A.
TRUE_RELATION_A = (
    "Yes, {a} {be} {rel} {b}.",
    "Yes. From this viewpoint, {a} {be} {rel} {b}.",
    "Yes, that is right: {a} {be} {rel} {b}.",
)
FALSE_RELATION_A = (
    "No, {a} {be} {rel} {b}, not {fshort}.",
    "No. Actually, {a} {be} {rel} {b}.",
    "No, it is the other way round: {a} {be} {rel} {b}.",
)
REGION_WHAT_Q = (
    "What is the object inside the red box?",
    "What is marked by the red rectangle?",
    "Can you tell me what the highlighted region contains?",
    "What does the red box show?",
    "Identify the object outlined in red.",
    "What kind of object has been highlighted with the red frame?",
    "Look at the red rectangle. What is inside it?",
)
REGION_WHAT_A = (
    "It is {a}.",
    "The red box marks {a}.",
    "The outlined object is {a}.",
    "That is {a}.",
)
REGION_WHERE_Q = (
    "Where is the boxed {x} located in the image?",
    "In which part of the picture is the {x} in the red box?",
    "Where in the frame does the boxed {x} appear?",
    "Which area of the photo holds the highlighted {x}?",
    "Tell me roughly where the outlined {x} is in the picture.",
)
REGION_WHERE_A = (
    "It is in the {loc} of the image.",
    "{The} sits in the {loc} of the picture.",
    "You can find it in the {loc} of the frame.",
)
# Asked with the true position or a clearly wrong one (the opposite third); answers state
# only the true position.
REGION_WHERE_POLAR_Q = (
    "Is the boxed {x} in the {qloc} of the image?",
    "Would you say the outlined {x} is in the {qloc} of the picture?",
    "Does the highlighted {x} appear in the {qloc} of the frame?",
)
REGION_WHERE_YES_A = (
    "Yes, it is in the {loc} of the image.",
    "Yes. {The} sits in the {loc} of the picture.",
)
REGION_WHERE_NO_A = (
    "No, it is in the {loc} of the image.",
    "No. {The} sits in the {loc} of the picture instead.",
)
REGION_REL_Q = (
    "How does the boxed {x} relate to the other objects?",
    "Where is the boxed {x} compared with the other things in the picture?",
    "Describe the position of the boxed {x} relative to its surroundings.",
    "What is around the highlighted {x}, and where is it relative to those things?",
    "How is the outlined {x} placed with respect to the rest of the scene?",
)
REGION_REL_A = (
    "{The} {be} {rel} {b}.",
    "Relative to the rest of the scene, {the} {be} {rel} {b}.",
    "From this viewpoint, {the} {be} {rel} {b}.",
)
REGION_REL_MORE = " It is also {rel} {b}."
# Asked with the relation that holds or its opposite; the answer states the one that holds.
REGION_REL_POLAR_Q = (
    "Is the boxed {x} {qrel} {b}?",
    "Would you say the outlined {x} is {qrel} {b}?",
    "Is it true that the highlighted {x} is {qrel} {b}?",
)
REGION_REL_YES_A = (
    "Yes, {the} {be} {rel} {b}.",
    "Yes. From this viewpoint, {the} {be} {rel} {b}.",
)
REGION_REL_NO_A = (
    "No, {the} {be} {rel} {b}.",
    "No. Actually, {the} {be} {rel} {b}.",
)
REGION_SIZE_Q = (
    "How much of the image does the boxed {x} take up?",
    "How large is the boxed {x} in the picture?",
    "What share of the frame does the outlined {x} fill?",
)
REGION_SIZE_A = (
    "Its box covers about {p}% of the image.",
    "{The} takes up roughly {p}% of the picture.",
)
REGION_COUNT_Q = (
    "How many other {cn} are there in the image?",
    "How many {cn} apart from the boxed one can you see?",
    "How many {cn} does the picture hold besides the outlined one?",
)
REGION_COUNT_A = (
    "There {be} {cp} in all: the boxed one and {k} {others}.",
    "Apart from the boxed one, I can see {k} more, so {cp} in total.",
    "{Cp} altogether, so {k} besides the boxed one.",
)
REGION_ONLY_A = (
    "None: it is the only {x} in the image.",
    "There are no others; {the} is the only {x} in the picture.",
)
REGION_CROWD_A = (
    "Besides the boxed one there is {crowd}, too many to count exactly.",
    "Too many to count exactly: there is {crowd} besides the boxed one.",
)
# Two polar forms whose yes/no answers swap meaning, so neither answer is the habit.
REGION_MORE_Q = (
    "Are there more {cn} besides the boxed one?",
    "Are there any other {cn} in the image?",
)
# "{k} more" and "{k} {others}", never "two other dogs": a number before a noun reads as
# the count of that category.
REGION_MORE_YES_A = (
    "Yes, {k} more: there are {cp} in all.",
    "Yes. Apart from the boxed one I can see {k} more, so {cp} in total.",
)
REGION_MORE_CROWD_A = ("Yes, there is {crowd} besides the boxed one, too many to count exactly.",)
REGION_MORE_NO_A = (
    "No, {the} is the only {x} in the image.",
    "No. It is the only {x} in the picture.",
)
REGION_ALONE_Q = (
    "Is the boxed {x} the only {x} in the image?",
    "Is the highlighted one the only {x} here?",
)
REGION_ALONE_YES_A = (
    "Yes, it is the only {x} in the image.",
    "Yes. {The} is the only {x} in the picture.",
)
REGION_ALONE_NO_A = (
    "No, there are {cp} in all: the boxed one and {k} {others}.",
    "No. Besides the boxed one I can see {k} more, so {cp} in total.",
)
REGION_ALONE_CROWD_A = ("No, there is also {crowd}, too many to count exactly.",)

# --------------------------------------------------------------------------- per-image facts


class _Draw:
    """Bytes of a 64-byte BLAKE2b digest, used as a cheap, portable random stream."""

    __slots__ = ("buf", "i")

    def __init__(self, key: str) -> None:
        self.buf = hashlib.blake2b(key.encode(), digest_size=64).digest()
        self.i = 0

    def below(self, n: int) -> int:
        if self.i == 64:
            self.buf = hashlib.blake2b(self.buf, digest_size=64).digest()
            self.i = 0
        value = self.buf[self.i]
        self.i += 1
        return value % n

    def pick(self, seq: Sequence):
        # below() inlined: this runs about ten times per conversation
        if self.i == 64:
            self.buf = hashlib.blake2b(self.buf, digest_size=64).digest()
            self.i = 0
        value = self.buf[self.i]
        self.i += 1
        return seq[value % len(seq)]

    def shuffled(self, seq: Sequence) -> list:
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return out


_Box = tuple[str, float, float, float, float]  # object_id, x, y, w, h


class _Cat:
    """One category in one image: its boxes, whether it has a crowd box, and box extremes."""

    __slots__ = ("name", "ids", "boxes", "crowd", "n", "ext")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ids: list[str] = []
        self.boxes: list[_Box] = []
        self.crowd = False
        self.n = 0
        # left-most left edge, right-most right edge, top-most top, bottom-most bottom,
        # smallest and largest area
        self.ext: tuple[float, float, float, float, float, float] = (0, 0, 0, 0, 0, 0)

    def finish(self) -> None:
        self.n = len(self.boxes)
        if self.n:
            self.ext = (
                min(b[1] for b in self.boxes),
                max(b[1] + b[3] for b in self.boxes),
                min(b[2] for b in self.boxes),
                max(b[2] + b[4] for b in self.boxes),
                min(b[3] * b[4] for b in self.boxes),
                max(b[3] * b[4] for b in self.boxes),
            )

    @property
    def countable(self) -> bool:
        return self.n > 0 and not self.crowd


def _relations(
    a: tuple[float, float, float, float, float, float],
    b: tuple[float, float, float, float, float, float],
    width: float,
    height: float,
) -> list[str]:
    """Relations between two sets of boxes given by their extremes (see ``_Cat.ext``).

    A side relation needs every A box to end, on that axis, at least ``SPATIAL_GAP`` of the
    image before every B box begins: boxes that overlap on the axis (a person standing on a
    surfboard, a cup held in a hand, one box inside another) are never left/right/above/below.
    """
    a_x0, a_x1, a_y0, a_y1, a_mina, a_maxa = a
    b_x0, b_x1, b_y0, b_y1, b_mina, b_maxa = b
    gx, gy = SPATIAL_GAP * width, SPATIAL_GAP * height
    out: list[str] = []
    if a_x1 + gx <= b_x0:
        out.append("left")
    elif b_x1 + gx <= a_x0:
        out.append("right")
    if a_y1 + gy <= b_y0:
        out.append("above")
    elif b_y1 + gy <= a_y0:
        out.append("below")
    if a_mina >= SIZE_RATIO * b_maxa:
        out.append("larger")
    elif a_maxa * SIZE_RATIO <= b_mina:
        out.append("smaller")
    return out


def relations_between(a: _Cat, b: _Cat, width: float, height: float) -> list[str]:
    """Relations "every a <rel> every b" that the boxes support (see module doc)."""
    return _relations(a.ext, b.ext, width, height)


@dataclass
class _Image:
    image_id: str
    file_name: str
    width: int
    height: int
    captions: list[tuple[str, str]]  # caption_id, text
    objects: list[tuple[str, str, float, float, float, float, bool]]  # id, name, x, y, w, h, crowd
    absent: list[str]


class _Scene:
    """Facts of one image, computed once and shared by its conversations."""

    def __init__(self, img: _Image) -> None:
        self.img = img
        cats: dict[str, _Cat] = {}
        for oid, name, x, y, w, h, crowd in img.objects:
            cat = cats.get(name)
            if cat is None:
                cat = cats[name] = _Cat(name)
            cat.ids.append(oid)
            if crowd:
                cat.crowd = True
            else:
                cat.boxes.append((oid, x, y, w, h))
        for cat in cats.values():
            cat.finish()
        self.cats = [cats[k] for k in sorted(cats)]
        self.by_name = cats
        self.countable = [c for c in self.cats if c.countable]
        present = set(cats)
        self.absent = [name for name in img.absent if name not in present]
        self._relations: list[tuple[_Cat, _Cat, str]] | None = None
        self._inventory: dict[int, tuple[str, int, list[str]]] = {}

    @property
    def relations(self) -> list[tuple[_Cat, _Cat, str]]:
        if self._relations is None:
            rels = []
            cs = self.countable
            w, h = self.img.width, self.img.height
            for i, a in enumerate(cs):
                for b in cs[i + 1 :]:
                    for rel in relations_between(a, b, w, h):
                        rels.append((a, b, rel))
            self._relations = rels
        return self._relations

    def inventory(self, limit: int = 4) -> tuple[str, int, list[str]]:
        """The annotated categories as "two dogs, one cat and a crowd of people"."""
        cached = self._inventory.get(limit)
        if cached is None:
            cached = self._inventory[limit] = self._make_inventory(limit)
        return cached

    def _make_inventory(self, limit: int) -> tuple[str, int, list[str]]:
        """The ``limit`` most numerous categories; a list cut short says "among other things",
        so it never reads as everything the image holds."""
        ranked = sorted(self.cats, key=lambda c: (c.crowd, -c.n, c.name))
        cats = ranked[:limit]
        parts = [crowd_phrase(c.name) if c.crowd else count_phrase(c.n, c.name) for c in cats]
        first = cats[0] if cats else None
        singular = first is not None and not first.crowd and first.n == 1
        ids = [oid for c in cats for oid in c.ids]
        text = _join(parts)
        if len(ranked) > limit:
            text += ", among other things"
        return text, 1 if singular else 2, ids


_Pair = tuple[str, str]
_Fact = tuple[_Pair, list[str]]


def _relation_qa(d: _Draw, a: _Cat, b: _Cat, rel: str) -> _Pair:
    if d.below(2):
        a, b, rel = b, a, OPPOSITE[rel]
    an, be = the_phrase(a.name, a.n)
    bn, _ = the_phrase(b.name, b.n)
    q = d.pick(RELATION_Q[_AXIS[rel]]).format(a=an, b=bn, be=be, Be=_cap(be))
    ans = d.pick(RELATION_A).format(A=_cap(an), a=an, b=bn, be=be, rel=REL_TEXT[rel])
    return q, ans


def _describe(d: _Draw, scene: _Scene, used: set[str], questions: Sequence[str]) -> _Fact | None:
    caps = [c for c in scene.img.captions if c[0] not in used]
    if not caps:
        return None
    cid, text = d.pick(caps)
    used.add(cid)
    q = d.pick(questions)
    answers = DESCRIBE_REQUEST_A if q.startswith(REQUEST_STARTS) else DESCRIBE_A
    return (q, d.pick(answers).format(c=_sentence(text))), [cid]


# --------------------------------------------------------------------------- global


def _g_presence(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    cats = [c for c in s.cats if c.name not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.add(c.name)
    q = d.pick(PRESENCE_Q).format(a=a_phrase(c.name), pl=plural(c.name))
    if c.crowd:
        a = d.pick(PRESENCE_CROWD_A).format(crowd=crowd_phrase(c.name))
    else:
        be = "is" if c.n == 1 else "are"
        a = d.pick(PRESENCE_A).format(be=be, cp=count_phrase(c.n, c.name))
    return (q, a), list(c.ids)


def _g_count(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    cats = [c for c in s.countable if c.name not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.add(c.name)
    cp = count_phrase(c.n, c.name)
    q = d.pick(COUNT_Q).format(cn=count_noun(c.name))
    a = d.pick(COUNT_A).format(be="is" if c.n == 1 else "are", cp=cp, Cp=_cap(cp))
    return (q, a), list(c.ids)


def _g_relation(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    rels = s.relations
    if not rels:
        return None
    a, b, rel = d.pick(rels)
    return _relation_qa(d, a, b, rel), [*a.ids, *b.ids]


def _g_inventory(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    if not s.cats:
        return None
    inv, number, ids = s.inventory(limit=5)
    a = d.pick(INVENTORY_A).format(inv=inv, be="is" if number == 1 else "are")
    return (d.pick(INVENTORY_Q), a), ids


def _g_redescribe(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    return _describe(d, s, used, REDESCRIBE_Q)


_Builder = Callable[[_Draw, _Scene, set[str]], "_Fact | None"]


def _assemble(
    d: _Draw,
    s: _Scene,
    first: Sequence[_Builder],
    rest: Sequence[_Builder],
    fallback: Sequence[_Builder],
) -> tuple[list[_Pair], list[str]]:
    """Pairs from ``first``, then ``rest`` in a drawn order, then ``fallback`` while short."""
    pairs: list[_Pair] = []
    ids: list[str] = []
    used: set[str] = set()
    for builders, cap in ((first, MAX_PAIRS), (d.shuffled(rest), MAX_PAIRS), (fallback, MIN_PAIRS)):
        for build in builders:
            if len(pairs) >= cap:
                break
            fact = build(d, s, used)
            if fact is not None:
                pairs.append(fact[0])
                ids.extend(fact[1])
    return pairs, ids


def _g_describe(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    return _describe(d, s, used, DESCRIBE_Q)


def build_global(d: _Draw, s: _Scene) -> tuple[list[_Pair], list[str]]:
    return _assemble(
        d, s, (_g_describe,), (_g_presence, _g_count, _g_relation), (_g_redescribe, _g_inventory)
    )


# --------------------------------------------------------------------------- negative


def _n_absent(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    pool = [x for x in s.absent[:ABSENT_POOL] if x not in used]
    if not pool:
        return None
    x = d.pick(pool)
    # "And is there ...?" cannot open a conversation; nothing is used before the first pair.
    questions = ABSENT_Q if used else ABSENT_Q[:-1]
    used.add(x)
    question, answers = d.pick(questions)
    be, no = no_phrase(x)
    one = x if x in MASS else unit_noun(x)
    q = question.format(a=a_phrase(x), pl=plural(x), x=one, cn=count_noun(x))
    a = d.pick(answers).format(be=be, no=no, x=one)
    ids: list[str] = []
    if s.cats:
        inv, _, ids = s.inventory()
        a += d.pick(INVENTORY_TAIL).format(inv=inv)
    return (q, a), ids


def _n_false_count(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    cats = [c for c in s.countable if ("#" + c.name) not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.add("#" + c.name)
    m = c.n + 1 + d.below(3)
    q = d.pick(FALSE_COUNT_Q).format(mcp=count_phrase(m, c.name), Be="Are")
    a = d.pick(FALSE_COUNT_A).format(
        be="is" if c.n == 1 else "are", cp=count_phrase(c.n, c.name), m=number_word(m)
    )
    return (q, a), list(c.ids)


def _n_false_relation(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    rels = s.relations
    if not rels or "#rel" in used:
        return None
    used.add("#rel")
    a, b, rel = d.pick(rels)
    if d.below(2):
        a, b, rel = b, a, OPPOSITE[rel]
    an, be = the_phrase(a.name, a.n)
    bn, _ = the_phrase(b.name, b.n)
    frel = REL_TEXT[OPPOSITE[rel]]
    q = d.pick(FALSE_RELATION_Q).format(a=an, b=bn, be=be, Be=_cap(be), frel=frel)
    ans = d.pick(FALSE_RELATION_A).format(
        a=an, b=bn, be=be, rel=REL_TEXT[rel], fshort=REL_SHORT[OPPOSITE[rel]]
    )
    return (q, ans), [*a.ids, *b.ids]


def _n_confirm(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    cats = [c for c in s.cats if c.name not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.add(c.name)
    q = d.pick(CONFIRM_Q).format(a=a_phrase(c.name), pl=plural(c.name))
    if c.crowd:
        a = d.pick(CONFIRM_CROWD_A).format(crowd=crowd_phrase(c.name))
    else:
        a = d.pick(CONFIRM_A).format(be="is" if c.n == 1 else "are", cp=count_phrase(c.n, c.name))
    return (q, a), list(c.ids)


def _n_true_count(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    # Its own key: the true count and a false one are both fair probes of one category, and a
    # small scene needs both to fill a conversation.
    cats = [c for c in s.countable if ("=" + c.name) not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.update((c.name, "=" + c.name))
    cp = count_phrase(c.n, c.name)
    be = "is" if c.n == 1 else "are"
    q = d.pick(FALSE_COUNT_Q).format(mcp=cp, Be=_cap(be))
    return (q, d.pick(TRUE_COUNT_A).format(be=be, cp=cp)), list(c.ids)


def _n_true_relation(d: _Draw, s: _Scene, used: set[str]) -> _Fact | None:
    rels = s.relations
    if not rels or "#rel" in used:
        return None
    used.add("#rel")
    a, b, rel = d.pick(rels)
    if d.below(2):
        a, b, rel = b, a, OPPOSITE[rel]
    an, be = the_phrase(a.name, a.n)
    bn, _ = the_phrase(b.name, b.n)
    q = d.pick(FALSE_RELATION_Q).format(a=an, b=bn, be=be, Be=_cap(be), frel=REL_TEXT[rel])
    ans = d.pick(TRUE_RELATION_A).format(a=an, b=bn, be=be, rel=REL_TEXT[rel])
    return (q, ans), [*a.ids, *b.ids]


def _take(d: _Draw, s: _Scene, used: set[str], queue: list[_Builder]) -> _Fact | None:
    while queue:
        fact = queue.pop()(d, s, used)
        if fact is not None:
            return fact
    return None


def build_negative(d: _Draw, s: _Scene) -> tuple[list[_Pair], list[str]]:
    """Denials interleaved with confirmations of what is there, as POPE samples them.

    The first pair denies (an absent object when the ranking has one); then confirmations and
    denials alternate, the last pair's side drawn, so a model meets "yes" and "no" to the same
    question forms. A side that runs out of facts yields its turn to the other; a conversation
    with no denial at all has no pairs (it is not a negative conversation).
    """
    # Queues pop from the end: the first builder to try is the last element.
    denials: list[_Builder] = [_n_false_count, _n_absent, _n_absent]
    denials += d.shuffled((_n_false_count, _n_false_relation, _n_absent))
    denials.append(_n_absent)
    confirms: list[_Builder] = [_n_true_count, _n_confirm]
    confirms += d.shuffled((_n_confirm, _n_true_count, _n_true_relation))
    pairs: list[_Pair] = []
    ids: list[str] = []
    used: set[str] = set()
    denied = 0
    # The last side leans to "no": global conversations add yes-answers of their own.
    for want_yes in (False, True, False, d.below(3) == 0):
        first, second = (confirms, denials) if want_yes else (denials, confirms)
        fact = _take(d, s, used, first)
        if fact is None:
            fact = _take(d, s, used, second)
            want_yes = not want_yes
        if fact is None:
            break
        denied += not want_yes
        pairs.append(fact[0])
        ids.extend(fact[1])
    return (pairs, ids) if denied else ([], [])


# --------------------------------------------------------------------------- region


_Obj = tuple[str, str, float, float, float, float]  # object_id, name, x, y, w, h
_FLIP = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
_CORNERS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))


def _cells(s: _Scene, x: float, y: float, w: float, h: float) -> tuple[str, str]:
    """(row, column) of the image third holding the box centre."""
    cx, cy = (x + w / 2) / s.img.width, (y + h / 2) / s.img.height
    col = "left" if cx < 1 / 3 else "centre" if cx < 2 / 3 else "right"
    row = "top" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "bottom"
    return row, col


def _loc(row: str, col: str) -> str:
    return "centre" if (row, col) == ("middle", "centre") else f"{row}-{col} part"


def _thirds(s: _Scene, x: float, y: float, w: float, h: float) -> str:
    return _loc(*_cells(s, x, y, w, h))


def _wrong_cell(d: _Draw, row: str, col: str) -> tuple[str, str]:
    """A third the centre is clearly not in: across the image, never a neighbouring third."""
    if col != "centre":
        return row, _FLIP[col]
    if row != "middle":
        return _FLIP[row], col
    return d.pick(_CORNERS)


def build_region(d: _Draw, s: _Scene, obj: _Obj) -> tuple[list[_Pair], list[str]]:
    """What is boxed, then its relations and two of position, count and size (all three when
    no relation holds).

    Which kinds appear, and whether each is asked openly or as a yes/no question, is drawn, so
    conversations about same-category boxes of different photos do not share one shape.
    """
    oid, name, *_ = obj
    the, be = the_phrase(name, 1, boxed=True)
    pairs: list[_Pair] = [(d.pick(REGION_WHAT_Q), d.pick(REGION_WHAT_A).format(a=a_phrase(name)))]
    ids = [oid]
    related = _region_relation(d, s, obj, the, be)
    kinds = _REGION_KINDS if related is None else d.shuffled(_REGION_KINDS)[:2]
    rest = [kind(d, s, obj, the) for kind in kinds]
    if related is not None:
        rest.append(related)
    for pair, extra in d.shuffled(rest):
        pairs.append(pair)
        ids.extend(i for i in extra if i not in ids)
    return pairs, ids


def _region_where(d: _Draw, s: _Scene, obj: _Obj, the: str) -> tuple[_Pair, list[str]]:
    _, name, x, y, w, h = obj
    row, col = _cells(s, x, y, w, h)
    loc, The = _loc(row, col), _cap(the)
    kind = d.below(3)
    if kind == 0:
        return (
            d.pick(REGION_WHERE_Q).format(x=unit_noun(name)),
            d.pick(REGION_WHERE_A).format(loc=loc, The=The),
        ), []
    qloc = loc if kind == 1 else _loc(*_wrong_cell(d, row, col))
    answers = REGION_WHERE_YES_A if kind == 1 else REGION_WHERE_NO_A
    q = d.pick(REGION_WHERE_POLAR_Q).format(x=unit_noun(name), qloc=qloc)
    return (q, d.pick(answers).format(loc=loc, The=The)), []


def _region_size(d: _Draw, s: _Scene, obj: _Obj, the: str) -> tuple[_Pair, list[str]]:
    _, name, _, _, w, h = obj
    p = max(1, round(100 * w * h / (s.img.width * s.img.height)))
    q = d.pick(REGION_SIZE_Q).format(x=unit_noun(name))
    return (q, d.pick(REGION_SIZE_A).format(p=p, The=_cap(the))), []


def _box_relations(
    box: tuple[float, float, float, float], b: _Cat, width: float, height: float
) -> list[str]:
    """``relations_between`` for one box against a category, without building a ``_Cat``."""
    x, y, w, h = box
    return _relations((x, x + w, y, y + h, w * h, w * h), b.ext, width, height)


def _region_relation(
    d: _Draw, s: _Scene, obj: _Obj, the: str, be: str
) -> tuple[_Pair, list[str]] | None:
    """The box against other categories, asked openly or as yes/no; None when nothing holds."""
    _, name, x, y, w, h = obj
    box = (x, y, w, h)
    width, height = s.img.width, s.img.height
    found: list[tuple[_Cat, str]] = []
    for other in s.countable:
        if other.name != name:
            for rel in _box_relations(box, other, width, height):
                found.append((other, rel))
    if not found:
        return None
    picked = [found[i] for i in sorted(d.shuffled(range(len(found)))[:2])]
    other, rel = picked[0]
    bn, _ = the_phrase(other.name, other.n)
    kind = d.below(3)
    if kind:
        qrel = REL_TEXT[rel if kind == 1 else OPPOSITE[rel]]
        q = d.pick(REGION_REL_POLAR_Q).format(x=unit_noun(name), qrel=qrel, b=bn)
        answers = REGION_REL_YES_A if kind == 1 else REGION_REL_NO_A
        return (q, d.pick(answers).format(the=the, be=be, rel=REL_TEXT[rel], b=bn)), list(other.ids)
    ans = d.pick(REGION_REL_A).format(the=the, The=_cap(the), be=be, rel=REL_TEXT[rel], b=bn)
    ans = _cap(ans)
    ids = list(other.ids)
    if len(picked) > 1:
        other2, rel2 = picked[1]
        bn2, _ = the_phrase(other2.name, other2.n)
        ans += REGION_REL_MORE.format(rel=REL_TEXT[rel2], b=bn2)
        ids.extend(other2.ids)
    return (d.pick(REGION_REL_Q).format(x=unit_noun(name)), ans), ids


def _region_count(d: _Draw, s: _Scene, obj: _Obj, the: str) -> tuple[_Pair, list[str]]:
    """Other boxes of the boxed category: "how many", "are there more" or "is it the only"."""
    name = obj[1]
    own = s.by_name[name]
    kind = d.below(3)
    cn = count_noun(name)
    if kind == 0:
        q = d.pick(REGION_COUNT_Q).format(cn=cn)
        crowd_a, alone_a, more_a = REGION_CROWD_A, REGION_ONLY_A, REGION_COUNT_A
    elif kind == 1:
        q = d.pick(REGION_MORE_Q).format(cn=cn)
        crowd_a, alone_a, more_a = REGION_MORE_CROWD_A, REGION_MORE_NO_A, REGION_MORE_YES_A
    else:
        q = d.pick(REGION_ALONE_Q).format(x=unit_noun(name))
        crowd_a, alone_a, more_a = REGION_ALONE_CROWD_A, REGION_ALONE_YES_A, REGION_ALONE_NO_A
    if own.crowd:
        a = d.pick(crowd_a).format(crowd=crowd_phrase(name, other=True))
    elif own.n == 1:
        a = d.pick(alone_a).format(x=unit_noun(name), the=the, The=_cap(the))
    else:
        k = own.n - 1
        cp = count_phrase(own.n, name)
        a = d.pick(more_a).format(
            be="are", cp=cp, Cp=_cap(cp), k=number_word(k), others="other" if k == 1 else "others"
        )
    return (q, a), list(own.ids)


_RegionKind = Callable[[_Draw, _Scene, _Obj, str], tuple[_Pair, list[str]]]
_REGION_KINDS: tuple[_RegionKind, ...] = (_region_where, _region_count, _region_size)

# --------------------------------------------------------------------------- frames


def _require(frame: pl.DataFrame, table: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{table}: frame lacks columns {missing}")


def _first_bad(frame: pl.DataFrame, mask: pl.Expr, key: str) -> str | None:
    bad = frame.filter(mask)
    return None if bad.is_empty() else str(bad[key][0])


def _validate(
    images: pl.DataFrame, captions: pl.DataFrame, objects: pl.DataFrame, categories: pl.DataFrame
) -> None:
    checks = [
        (
            images,
            "raw__images",
            "image_id",
            "width",
            pl.col("width").is_null() | (pl.col("width") <= 0),
        ),
        (
            images,
            "raw__images",
            "image_id",
            "height",
            pl.col("height").is_null() | (pl.col("height") <= 0),
        ),
        (images, "raw__images", "image_id", "file_name", pl.col("file_name").is_null()),
        (
            captions,
            "raw__captions",
            "caption_id",
            "caption",
            pl.col("caption").is_null() | (pl.col("caption").str.strip_chars() == ""),
        ),
        (
            objects,
            "raw__objects",
            "object_id",
            "bbox_w",
            pl.col("bbox_w").is_null() | (pl.col("bbox_w") <= 0),
        ),
        (
            objects,
            "raw__objects",
            "object_id",
            "bbox_h",
            pl.col("bbox_h").is_null() | (pl.col("bbox_h") <= 0),
        ),
        (objects, "raw__objects", "object_id", "iscrowd", pl.col("iscrowd").is_null()),
        (
            objects,
            "raw__objects",
            "object_id",
            "category_id",
            ~pl.col("category_id").is_in(categories["category_id"].implode()),
        ),
        (
            objects,
            "raw__objects",
            "object_id",
            "image_id",
            ~pl.col("image_id").is_in(images["image_id"].implode()),
        ),
        (
            captions,
            "raw__captions",
            "caption_id",
            "image_id",
            ~pl.col("image_id").is_in(images["image_id"].implode()),
        ),
    ]
    for frame, table, key, field, mask in checks:
        bad = _first_bad(frame, mask, key)
        if bad is not None:
            raise ValueError(f"{table}: record {key}={bad} has a bad {field!r}")


def _ranges(frame: pl.DataFrame) -> dict[str, tuple[int, int]]:
    runs = frame.group_by("image_id", maintain_order=True).len()
    out: dict[str, tuple[int, int]] = {}
    start = 0
    for image_id, n in zip(runs["image_id"].to_list(), runs["len"].to_list(), strict=True):
        out[image_id] = (start, start + n)
        start += n
    return out


class _Frames(NamedTuple):
    images: pl.DataFrame
    captions: pl.DataFrame
    objects: pl.DataFrame
    tags: pl.DataFrame


def prepare_frames(
    images: pl.DataFrame,
    captions: pl.DataFrame,
    objects: pl.DataFrame,
    categories: pl.DataFrame,
    tags: pl.DataFrame,
    source: str,
) -> _Frames:
    """The source's rows, checked (a bad record raises naming it) and sorted by image id."""
    _require(images, "raw__images", ("image_id", "source", "file_name", "width", "height"))
    _require(captions, "raw__captions", ("caption_id", "source", "image_id", "caption"))
    _require(
        objects,
        "raw__objects",
        (
            "object_id",
            "source",
            "image_id",
            "category_id",
            "category_name",
            "bbox_x",
            "bbox_y",
            "bbox_w",
            "bbox_h",
            "iscrowd",
        ),
    )
    _require(categories, "raw__categories", ("source", "category_id", "name"))
    _require(tags, "raw__tags", ("image_id", "source", "absent"))
    of_source = pl.col("source") == source
    images = images.filter(of_source).sort("image_id")
    captions = captions.filter(of_source).sort("image_id", "caption_id")
    objects = objects.filter(of_source).sort("image_id", "object_id")
    categories = categories.filter(of_source)
    _validate(images, captions, objects, categories)
    return _Frames(images, captions, objects, tags.filter(of_source))


def quotable_captions(
    captions: pl.DataFrame, objects: pl.DataFrame, categories: pl.Series
) -> pl.DataFrame:
    """The captions minus those stating a count the boxes contradict ("two giraffes" of zebras).

    Counts are read as the scorer reads them (``score.stated_counts``) and judged as it judges
    them: only for the source's ``categories``, never for a category with a crowd box, and an
    unboxed category counts zero.
    """
    # Only a caption holding a digit or a number word can state a count.
    maybe = captions.filter(pl.col("caption").str.contains(_NUMBER_HINT))
    if maybe.is_empty():
        return captions
    quoted = maybe.select(
        conversation_id="caption_id",
        image_id="image_id",
        turns=pl.concat_list(
            pl.struct(pl.lit("gpt").alias("from"), pl.col("caption").alias("value"))
        ),
    )
    counts = stated_counts(turns_long(quoted)).filter(
        pl.col("category").is_in(categories.implode())
    )
    if counts.is_empty():
        return captions
    # Casts: a frame built from empty Python lists has Null columns.
    crowd = pl.col("iscrowd").cast(pl.Boolean)
    boxes = objects.group_by(
        pl.col("image_id").cast(pl.String),
        pl.col("category_name").cast(pl.String).alias("category"),
    ).agg(n=(~crowd).sum().cast(pl.Int64), crowd=crowd.any())
    wrong = (
        counts.join(boxes, on=["image_id", "category"], how="left")
        .filter(~pl.col("crowd").fill_null(False) & (pl.col("stated") != pl.col("n").fill_null(0)))
        .get_column("conversation_id")
    )
    if wrong.is_empty():
        return captions
    return captions.filter(~pl.col("caption_id").is_in(wrong.implode()))


def _to_images(frames: _Frames, named: pl.DataFrame) -> list[_Image]:
    """Per-image Python records from prepared frames (sorted by image id).

    ``named`` (image_id, category) are categories the captions name; they leave the absent
    candidates.
    """
    images, captions, objects, tags = frames
    cap_rows = list(
        zip(captions["caption_id"].to_list(), captions["caption"].to_list(), strict=True)
    )
    obj_rows = list(
        zip(
            objects["object_id"].to_list(),
            objects["category_name"].to_list(),
            objects["bbox_x"].to_list(),
            objects["bbox_y"].to_list(),
            objects["bbox_w"].to_list(),
            objects["bbox_h"].to_list(),
            objects["iscrowd"].to_list(),
            strict=True,
        )
    )
    cap_at, obj_at = _ranges(captions), _ranges(objects)
    names = pl.col("absent").list.eval(pl.element().struct.field("name"))
    if tags.schema["absent"] == pl.List(pl.Null):  # every list empty: no struct to read
        names = pl.col("absent").cast(pl.List(pl.String))
    absent_names = tags.select("image_id", names.alias("names"))
    absent = dict(
        zip(absent_names["image_id"].to_list(), absent_names["names"].to_list(), strict=True)
    )
    by_image: dict[str, set[str]] = {}
    for image_id, category in named.iter_rows():
        by_image.setdefault(image_id, set()).add(category)
    for image_id, names_of in by_image.items():
        if absent.get(image_id):
            absent[image_id] = [n for n in absent[image_id] if n not in names_of]
    out = []
    none = (0, 0)
    for image_id, file_name, width, height in images.select(
        "image_id", "file_name", "width", "height"
    ).iter_rows():
        cs, ce = cap_at.get(image_id, none)
        os_, oe = obj_at.get(image_id, none)
        out.append(
            _Image(
                image_id,
                file_name,
                width,
                height,
                cap_rows[cs:ce],
                obj_rows[os_:oe],
                absent.get(image_id) or [],
            )
        )
    return out


class _Rows:
    """Column buffers for the output frame; turns and ids go in flat, with list offsets."""

    def __init__(self) -> None:
        self.conv_id: list[str] = []
        self.image_id: list[str] = []
        self.itype: list[str] = []
        self.variant: list[int] = []
        self.image_path: list[str] = []
        self.region_object_id: list[str | None] = []
        self.drop_reason: list[str | None] = []
        self.turn_off = [0]
        self.turn_value: list[str] = []
        self.ids_off = [0]
        self.ids: list[str] = []

    def add(
        self,
        conv_id: str,
        image_id: str,
        itype: str,
        variant: int,
        image_path: str,
        region_object_id: str | None,
        pairs: list[_Pair],
        ids: list[str],
    ) -> None:
        self.conv_id.append(conv_id)
        self.image_id.append(image_id)
        self.itype.append(itype)
        self.variant.append(variant)
        self.image_path.append(image_path)
        self.region_object_id.append(region_object_id)
        if len(pairs) < MIN_PAIRS:
            self.drop_reason.append(
                f"too_few_facts: the annotations support {len(pairs)} of the {MIN_PAIRS} "
                f"question/answer pairs a {itype} conversation needs"
            )
            pairs = []
        else:
            self.drop_reason.append(None)
        for pair in pairs:
            self.turn_value.extend(pair)
        self.turn_off.append(len(self.turn_value))
        self.ids.extend(dict.fromkeys(ids))
        self.ids_off.append(len(self.ids))

    def table(self) -> pa.Table:
        """The per-row columns; ``_frame`` adds the constant ones and the final types."""
        # Every conversation alternates human/gpt from its first turn, so the speakers of the
        # flat turn list are one repeating pattern.
        speakers = ["human", "gpt"] * (len(self.turn_value) // 2)
        turns = pa.ListArray.from_arrays(
            pa.array(self.turn_off, pa.int32()),
            pa.StructArray.from_arrays(
                [pa.array(speakers, pa.string()), pa.array(self.turn_value, pa.string())],
                names=["from", "value"],
            ),
        )
        ids = pa.ListArray.from_arrays(
            pa.array(self.ids_off, pa.int32()), pa.array(self.ids, pa.string())
        )
        table = pa.table(
            {
                "conversation_id": pa.array(self.conv_id, pa.string()),
                "image_id": pa.array(self.image_id, pa.string()),
                "instruction_type": pa.array(self.itype, pa.string()),
                "variant": pa.array(self.variant, pa.int32()),
                "turns": turns,
                "image_path": pa.array(self.image_path, pa.string()),
                "region_object_id": pa.array(self.region_object_id, pa.string()),
                "source_annotation_ids": ids,
                "drop_reason": pa.array(self.drop_reason, pa.string()),
            }
        )
        return table


def _frame(table: pa.Table, source: str, run_id: str) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    consts = {
        "source": source,
        "generator": GENERATOR,
        "model": None,
        "prompt_version": TEMPLATE_VERSION,
        "prompt_tokens": None,
        "completion_tokens": None,
        "latency_ms": None,
        "cache_hit": None,
        "run_id": run_id,
    }
    return df.with_columns(
        pl.lit(v, dtype=OUTPUT_SCHEMA[k]).alias(k) for k, v in consts.items()
    ).select(pl.col(c).cast(t) for c, t in OUTPUT_SCHEMA.items())


def _check_config(config: TemplateConfig) -> None:
    unknown = [t for t in config.types if t not in INSTRUCTION_TYPES]
    if unknown:
        raise ValueError(f"TemplateConfig.types: unknown instruction types {unknown}")
    if config.per_image < 1 or config.max_regions_per_image < 0:
        raise ValueError("TemplateConfig: per_image must be >= 1, max_regions_per_image >= 0")
    if not 0 <= config.region_min_area_frac < 1:
        raise ValueError("TemplateConfig.region_min_area_frac must be in [0, 1)")
    if config.workers is not None and config.workers < 1:
        raise ValueError(f"TemplateConfig.workers must be >= 1, got {config.workers}")


def generate_templates(
    images: pl.DataFrame,
    captions: pl.DataFrame,
    objects: pl.DataFrame,
    categories: pl.DataFrame,
    tags: pl.DataFrame,
    *,
    source: str,
    image_root: Path,
    regions_dir: Path,
    config: TemplateConfig = TemplateConfig(),  # noqa: B008 (frozen, so sharing is safe)
    run_id: str = "",
) -> pl.DataFrame:
    """One row per template conversation (``generated__conversations`` columns).

    Global and negative rows point at the original image under ``image_root``; region rows at
    ``regions_dir/<source>/<image stem>_<k>.jpg``, rendered here when
    ``config.render_regions`` (``<out>.stamp`` sidecars let a re-run skip them). A
    conversation the annotations cannot fill with ``MIN_PAIRS`` question/answer pairs is a
    row with empty turns and a ``drop_reason``; a region whose image fails to render keeps its
    turns and gets one too. Rows come sorted by image id, then type order, then variant.
    """
    _check_config(config)
    # The loop allocates millions of small objects that all stay alive until the frame is
    # built; letting the cyclic GC rescan them again and again made 100k images 40% slower.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    workers = generation_workers(config, images.height)
    pool: ProcessPoolExecutor | None = None
    try:
        # Helper processes start first: importing this module in them overlaps the preparation.
        if workers > 1:
            pool = _start_pool(workers - 1)
        frames = prepare_frames(images, captions, objects, categories, tags, source)
        names = categories.filter(pl.col("source") == source).get_column("name")
        # Captions are ground truth for presence (score.py's CHAIR reads them too), so what
        # they name is never denied, even where COCO drew no box.
        named = caption_mentions(frames.captions)
        frames = frames._replace(captions=quotable_captions(frames.captions, frames.objects, names))
        stems = (
            region_stems(frames.images.select("image_id", "file_name").iter_rows())
            if "region" in config.types
            else {}
        )
        paths = (str(Path(image_root).resolve()), str(Path(regions_dir).resolve() / source))
        df, jobs = _generate(frames, named, stems, paths, source, config, run_id, pool, workers)
        if config.render_regions and jobs:
            df = _render(df, jobs, config.render_workers)
        return df
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if gc_was_enabled:
            gc.enable()


_Job = tuple[int, RenderJob]  # output row, what to render


def _generate(
    frames: _Frames,
    named: pl.DataFrame,
    stems: dict[str, str],
    paths: tuple[str, str],
    source: str,
    config: TemplateConfig,
    run_id: str,
    pool: ProcessPoolExecutor | None = None,
    workers: int = 1,
) -> tuple[pl.DataFrame, list[_Job]]:
    if pool is None or workers < 2 or frames.images.height < 2:
        table, jobs = _template_rows(_to_images(frames, named), source, paths, stems, config)
        return _frame(table, source, run_id), jobs
    # Contiguous chunks of images (sorted by id), so concatenating the parts keeps the row
    # order. Each helper gets its chunk's rows as Arrow tables, whose buffers cross the process
    # boundary without per-value pickling, builds its own records and sends an Arrow table
    # back; this process writes the first chunk meanwhile.
    size = -(-frames.images.height // workers)
    chunks = [
        _chunk(frames, named, frames.images.slice(start, size))
        for start in range(0, frames.images.height, size)
    ]
    futures = [
        pool.submit(
            _chunk_rows,
            tuple(frame.to_arrow() for frame in chunk_frames),
            chunk_named.to_arrow(),
            paths,
            {i: stems[i] for i in chunk_frames.images["image_id"].to_list()} if stems else {},
            source,
            config,
        )
        for chunk_frames, chunk_named in chunks[1:]
    ]
    parts = [_template_rows(_to_images(*chunks[0]), source, paths, stems, config)]
    parts += [future.result() for future in futures]
    jobs: list[_Job] = []
    offset = 0
    for table, part_jobs in parts:
        jobs += [(row + offset, job) for row, job in part_jobs]
        offset += table.num_rows
    return _frame(pa.concat_tables([table for table, _ in parts]), source, run_id), jobs


def _chunk(
    frames: _Frames, named: pl.DataFrame, images: pl.DataFrame
) -> tuple[_Frames, pl.DataFrame]:
    ids = images["image_id"].implode()
    inside = pl.col("image_id").is_in(ids)
    return (
        _Frames(
            images,
            frames.captions.filter(inside),
            frames.objects.filter(inside),
            frames.tags.filter(inside),
        ),
        named.filter(inside),
    )


def _chunk_rows(
    tables: tuple[pa.Table, ...],
    named: pa.Table,
    paths: tuple[str, str],
    stems: dict[str, str],
    source: str,
    config: TemplateConfig,
) -> tuple[pa.Table, list[_Job]]:
    """A helper process's part: records from its chunk's rows, then the conversations."""
    gc.disable()  # a helper's own process; see generate_templates
    frames = _Frames(*(pl.from_arrow(t) for t in tables))
    imgs = _to_images(frames, pl.from_arrow(named))
    return _template_rows(imgs, source, paths, stems, config)


def generation_workers(config: TemplateConfig, n_images: int) -> int:
    """Processes that write template conversations for a source of ``n_images`` images."""
    if config.workers is not None:
        return max(1, min(config.workers, n_images))
    if n_images < PARALLEL_MIN_IMAGES:
        return 1
    return max(1, min(os.cpu_count() or 1, n_images))


def _start_pool(helpers: int) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded Dagster process
    pool = ProcessPoolExecutor(max_workers=helpers, mp_context=ctx)
    for _ in range(helpers):
        pool.submit(_ready)  # starts the processes now rather than at the first real task
    return pool


def _ready() -> bool:
    return True


def _render(df: pl.DataFrame, jobs: list[_Job], workers: int | None) -> pl.DataFrame:
    results = render_regions([job for _, job in jobs], workers=workers)
    reasons = df["drop_reason"].to_list()
    failed = 0
    for (row, _), result in zip(jobs, results, strict=True):
        if result.status == "failed":
            reasons[row] = f"region_render_failed: {result.error}"
            failed += 1
    if not failed:
        return df
    return df.with_columns(pl.Series("drop_reason", reasons, dtype=pl.String))


def _template_rows(
    imgs: list[_Image],
    source: str,
    paths: tuple[str, str],
    stems: dict[str, str],
    config: TemplateConfig,
) -> tuple[pa.Table, list[_Job]]:
    """Rows of ``imgs`` with the render jobs indexed by row (callers have the GC off)."""
    root, region_root = paths
    rows = _Rows()
    jobs: list[_Job] = []
    seed = config.seed
    for img in imgs:
        scene = _Scene(img)
        image_path = os.path.join(root, img.file_name)
        for itype in config.types:
            if itype == "region":
                area = img.width * img.height
                picked = choose_regions(
                    [(o[0], o[1], o[4] * o[5] / area, o[6]) for o in img.objects],
                    config.region_min_area_frac,
                    config.max_regions_per_image,
                )
                for k, obj in enumerate(img.objects[i][:6] for i in picked):
                    conv_id = stable_id(
                        "conv", source, img.image_id, itype, GENERATOR, TEMPLATE_VERSION, k
                    )
                    out = os.path.join(region_root, f"{stems[img.image_id]}_{k}.jpg")
                    pairs, ids = build_region(_Draw(f"{seed}\x1f{conv_id}"), scene, obj)
                    if config.render_regions:
                        jobs.append((len(rows.conv_id), RenderJob(image_path, obj[2:6], out)))
                    rows.add(conv_id, img.image_id, itype, k, out, obj[0], pairs, ids)
                continue
            build = build_global if itype == "global" else build_negative
            for v in range(config.per_image):
                conv_id = stable_id(
                    "conv", source, img.image_id, itype, GENERATOR, TEMPLATE_VERSION, v
                )
                pairs, ids = build(_Draw(f"{seed}\x1f{conv_id}"), scene)
                rows.add(conv_id, img.image_id, itype, v, image_path, None, pairs, ids)
    return rows.table(), jobs
