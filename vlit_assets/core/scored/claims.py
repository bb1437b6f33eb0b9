"""Relation claims checked against the boxes, and grammar checks, for every conversation.

Template and LLM text go through the same checks (docs/metrics.md says which metric catches
what). Like every metric they keep rows and decide nothing.

Relations (:func:`relation_claims`). An answer claims "A <rel> B" when, outside negation and
inside one clause, an object mention A is followed by at most four words, a relation phrase
and at most two words (and "pair of"/"piece of") before a mention B of another category.
Both the template wording ("further left in the picture than", "higher in the picture than")
and free wording ("to the left of", "on the right side of", "above", "below", "beneath",
"under", "on top of") are read.
The claim is judged against the non-crowd boxes of both categories on that axis:

- supported when every A box ends before every B box begins (in the claimed direction);
- contradicted when every B box ends before every A box begins: the boxes say the reverse;
- not judged otherwise: boxes that overlap on the axis (a person standing on a surfboard is
  "above" it in the world and overlaps it in the picture), a crowd box, a category without a
  box, or several boxes that do not all agree. Which of three dogs "the dog" means is not
  guessed; when every dog agrees, it does not matter.

``n_relation_claims`` counts the judged claims, ``n_relations_contradicted`` the contradicted
ones, ``relation_consistency`` is supported / judged. All three are null for an image without
boxes (tags-only or QC-only data); the share is also null when no claim was judged.

Grammar (:func:`grammar_checks`), per answer, by rule; each hit is one entry of
``grammar_errors`` ("<code>: <words>") and ``n_grammar_errors`` counts them:

- ``article``: "a" before a vowel sound or "an" before a consonant sound, by the same rule as
  the templates' inflector (``objects.article``). Words the rule cannot settle from spelling
  are skipped: "u" words ("an umbrella", "a unicorn"), "h" words after "an" ("an historic"),
  acronyms ("an SUV") and single letters.
- ``number``: a number that disagrees with its noun, for the COCO vocabulary: "one dogs",
  "two dog" (a singular noun after a number above one, when a clause boundary or a verb
  follows it, so "two dog leashes" is not read), "there is two ...", "there are one dog".
- ``yes_no``: an answer opening "Yes"/"No" to a question that is not polar (no sentence of
  it opens with an auxiliary, no tag such as "right?", no "if"/"whether"): "How many bottles
  are there?" -> "No, ...".
- ``sure``: an answer opening "Sure" to a question that is not a request (no imperative,
  no "can/could/would/will you", no "please").
"""

from __future__ import annotations

import re

import polars as pl

from vlit_assets.core.metadata import mean
from vlit_assets.core.text.inflect import NUMBER_WORDS, article, plural
from vlit_assets.core.text.objects import FORM_TO_CATEGORY, extract_mentions
from vlit_assets.core.text.reading import (
    POLAR_PATTERN,
    REQUEST_PATTERN,
    require_columns,
    rx,
    turns_long,
)

# ----------------------------------------------------------------------------- relations

_PICTURE = r"(?:\s+(?:in|of|within)\s+the\s+(?:picture|image|photo|photograph|frame|scene))?"
_DEGREE = r"(?:(?:further|farther|more|much|slightly|directly|just|a\s+bit|a\s+little)\s+)*"
_RELATION_RE = re.compile(
    r"\b" + _DEGREE + r"(?:"
    r"(?:(?:to|on|at)\s+the\s+)?(?P<h>left|right)(?:[- ]hand)?(?:\s+side)?"
    + _PICTURE
    + r"\s+(?:of|than)"
    r"|(?P<vc>higher|lower)" + _PICTURE + r"\s+than"
    r"|(?P<v>above|below|beneath|underneath|under|on\s+top\s+of)"
    r")\b"
)
_VERTICAL = dict.fromkeys(("higher", "above", "on top of"), "above") | dict.fromkeys(
    ("lower", "below", "beneath", "underneath", "under"), "below"
)
_BEFORE_GAP = re.compile(r"^\s+(?:[a-z']+\s+){0,4}$")
_AFTER_GAP = re.compile(r"^\s+(?:[a-z']+\s+){0,2}(?:(?:pairs?|pieces?) of\s+)?$")
_HINT = r"\b(?:left|right|higher|lower|above|below|beneath|under|underneath|top)\b"


def _relation_of(match: re.Match[str]) -> str:
    if match.group("h"):
        return match.group("h")
    word = re.sub(r"\s+", " ", match.group("vc") or match.group("v"))
    return _VERTICAL[word]


def parse_relations(text: str) -> list[tuple[str, str, str]]:
    """(a, relation, b) for every relation claim of ``text`` (lowercased, negation cut out);
    relation is left, right, above or below, categories are COCO names, a != b."""
    mentions = extract_mentions(text)
    out: list[tuple[str, str, str]] = []
    for match in _RELATION_RE.finditer(text):
        start, end = match.span()
        before = [m for m in mentions if m.span[1] <= start]
        after = [m for m in mentions if m.span[0] >= end]
        if not before or not after:
            continue
        a, b = before[-1], after[0]
        if not _BEFORE_GAP.match(text[a.span[1] : start] + " "):
            continue
        if not _AFTER_GAP.match(text[end : b.span[0]]):
            continue
        if a.category != b.category:
            out.append((a.category, _relation_of(match), b.category))
    return out


_BOX_COLUMNS = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")


def _extents(objects: pl.DataFrame) -> pl.DataFrame:
    """image_id, category, x0, x1, y0, y1 over the non-crowd boxes; categories with a crowd
    box are left out (where the crowd ends is unknown)."""
    require_columns(objects, "raw__objects", ("image_id", "category_name", "iscrowd"))
    return (
        objects.group_by(pl.col("image_id").cast(pl.String), category=pl.col("category_name"))
        .agg(
            crowd=pl.col("iscrowd").fill_null(False).any(),
            x0=pl.col("bbox_x").min(),
            x1=(pl.col("bbox_x") + pl.col("bbox_w")).max(),
            y0=pl.col("bbox_y").min(),
            y1=(pl.col("bbox_y") + pl.col("bbox_h")).max(),
        )
        .filter(~pl.col("crowd"))
        .drop("crowd")
    )


def _verdicts(claims: pl.DataFrame, extents: pl.DataFrame) -> pl.DataFrame:
    """claims (conversation_id, image_id, a, rel, b) with ``verdict``: supported,
    contradicted or null (not judged)."""
    a = extents.rename({c: f"a_{c}" for c in ("x0", "x1", "y0", "y1")})
    b = extents.rename({c: f"b_{c}" for c in ("x0", "x1", "y0", "y1")})
    joined = claims.join(
        a, left_on=["image_id", "a"], right_on=["image_id", "category"], how="inner"
    ).join(b, left_on=["image_id", "b"], right_on=["image_id", "category"], how="inner")
    rel = pl.col("rel")
    holds = (
        pl.when(rel == "left").then(pl.col("a_x1") <= pl.col("b_x0"))
        .when(rel == "right").then(pl.col("b_x1") <= pl.col("a_x0"))
        .when(rel == "above").then(pl.col("a_y1") <= pl.col("b_y0"))
        .otherwise(pl.col("b_y1") <= pl.col("a_y0"))
    )  # fmt: skip
    reversed_ = (
        pl.when(rel == "left").then(pl.col("b_x1") <= pl.col("a_x0"))
        .when(rel == "right").then(pl.col("a_x1") <= pl.col("b_x0"))
        .when(rel == "above").then(pl.col("b_y1") <= pl.col("a_y0"))
        .otherwise(pl.col("a_y1") <= pl.col("b_y0"))
    )  # fmt: skip
    return joined.select(
        "conversation_id",
        "a",
        "rel",
        "b",
        verdict=pl.when(holds)
        .then(pl.lit("supported"))
        .when(reversed_)
        .then(pl.lit("contradicted")),
    )


def relation_claims(conversations: pl.DataFrame, objects: pl.DataFrame | None) -> pl.DataFrame:
    """conversation_id, n_relation_claims, n_relations_contradicted, relation_consistency,
    relations_contradicted ("dog left of cat"): one row per input row, in order.

    ``objects`` is raw__objects; without it, or without its box columns, nothing is judged.
    """
    require_columns(conversations, "conversations", ("conversation_id", "image_id", "turns"))
    conv = conversations.select("conversation_id", pl.col("image_id").cast(pl.String), "turns")
    empty = pl.lit([], dtype=pl.List(pl.String))
    if objects is None or not set(_BOX_COLUMNS) <= set(objects.columns):
        return conv.select(
            "conversation_id",
            n_relation_claims=pl.lit(None, pl.Int32),
            n_relations_contradicted=pl.lit(None, pl.Int32),
            relation_consistency=pl.lit(None, pl.Float64),
            relations_contradicted=pl.lit(None, pl.List(pl.String)),
        )
    extents = _extents(objects)
    boxed = objects.select(pl.col("image_id").cast(pl.String)).unique()
    # Only answers that use a relation word are parsed (in Python; a few percent of turns).
    answers = turns_long(conv).filter(
        (pl.col("role") == "gpt") & pl.col("affirmed_text").str.contains(rx(_HINT))
    )
    rows = [
        (cid, image_id, a, rel, b)
        for cid, image_id, text in answers.select(
            "conversation_id", "image_id", "affirmed_text"
        ).iter_rows()
        for a, rel, b in parse_relations(text)
    ]
    claims = pl.DataFrame(
        rows,
        schema={"conversation_id": conv.schema["conversation_id"], "image_id": pl.String,
                "a": pl.String, "rel": pl.String, "b": pl.String},
        orient="row",
    )  # fmt: skip
    judged = _verdicts(claims, extents).filter(pl.col("verdict").is_not_null())
    contradicted = pl.col("verdict") == "contradicted"
    per_conv = judged.group_by("conversation_id").agg(
        n=pl.len().cast(pl.Int32),
        bad=contradicted.sum().cast(pl.Int32),
        said=pl.concat_str("a", "rel", "b", separator=" ").filter(contradicted).unique().sort(),
    )
    has_boxes = pl.col("image_id").is_in(boxed.get_column("image_id").implode())
    return (
        conv.select("conversation_id", "image_id")
        .join(per_conv, on="conversation_id", how="left", maintain_order="left")
        .select(
            "conversation_id",
            n_relation_claims=pl.when(has_boxes).then(pl.col("n").fill_null(0)),
            n_relations_contradicted=pl.when(has_boxes).then(pl.col("bad").fill_null(0)),
            relation_consistency=pl.when(has_boxes & (pl.col("n") > 0)).then(
                1.0 - pl.col("bad") / pl.col("n")
            ),
            relations_contradicted=pl.when(has_boxes).then(
                pl.col("said")
                .list.eval(pl.element().str.replace(" (left|right) ", " $1 of "))
                .fill_null(empty)
            ),
        )
    )


# ----------------------------------------------------------------------------- grammar

# A capital "A" counts only at a sentence start: mid-sentence it is a label ("plan A is").
# Only candidates are extracted: "a" before a vowel letter, "an" before a consonant letter.
_AN_LETTER = "[AEIOaeio]"
_A_LETTER = "[b-df-gj-np-tv-zB-DF-GJ-NP-TV-Z]"
_ARTICLE_PATTERN = (
    rf"(?:^|[.!?]\s+)(?:A {_AN_LETTER}|An {_A_LETTER})[A-Za-z'-]*"
    rf"|\b(?:a {_AN_LETTER}|an {_A_LETTER})[A-Za-z'-]*"
)
_NUMBERS_ABOVE_ONE = sorted(w for w, n in NUMBER_WORDS.items() if n > 1)
_MANY = r"(?:" + "|".join(_NUMBERS_ABOVE_ONE) + r"|[2-9]|[1-9]\d{1,2})"


def _noun_forms() -> tuple[list[str], list[str]]:
    """(singulars, plurals) of the COCO vocabulary whose plural differs from the singular
    ("person"/"people"; not "sheep" or "skis"), longest first."""
    pairs = {
        (f, plural(f)) for f in FORM_TO_CATEGORY if plural(f) != f and plural(f) in FORM_TO_CATEGORY
    }
    plurals = {p for _, p in pairs}
    singulars = {s for s, _ in pairs} - plurals

    def order(forms: set[str]) -> list[str]:
        return sorted(forms, key=lambda f: (-len(f), f))

    return order(singulars), order(plurals)


def _alternation(forms: list[str]) -> str:
    return "(?:" + "|".join(r"[\s-]+".join(re.escape(w) for w in f.split(" ")) for f in forms) + ")"


_SINGULARS, _PLURALS = _noun_forms()
# What may follow a noun that is the head of its phrase (not a modifier: "two dog leashes").
_HEAD_END = (
    r"(?:\s*(?:[.,;:!?)]|$)|\s+(?:are|were|is|was|and|or|in|on|at|near|next|with|by|sitting|"
    r"standing|lying|visible|here|there|that|which|who|can|could|seem|appear|to|from|of)\b)"
)
NUMBER_PATTERNS: dict[str, str] = {
    "one_plural": r"\b(?:one|1)\s+(?:other\s+)?" + _alternation(_PLURALS) + r"\b",
    "many_singular": r"\b" + _MANY + r"\s+(?:other\s+)?" + _alternation(_SINGULARS) + _HEAD_END,
    "is_many": r"\bthere(?:\s+is|'s)\s+" + _MANY + r"\b",
    "are_one": r"\bthere\s+are\s+(?:one|a|an)\s+" + _alternation(_SINGULARS) + r"\b",
}


# A question is polar when one of its sentences is (opens with an auxiliary and is not a
# request), or it ends in a tag or asks "whether"; it is a request when one of its sentences
# opens with an imperative or it asks "can/could/would/will you", or "please".
_TAG = r"(?:right|correct|true|isn't it|aren't they|is it|is that so|am i right)\s*\?\s*$"
_ASKS_IF = r"\b(?:(?:tell|show|let) me (?:if|whether)|whether|or not)\b"
_IMPERATIVE = (
    r"^(?:please |now |so |and )?(?:describe|tell|give|list|explain|summarize|summarise|count|"
    r"write|provide|name|show|point|identify|share|imagine|suppose|compare|detail|look|find|"
    r"let's|help)\b"
)
# "Can you count four dogs?" asks for a check, so it is polar although it opens like a request.
_CHECK = r"^(?:and )?(?:can|could) you (?:count|confirm|verify|check)\b"
_POLITE = (
    r"(?:^|[.?!;:]\s+)(?:and |so |now )?(?:can|could|would|will) you\b"
    r"|\bplease\b|\b(?:i'd|i would) like\b"
)
YES_NO_PATTERN = r"^(?:yes|yeah|yep|yup)\b|^(?:no|nope|nah)(?:\s*[,.!;:]|$)"


def _sentences(text: pl.Expr) -> pl.Expr:
    return text.str.replace_all(r"([.?!;])\s+", "$1\n").str.split("\n")


def _is_polar(question: pl.Expr) -> pl.Expr:
    sentence = pl.element()
    polar = sentence.str.contains(POLAR_PATTERN) & (
        ~sentence.str.contains(REQUEST_PATTERN) | sentence.str.contains(_CHECK)
    )
    return (
        _sentences(question).list.eval(polar).list.any()
        | question.str.contains(_TAG)
        | question.str.contains(_ASKS_IF)
    )


def _is_request(question: pl.Expr) -> pl.Expr:
    return _sentences(question).list.eval(pl.element().str.contains(_IMPERATIVE)).list.any() | (
        question.str.contains(_POLITE)
    )


def _article_errors(answers: pl.DataFrame) -> pl.DataFrame:
    pairs = (
        answers.select("conversation_id", hit=pl.col("value").str.extract_all(rx(_ARTICLE_PATTERN)))
        .explode("hit", keep_nulls=False)
        .with_columns(
            art=pl.col("hit").str.extract(r"(\S+)\s+\S+$", 1).str.to_lowercase(),
            word=pl.col("hit").str.extract(r"\s(\S+)$", 1),
        )
    )
    words = pairs.get_column("word").unique().to_list()
    settled = {w: article(w) for w in words if _settled(w)}
    return pairs.filter(
        pl.col("art")
        != pl.col("word").replace_strict(settled, default=None, return_dtype=pl.String)
    ).select(
        "conversation_id",
        error=pl.lit("article: ")
        + pl.concat_str("art", pl.col("word").str.to_lowercase(), separator=" "),
    )


def _settled(word: str) -> bool:
    """Whether spelling settles a/an for this word (see the module doc)."""
    low = word.lower()
    return len(word) > 1 and not word.isupper() and not low.startswith(("u", "h", "x", "once"))


def _number_errors(answers: pl.DataFrame) -> pl.DataFrame:
    either = "|".join(f"(?:{p})" for p in NUMBER_PATTERNS.values())  # one scan for all four
    hits = answers.select("conversation_id", hit=pl.col("text").str.extract_all(rx(either)))
    return hits.explode("hit", keep_nulls=False).select(
        "conversation_id",
        error=pl.lit("number: ")
        + pl.col("hit").str.replace(r"[\s.,;:!?)]+$", "").str.replace_all(r"\s+", " "),
    )


def _form_errors(turns: pl.DataFrame) -> pl.DataFrame:
    pairs = (
        turns.with_columns(
            answer=pl.col("text").shift(-1),
            next_role=pl.col("role").shift(-1),
            next_conv=pl.col("conversation_id").shift(-1),
        )
        .filter(
            (pl.col("role") == "human")
            & (pl.col("next_role") == "gpt")
            & (pl.col("next_conv") == pl.col("conversation_id"))
        )
        .select(
            "conversation_id",
            question="text",
            yes_no=pl.col("answer").str.contains(YES_NO_PATTERN),
            sure=pl.col("answer").str.contains(r"^sure\b"),
        )
        # only the questions of such answers are read sentence by sentence
        .filter(pl.col("yes_no") | pl.col("sure"))
    )
    return pl.concat(
        [
            pairs.filter(pl.col("yes_no") & ~_is_polar(pl.col("question"))).select(
                "conversation_id", error=pl.lit("yes_no: ") + pl.col("question")
            ),
            pairs.filter(pl.col("sure") & ~_is_request(pl.col("question"))).select(
                "conversation_id", error=pl.lit("sure: ") + pl.col("question")
            ),
        ]
    )


def grammar_checks(conversations: pl.DataFrame, turns: pl.DataFrame | None = None) -> pl.DataFrame:
    """conversation_id, n_grammar_errors, grammar_errors: one row per input row, in order.

    ``turns`` is ``turns_long(conversations)`` when the caller has it already.
    """
    require_columns(conversations, "conversations", ("conversation_id", "image_id", "turns"))
    conv = conversations.select("conversation_id", "image_id", "turns")
    turns = turns_long(conv) if turns is None else turns
    answers = (
        conv.select("conversation_id", "turns")
        .explode("turns", keep_nulls=False)
        .select(
            "conversation_id",
            role=pl.col("turns").struct.field("from"),
            value=pl.col("turns").struct.field("value").fill_null(""),
        )
        .filter(pl.col("role") == "gpt")
    )
    errors = pl.concat(
        [
            _article_errors(answers),
            _number_errors(turns.filter(pl.col("role") == "gpt")),
            _form_errors(turns),
        ]
    )
    per_conv = errors.group_by("conversation_id").agg(
        n=pl.len().cast(pl.Int32), said=pl.col("error").unique().sort()
    )
    empty = pl.lit([], dtype=pl.List(pl.String))
    return (
        conv.select("conversation_id")
        .join(per_conv, on="conversation_id", how="left", maintain_order="left")
        .select(
            "conversation_id",
            n_grammar_errors=pl.col("n").fill_null(0),
            grammar_errors=pl.col("said").fill_null(empty),
        )
    )


def claim_figures(scores: pl.DataFrame) -> dict[str, float | None]:
    """Pooled relation consistency and the share of rows with a grammar error (null when a
    frame scored before these columns existed lacks them)."""
    out: dict[str, float | None] = {"relation_consistency": None, "grammar_error_rate": None}
    if "n_relation_claims" in scores.columns:
        claims, bad = scores.select(
            pl.col("n_relation_claims", "n_relations_contradicted").sum()
        ).row(0)
        out["relation_consistency"] = (claims - bad) / claims if claims else None
    if "n_grammar_errors" in scores.columns:
        out["grammar_error_rate"] = mean((scores["n_grammar_errors"] > 0).cast(pl.Float64))
    return out
