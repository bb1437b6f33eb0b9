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
  the image uses.
"""

from __future__ import annotations

import random

import polars as pl

from vlit_assets.core.generated.prompts import EXAMPLES
from vlit_assets.core.scored.metrics import image_annotations
from vlit_assets.core.text.objects import CATEGORY_NAMES
from vlit_assets.core.text.reading import caption_mentions
from vlit_assets_tests.defects import plant_kinds

LLM_DEFECT_KINDS = (
    "denied_present",
    "example_copy",
    "annotation_leak",
    "repeated_question",
    "unjudged_claim",
)

# Not "orange" (also a COCO category) or "painting" (also a noun): the metric skips both.
_COLOURS = ("purple", "pink", "golden", "silver", "striped", "beige")
_ACTIONS = ("juggling", "dancing", "climbing", "swimming", "knitting", "skipping")
_PRESCRIBED = {"What is the object in the red box?"}
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
