"""Annotation adaptation: global, negative and region conversations written from templates.

Every sentence a template answer states is derived from the annotations, and the rules that
decide what may be said are these (the tests check them on coco-mini):

- Counts exclude crowd annotations (``iscrowd``), which box an uncounted group. A category
  with any crowd box in the image is never given a number: presence answers call it "a crowd
  of people" ("a group of boats": scorers read "crowd" as people) and it is not asked about
  in counting, false-count or relation questions.
- A relation "A is left of B" (or right, above, below) is stated only when it holds for every
  pair of A and B boxes with box centres more than ``SPATIAL_MARGIN`` of the image width
  (height) apart, and no box centre lies inside a box of the other side (a cup held by a person
  is not "to the right of" that person). "The dogs" means all of them.
- "A is larger than B" needs every A box to have at least ``SIZE_RATIO`` times the area of
  every B box.
- Region positions use image thirds of the box centre; coverage is the box area over the image
  area. Coordinates are those of the stored pixels, as COCO boxes are. Region objects are the
  largest non-crowd boxes covering at least ``region_min_area_frac`` of the image, distinct
  categories first; the count answer gives the total with the boxed one ("three bananas in
  all: the boxed one and two others").
- Negative questions about absent objects use the top of the ``raw__tags.absent`` ranking
  (co-occurring, so plausible), minus anything annotated in the image; the answer denies and
  then lists what is annotated. False counts ask for the true count plus 1 to 3 and answer
  with the true count; false relations ask the opposite of a relation that holds.
- Captions are quoted (whitespace tidied, first letter capitalised, a full stop added), never
  attributed; they are the only text not derived from boxes, so a caption may name something
  the boxes lack. Attributes (adjective + category) are not generated yet.
- A conversation needs ``MIN_PAIRS`` question/answer pairs; one the annotations cannot fill is
  kept as a row with empty turns and ``drop_reason`` "too_few_facts: ...". A region image that
  fails to render keeps its turns and gets ``drop_reason`` "region_render_failed: ...".

Phrasings are drawn per conversation from pools by a stream of bytes hashed from
``(seed, conversation_id)``, so a seed fixes every row byte for byte, on any machine.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import polars as pl
import pyarrow as pa

from vlit_assets.core.ids import stable_id
from vlit_assets.core.regions import RenderJob, render_regions
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS, INSTRUCTION_TYPES

TEMPLATE_VERSION = "template-2"  # bump whenever a template, rule or selection changes
GENERATOR = "template"
SPATIAL_MARGIN = 0.10
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


# --------------------------------------------------------------------------- English


_PLURAL_IRREGULAR = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "knife": "knives",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "skis": "skis",
    "scissors": "scissors",
    "broccoli": "broccoli",
}
_PAIRED = frozenset({"skis", "scissors"})  # one COCO box is one pair
_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)


@lru_cache(maxsize=2048)
def plural(name: str) -> str:
    """Plural of a category name; multi-word names inflect their last word."""
    head, _, last = name.rpartition(" ")
    if last in _PLURAL_IRREGULAR:
        last = _PLURAL_IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        last = last[:-1] + "ies"
    elif last.endswith("fe") and not last.endswith("ffe"):
        last = last[:-2] + "ves"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def number_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


@lru_cache(maxsize=8192)
def count_phrase(n: int, name: str, *, other: bool = False) -> str:
    """ "three dogs", "one pair of skis", "two other people"."""
    mid = " other" if other else ""
    if name in _PAIRED:
        return f"{number_word(n)}{mid} {'pair' if n == 1 else 'pairs'} of {name}"
    return f"{number_word(n)}{mid} {name if n == 1 else plural(name)}"


@lru_cache(maxsize=2048)
def crowd_phrase(name: str, *, other: bool = False) -> str:
    """An uncounted group: "a crowd of people", "a group of boats"."""
    # "crowd" alone reads as people (scorers map it to `person`), so other things are a group.
    word = "crowd" if name == "person" else "group"
    return f"a {word} of {'other ' if other else ''}{plural(name)}"


@lru_cache(maxsize=2048)
def a_phrase(name: str) -> str:
    """Indefinite singular: "a dog", "an elephant", "a pair of skis", "some broccoli"."""
    if name in _PAIRED:
        return f"a pair of {name}"
    if plural(name) == name:
        return f"some {name}"
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


@lru_cache(maxsize=2048)
def count_noun(name: str) -> str:
    """Noun after "how many": "dogs", "pairs of skis"."""
    return f"pairs of {name}" if name in _PAIRED else plural(name)


@lru_cache(maxsize=8192)
def the_phrase(name: str, n: int, *, boxed: bool = False) -> tuple[str, str]:
    """Definite phrase and its verb: ("the dog", "is"), ("the people", "are")."""
    adj = "boxed " if boxed else ""
    if n == 1:
        noun = f"pair of {name}" if name in _PAIRED else name
        return f"the {adj}{noun}", "is"
    return f"the {adj}{plural(name)}", "are"


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


REL_TEXT = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
    "larger": "larger than",
    "smaller": "smaller than",
}
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
    "Sure. {c}",
    "Here is what it shows: {c}",
    "In short, the scene is this: {c}",
    "The photo can be summed up like this: {c}",
)
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
        "{Be} {a} to the left or to the right of {b}?",
        "Where {be} {a} relative to {b}?",
        "How {be} {a} positioned compared with {b}?",
        "Describe where {a} {be} in relation to {b}.",
    ),
    "v": (
        "{Be} {a} above or below {b}?",
        "Where {be} {a} relative to {b}?",
        "How {be} {a} placed vertically compared with {b}?",
        "Describe where {a} {be} in relation to {b}.",
    ),
    "s": (
        "Which looks bigger in the picture, {a} or {b}?",
        "How does the size of {a} compare with {b}?",
        "{Be} {a} larger or smaller than {b}?",
    ),
}
RELATION_A = (
    "{A} {be} {rel} {b}.",
    "From this viewpoint, {a} {be} {rel} {b}.",
    "In the image, {a} {be} {rel} {b}.",
    "Looking at the picture, {a} {be} {rel} {b}.",
)
ABSENT_Q = (
    "Is there {a} in the image?",
    "Can you see any {pl} in this picture?",
    "Where is the {x} in this photo?",
    "Can you point out the {x} in the picture?",
    "Does the picture include {a}?",
    "How many {cn} are in the image?",
)
ABSENT_A = (
    "No, there are no {pl} in this image.",
    "No, I don't see any {pl} here.",
    "No. The picture does not contain any {pl}.",
    "No, there are no {pl} in the picture.",
)
INVENTORY_TAIL = (
    " It shows {inv}.",
    " Instead, I can see {inv}.",
    " What it does show is {inv}.",
    " The image contains {inv}.",
)
FALSE_COUNT_Q = (
    "Are there {mcp} in the image?",
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
FALSE_RELATION_A = (
    "No, {a} {be} {rel} {b}, not {frel} {pron}.",
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
    "In the picture, {the} {be} {rel} {b}.",
)
REGION_REL_MORE = " It is also {rel} {b}."
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
    "Are there more {cn} besides the boxed one?",
    "How many {cn} apart from the boxed one can you see?",
    "Is the highlighted one the only {x} here, or are there others?",
)
REGION_COUNT_A = (
    "There {be} {cp} in all: the boxed one and {k} {others}.",
    "Apart from the boxed one, I can see {k} more, so {cp} in total.",
    "{Cp} altogether, so {k} besides the boxed one.",
)
REGION_ONLY_A = (
    "None: it is the only {x} in the image.",
    "No others; {the} is the only {x} in the picture.",
)
REGION_CROWD_A = (
    "Yes, there is {crowd} besides the boxed one, too many to count exactly.",
    "Besides the boxed one there is {crowd}, too many to count exactly.",
)

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
    """One category in one image: its boxes, whether it has a crowd box, and centre extremes."""

    __slots__ = ("name", "ids", "boxes", "crowd", "n", "ext")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ids: list[str] = []
        self.boxes: list[_Box] = []
        self.crowd = False
        self.n = 0
        self.ext: tuple[float, float, float, float, float, float] = (0, 0, 0, 0, 0, 0)

    def finish(self) -> None:
        self.n = len(self.boxes)
        if self.n == 1:
            _, x, y, w, h = self.boxes[0]
            cx, cy, area = x + w / 2, y + h / 2, w * h
            self.ext = (cx, cx, cy, cy, area, area)
        elif self.n:
            cx = [b[1] + b[3] / 2 for b in self.boxes]
            cy = [b[2] + b[4] / 2 for b in self.boxes]
            area = [b[3] * b[4] for b in self.boxes]
            self.ext = (min(cx), max(cx), min(cy), max(cy), min(area), max(area))

    @property
    def countable(self) -> bool:
        return self.n > 0 and not self.crowd


def _centre_inside(a: list[_Box], b: list[_Box]) -> bool:
    for _, ax, ay, aw, ah in a:
        acx, acy = ax + aw / 2, ay + ah / 2
        for _, bx, by, bw, bh in b:
            if bx <= acx <= bx + bw and by <= acy <= by + bh:
                return True
            bcx, bcy = bx + bw / 2, by + bh / 2
            if ax <= bcx <= ax + aw and ay <= bcy <= ay + ah:
                return True
    return False


def relations_between(a: _Cat, b: _Cat, width: float, height: float) -> list[str]:
    """Relations "every a <rel> every b" that hold with a clear margin (see module doc)."""
    a_minx, a_maxx, a_miny, a_maxy, a_mina, a_maxa = a.ext
    b_minx, b_maxx, b_miny, b_maxy, b_mina, b_maxa = b.ext
    mx, my = SPATIAL_MARGIN * width, SPATIAL_MARGIN * height
    out: list[str] = []
    if a_maxx + mx < b_minx:
        out.append("left")
    elif a_minx - mx > b_maxx:
        out.append("right")
    if a_maxy + my < b_miny:
        out.append("above")
    elif a_miny - my > b_maxy:
        out.append("below")
    if out and _centre_inside(a.boxes, b.boxes):
        out = []
    if a_mina >= SIZE_RATIO * b_maxa:
        out.append("larger")
    elif a_maxa * SIZE_RATIO <= b_mina:
        out.append("smaller")
    return out


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
        cats = sorted(self.cats, key=lambda c: (c.crowd, -c.n, c.name))[:limit]
        parts = [crowd_phrase(c.name) if c.crowd else count_phrase(c.n, c.name) for c in cats]
        first = cats[0] if cats else None
        singular = first is not None and not first.crowd and first.n == 1
        ids = [oid for c in cats for oid in c.ids]
        return _join(parts), 1 if singular else 2, ids


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
    return (d.pick(questions), d.pick(DESCRIBE_A).format(c=_sentence(text))), [cid]


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
    used.add(x)
    q = d.pick(ABSENT_Q).format(a=a_phrase(x), pl=plural(x), x=x, cn=count_noun(x))
    a = d.pick(ABSENT_A).format(pl=plural(x))
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
    q = d.pick(FALSE_COUNT_Q).format(mcp=count_phrase(m, c.name))
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
    pron = "it" if b.n == 1 else "them"
    ans = d.pick(FALSE_RELATION_A).format(
        a=an, b=bn, be=be, rel=REL_TEXT[rel], frel=frel, pron=pron
    )
    return (q, ans), [*a.ids, *b.ids]


def build_negative(d: _Draw, s: _Scene) -> tuple[list[_Pair], list[str]]:
    return _assemble(
        d,
        s,
        (_n_absent,),
        (_n_false_count, _n_false_relation, _n_absent),
        (_n_absent, _n_absent, _n_false_count, _n_false_count),
    )


# --------------------------------------------------------------------------- region


def choose_regions(
    s: _Scene, min_area_frac: float, limit: int
) -> list[tuple[str, str, float, float, float, float]]:
    """Largest non-crowd boxes above the area threshold, distinct categories first."""
    img = s.img
    floor = min_area_frac * img.width * img.height
    eligible = sorted(
        (o for o in img.objects if not o[6] and o[4] * o[5] >= floor),
        key=lambda o: (-(o[4] * o[5]), o[0]),
    )
    chosen: list = []
    names: set[str] = set()
    for o in eligible:
        if len(chosen) < limit and o[1] not in names:
            chosen.append(o)
            names.add(o[1])
    for o in eligible:
        if len(chosen) >= limit:
            break
        if o not in chosen:
            chosen.append(o)
    return [o[:6] for o in chosen]


def _thirds(s: _Scene, x: float, y: float, w: float, h: float) -> str:
    cx, cy = (x + w / 2) / s.img.width, (y + h / 2) / s.img.height
    col = "left" if cx < 1 / 3 else "centre" if cx < 2 / 3 else "right"
    row = "top" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "bottom"
    return "centre" if (row, col) == ("middle", "centre") else f"{row}-{col} part"


def build_region(
    d: _Draw, s: _Scene, obj: tuple[str, str, float, float, float, float]
) -> tuple[list[_Pair], list[str]]:
    oid, name, x, y, w, h = obj
    the, be = the_phrase(name, 1, boxed=True)
    own = s.by_name[name]
    pairs: list[_Pair] = [(d.pick(REGION_WHAT_Q), d.pick(REGION_WHAT_A).format(a=a_phrase(name)))]
    ids = [oid]
    rest: list[tuple[_Pair, list[str]]] = []
    where_a = d.pick(REGION_WHERE_A).format(loc=_thirds(s, x, y, w, h), The=_cap(the))
    rest.append(((d.pick(REGION_WHERE_Q).format(x=name), where_a), []))
    rest.append(_region_relation(d, s, obj, the, be))
    rest.append(_region_count(d, own, name, the))
    for pair, extra in d.shuffled(rest):
        pairs.append(pair)
        ids.extend(i for i in extra if i not in ids)
    return pairs, ids


def _box_relations(
    box: tuple[float, float, float, float], b: _Cat, width: float, height: float
) -> list[str]:
    """``relations_between`` for one box against a category, without building a ``_Cat``."""
    x, y, w, h = box
    cx, cy, area = x + w / 2, y + h / 2, w * h
    b_minx, b_maxx, b_miny, b_maxy, b_mina, b_maxa = b.ext
    mx, my = SPATIAL_MARGIN * width, SPATIAL_MARGIN * height
    out: list[str] = []
    if cx + mx < b_minx:
        out.append("left")
    elif cx - mx > b_maxx:
        out.append("right")
    if cy + my < b_miny:
        out.append("above")
    elif cy - my > b_maxy:
        out.append("below")
    if out and _centre_inside([("", x, y, w, h)], b.boxes):
        out = []
    if area >= SIZE_RATIO * b_maxa:
        out.append("larger")
    elif area * SIZE_RATIO <= b_mina:
        out.append("smaller")
    return out


def _region_relation(
    d: _Draw, s: _Scene, obj: tuple[str, str, float, float, float, float], the: str, be: str
) -> tuple[_Pair, list[str]]:
    oid, name, x, y, w, h = obj
    box = (x, y, w, h)
    width, height = s.img.width, s.img.height
    found: list[tuple[_Cat, str]] = []
    for other in s.countable:
        if other.name != name:
            for rel in _box_relations(box, other, width, height):
                found.append((other, rel))
    if not found:
        p = max(1, round(100 * w * h / (s.img.width * s.img.height)))
        q = d.pick(REGION_SIZE_Q).format(x=name)
        return (q, d.pick(REGION_SIZE_A).format(p=p, The=_cap(the))), []
    picked = [found[i] for i in sorted(d.shuffled(range(len(found)))[:2])]
    other, rel = picked[0]
    bn, _ = the_phrase(other.name, other.n)
    ans = d.pick(REGION_REL_A).format(the=the, The=_cap(the), be=be, rel=REL_TEXT[rel], b=bn)
    ans = _cap(ans)
    ids = list(other.ids)
    if len(picked) > 1:
        other2, rel2 = picked[1]
        bn2, _ = the_phrase(other2.name, other2.n)
        ans += REGION_REL_MORE.format(rel=REL_TEXT[rel2], b=bn2)
        ids.extend(other2.ids)
    return (d.pick(REGION_REL_Q).format(x=name), ans), ids


def _region_count(d: _Draw, own: _Cat, name: str, the: str) -> tuple[_Pair, list[str]]:
    q = d.pick(REGION_COUNT_Q).format(cn=count_noun(name), x=name)
    if own.crowd:
        a = d.pick(REGION_CROWD_A).format(crowd=crowd_phrase(name, other=True))
    elif own.n == 1:
        a = d.pick(REGION_ONLY_A).format(x=name, the=the)
    else:
        k = own.n - 1
        cp = count_phrase(own.n, name)
        a = d.pick(REGION_COUNT_A).format(
            be="are", cp=cp, Cp=_cap(cp), k=number_word(k), others="other" if k == 1 else "others"
        )
    return (q, a), list(own.ids)


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


def _to_images(frames: _Frames) -> list[_Image]:
    """Per-image Python records from prepared frames (sorted by image id)."""
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

    def frame(self, source: str, run_id: str) -> pl.DataFrame:
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


def _region_stems(images: pl.DataFrame) -> dict[str, str]:
    # Two images may share a stem in different folders; only those get an id suffix, so the
    # documented <stem>_<k>.jpg name holds for every other image.
    stems = {
        image_id: os.path.splitext(os.path.basename(file_name))[0]
        for image_id, file_name in images.select("image_id", "file_name").iter_rows()
    }
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {
        image_id: stem if counts[stem] == 1 else f"{stem}-{image_id}"
        for image_id, stem in stems.items()
    }


def _check_config(config: TemplateConfig) -> None:
    unknown = [t for t in config.types if t not in INSTRUCTION_TYPES]
    if unknown:
        raise ValueError(f"TemplateConfig.types: unknown instruction types {unknown}")
    if config.per_image < 1 or config.max_regions_per_image < 0:
        raise ValueError("TemplateConfig: per_image must be >= 1, max_regions_per_image >= 0")
    if not 0 <= config.region_min_area_frac < 1:
        raise ValueError("TemplateConfig.region_min_area_frac must be in [0, 1)")


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
    try:
        frames = prepare_frames(images, captions, objects, categories, tags, source)
        stems = _region_stems(frames.images) if "region" in config.types else {}
        paths = (str(Path(image_root).resolve()), str(Path(regions_dir).resolve() / source))
        df, jobs = _generate(frames, stems, paths, source, config, run_id)
        if config.render_regions and jobs:
            df = _render(df, jobs, config.render_workers)
        return df
    finally:
        if gc_was_enabled:
            gc.enable()


_Job = tuple[int, RenderJob]  # output row, what to render


def _generate(
    frames: _Frames,
    stems: dict[str, str],
    paths: tuple[str, str],
    source: str,
    config: TemplateConfig,
    run_id: str,
) -> tuple[pl.DataFrame, list[_Job]]:
    rows, jobs = _template_rows(_to_images(frames), source, paths, stems, config)
    return rows.frame(source, run_id), jobs


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
) -> tuple[_Rows, list[_Job]]:
    root, region_root = paths
    rows = _Rows()
    jobs: list[_Job] = []
    seed = config.seed
    for img in imgs:
        scene = _Scene(img)
        image_path = os.path.join(root, img.file_name)
        for itype in config.types:
            if itype == "region":
                regions = choose_regions(
                    scene, config.region_min_area_frac, config.max_regions_per_image
                )
                for k, obj in enumerate(regions):
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
    return rows, jobs
