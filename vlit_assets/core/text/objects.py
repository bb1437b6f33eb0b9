"""COCO object vocabulary for text: surface forms per category, mention extraction, negation.

In the spirit of CHAIR (Rohrbach et al. 2018): every COCO category gets the words a caption or
an answer uses for it (its name, plural, synonyms and kinds), so that "two puppies" counts as a
mention of ``dog`` and "there is no sofa" as a *negated* mention of ``couch``.

Matching rules (documented in docs/metrics.md):

- Text is lowercased; curly apostrophes become straight ones. Forms match on word boundaries;
  a space inside a form also matches a hyphen or several spaces ("teddy-bear").
- Longer forms win: "hot dog" is ``hot dog`` (never ``dog``), "teddy bear" is ``teddy bear``
  (never ``bear``), "microwave oven" is ``microwave``, "train car" is ``train``.
- Blockers are phrases that contain a form but name something else ("bus stop", "train
  tracks", "toilet paper", "bear in mind"); they are matched and discarded.
- Ambiguous words are left out rather than guessed: bare "glass" (material, eyeglasses),
  "ski" (mostly "ski slope", "ski lift"), "bag", "screen", "desk", "baseball"/"football"
  (sports, not balls), "meter", "cab". "bat" alone is ``baseball bat`` (COCO has no animal
  bats); "glove" alone is not ``baseball glove`` (skiers wear gloves), "mitt" is.
- "orange" is the fruit only when plural, or followed by sentence punctuation, by a fruit
  part ("orange slices") or by a verb/preposition ("the orange is", "an orange on the
  table"); "an orange shirt" or "orange and white" are colours.
- Negation: a mention is negated when it lies inside a negation scope. A scope opens at a
  cue ("no <word>", "not", "never", "without", "none", "nor", "neither", "nothing", "n't",
  "cannot", "instead of", "rather than", "absence of", "lack of") and closes at sentence
  punctuation (. ; : ! ?), a newline, or a contrast word (but, however, although, though,
  whereas, except, while). Commas do not close a scope, so "no dogs, cats or birds" negates
  all three. "No," / "No." (an interjection) is not a cue, and "not only" opens no scope.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlit_assets.core.text.categories import COCO_CATEGORIES
from vlit_assets.core.text.inflect import NUMBER_WORDS, plural

CATEGORY_NAMES: tuple[str, ...] = tuple(name for _, name, _ in COCO_CATEGORIES)

# fmt: off
# Whole-category synonyms: "three people" is a count of `person`.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("people", "persons", "individual", "human being"),
    "bicycle": ("bike", "push bike", "pushbike"),
    "car": ("automobile",),
    "motorcycle": ("motorbike", "motor bike", "motor cycle", "dirt bike"),
    "airplane": ("plane", "aeroplane", "airliner", "aircraft", "jet", "jetliner", "jet plane"),
    "bus": ("busses", "autobus"),
    "truck": ("lorry",),
    "traffic light": ("traffic signal", "stoplight", "stop light"),
    "fire hydrant": ("hydrant",),
    "backpack": ("back pack", "rucksack", "knapsack"),
    "umbrella": ("parasol",),
    "handbag": ("hand bag", "purse"),
    "tie": ("necktie",),
    "suitcase": ("suit case", "luggage"),
    "frisbee": ("flying disc",),
    "sports ball": ("ball",),
    "baseball bat": ("bat",),
    "baseball glove": ("baseball mitt", "mitt", "catcher's mitt"),
    "skateboard": ("skate board",),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "wine glass": ("wineglass",),
    "cup": ("mug",),
    "donut": ("doughnut",),
    "hot dog": ("hotdog", "frankfurter"),
    "couch": ("sofa", "loveseat"),
    "potted plant": ("plant", "houseplant", "house plant", "pot plant"),
    "dining table": ("table",),
    "tv": ("television", "tv set", "monitor", "computer monitor"),
    "laptop": ("laptop computer",),
    "mouse": ("computer mouse",),
    "remote": ("remote control",),
    "cell phone": ("phone", "cellphone", "cellular phone", "mobile phone", "smartphone",
                   "smart phone"),
    "microwave": ("microwave oven",),
    "oven": ("stove",),
    "refrigerator": ("fridge",),
    "teddy bear": ("teddy", "stuffed bear"),
    "hair drier": ("hair dryer", "hairdryer", "hairdrier", "blow dryer", "blow drier"),
    "toothbrush": ("tooth brush",),
    "cow": ("cattle",),
}

# Kinds of a category: a mention of the category, but "two boys" says nothing about how many
# persons the image holds, so counts stated with these are not compared.
_KINDS: dict[str, tuple[str, ...]] = {
    "person": (
        "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "teenager", "teen",
        "guy", "lady", "gentleman", "adult", "player", "skier", "surfer", "snowboarder",
        "skateboarder", "rider", "cyclist", "biker", "pedestrian", "spectator", "passenger",
        "worker", "chef", "policeman", "policewoman", "officer", "soldier", "umpire",
        "pitcher", "catcher", "tourist", "student", "crowd",
    ),
    "car": ("sedan", "taxi", "suv", "jeep", "police car", "sports car"),
    "motorcycle": ("scooter", "moped"),
    "bus": ("school bus",),
    "train": ("locomotive", "tram", "train car"),
    "truck": ("fire truck", "firetruck", "pickup truck", "dump truck"),
    "boat": ("ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "rowboat", "speedboat",
             "motorboat"),
    "bird": ("pigeon", "seagull", "gull", "duck", "goose", "swan", "parrot", "owl", "eagle",
             "hawk", "crow", "sparrow", "pelican", "rooster", "hen", "penguin", "flamingo"),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup"),
    "horse": ("pony", "foal", "stallion", "mare"),
    "sheep": ("lamb", "ewe"),
    "cow": ("bull", "calf", "ox", "heifer"),
    "bear": ("polar bear", "grizzly", "grizzly bear", "brown bear", "black bear"),
    "tie": ("bow tie",),
    "sports ball": ("soccer ball", "tennis ball", "beach ball", "volleyball"),
    "cup": ("teacup", "coffee cup"),
    "sandwich": ("burger", "hamburger", "cheeseburger"),
    "cake": ("cupcake",),
    "chair": ("armchair", "high chair"),
}

# Phrases that contain a form but do not name the object; matched first, then discarded.
_BLOCKERS: tuple[str, ...] = (
    "bus stop", "bus stops", "bus station", "bus stations", "bus lane", "bus lanes",
    "train station", "train stations", "train track", "train tracks", "train platform",
    "train platforms", "cable car", "cable cars", "toilet paper", "flower bed", "flower beds",
    "remote area", "remote areas", "remote location", "remote locations", "bear in mind",
    "phone booth", "phone booths", "book store", "man made", "table tennis", "table cloth",
    "table of contents", "railroad tie", "railroad ties", "railway ties",
)

# A stated count is "<number> [up to two words] <form>"; these words in the gap mean it is not
# a count ("one of the dogs", "two or three cats").
COUNT_GAP_STOPWORDS = frozenset({
    "of", "the", "a", "an", "these", "those", "his", "her", "their", "its", "my", "our", "your",
    "and", "or", "with", "in", "on", "at", "to", "by", "for", "from", "is", "are", "was", "were",
    "than",
})
# fmt: on

# Singular "orange" is the fruit only in these contexts; the regex crate has no lookahead, so
# the context is consumed and category_of() maps the whole match back to "orange".
_ORANGE_FRUIT_CONTEXT = (
    r"orange(?:\s+(?:slices?|wedges?|peels?|halves|half|segments?|fruits?)\b"
    r"|\s*(?:[.;:!?]|$)"
    r"|\s+(?:is|was|sits|sitting|lies|lying|rests|resting|on|in|with|next|near|beside|by"
    r"|and\s+(?:a|an|the|some|\d+|one|two|three))\b)"
)
_ORANGE_CONTEXT_RE = re.compile(r"^orange\b.*$", re.DOTALL)


def _build_forms() -> tuple[dict[str, str], frozenset[str]]:
    form_to_category: dict[str, str] = {}
    countable: set[str] = set()
    for name in CATEGORY_NAMES:
        whole = (name, *_SYNONYMS.get(name, ()))
        for form, is_whole in [(f, True) for f in whole] + [
            (f, False) for f in _KINDS.get(name, ())
        ]:
            for surface in {form, plural(form)}:
                if form_to_category.setdefault(surface, name) != name:
                    raise ValueError(f"vocab: form {surface!r} claimed by two categories")
                if is_whole:
                    countable.add(surface)
    # "people" is the plural of "person"; "persons" is a listed synonym.
    return form_to_category, frozenset(countable)


FORM_TO_CATEGORY, COUNTABLE_FORMS = _build_forms()
"""Surface form (lowercase, single spaces) -> COCO category name; countable: whole-category."""


def _alternative(form: str) -> str:
    if form == "orange":
        return _ORANGE_FRUIT_CONTEXT
    return r"[\s-]+".join(re.escape(w) for w in form.split(" ")) + r"\b"


def _alternation(forms: set[str] | frozenset[str]) -> str:
    # Longest first: Python re and the Rust regex crate both take the first alternative that
    # matches at a position, so "hot dogs" must be tried before "dogs".
    ordered = sorted(forms, key=lambda f: (-len(f), f))
    return "|".join(_alternative(f) for f in ordered)


MENTION_PATTERN = r"\b(?:" + _alternation(set(FORM_TO_CATEGORY) | set(_BLOCKERS)) + ")"
"""Regex (Python re and Rust regex syntax) matching forms and blockers in lowercased text."""

COUNT_PATTERN = (
    r"\b(?P<number>\d{1,3}|"
    + "|".join(NUMBER_WORDS)
    + r")\s+(?:[a-z']+\s+){0,2}?(?P<form>"
    + _alternation(COUNTABLE_FORMS)
    + ")"
)
"""Regex matching a stated count: a number, up to two words, a whole-category form.

Groups ``number`` and ``form``; a match whose gap holds a COUNT_GAP_STOPWORDS word ("one of
the dogs") is not a count and callers discard it."""

_NEG_CUES = (
    r"not\s+only\b"  # listed first so that it opens no scope
    r"|(?:no\s|not\b|never\b|without\b|none\b|nor\b|neither\b|nothing\b|nobody\b|cannot\b"
    r"|[a-z]+n't\b|(?:is|are|was|were|do|does|did|has|have|had|ca|wo)nt\b"
    r"|instead\s+of\b|rather\s+than\b|absence\s+of\b|lack\s+of\b|lacking\b|devoid\s+of\b)"
    r"[^\n]*?(?:[.;:!?\n]|\b(?:but|however|although|though|whereas|except|while)\b|$)"
)
NEGATION_SCOPE_PATTERN = r"\b(?:" + _NEG_CUES + ")"
"""Regex matching one negation scope (cue through terminator) in lowercased text."""

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_MENTION_RE = re.compile(MENTION_PATTERN)
_NEG_RE = re.compile(NEGATION_SCOPE_PATTERN)
_SPACES_RE = re.compile(r"[\s-]+")


@dataclass(frozen=True)
class Mention:
    category: str
    span: tuple[int, int]  # character offsets into the text given to extract_mentions
    negated: bool


def normalize(text: str) -> str:
    """Lowercase and straighten apostrophes, keeping every character at its offset."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lowercase to two; keep offsets exact
        lowered = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    return lowered.translate(_APOSTROPHES)


def category_of(surface: str) -> str | None:
    """The category a matched surface form names; None for blockers and unknown words."""
    key = _SPACES_RE.sub(" ", surface.strip().lower())
    if _ORANGE_CONTEXT_RE.match(key):
        return "orange"
    return FORM_TO_CATEGORY.get(key)


def extract_mentions(text: str) -> list[Mention]:
    """Every mention of a COCO category in ``text``, in order, with its negation flag."""
    lowered = normalize(text)
    scopes = [m.span() for m in _NEG_RE.finditer(lowered)]
    mentions: list[Mention] = []
    for match in _MENTION_RE.finditer(lowered):
        category = category_of(match.group())
        if category is None:
            continue
        start, end = match.span()
        if _ORANGE_CONTEXT_RE.match(match.group()):
            end = start + len("orange")
        negated = any(s <= start < e for s, e in scopes)
        mentions.append(Mention(category, (start, end), negated))
    return mentions
