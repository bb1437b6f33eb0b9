"""Planted defects of the kinds real small LLMs produce, with a truth table (see defects.py).

Each defective row is a copy of a good row with exactly one of ``LLM_DEFECT_KINDS``, written
the way a 0.5B model wrote it in a field run:

- ``denied_present``: an answer denies an object the image holds ("There is no dog here.");
- ``example_copy``: an exchange copied from the self-instruct prompt's in-context examples
  (the region example's first question is prescribed wording and is never planted);
- ``annotation_leak``: an answer speaks of the annotations ("There is no mention of ...",
  "According to the captions ...", a box as numbers);
- ``repeated_question``: the first question asked again at the end, in other case and
  punctuation;
- ``unjudged_claim``: an answer gives the object a colour and an action that no caption of
  the image uses;
- ``wrong_relation``: an answer places one object left/right of, or above/below, another
  where every box of the one lies on the other side of every box of the other;
- ``article_error``: one "a"/"an" of an answer swapped ("a oven", "an dog");
- ``number_error``: a count whose noun disagrees with its number ("I can see two dog.",
  "There are one cat here.");
- ``answer_form_error``: an exchange whose answer opens "Yes"/"No" to a question that is not
  polar, or "Sure." to one that is not a request.
"""

from __future__ import annotations

import random
import re

import polars as pl

from vlit_assets.core.generated.prompts import EXAMPLES
from vlit_assets.core.scored.metrics import image_annotations
from vlit_assets.core.text.inflect import (
    PAIRED,
    a_phrase,
    article,
    number_word,
    plural,
    the_phrase,
)
from vlit_assets.core.text.objects import CATEGORY_NAMES
from vlit_assets.core.text.reading import caption_mentions
from vlit_assets.testing.defects import plant_kinds

LLM_DEFECT_KINDS = (
    "denied_present",
    "example_copy",
    "annotation_leak",
    "repeated_question",
    "unjudged_claim",
    "wrong_relation",
    "article_error",
    "number_error",
    "answer_form_error",
)

# Not "orange" (also a COCO category) or "painting" (also a noun): the metric skips both.
_COLOURS = ("purple", "pink", "golden", "silver", "striped", "beige")
_ACTIONS = ("juggling", "dancing", "climbing", "swimming", "knitting", "skipping")
_PRESCRIBED = {"What is the object in the red box?"}
# Free wordings of "A is <rel> B" as a small model writes them, per relation.
_RELATION_WORDS = {
    "left": ("to the left of", "on the left side of", "further left in the picture than"),
    "right": ("to the right of", "on the right side of", "further right in the picture than"),
    "above": ("above", "higher in the picture than", "on top of"),
    "below": ("below", "beneath", "lower in the picture than"),
}
_ARTICLE_RE = re.compile(r"\b(a|an) ([a-z][a-z'-]+)")
_FORM_ERRORS = (
    ("What does the picture show?", "Yes, it shows {a}."),
    ("Where is the {x} in this photo?", "No, the {x} is not hidden; it is in plain view."),
    ("How many {pl} are there?", "Yes, there is exactly one {x}."),
    ("What can you see in this picture?", "Sure. I can see {a}."),
    ("Which object stands out the most?", "Sure. The {x} stands out the most."),
)
_LEAKS = (
    " There is no mention of {absent} in the picture.",
    " According to the captions, the scene is as described.",
    " Its bounding box is [0.12, 0.30, 0.55, 0.91].",
    " The annotations do not say more about it.",
)

Turns = list[dict[str, str]]


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _gpt(turns: Turns) -> list[int]:
    return [i for i, t in enumerate(turns) if t["from"] == "gpt"]


class _Planter:
    def __init__(
        self, objects: pl.DataFrame, tags: pl.DataFrame, captions: pl.DataFrame, rng: random.Random
    ) -> None:
        self.rng = rng
        ann = image_annotations(objects, tags)
        self.boxed: dict[str, list[str]] = {}
        for image_id, category in (
            ann.present.select("image_id", "category").sort("image_id", "category").iter_rows()
        ):
            self.boxed.setdefault(image_id, []).append(category)
        self.named: dict[str, set[str]] = {}
        for image_id, category in caption_mentions(captions).iter_rows():
            self.named.setdefault(image_id, set()).add(category)
        self.caption_text: dict[str, str] = {}
        for image_id, caption in captions.select("image_id", "caption").iter_rows():
            self.caption_text[image_id] = (
                self.caption_text.get(image_id, "") + " " + caption.lower()
            )
        self.extents = _extents(objects)
        self.counts: dict[str, dict[str, int]] = {}
        for image_id, category, n, crowd in ann.present.iter_rows():
            if not crowd and n > 0:
                self.counts.setdefault(image_id, {})[category] = n
        self.exchanges = [
            pair
            for examples in EXAMPLES.values()
            for ex in examples
            for pair in ex.conversation
            if pair[0] not in _PRESCRIBED
        ]

    def denied_present(self, row: dict) -> dict | None:
        boxed = self.boxed.get(row["image_id"])
        gpt = _gpt(row["turns"])
        if not boxed or not gpt:
            return None
        cat = self.rng.choice(boxed)
        row["turns"][self.rng.choice(gpt)]["value"] += f" There is no {cat} in this picture."
        return row

    def example_copy(self, row: dict) -> dict | None:
        q, a = self.rng.choice(self.exchanges)
        row["turns"] += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        return row

    def annotation_leak(self, row: dict) -> dict | None:
        gpt = _gpt(row["turns"])
        if not gpt:
            return None
        seen = set(self.boxed.get(row["image_id"], [])) | self.named.get(row["image_id"], set())
        absent = self.rng.choice([c for c in CATEGORY_NAMES if c not in seen])
        text = self.rng.choice(_LEAKS).format(absent=_article(absent))
        row["turns"][self.rng.choice(gpt)]["value"] += text
        return row

    def repeated_question(self, row: dict) -> dict | None:
        turns = row["turns"]
        if len(turns) < 2:
            return None
        question = turns[0]["value"].rstrip("?. ").upper() + " ?"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": turns[1]["value"]}]
        return row

    def unjudged_claim(self, row: dict) -> dict | None:
        boxed = self.boxed.get(row["image_id"])
        gpt = _gpt(row["turns"])
        if not boxed or not gpt:
            return None
        said = self.caption_text.get(row["image_id"], "")
        colours = [c for c in _COLOURS if c not in said]
        actions = [a for a in _ACTIONS if a[:-3] not in said]
        if not colours or not actions:
            return None
        cat = self.rng.choice(boxed)
        colour, action = self.rng.choice(colours), self.rng.choice(actions)
        claim = f" The {cat} looks {colour} and seems to be {action}."
        row["turns"][self.rng.choice(gpt)]["value"] += claim
        return row

    def wrong_relation(self, row: dict) -> dict | None:
        """The reverse of a relation the boxes show with every box apart (so never ambiguous)."""
        boxes = self.extents.get(row["image_id"], {})
        gpt = _gpt(row["turns"])
        pairs = [
            (a, rel, b)
            for a in sorted(boxes)
            for b in sorted(boxes)
            if a != b
            for rel in _separated(boxes[a], boxes[b])
        ]
        if not pairs or not gpt:
            return None
        a, rel, b = self.rng.choice(pairs)  # a <rel> b holds; write b <rel> a
        subject, verb = the_phrase(b, self.counts[row["image_id"]][b])
        other, _ = the_phrase(a, self.counts[row["image_id"]][a])
        words = self.rng.choice(_RELATION_WORDS[rel])
        claim = f" {subject[:1].upper()}{subject[1:]} {verb} {words} {other}."
        row["turns"][self.rng.choice(gpt)]["value"] += claim
        return row

    def article_error(self, row: dict) -> dict | None:
        spots = [
            (i, m)
            for i in _gpt(row["turns"])
            for m in _ARTICLE_RE.finditer(row["turns"][i]["value"])
            if not m.group(2).startswith(("u", "h", "x", "once"))
            and article(m.group(2)) == m.group(1)
        ]
        if not spots:
            return None
        i, m = self.rng.choice(spots)
        wrong = "an" if m.group(1) == "a" else "a"
        text = row["turns"][i]["value"]
        row["turns"][i]["value"] = f"{text[: m.start()]}{wrong} {m.group(2)}{text[m.end() :]}"
        return row

    def number_error(self, row: dict) -> dict | None:
        counts = self.counts.get(row["image_id"], {})
        names = [c for c in sorted(counts) if plural(c) != c and c not in PAIRED]
        gpt = _gpt(row["turns"])
        if not names or not gpt:
            return None
        name = self.rng.choice(names)
        n = counts[name]
        text = f" There are one {name} here." if n == 1 else f" I can see {number_word(n)} {name}."
        row["turns"][self.rng.choice(gpt)]["value"] += text
        return row

    def answer_form_error(self, row: dict) -> dict | None:
        counts = self.counts.get(row["image_id"], {})
        if not counts:
            return None
        name = self.rng.choice(sorted(counts))
        q, a = self.rng.choice(_FORM_ERRORS)
        fill = {"x": name, "pl": plural(name), "a": a_phrase(name)}
        row["turns"] += [
            {"from": "human", "value": q.format(**fill)},
            {"from": "gpt", "value": a.format(**fill)},
        ]
        return row


_Box = tuple[float, float, float, float]  # x0, x1, y0, y1 over all non-crowd boxes


def _extents(objects: pl.DataFrame) -> dict[str, dict[str, _Box]]:
    """Per image, per category without a crowd box: the extent of its boxes."""
    frame = (
        objects.group_by("image_id", "category_name")
        .agg(
            crowd=pl.col("iscrowd").fill_null(False).any(),
            x0=pl.col("bbox_x").min(),
            x1=(pl.col("bbox_x") + pl.col("bbox_w")).max(),
            y0=pl.col("bbox_y").min(),
            y1=(pl.col("bbox_y") + pl.col("bbox_h")).max(),
        )
        .filter(~pl.col("crowd"))
        .sort("image_id", "category_name")
    )
    out: dict[str, dict[str, _Box]] = {}
    for image_id, name, _, x0, x1, y0, y1 in frame.iter_rows():
        out.setdefault(image_id, {})[name] = (x0, x1, y0, y1)
    return out


def _separated(a: _Box, b: _Box) -> list[str]:
    """Relations "a <rel> b" that hold with every box of a apart from every box of b."""
    out = []
    if a[1] < b[0]:
        out.append("left")
    if b[1] < a[0]:
        out.append("right")
    if a[3] < b[2]:
        out.append("above")
    if b[3] < a[2]:
        out.append("below")
    return out


def plant_llm_defects(
    good: pl.DataFrame,
    objects: pl.DataFrame,
    tags: pl.DataFrame,
    captions: pl.DataFrame,
    *,
    seed: int,
    per_kind: int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(defective rows, truth table: conversation_id, defect, source_conversation_id)."""
    rng = random.Random(seed)
    planter = _Planter(objects, tags, captions, rng)
    return plant_kinds(good, planter, LLM_DEFECT_KINDS, per_kind, rng)
