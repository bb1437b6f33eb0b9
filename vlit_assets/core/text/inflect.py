"""English inflection, the project's one inflector: plurals, articles, counts and agreement.

Templates, scorers, scripts and tests all call these, so "person" is "people" everywhere, one
box of skis is "a pair of skis" and broccoli is a mass noun ("some broccoli", "the broccoli
is"). The helpers are pure and run several times per conversation, so they are cached.
"""

from __future__ import annotations

from functools import lru_cache

# fmt: off
_IRREGULAR: dict[str, str] = {
    "person": "people", "man": "men", "woman": "women", "child": "children",
    "gentleman": "gentlemen", "policeman": "policemen", "policewoman": "policewomen",
    "knife": "knives", "mouse": "mice", "goose": "geese", "calf": "calves", "ox": "oxen",
    "foot": "feet", "tooth": "teeth", "bus": "buses", "teddy": "teddies", "tv": "tvs",
    "suv": "suvs",
}
# Nouns whose plural is the singular: invariant countables (one sheep, two sheep), pluralia
# tantum (skis, scissors: one box is one pair), mass nouns (broccoli) and plurals themselves.
_INVARIANT = frozenset({
    "sheep", "deer", "fish", "skis", "scissors", "broccoli", "people", "persons", "cattle",
    "aircraft", "luggage", "busses",
})
NUMBER_WORDS: dict[str, int] = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}
NUMBER_NAMES = ("zero", *NUMBER_WORDS)[:13]  # spelled out up to twelve, then digits
# fmt: on


@lru_cache(maxsize=8192)
def plural(form: str) -> str:
    """English plural of a form, inflecting its last word ("hot dog" -> "hot dogs")."""
    head, _, last = form.rpartition(" ")
    if last in _INVARIANT:
        plural_last = last
    elif last in _IRREGULAR:
        plural_last = _IRREGULAR[last]
    elif last.endswith(("s", "sh", "ch", "x", "z")):
        plural_last = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        plural_last = last[:-1] + "ies"
    elif last.endswith("man"):
        plural_last = last[:-3] + "men"
    else:
        plural_last = last + "s"
    return f"{head} {plural_last}" if head else plural_last


# How a category is counted in English. One COCO box of skis or scissors is one pair; one box
# of broccoli is one piece (broccoli is a mass noun: "some broccoli", "the broccoli is").
# Sheep is countable but invariant ("a sheep", "two sheep").
PAIRED = frozenset({"skis", "scissors"})
MASS = frozenset({"broccoli"})
_UNIT = {**dict.fromkeys(PAIRED, "pair"), **dict.fromkeys(MASS, "piece")}
_VOWEL_SOUND_EXCEPTIONS = ("uni", "use", "one", "eu")  # "a unicycle", "a one-way sign"
_SILENT_H = ("hour", "honest", "honour", "honor", "heir")


def article(phrase: str) -> str:
    """ "a" or "an" for the phrase that follows: "an oven", "a pair", "a hair drier"."""
    word = phrase.lower()
    if word.startswith(_SILENT_H):
        return "an"
    if word[:1] in ("a", "e", "i", "o", "u") and not word.startswith(_VOWEL_SOUND_EXCEPTIONS):
        return "an"
    return "a"


def number_word(n: int) -> str:
    """ "zero" to "twelve" in words, larger numbers in digits."""
    return NUMBER_NAMES[n] if 0 <= n < len(NUMBER_NAMES) else str(n)


@lru_cache(maxsize=8192)
def unit_noun(name: str) -> str:
    """The noun for one box of a category: "dog", "pair of skis", "piece of broccoli"."""
    unit = _UNIT.get(name)
    return f"{unit} of {name}" if unit else name


@lru_cache(maxsize=8192)
def count_noun(name: str) -> str:
    """The noun after "how many" or a number above one: "dogs", "pairs of skis"."""
    unit = _UNIT.get(name)
    return f"{unit}s of {name}" if unit else plural(name)


@lru_cache(maxsize=8192)
def count_phrase(n: int, name: str, *, other: bool = False) -> str:
    """ "three dogs", "one pair of skis", "two other people", "14 sheep"."""
    mid = " other" if other else ""
    return f"{number_word(n)}{mid} {unit_noun(name) if n == 1 else count_noun(name)}"


@lru_cache(maxsize=8192)
def a_phrase(name: str) -> str:
    """Indefinite singular: "a dog", "an oven", "a pair of skis", "a sheep", "some broccoli"."""
    if name in MASS:
        return f"some {name}"
    noun = unit_noun(name)
    return f"{article(noun)} {noun}"


@lru_cache(maxsize=8192)
def no_phrase(name: str) -> tuple[str, str]:
    """Verb and noun of a denial: ("are", "dogs") -> "there are no dogs"; ("is", "broccoli")."""
    return ("is", name) if name in MASS else ("are", plural(name))


@lru_cache(maxsize=8192)
def the_phrase(name: str, n: int, *, boxed: bool = False) -> tuple[str, str]:
    """Definite phrase and its verb: ("the dog", "is"), ("the people", "are"),
    ("the broccoli", "is") whatever the count, ("the pair of skis", "is")."""
    adj = "boxed " if boxed else ""
    if name in MASS and not boxed:
        return f"the {name}", "is"
    if n == 1:
        return f"the {adj}{unit_noun(name)}", "is"
    return f"the {adj}{plural(name)}", "are"
