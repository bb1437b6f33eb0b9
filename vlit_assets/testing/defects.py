"""Planted defects: known-bad copies of good conversations, with a truth table of what was planted.

``plant_defects`` lets a test or benchmark measure whether the quality-control stage finds what
it should: each defective row is a copy of a good row (new ``conversation_id``) with exactly one
defect, and the truth table names it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import polars as pl

from vlit_assets.core.ids import stable_id
from vlit_assets.core.scored.metrics import image_annotations
from vlit_assets.core.text.inflect import NUMBER_WORDS, plural
from vlit_assets.core.text.objects import CATEGORY_NAMES, extract_mentions

DEFECT_KINDS = (
    "absent_object",  # an object the image does not hold is asserted in an answer
    "negative_flipped",  # a question about an absent object is answered "Yes, there is ..."
    "wrong_count",  # an answer states a count off by one from the annotation
    "near_copy",  # a copy of a good row with one word of one answer changed
    "one_word_answer",  # one answer replaced by a single word
    "moved_image",  # the conversation is attached to another image of the source
    "present_denied",  # an object the image's boxes hold is denied ("No, there is no bench.")
)

_SWAP_WORDS = ("large", "small", "bright", "quiet", "distant", "narrow")
_NUMBER_NAMES = {v: k for k, v in NUMBER_WORDS.items()}

Turns = list[dict[str, str]]


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _gpt_indexes(turns: Turns) -> list[int]:
    return [i for i, t in enumerate(turns) if t["from"] == "gpt"]


class _Planter:
    def __init__(self, objects: pl.DataFrame, tags: pl.DataFrame, rng: random.Random) -> None:
        ann = image_annotations(objects, tags)
        self.rng = rng
        self.present: dict[str, dict[str, tuple[int, bool]]] = {}
        for image_id, category, n, crowd in ann.present.sort("image_id", "category").iter_rows():
            self.present.setdefault(image_id, {})[category] = (n, crowd)
        self.images = sorted(ann.annotated.get_column("image_id").to_list())

    def _absent(self, image_id: str, turns: Turns) -> str:
        mentioned = {m.category for t in turns for m in extract_mentions(t["value"])}
        present = self.present.get(image_id, {})
        pool = [c for c in CATEGORY_NAMES if c not in present and c not in mentioned]
        return self.rng.choice(pool)

    def absent_object(self, row: dict) -> dict | None:
        turns = row["turns"]
        gpt = _gpt_indexes(turns)
        if not gpt or row["image_id"] not in self.present:
            return None
        cat = self._absent(row["image_id"], turns)
        i = self.rng.choice(gpt)
        turns[i]["value"] += f" There is also {_article(cat)} in the image."
        return row

    def negative_flipped(self, row: dict) -> dict | None:
        if row["image_id"] not in self.present:
            return None
        turns = row["turns"]
        cat = self._absent(row["image_id"], turns)
        turns += [
            {"from": "human", "value": f"Is there {_article(cat)} in the image?"},
            {"from": "gpt", "value": f"Yes, there is {_article(cat)} in the image."},
        ]
        return row

    def wrong_count(self, row: dict) -> dict | None:
        present = self.present.get(row["image_id"], {})
        countable = [c for c, (n, crowd) in present.items() if not crowd and 1 <= n < 20]
        gpt = _gpt_indexes(row["turns"])
        if not countable or not gpt:
            return None
        cat = self.rng.choice(countable)
        wrong = present[cat][0] + 1
        row["turns"][gpt[-1]]["value"] += f" I count {_NUMBER_NAMES[wrong]} {plural(cat)}."
        return row

    def present_denied(self, row: dict) -> dict | None:
        present = self.present.get(row["image_id"], {})
        if not present:
            return None
        cat = self.rng.choice(sorted(present))
        row["turns"] += [
            {"from": "human", "value": f"Is there {_article(cat)} in the image?"},
            {"from": "gpt", "value": f"No, there is no {cat} in this picture."},
        ]
        return row

    def near_copy(self, row: dict) -> dict | None:
        turns = row["turns"]
        candidates = [
            (i, j)
            for i in _gpt_indexes(turns)
            for j, w in enumerate(turns[i]["value"].split(" "))
            if w.isalpha() and len(w) >= 4 and not extract_mentions(w)
        ]
        if not candidates:
            return None
        i, j = self.rng.choice(candidates)
        words = turns[i]["value"].split(" ")
        words[j] = self.rng.choice([w for w in _SWAP_WORDS if w != words[j].lower()])
        turns[i]["value"] = " ".join(words)
        return row

    def one_word_answer(self, row: dict) -> dict | None:
        gpt = _gpt_indexes(row["turns"])
        if not gpt:
            return None
        row["turns"][self.rng.choice(gpt)]["value"] = "Okay."
        return row

    def moved_image(self, row: dict) -> dict | None:
        mentioned = {m.category for t in row["turns"] for m in extract_mentions(t["value"])}
        others = [
            i
            for i in self.images
            if i != row["image_id"] and mentioned and not mentioned & set(self.present.get(i, {}))
        ]
        if not others:
            return None
        row["image_id"] = self.rng.choice(others)
        return row


def plant_defects(
    good: pl.DataFrame,
    objects: pl.DataFrame,
    tags: pl.DataFrame,
    *,
    seed: int,
    per_kind: int | None = None,
    kinds: tuple[str, ...] = DEFECT_KINDS,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(defective rows, truth table) planted in copies of ``good`` conversations.

    ``per_kind`` copies per defect kind (default: 5% of ``good``, at least 1), drawn without
    replacement among the rows a kind can apply to. The truth table has one row per defective
    row: conversation_id, defect, source_conversation_id. Same seed, same output.
    """
    unknown = set(kinds) - set(DEFECT_KINDS)
    if unknown:
        raise ValueError(f"plant_defects: unknown defect kinds {sorted(unknown)}")
    rng = random.Random(seed)
    planter = _Planter(objects, tags, rng)
    per_kind = per_kind if per_kind is not None else max(1, good.height // 20)
    return plant_kinds(good, planter, kinds, per_kind, rng)


def plant_kinds(
    good: pl.DataFrame, planter: object, kinds, per_kind: int, rng: random.Random
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """For each kind, ``planter.<kind>`` on up to ``per_kind`` shuffled good rows (a copy each;
    None = the row cannot carry that defect). Returns (defective rows, truth table)."""
    rows = good.to_dicts()
    out: list[dict] = []
    truth: list[dict] = []
    for kind in kinds:
        plant: Callable[[dict], dict | None] = getattr(planter, kind)
        order = list(range(len(rows)))
        rng.shuffle(order)
        planted = 0
        for idx in order:
            if planted == per_kind:
                break
            source = rows[idx]
            copy = {**source, "turns": [dict(t) for t in source["turns"] or []]}
            defective = plant(copy)
            if defective is None:
                continue
            defective["conversation_id"] = stable_id("conv", source["conversation_id"], kind)
            out.append(defective)
            truth.append(
                {
                    "conversation_id": defective["conversation_id"],
                    "defect": kind,
                    "source_conversation_id": source["conversation_id"],
                }
            )
            planted += 1
    defective_frame = pl.DataFrame(out, schema=good.schema) if out else good.clear()
    truth_frame = pl.DataFrame(
        truth,
        schema={
            "conversation_id": pl.String,
            "defect": pl.String,
            "source_conversation_id": pl.String,
        },
    )
    return defective_frame, truth_frame
