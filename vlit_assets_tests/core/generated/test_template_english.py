"""Every template over all 80 COCO categories with counts 0, 1, 2 and 5, checked by rule.

The rules are written here from English, not from the generator's helpers: articles follow the
first letter, a number agrees with its noun, a verb with its subject, only requests are
answered "Sure.", only polar questions "Yes"/"No", and a cut inventory says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from vlit_assets.core.scored.claims import grammar_checks
from vlit_assets.core.text.categories import COCO_CATEGORIES
from vlit_assets_tests.core.generated.test_generate import _frames, _run

NAMES = [name for _, name, _ in COCO_CATEGORIES]
# Plurals spelled out here, independently of the inflector.
IRREGULAR = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep",
             "skis": "skis", "scissors": "scissors", "broccoli": "broccoli", "bus": "buses",
             "bench": "benches", "sandwich": "sandwiches", "couch": "couches",
             "wine glass": "wine glasses", "toothbrush": "toothbrushes"}  # fmt: skip
MASS = {"broccoli"}
PAIRED = {"skis", "scissors"}
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POLAR = re.compile(r"^(?:and )?(?:is|are|does|do|can you see|can you count|would)\b|^i think", re.I)
REQUEST = re.compile(r"^(?:can you|could you|would you|describe|give|summarize|tell|count)\b", re.I)


def _plural(name: str) -> str:
    return IRREGULAR.get(name, name + "s")


def _layout(name: str, n: int) -> list[tuple]:
    """n boxes of ``name`` in a row at the top, a bench (or chair) far below."""
    other = "bench" if name != "bench" else "chair"
    boxes = [(name, 40 + 190 * i, 40, 150, 150, False) for i in range(n)]
    return [*boxes, (other, 300, 550, 300, 200, False)]


def _conversations(name: str, n: int, tmp_path: Path) -> list[list[tuple[str, str]]]:
    absent = [name] if n == 0 else []
    absent += [x for x in ("giraffe", "kite", "oven", "umbrella") if x != name]
    frames = _frames(_layout(name, n), absent=tuple(absent))
    out = []
    for seed in range(6):
        df = _run(frames, tmp_path, seed=seed, types=("global", "negative", "region"))
        for turns in df["turns"].to_list():
            values = [t["value"] for t in turns]
            out.append(list(zip(values[::2], values[1::2], strict=True)))
    return out


def _problems(name: str, n: int, q: str, a: str) -> list[str]:
    bad = []
    for text in (q, a):
        for art, word in re.findall(r"\b(a|an) ([a-z]+)", text):
            if (art == "an") != (word[0] in "aeiou"):
                bad.append(f"article: {art} {word}")
    single, plural = name, _plural(name)
    if name in PAIRED:
        single, plural = f"pair of {name}", f"pairs of {name}"
    if name in MASS:
        single, plural = f"piece of {name}", f"pieces of {name}"
    for text in (q, a):
        low = text.lower()
        if single != plural:
            if re.search(rf"\b(?:{'|'.join(NUMBERS[1:])}) (?:other )?{re.escape(single)}\b", low):
                bad.append(f"number/noun: plural number with {single}")
            if re.search(rf"\bone (?:other )?{re.escape(plural)}\b", low):
                bad.append(f"number/noun: one {plural}")
        if name not in MASS and re.search(rf"\bsome {re.escape(name)}\b", low):
            bad.append(f"'some {name}' for a countable noun")
        if re.search(r"\b(?:is|was) (?:two|three|four|five|six|\d+)\b", low):
            bad.append("verb: singular verb before a plural number")
        if re.search(r"\bare (?:one|a|an)\b", low) and not re.search(r"\bare one of\b", low):
            bad.append("verb: plural verb before one")
        if name in MASS and re.search(rf"\bthe {name} are\b", low):
            bad.append("verb: the broccoli are")
        if single != plural and re.search(rf"\bthe {re.escape(plural)} is\b", low):
            bad.append(f"verb: the {plural} is")
        if re.search(rf"\bthe (?:boxed )?{re.escape(single)} are\b", low) and single != plural:
            bad.append(f"verb: the {single} are")
    if n > 1 and name == "sheep" and re.search(r"\bthe sheep is\b", a.lower()) and "boxed" not in a:
        bad.append("verb: the sheep is (several sheep)")
    if n == 1 and name == "sheep" and re.search(r"\bthe sheep are\b", a.lower()):
        bad.append("verb: the sheep are (one sheep)")
    if a.startswith("Sure") and not REQUEST.match(q):
        bad.append("Sure. for a question that is not a request")
    if re.match(r"(Yes|No)\b", a) and not POLAR.match(q):
        bad.append("Yes/No for a question that is not polar")
    if POLAR.match(q) and not re.match(r"(Yes|No)\b", a):
        bad.append("polar question without Yes/No")
    return bad


@pytest.mark.parametrize("name", NAMES)
def test_every_template_is_grammatical_for_every_category(name: str, tmp_path: Path) -> None:
    problems: list[str] = []
    pairs = 0
    for n in (0, 1, 2, 5):
        for conv in _conversations(name, n, tmp_path):
            for q, a in conv:
                pairs += 1
                problems += [f"n={n}: {p}: {q!r} -> {a!r}" for p in _problems(name, n, q, a)]
    assert pairs >= 150
    assert not problems, "\n".join(problems[:10])


@pytest.mark.parametrize("name", NAMES)
def test_the_grammar_metric_passes_every_template(name: str, tmp_path: Path) -> None:
    # The scorer's grammar rules (core/scored/claims.py) read what the templates write
    # without a false alarm.
    rows = [
        {"conversation_id": f"{n}-{k}", "image_id": "1",
         "turns": [{"from": r, "value": v} for q, a in conv for r, v in (("human", q), ("gpt", a))]}
        for n in (0, 1, 2, 5)
        for k, conv in enumerate(_conversations(name, n, tmp_path))
    ]  # fmt: skip
    scored = grammar_checks(pl.DataFrame(rows))
    assert scored.height >= 50
    flagged = scored.filter(pl.col("n_grammar_errors") > 0)["grammar_errors"].to_list()
    assert not flagged, flagged[:5]


def test_the_rules_catch_the_defects_they_are_for() -> None:
    # Each rule fails on the text it forbids, so a pass above means something.
    assert _problems("oven", 1, "Is there a oven?", "No, there are no ovens.")
    assert _problems("sheep", 1, "What is in the red box?", "That is some sheep.")
    assert _problems("broccoli", 2, "Where?", "The broccoli are smaller than the bench.")
    assert _problems("bottle", 0, "How many bottles are in the image?", "No, there are none.")
    assert _problems("cat", 1, "What does this photo show?", "Sure. A cat.")
    assert _problems("dog", 2, "Count the dogs.", "There is two dogs.")
    assert _problems("dog", 2, "Count the dogs.", "I count one dogs.")
    assert not _problems("dog", 2, "Count the dogs.", "I count two dogs.")


def test_a_cut_inventory_says_so(tmp_path: Path) -> None:
    many = ["dog", "cat", "bench", "chair", "cup", "bowl", "book"]
    objects = [(c, 10 + 130 * i, 10, 100, 100, False) for i, c in enumerate(many)]
    few = objects[:3]
    cut = full = 0
    for seed in range(30):
        for turns, listed in ((_run(_frames(objects), tmp_path, seed=seed), True),
                              (_run(_frames(few), tmp_path, seed=seed), False)):  # fmt: skip
            for t in turns["turns"].to_list():
                for turn in t:
                    value = turn["value"]
                    if re.search(r"\b(one|two) \w+, .* and one", value) and turn["from"] == "gpt":
                        said = "among other things" in value
                        assert said == listed, value
                        cut += said
                        full += not said
    assert cut >= 5 and full >= 5
