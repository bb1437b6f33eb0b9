"""Draw the project's own COCO-layout sample (data/sample) from a seed: scenes, boxes, captions.

Every scene is a themed composition (street, dining table, park, living room, desk) of simple
shapes drawn exactly inside their boxes, so the annotations are ground truth by construction and
the captions, written from the same scene description, are true of the picture (counts, colours,
left/right positions). The same seed gives byte-identical JSON.

    .venv/bin/python scripts/make_sample_data.py [--out data/sample] [--seed 2023] [--count 24]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vlit_assets.core.text.categories import COCO_CATEGORIES, COCO_ID_BY_NAME

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "data" / "sample"
DEFAULT_SEED = 2023
DEFAULT_COUNT = 24
SPLIT = "train"
JPEG_QUALITY = 85
MAX_OBJECTS = 7
SIZES = [(640, 480), (640, 480), (640, 427), (600, 450)]
THEMES = ("street", "dining", "park", "living room", "desk")

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # x, y, w, h in pixels

COLOURS: dict[str, RGB] = {
    "red": (200, 35, 35),
    "blue": (40, 80, 195),
    "green": (45, 140, 60),
    "yellow": (235, 200, 40),
    "white": (238, 238, 235),
    "black": (28, 28, 30),
    "grey": (128, 130, 135),
    "orange": (235, 130, 30),
    "brown": (120, 76, 42),
    "purple": (115, 60, 150),
    "pink": (230, 140, 170),
    "silver": (190, 192, 198),
}
SKIN = (222, 178, 138)
WOOD = (150, 100, 58)

LICENSE = {
    "id": 1,
    "name": "CC0 1.0 Universal; images and annotations drawn by the vlit_assets project",
    "url": "https://creativecommons.org/publicdomain/zero/1.0/",
}
INFO = {
    "description": "vlit_assets sample: synthetic COCO-layout scenes drawn with Pillow",
    "url": "",
    "version": "1.0",
    "year": 2024,
    "contributor": "vlit_assets project (scripts/make_sample_data.py)",
    "date_created": "2024/01/01",
}


@dataclass
class Obj:
    name: str  # COCO category name
    box: Box
    colour: str | None  # a colour word that is true of the drawing, for captions
    where: str  # a location phrase true of the scene ("on the road")
    anchor_y: int | None = None  # ground line a pole or stand reaches down to


@dataclass
class Scene:
    theme: str
    width: int
    height: int
    objects: list[Obj]
    backdrop: dict[str, RGB]


@dataclass(frozen=True)
class Spec:
    """How many of a category a theme holds, how big, where, and in which colours."""

    name: str
    min_n: int
    max_n: int
    width: float  # box width as a fraction of the zone's reference width
    aspect: float  # box width / height
    zone: tuple[float, float, float, float]  # x0, x1, bottom0, bottom1 as fractions of the ref
    where: str
    colours: tuple[str, ...] = ()
    support: bool = False  # other objects stand on it; overlap with it is expected


# ---------------------------------------------------------------- layout


def _overlap_ratio(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    smaller = min(a[2] * a[3], b[2] * b[3])
    return ix * iy / smaller if smaller else 1.0


def _place(
    rng: random.Random,
    spec: Spec,
    ref: Box,
    canvas: tuple[int, int],
    taken: list[Box],
) -> Box | None:
    """Sample a box for ``spec`` inside its zone of ``ref`` that barely overlaps ``taken``."""
    rx, ry, rw, rh = ref
    for _ in range(80):
        w = max(6, round(spec.width * rw * rng.uniform(0.85, 1.15)))
        h = max(6, round(w / spec.aspect))
        x0, x1 = rx + spec.zone[0] * rw, rx + spec.zone[1] * rw - w
        b0, b1 = ry + spec.zone[2] * rh, ry + spec.zone[3] * rh
        if x1 < x0:
            continue
        x = round(rng.uniform(x0, x1))
        y = round(rng.uniform(b0, b1)) - h
        box = (x, y, w, h)
        inside = x >= 0 and y >= 0 and x + w <= canvas[0] and y + h <= canvas[1]
        if inside and all(_overlap_ratio(box, t) <= 0.12 for t in taken):
            return box
    return None


def _counts(rng: random.Random, specs: list[Spec]) -> dict[str, int]:
    counts = {s.name: rng.randint(s.min_n, s.max_n) for s in specs}
    while sum(counts.values()) > MAX_OBJECTS:
        over = [s.name for s in specs if counts[s.name] > s.min_n]
        counts[rng.choice(over)] -= 1
    return counts


def _populate(
    rng: random.Random, specs: list[Spec], ref: Box, canvas: tuple[int, int], objs: list[Obj]
) -> None:
    counts = _counts(rng, specs)
    taken = [o.box for o in objs if o.name not in SUPPORTS]
    for spec in specs:
        for _ in range(counts[spec.name]):
            box = _place(rng, spec, ref, canvas, taken)
            if box is None:
                continue
            colour = rng.choice(spec.colours) if spec.colours else None
            objs.append(Obj(spec.name, box, colour, spec.where))
            if not spec.support:
                taken.append(box)


SUPPORTS = {"dining table", "couch"}

STREET = [
    Spec(
        "bus",
        0,
        1,
        0.40,
        2.5,
        (0.0, 1.0, 0.78, 0.93),
        "on the road",
        ("red", "yellow", "blue", "white"),
    ),
    Spec(
        "truck", 0, 1, 0.30, 1.8, (0.0, 1.0, 0.78, 0.95), "on the road", ("white", "orange", "grey")
    ),
    Spec(
        "car",
        1,
        3,
        0.21,
        2.2,
        (0.0, 1.0, 0.76, 0.97),
        "on the road",
        ("red", "blue", "white", "black", "silver", "green"),
    ),
    Spec(
        "person",
        1,
        3,
        0.045,
        0.38,
        (0.0, 1.0, 0.57, 0.62),
        "on the sidewalk",
        ("red", "blue", "green", "yellow", "black", "white"),
    ),
    Spec(
        "traffic light", 0, 2, 0.03, 0.36, (0.02, 0.98, 0.30, 0.40), "by the road", ("red", "green")
    ),
    Spec("stop sign", 0, 1, 0.07, 1.0, (0.02, 0.98, 0.36, 0.44), "by the road"),
    Spec(
        "bicycle",
        0,
        1,
        0.11,
        1.6,
        (0.0, 1.0, 0.58, 0.62),
        "on the sidewalk",
        ("blue", "red", "black"),
    ),
    Spec(
        "fire hydrant",
        0,
        1,
        0.035,
        0.62,
        (0.0, 1.0, 0.58, 0.62),
        "on the sidewalk",
        ("red", "yellow"),
    ),
]
TABLE_ITEMS = [
    Spec("pizza", 0, 1, 0.30, 1.7, (0.05, 0.95, 0.25, 0.60), "on the table"),
    Spec(
        "cup",
        1,
        3,
        0.08,
        0.9,
        (0.03, 0.97, 0.15, 0.55),
        "on the table",
        ("white", "blue", "red", "green", "yellow"),
    ),
    Spec(
        "bottle",
        0,
        2,
        0.05,
        0.33,
        (0.03, 0.97, 0.12, 0.45),
        "on the table",
        ("green", "brown", "blue"),
    ),
    Spec(
        "bowl",
        0,
        2,
        0.16,
        2.2,
        (0.03, 0.97, 0.15, 0.55),
        "on the table",
        ("white", "blue", "red", "yellow"),
    ),
    Spec("knife", 0, 1, 0.18, 6.0, (0.03, 0.97, 0.35, 0.62), "on the table"),
    Spec("fork", 0, 1, 0.15, 6.0, (0.03, 0.97, 0.35, 0.62), "on the table"),
    Spec("apple", 0, 2, 0.055, 0.92, (0.03, 0.97, 0.15, 0.55), "on the table", ("red", "green")),
    Spec("banana", 0, 1, 0.13, 2.0, (0.03, 0.97, 0.15, 0.55), "on the table"),
]
PARK = [
    Spec("bench", 0, 1, 0.26, 2.4, (0.0, 1.0, 0.62, 0.75), "on the grass", ("brown", "green")),
    Spec(
        "dog", 1, 2, 0.15, 1.45, (0.0, 1.0, 0.70, 0.97), "on the grass", ("brown", "black", "white")
    ),
    Spec(
        "person",
        0,
        2,
        0.07,
        0.38,
        (0.0, 1.0, 0.72, 0.97),
        "in the park",
        ("red", "blue", "green", "yellow", "white"),
    ),
    Spec(
        "frisbee",
        0,
        1,
        0.06,
        2.6,
        (0.0, 1.0, 0.40, 0.60),
        "in the air",
        ("red", "yellow", "orange", "blue"),
    ),
    Spec(
        "kite",
        0,
        2,
        0.07,
        0.55,
        (0.0, 1.0, 0.18, 0.36),
        "in the sky",
        ("red", "yellow", "blue", "purple", "orange"),
    ),
    Spec("sports ball", 0, 1, 0.04, 1.0, (0.0, 1.0, 0.75, 0.97), "on the grass"),
    Spec("bird", 0, 2, 0.045, 1.6, (0.0, 1.0, 0.08, 0.30), "in the sky", ("black",)),
]
LIVING = [
    Spec(
        "couch",
        1,
        1,
        0.42,
        2.1,
        (0.0, 1.0, 0.84, 0.92),
        "in the room",
        ("grey", "blue", "green", "brown", "red"),
        True,
    ),
    Spec("tv", 0, 1, 0.20, 1.6, (0.0, 1.0, 0.52, 0.56), "on a stand", ("black",)),
    Spec("potted plant", 0, 2, 0.09, 0.62, (0.0, 1.0, 0.88, 0.98), "on the floor"),
    Spec("clock", 0, 1, 0.075, 1.0, (0.05, 0.95, 0.16, 0.30), "on the wall"),
    Spec(
        "book",
        0,
        3,
        0.03,
        0.24,
        (0.05, 0.95, 0.38, 0.38),
        "on the shelf",
        ("red", "blue", "green", "yellow", "purple"),
    ),
    Spec(
        "chair",
        0,
        1,
        0.12,
        0.65,
        (0.0, 1.0, 0.9, 0.98),
        "on the floor",
        ("brown", "black", "white"),
    ),
]
DESK_ITEMS = [
    Spec("laptop", 0, 1, 0.30, 1.35, (0.05, 0.95, 0.30, 0.45), "on the table", ("silver", "black")),
    Spec("keyboard", 0, 1, 0.30, 3.6, (0.05, 0.95, 0.45, 0.62), "on the table", ("black", "white")),
    Spec(
        "mouse",
        0,
        1,
        0.045,
        0.62,
        (0.05, 0.95, 0.42, 0.62),
        "on the table",
        ("black", "white", "grey"),
    ),
    Spec("cell phone", 0, 1, 0.045, 0.5, (0.05, 0.95, 0.42, 0.62), "on the table", ("black",)),
    Spec(
        "cup",
        0,
        2,
        0.07,
        0.9,
        (0.03, 0.97, 0.25, 0.55),
        "on the table",
        ("white", "blue", "red", "yellow"),
    ),
    Spec(
        "book",
        0,
        3,
        0.09,
        0.75,
        (0.03, 0.97, 0.25, 0.55),
        "on the table",
        ("red", "blue", "green", "yellow"),
    ),
    Spec("potted plant", 0, 1, 0.09, 0.62, (0.03, 0.97, 0.25, 0.45), "on the table"),
    Spec("scissors", 0, 1, 0.10, 1.4, (0.05, 0.95, 0.45, 0.62), "on the table"),
]


def _table(rng: random.Random, w: int, h: int, where: str) -> Obj:
    x0 = round(w * rng.uniform(0.02, 0.08))
    x1 = round(w * rng.uniform(0.92, 0.98))
    y0 = round(h * rng.uniform(0.44, 0.52))
    y1 = round(h * rng.uniform(0.95, 0.99))
    colour = rng.choice(["brown", "white", "red"])
    return Obj("dining table", (x0, y0, x1 - x0, y1 - y0), colour, where)


def _layout(rng: random.Random, theme: str, w: int, h: int) -> list[Obj]:
    canvas, full = (w, h), (0, 0, w, h)
    objs: list[Obj] = []
    if theme == "street":
        _populate(rng, STREET, full, canvas, objs)
        for o in objs:
            if o.name in ("traffic light", "stop sign"):
                o.anchor_y = round(0.60 * h)
    elif theme in ("dining", "desk"):
        table = _table(rng, w, h, "in the room")
        objs.append(table)
        tx, ty, tw, th = table.box
        # items stand on the visible top surface, the upper ~60% of the table's box
        surface = (tx, ty, tw, th)
        _populate(rng, TABLE_ITEMS if theme == "dining" else DESK_ITEMS, surface, canvas, objs)
    elif theme == "park":
        _populate(rng, PARK, full, canvas, objs)
    else:
        _populate(rng, LIVING, full, canvas, objs)
        couch = next((o for o in objs if o.name == "couch"), None)
        if couch is not None and rng.random() < 0.6:
            remote = Spec("remote", 1, 1, 0.22, 3.2, (0.25, 0.75, 0.62, 0.66), "on the couch")
            box = _place(rng, remote, couch.box, canvas, [o.box for o in objs[1:]])
            if box:
                objs.append(Obj("remote", box, "black", "on the couch"))
    return objs


def _acceptable(objs: list[Obj]) -> bool:
    names = Counter(o.name for o in objs)
    return 3 <= len(objs) <= MAX_OBJECTS and len(names) >= 2


def make_scene(rng: random.Random, theme: str) -> Scene:
    w, h = rng.choice(SIZES)
    while True:
        objs = _layout(rng, theme, w, h)
        if _acceptable(objs):
            break
    backdrop = {
        "wall": rng.choice([(236, 226, 200), (210, 225, 235), (228, 214, 214), (222, 230, 210)]),
        "floor": rng.choice([(160, 118, 80), (140, 110, 90), (182, 150, 110)]),
        "sky": rng.choice([(120, 170, 230), (140, 185, 235), (105, 155, 215)]),
        "grass": rng.choice([(90, 160, 70), (80, 150, 60), (105, 170, 80)]),
    }
    return Scene(theme, w, h, objs, backdrop)


# ---------------------------------------------------------------- drawing


def _shade(c: RGB, f: float) -> RGB:
    return tuple(max(0, min(255, round(v * f))) for v in c)  # type: ignore[return-value]


class Pen:
    """Maps fractions of a box to pixels so every shape stays inside its box."""

    def __init__(self, d: ImageDraw.ImageDraw, box: Box) -> None:
        self.d = d
        self.x, self.y, self.w, self.h = box

    def p(self, fx: float, fy: float) -> tuple[float, float]:
        return (self.x + fx * (self.w - 1), self.y + fy * (self.h - 1))

    def r(self, fx0: float, fy0: float, fx1: float, fy1: float) -> list[float]:
        return [*self.p(fx0, fy0), *self.p(fx1, fy1)]

    def rect(self, *f: float, fill: RGB, radius: float = 0) -> None:
        self.d.rounded_rectangle(self.r(*f), radius=radius, fill=fill)

    def ellipse(self, *f: float, fill: RGB, outline: RGB | None = None, width: int = 1) -> None:
        self.d.ellipse(self.r(*f), fill=fill, outline=outline, width=width)

    def poly(self, pts: list[tuple[float, float]], fill: RGB) -> None:
        self.d.polygon([self.p(fx, fy) for fx, fy in pts], fill=fill)

    def line(self, pts: list[tuple[float, float]], fill: RGB, width: int) -> None:
        self.d.line([self.p(fx, fy) for fx, fy in pts], fill=fill, width=width)


def _person(q: Pen, c: RGB) -> None:
    q.ellipse(0.28, 0.0, 0.72, 0.16, fill=SKIN)
    q.rect(0.12, 0.17, 0.88, 0.56, fill=c, radius=q.w * 0.15)
    q.rect(0.0, 0.2, 0.14, 0.5, fill=c)
    q.rect(0.86, 0.2, 1.0, 0.5, fill=c)
    q.rect(0.18, 0.55, 0.46, 1.0, fill=(45, 50, 70))
    q.rect(0.54, 0.55, 0.82, 1.0, fill=(45, 50, 70))


def _car(q: Pen, c: RGB) -> None:
    q.poly([(0.2, 0.42), (0.3, 0.02), (0.7, 0.02), (0.82, 0.42)], fill=_shade(c, 0.85))
    q.poly([(0.27, 0.4), (0.34, 0.1), (0.49, 0.1), (0.49, 0.4)], fill=(170, 205, 230))
    q.poly([(0.52, 0.4), (0.52, 0.1), (0.67, 0.1), (0.76, 0.4)], fill=(170, 205, 230))
    q.rect(0.0, 0.38, 1.0, 0.82, fill=c, radius=q.h * 0.12)
    q.ellipse(0.94, 0.48, 1.0, 0.6, fill=(250, 240, 180))
    for cx in (0.2, 0.8):
        q.ellipse(cx - 0.1, 0.6, cx + 0.1, 1.0, fill=(25, 25, 25))
        q.ellipse(cx - 0.045, 0.71, cx + 0.045, 0.89, fill=(160, 160, 160))


def _bus(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 1.0, 0.86, fill=c, radius=q.h * 0.08)
    for i in range(6):
        fx = 0.04 + i * 0.15
        q.rect(fx, 0.1, fx + 0.12, 0.42, fill=(160, 200, 225))
    q.rect(0.92, 0.1, 0.985, 0.7, fill=(120, 160, 190))
    q.rect(0.0, 0.55, 1.0, 0.6, fill=_shade(c, 0.7))
    for cx in (0.18, 0.8):
        q.ellipse(cx - 0.065, 0.68, cx + 0.065, 1.0, fill=(25, 25, 25))


def _truck(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 0.68, 0.8, fill=c)
    q.rect(0.7, 0.25, 1.0, 0.8, fill=_shade(c, 0.8), radius=q.h * 0.06)
    q.rect(0.76, 0.32, 0.95, 0.5, fill=(160, 200, 225))
    for cx in (0.15, 0.5, 0.85):
        q.ellipse(cx - 0.08, 0.66, cx + 0.08, 1.0, fill=(25, 25, 25))


def _bicycle(q: Pen, c: RGB) -> None:
    lw = max(2, round(q.h * 0.06))
    for cx in (0.22, 0.78):
        q.ellipse(cx - 0.22, 0.3, cx + 0.22, 1.0, fill=None, outline=(30, 30, 30), width=lw)  # type: ignore[arg-type]
    q.line([(0.22, 0.65), (0.45, 0.65), (0.62, 0.3), (0.38, 0.3), (0.22, 0.65)], fill=c, width=lw)
    q.line([(0.45, 0.65), (0.36, 0.16), (0.78, 0.65)], fill=c, width=lw)
    q.line([(0.62, 0.3), (0.66, 0.02)], fill=c, width=lw)
    q.line([(0.58, 0.02), (0.76, 0.02)], fill=(30, 30, 30), width=lw)
    q.line([(0.28, 0.14), (0.44, 0.14)], fill=(30, 30, 30), width=lw)


def _traffic_light(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 1.0, 1.0, fill=(35, 35, 38), radius=q.w * 0.2)
    lamps = [(0.05, COLOURS["red"]), (0.36, COLOURS["yellow"]), (0.67, COLOURS["green"])]
    for fy, lamp in lamps:
        q.ellipse(0.15, fy, 0.85, fy + 0.27, fill=lamp if lamp == c else _shade(lamp, 0.3))


def _stop_sign(q: Pen, c: RGB) -> None:
    cx, cy = q.p(0.5, 0.5)
    r = (q.w - 1) / 2
    q.d.regular_polygon((cx, cy, r), 8, rotation=22.5, fill=(235, 235, 235))
    q.d.regular_polygon((cx, cy, r * 0.88), 8, rotation=22.5, fill=(195, 25, 30))
    font = ImageFont.load_default(size=max(8, round(q.w * 0.27)))
    q.d.text((cx, cy), "STOP", fill=(250, 250, 250), font=font, anchor="mm")


def _hydrant(q: Pen, c: RGB) -> None:
    q.ellipse(0.15, 0.0, 0.85, 0.3, fill=c)
    q.rect(0.18, 0.15, 0.82, 0.92, fill=c)
    q.rect(0.0, 0.38, 1.0, 0.55, fill=_shade(c, 0.8))
    q.rect(0.08, 0.9, 0.92, 1.0, fill=_shade(c, 0.7))


def _bench(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 1.0, 0.16, fill=c)
    q.rect(0.0, 0.22, 1.0, 0.36, fill=c)
    q.rect(0.0, 0.5, 1.0, 0.64, fill=_shade(c, 0.85))
    for fx in (0.06, 0.9):
        q.rect(fx, 0.0, fx + 0.04, 1.0, fill=(50, 50, 50))


def _dog(q: Pen, c: RGB) -> None:
    q.line([(0.17, 0.38), (0.02, 0.08)], fill=c, width=max(2, round(q.h * 0.07)))
    for fx in (0.2, 0.32, 0.58, 0.7):
        q.rect(fx, 0.55, fx + 0.08, 1.0, fill=_shade(c, 0.85))
    q.ellipse(0.12, 0.28, 0.8, 0.72, fill=c)
    q.ellipse(0.66, 0.05, 1.0, 0.5, fill=c)
    q.ellipse(0.7, 0.02, 0.82, 0.3, fill=_shade(c, 0.6))
    q.ellipse(0.88, 0.18, 0.93, 0.26, fill=(20, 20, 20))
    q.ellipse(0.95, 0.3, 1.0, 0.38, fill=(20, 20, 20))


def _frisbee(q: Pen, c: RGB) -> None:
    q.ellipse(0.0, 0.0, 1.0, 1.0, fill=c)
    q.ellipse(0.2, 0.2, 0.8, 0.8, fill=_shade(c, 0.8))


def _kite(q: Pen, c: RGB) -> None:
    q.poly([(0.5, 0.0), (1.0, 0.28), (0.5, 0.62), (0.0, 0.28)], fill=c)
    q.line([(0.5, 0.0), (0.5, 0.62)], fill=_shade(c, 0.6), width=2)
    q.line([(0.5, 0.62), (0.35, 0.75), (0.6, 0.87), (0.45, 1.0)], fill=(60, 60, 60), width=2)


def _ball(q: Pen, c: RGB) -> None:
    q.ellipse(0.0, 0.0, 1.0, 1.0, fill=(245, 245, 245), outline=(40, 40, 40), width=1)
    q.ellipse(0.36, 0.36, 0.64, 0.64, fill=(30, 30, 30))
    for fx, fy in ((0.12, 0.3), (0.75, 0.22), (0.2, 0.72), (0.68, 0.75)):
        q.ellipse(fx, fy, fx + 0.14, fy + 0.14, fill=(30, 30, 30))


def _bird(q: Pen, c: RGB) -> None:
    q.ellipse(0.1, 0.3, 0.85, 0.9, fill=c)
    q.ellipse(0.65, 0.15, 0.95, 0.6, fill=c)
    q.poly([(0.93, 0.35), (1.0, 0.42), (0.93, 0.48)], fill=(230, 160, 40))
    q.poly([(0.3, 0.5), (0.55, 0.0), (0.62, 0.55)], fill=_shade(c, 1.6))


def _cup(q: Pen, c: RGB) -> None:
    q.ellipse(0.62, 0.22, 1.0, 0.7, fill=None, outline=c, width=max(2, round(q.w * 0.08)))  # type: ignore[arg-type]
    q.rect(0.0, 0.05, 0.76, 1.0, fill=c, radius=q.w * 0.08)
    q.ellipse(0.0, 0.0, 0.76, 0.14, fill=_shade(c, 0.7))


def _bottle(q: Pen, c: RGB) -> None:
    q.rect(0.36, 0.0, 0.64, 0.08, fill=(60, 60, 60))
    q.rect(0.36, 0.06, 0.64, 0.34, fill=c)
    q.rect(0.0, 0.3, 1.0, 1.0, fill=c, radius=q.w * 0.25)
    q.rect(0.0, 0.5, 1.0, 0.72, fill=(235, 230, 215))


def _bowl(q: Pen, c: RGB) -> None:
    q.d.chord(q.r(0.0, -0.9, 1.0, 1.0), 0, 180, fill=c)
    q.ellipse(0.0, 0.0, 1.0, 0.22, fill=_shade(c, 0.75))


def _knife(q: Pen, c: RGB) -> None:
    q.poly([(0.0, 0.5), (0.1, 0.0), (0.62, 0.0), (0.62, 1.0), (0.1, 1.0)], fill=(200, 202, 208))
    q.rect(0.6, 0.1, 1.0, 0.9, fill=(60, 40, 30), radius=q.h * 0.3)


def _fork(q: Pen, c: RGB) -> None:
    for fy in (0.0, 0.33, 0.66):
        q.rect(0.0, fy, 0.25, fy + 0.22, fill=(195, 197, 205))
    q.rect(0.2, 0.0, 0.32, 0.9, fill=(195, 197, 205))
    q.rect(0.3, 0.3, 1.0, 0.62, fill=(185, 187, 195), radius=q.h * 0.15)


def _pizza(q: Pen, c: RGB) -> None:
    q.ellipse(0.0, 0.0, 1.0, 1.0, fill=(210, 160, 90))
    q.ellipse(0.07, 0.08, 0.93, 0.92, fill=(205, 75, 40))
    q.ellipse(0.1, 0.12, 0.9, 0.88, fill=(240, 205, 110))
    for fx, fy in ((0.25, 0.3), (0.55, 0.2), (0.62, 0.55), (0.3, 0.6), (0.45, 0.4)):
        q.ellipse(fx, fy, fx + 0.12, fy + 0.19, fill=(170, 40, 35))


def _apple(q: Pen, c: RGB) -> None:
    q.ellipse(0.0, 0.12, 1.0, 1.0, fill=c)
    q.line([(0.5, 0.16), (0.55, 0.0)], fill=(80, 55, 30), width=2)
    q.ellipse(0.56, 0.02, 0.8, 0.14, fill=(60, 140, 50))


def _banana(q: Pen, c: RGB) -> None:
    q.d.arc(q.r(0.0, -1.0, 1.0, 1.0), 15, 165, fill=(240, 205, 50), width=max(3, round(q.h * 0.4)))


def _table_draw(q: Pen, c: RGB) -> None:
    top = _shade(c, 0.95)
    q.poly([(0.06, 0.0), (0.94, 0.0), (1.0, 0.62), (0.0, 0.62)], fill=top)
    q.rect(0.0, 0.62, 1.0, 0.7, fill=_shade(c, 0.7))
    for fx in (0.03, 0.93):
        q.rect(fx, 0.68, fx + 0.04, 1.0, fill=_shade(WOOD, 0.7))


def _tv(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 1.0, 1.0, fill=(25, 25, 28), radius=q.h * 0.04)
    q.rect(0.05, 0.07, 0.95, 0.88, fill=(70, 120, 175))
    q.ellipse(0.3, 0.3, 0.6, 0.7, fill=(110, 165, 210))


def _couch(q: Pen, c: RGB) -> None:
    q.rect(0.08, 0.0, 0.92, 0.55, fill=_shade(c, 0.9), radius=q.h * 0.1)
    q.rect(0.06, 0.45, 0.94, 0.85, fill=c, radius=q.h * 0.06)
    q.rect(0.0, 0.3, 0.12, 0.88, fill=_shade(c, 0.8), radius=q.w * 0.03)
    q.rect(0.88, 0.3, 1.0, 0.88, fill=_shade(c, 0.8), radius=q.w * 0.03)
    for fx in (0.05, 0.92):
        q.rect(fx, 0.86, fx + 0.03, 1.0, fill=(50, 40, 30))


def _potted_plant(q: Pen, c: RGB) -> None:
    for fx, fy in ((0.1, 0.1), (0.4, 0.0), (0.0, 0.3), (0.45, 0.25), (0.2, 0.35)):
        q.ellipse(fx, fy, fx + 0.55, fy + 0.32, fill=(50, 130, 55))
    q.poly([(0.12, 0.6), (0.88, 0.6), (0.76, 1.0), (0.24, 1.0)], fill=(190, 100, 60))


def _clock(q: Pen, c: RGB) -> None:
    q.ellipse(0.0, 0.0, 1.0, 1.0, fill=(245, 245, 240), outline=(30, 30, 30), width=3)
    cx, cy = q.p(0.5, 0.5)
    r = (q.w - 1) / 2
    for k in range(12):
        a = k * math.pi / 6
        q.d.line(
            [
                (cx + 0.78 * r * math.cos(a), cy + 0.78 * r * math.sin(a)),
                (cx + 0.9 * r * math.cos(a), cy + 0.9 * r * math.sin(a)),
            ],
            fill=(30, 30, 30),
            width=2,
        )
    q.d.line([(cx, cy), (cx, cy - 0.65 * r)], fill=(20, 20, 20), width=2)
    q.d.line([(cx, cy), (cx + 0.45 * r, cy + 0.1 * r)], fill=(20, 20, 20), width=3)


def _book(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 1.0, 1.0, fill=c)
    q.rect(0.0, 0.1, 1.0, 0.16, fill=_shade(c, 0.6))
    q.rect(0.0, 0.84, 1.0, 0.9, fill=_shade(c, 0.6))


def _chair(q: Pen, c: RGB) -> None:
    q.rect(0.12, 0.0, 0.88, 0.5, fill=c, radius=q.w * 0.06)
    q.rect(0.0, 0.48, 1.0, 0.62, fill=_shade(c, 0.8))
    for fx in (0.04, 0.86):
        q.rect(fx, 0.6, fx + 0.1, 1.0, fill=_shade(c, 0.6))


def _remote(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 1.0, 1.0, fill=c, radius=q.h * 0.3)
    for fx in (0.2, 0.4, 0.6):
        q.ellipse(fx, 0.3, fx + 0.08, 0.7, fill=(200, 60, 60))


def _laptop(q: Pen, c: RGB) -> None:
    q.rect(0.08, 0.0, 0.92, 0.62, fill=c, radius=q.h * 0.03)
    q.rect(0.12, 0.05, 0.88, 0.56, fill=(60, 110, 160))
    q.poly([(0.08, 0.62), (0.92, 0.62), (1.0, 1.0), (0.0, 1.0)], fill=_shade(c, 0.85))


def _keyboard(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 1.0, 1.0, fill=c, radius=q.h * 0.1)
    key = _shade(c, 0.75) if sum(c) > 300 else (85, 85, 90)
    for row in range(3):
        for col in range(12):
            fx, fy = 0.03 + col * 0.08, 0.12 + row * 0.28
            q.rect(fx, fy, fx + 0.065, fy + 0.2, fill=key)


def _mouse(q: Pen, c: RGB) -> None:
    q.ellipse(0.0, 0.0, 1.0, 1.0, fill=c, outline=(60, 60, 60))
    q.line([(0.5, 0.02), (0.5, 0.4)], fill=(60, 60, 60), width=1)


def _phone(q: Pen, c: RGB) -> None:
    q.rect(0.0, 0.0, 1.0, 1.0, fill=c, radius=q.w * 0.15)
    q.rect(0.1, 0.08, 0.9, 0.88, fill=(80, 140, 190))


def _scissors(q: Pen, c: RGB) -> None:
    q.poly([(0.42, 0.45), (1.0, 0.0), (0.55, 0.55)], fill=(200, 202, 208))
    q.poly([(0.42, 0.55), (1.0, 1.0), (0.55, 0.45)], fill=(185, 187, 195))
    q.ellipse(0.0, 0.0, 0.4, 0.45, fill=None, outline=(200, 40, 40), width=3)  # type: ignore[arg-type]
    q.ellipse(0.0, 0.55, 0.4, 1.0, fill=None, outline=(200, 40, 40), width=3)  # type: ignore[arg-type]


DRAW: dict[str, Callable[[Pen, RGB], None]] = {
    "person": _person,
    "car": _car,
    "bus": _bus,
    "truck": _truck,
    "bicycle": _bicycle,
    "traffic light": _traffic_light,
    "stop sign": _stop_sign,
    "fire hydrant": _hydrant,
    "bench": _bench,
    "dog": _dog,
    "frisbee": _frisbee,
    "kite": _kite,
    "sports ball": _ball,
    "bird": _bird,
    "cup": _cup,
    "bottle": _bottle,
    "bowl": _bowl,
    "knife": _knife,
    "fork": _fork,
    "pizza": _pizza,
    "apple": _apple,
    "banana": _banana,
    "dining table": _table_draw,
    "tv": _tv,
    "couch": _couch,
    "potted plant": _potted_plant,
    "clock": _clock,
    "book": _book,
    "chair": _chair,
    "remote": _remote,
    "laptop": _laptop,
    "keyboard": _keyboard,
    "mouse": _mouse,
    "cell phone": _phone,
    "scissors": _scissors,
}


def _gradient(d: ImageDraw.ImageDraw, w: int, y0: int, y1: int, top: RGB, bottom: RGB) -> None:
    for y in range(y0, y1):
        t = (y - y0) / max(1, y1 - y0 - 1)
        d.line(
            [(0, y), (w, y)],
            fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )


def _backdrop(d: ImageDraw.ImageDraw, s: Scene, rng: random.Random) -> None:
    w, h, b = s.width, s.height, s.backdrop
    if s.theme == "street":
        horizon = round(0.42 * h)
        _gradient(d, w, 0, horizon, b["sky"], _shade(b["sky"], 1.3))
        x = 0
        while x < w:
            bw, bh = rng.randint(60, 140), rng.randint(80, horizon - 20)
            tone = rng.choice([(150, 140, 135), (170, 120, 100), (120, 125, 135), (190, 180, 160)])
            d.rectangle([x, horizon - bh, x + bw, horizon], fill=tone)
            for wy in range(horizon - bh + 12, horizon - 10, 22):
                for wx in range(x + 10, x + bw - 12, 20):
                    d.rectangle([wx, wy, wx + 9, wy + 12], fill=(210, 225, 235))
            x += bw + rng.randint(0, 12)
        d.rectangle([0, horizon, w, round(0.62 * h)], fill=(185, 183, 178))
        d.rectangle([0, round(0.62 * h), w, h], fill=(70, 70, 74))
        for lx in range(10, w, 80):
            d.rectangle([lx, round(0.8 * h), lx + 40, round(0.8 * h) + 4], fill=(235, 235, 235))
    elif s.theme == "park":
        horizon = round(0.45 * h)
        _gradient(d, w, 0, horizon, b["sky"], _shade(b["sky"], 1.35))
        _gradient(d, w, horizon, h, _shade(b["grass"], 0.85), b["grass"])
        for tx in range(rng.randint(0, 40), w, rng.randint(70, 110)):
            th = rng.randint(60, 110)
            d.rectangle([tx + 16, horizon - 30, tx + 24, horizon + 6], fill=(95, 65, 40))
            d.ellipse([tx, horizon - th, tx + 40, horizon - 20], fill=(40, 110, 50))
    else:
        wall_end = round({"living room": 0.72, "dining": 0.5, "desk": 0.5}[s.theme] * h)
        d.rectangle([0, 0, w, wall_end], fill=b["wall"])
        d.rectangle([0, wall_end, w, h], fill=b["floor"])
        for fx in range(0, w, 48):
            d.line([(fx, wall_end), (fx - 30, h)], fill=_shade(b["floor"], 0.9), width=2)
        if s.theme != "living room":
            wx = rng.randint(20, w - 220)
            d.rectangle([wx, 30, wx + 180, 30 + 130], fill=(245, 245, 245))
            d.rectangle([wx + 8, 38, wx + 172, 152], fill=_shade(b["sky"], 1.2))


def _props(d: ImageDraw.ImageDraw, s: Scene) -> None:
    """Unannotated furniture the objects rest on: poles, shelves, the TV stand."""
    for o in s.objects:
        x, y, w, h = o.box
        if o.anchor_y is not None:
            cx = x + w // 2
            d.rectangle([cx - 2, y + h, cx + 2, max(y + h, o.anchor_y)], fill=(90, 92, 95))
        if o.name == "tv":
            d.rectangle([x - 10, y + h + 4, x + w + 10, round(0.78 * s.height)], fill=WOOD)
    books = [o.box for o in s.objects if o.name == "book" and o.where == "on the shelf"]
    if books:
        x0 = min(b[0] for b in books) - 20
        x1 = max(b[0] + b[2] for b in books) + 20
        y = max(b[1] + b[3] for b in books)
        d.rectangle([max(0, x0), y, min(s.width, x1), y + 8], fill=_shade(WOOD, 0.8))


def render(s: Scene, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (s.width, s.height))
    d = ImageDraw.Draw(img)
    _backdrop(d, s, rng)
    _props(d, s)
    # supports first, then far to near, so nearer objects occlude farther ones
    order = sorted(s.objects, key=lambda o: (o.name not in SUPPORTS, o.box[1] + o.box[3]))
    for o in order:
        colour = COLOURS[o.colour] if o.colour else (0, 0, 0)
        DRAW[o.name](Pen(d, o.box), colour)
    return img


# ---------------------------------------------------------------- captions

NUMBER = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}
PLURAL = {
    "person": "people",
    "bus": "buses",
    "bench": "benches",
    "knife": "knives",
    "couch": "couches",
    "sports ball": "balls",
    "mouse": "mice",
    "scissors": "scissors",
    "dining table": "tables",
}
NOUN = {"tv": "TV", "sports ball": "ball", "scissors": "pair of scissors", "dining table": "table"}
INTRO = {
    "street": ("A city street", "A busy street", "An urban street scene", "A street in town"),
    "dining": ("A dining table", "A kitchen table set for a meal", "A table in a dining room"),
    "park": ("A grassy park", "A sunny park", "A park on a clear day"),
    "living room": ("A living room", "A cosy living room", "The inside of a living room"),
    "desk": ("A work table", "A home office table", "A tidy work table"),
}


def _noun(name: str, n: int = 1) -> str:
    if n == 1:
        return NOUN.get(name, name)
    return PLURAL.get(name, NOUN.get(name, name) + "s")


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _describe(o: Obj) -> str:
    """A noun phrase with its article that is true of the drawn object."""
    if o.name == "person" and o.colour:
        return f"a person in {_a(o.colour)} shirt"
    if o.name == "traffic light" and o.colour:
        return f"a traffic light showing {o.colour}"
    if o.name == "potted plant":
        return "a potted plant"
    return _a(f"{o.colour} {_noun(o.name)}" if o.colour else _noun(o.name))


def _side(o: Obj, width: int) -> str:
    cx = o.box[0] + o.box[2] / 2
    if cx < width / 3:
        return "left"
    return "right" if cx > 2 * width / 3 else "middle"


def _side_phrase(side: str) -> str:
    return "in the middle of the picture" if side == "middle" else f"on the {side} of the picture"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _count_phrase(name: str, n: int) -> str:
    return _a(_noun(name)) if n == 1 else f"{NUMBER[n]} {_noun(name, n)}"


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _overview(s: Scene, counts: Counter[str], rng: random.Random) -> str:
    intro = rng.choice(INTRO[s.theme])
    # the intro already names the table of a dining or desk scene
    named = {"dining table"} if s.theme in ("dining", "desk") else set()
    names = [n for n in sorted(counts, key=lambda n: -counts[n]) if n not in named]
    return f"{intro} with {_join([_count_phrase(n, counts[n]) for n in names])}."


def _salient_object(s: Scene, counts: Counter[str]) -> Obj:
    singles = [o for o in s.objects if counts[o.name] == 1 and o.name not in SUPPORTS]
    pool = singles or [o for o in s.objects if o.name not in SUPPORTS] or s.objects
    return max(pool, key=lambda o: o.box[2] * o.box[3])


def _salient(s: Scene, o: Obj, counts: Counter[str], rng: random.Random) -> str:
    side = _side_phrase(_side(o, s.width))
    n = counts[o.name]
    if n > 1:
        return _cap(f"{side} there is {_describe(o)}, one of the {NUMBER[n]} {_noun(o.name, n)}.")
    if rng.random() < 0.5:
        return _cap(f"{_describe(o)} {o.where}, {side}.")
    return _cap(f"{side} there is {_describe(o)} {o.where}.")


def _counting(s: Scene, counts: Counter[str], rng: random.Random) -> str:
    name = max(counts, key=lambda n: (counts[n], n not in SUPPORTS))
    n = counts[name]
    group = sorted((o for o in s.objects if o.name == name), key=lambda o: o.box[0])
    where = group[0].where
    if n == 1:
        return _cap(f"there is only one {_noun(name)} {where}.")
    lead = f"There are {NUMBER[n]} {_noun(name, n)} {where}"
    if group[0].colour and rng.random() < 0.7:
        ones = [f"{_a(o.colour)} one" for o in group if o.colour]
        if name == "person":
            ones = [f"one in {o.colour}" for o in group if o.colour]
        return f"{lead}; from left to right: {_join(ones)}."
    return f"{lead}."


def _relation(s: Scene, counts: Counter[str]) -> str:
    singles = [o for o in s.objects if counts[o.name] == 1]
    pairs = [
        (a, b)
        for a in singles
        for b in singles
        if a.name != b.name
        and (b.box[0] + b.box[2] / 2) - (a.box[0] + a.box[2] / 2) > 0.1 * s.width
        and a.name not in SUPPORTS
        and b.name not in SUPPORTS
    ]
    if pairs:
        a, b = pairs[0]
        return f"The {_noun(a.name)} is to the left of the {_noun(b.name)}."
    group = sorted((o for o in s.objects if counts[o.name] > 1), key=lambda o: o.box[0])
    if group:
        name = group[0].name
        same = [o for o in group if o.name == name]
        left, right = _describe(same[0]), _describe(same[-1])
        return _cap(f"{left} is the leftmost of the {_noun(name, 2)} and {right} the rightmost.")
    o = s.objects[0]
    return _cap(f"{_describe(o)} {o.where}.")


def _ends(s: Scene, salient: Obj, counts: Counter[str]) -> str:
    things = sorted((o for o in s.objects if o.name not in SUPPORTS), key=lambda o: o.box[0])
    left, right = things[0], things[-1]
    if left is not right and _side(left, s.width) == "left" and _side(right, s.width) == "right":
        return _cap(f"{_describe(left)} is on the left and {_describe(right)} is on the right.")
    middle = [o for o in things if _side(o, s.width) == "middle" and o is not salient]
    if middle:
        return f"In the middle of the picture is {_describe(middle[0])}."
    return _cap(f"{_join([_count_phrase(n, counts[n]) for n in sorted(counts)])} are in view.")


def write_captions(s: Scene, rng: random.Random) -> list[str]:
    counts = Counter(o.name for o in s.objects)
    salient = _salient_object(s, counts)
    caps = [
        _overview(s, counts, rng),
        _salient(s, salient, counts, rng),
        _counting(s, counts, rng),
        _relation(s, counts),
        _ends(s, salient, counts),
    ]
    rng.shuffle(caps)
    return caps


# ---------------------------------------------------------------- COCO files


def _date(rng: random.Random) -> str:
    return (
        f"2023-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
        f"{rng.randint(7, 19):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    )


def build(out: Path, *, seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT) -> dict[str, int]:
    """Write images and both annotation files under ``out``; return counts of what was written."""
    rng = random.Random(seed)
    image_dir, ann_dir = out / SPLIT, out / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    image_ids = rng.sample(range(100_000, 600_000), count)
    object_ids = iter(rng.sample(range(1_000_000, 2_000_000), count * MAX_OBJECTS))
    caption_ids = iter(rng.sample(range(100_000, 900_000), count * 5))
    images, instances, captions = [], [], []
    for i, image_id in enumerate(image_ids):
        scene = make_scene(rng, THEMES[i % len(THEMES)])
        file_name = f"{image_id:012d}.jpg"
        render(scene, rng).save(image_dir / file_name, "JPEG", quality=JPEG_QUALITY)
        images.append(
            {
                "license": 1,
                "file_name": file_name,
                "height": scene.height,
                "width": scene.width,
                "date_captured": _date(rng),
                "id": image_id,
            }
        )
        for o in scene.objects:
            x, y, w, h = (float(v) for v in o.box)
            instances.append(
                {
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    "area": w * h,
                    "iscrowd": 0,
                    "image_id": image_id,
                    "bbox": [x, y, w, h],
                    "category_id": COCO_ID_BY_NAME[o.name],
                    "id": next(object_ids),
                }
            )
        for caption in write_captions(scene, rng):
            captions.append({"image_id": image_id, "id": next(caption_ids), "caption": caption})
    for stale in image_dir.glob("*.jpg"):
        if stale.name not in {im["file_name"] for im in images}:
            stale.unlink()
    categories = [{"supercategory": s, "id": c, "name": n} for c, n, s in COCO_CATEGORIES]
    head = {"info": INFO | {"seed": seed}, "licenses": [LICENSE], "images": images}
    _dump(
        ann_dir / f"instances_{SPLIT}.json",
        head | {"annotations": instances, "categories": categories},
    )
    _dump(ann_dir / f"captions_{SPLIT}.json", head | {"annotations": captions})
    return {"images": len(images), "objects": len(instances), "captions": len(captions)}


def _dump(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    args = parser.parse_args(argv)
    written = build(args.out, seed=args.seed, count=args.count)
    print(f"{args.out}: " + ", ".join(f"{v} {k}" for k, v in written.items()))


if __name__ == "__main__":
    main()
