"""Per-image facts for templates: a seeded byte stream, categories with their boxes, relations."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from vlit_assets.core.generated.templates.phrasing import crowd_phrase, join_and
from vlit_assets.core.text.inflect import count_phrase

SPATIAL_GAP = 0.03  # share of the image width (height) between boxes stated apart
SIZE_RATIO = 2.0


class Draw:
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


Box = tuple[str, float, float, float, float]  # object_id, x, y, w, h


class Cat:
    """One category in one image: its boxes, whether it has a crowd box, and box extremes."""

    __slots__ = ("name", "ids", "boxes", "crowd", "n", "ext")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ids: list[str] = []
        self.boxes: list[Box] = []
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


def box_relations(
    a: tuple[float, float, float, float, float, float],
    b: tuple[float, float, float, float, float, float],
    width: float,
    height: float,
) -> list[str]:
    """Relations between two sets of boxes given by their extremes (see ``Cat.ext``).

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


def relations_between(a: Cat, b: Cat, width: float, height: float) -> list[str]:
    """Relations "every a <rel> every b" that the boxes support (see the package doc)."""
    return box_relations(a.ext, b.ext, width, height)


@dataclass
class ImageRecord:
    image_id: str
    file_name: str
    width: int
    height: int
    captions: list[tuple[str, str]]  # caption_id, text
    objects: list[tuple[str, str, float, float, float, float, bool]]  # id, name, x, y, w, h, crowd
    absent: list[str]


class Scene:
    """Facts of one image, computed once and shared by its conversations."""

    def __init__(self, img: ImageRecord) -> None:
        self.img = img
        cats: dict[str, Cat] = {}
        for oid, name, x, y, w, h, crowd in img.objects:
            cat = cats.get(name)
            if cat is None:
                cat = cats[name] = Cat(name)
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
        self._relations: list[tuple[Cat, Cat, str]] | None = None
        self._inventory: dict[int, tuple[str, int, list[str]]] = {}

    @property
    def relations(self) -> list[tuple[Cat, Cat, str]]:
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
        text = join_and(parts)
        if len(ranked) > limit:
            text += ", among other things"
        return text, 1 if singular else 2, ids
