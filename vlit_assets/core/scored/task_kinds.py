"""Instruction types and task kinds inferred from the text of conversations that carry none.

Imported instruction data (plain LLaVA files, Parquet dumps) does not say what its questions
ask. Balance metrics, type caps and the type mix need that, so this module reads it from the
words: every user turn gets one task kind, and every conversation one of the paper's three
instruction types (``global`` / ``negative`` / ``region``). The rules, their order and their
measured precision are in docs/task_kinds.md; this module is their one implementation.

Everything is polars string kernels over a frame of user turns, with no Python per row. Each
rule is one regex pass, so the rules run as a cascade: a rule only reads the questions that no
earlier rule has claimed, and the answer-dependent rules only read the turns whose answer has a
negation in its first sentence. That keeps 100k conversations well under a second on one core.

Only user turns are classified. An answer is read only up to the end of its first sentence, to
tell a denial from an affirmation. A conversation without any user turn gets a null type and an
empty kind list: nothing was asked, so nothing is inferred, and no default is filled in.
"""

from __future__ import annotations

import polars as pl

from vlit_assets.core.text.inflect import NUMBER_WORDS
from vlit_assets.core.text.reading import rx

# Task kinds in order of precedence: a question that several rules match takes the first kind.
# (The reasoning and spatial rules come in a strong and a weak form; see _RULES for the order
# in which the forms are tried.)
KINDS = (
    "region",
    "absent_object",
    "text_in_image",
    "counting",
    "existence",
    "reasoning",
    "spatial",
    "description",
    "other",
)
INFERRED_TYPES = ("global", "negative", "region")
# The rule that decided a conversation's type, in the order the rules are tried.
TYPE_EVIDENCE = {
    "region_reference": "region",  # a question names a box or region
    "absent_object": "negative",  # a question asks about an object the answer says is not there
    "denied_premise": "negative",  # a yes/no question states a count/relation the answer denies
    "no_denial": "global",  # none of the above
}

QUESTION_ROLES = ("human", "user")

OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.String(),
    "inferred_type": pl.String(),
    "type_evidence": pl.String(),
    "task_kinds": pl.List(pl.String()),
    "primary_kind": pl.String(),
}


def _any(*words: str) -> str:
    return "(?:" + "|".join(words) + ")"


# Questions are lowercased and otherwise raw: a LLaVA first turn opens with "<image>\n", and
# apostrophes may be typographic.
_START = r"^\s*(?:<image>|<__dj__image>)?\s*"
_LEAD = _START + r"(?:(?:and|so|but|then|also|now|okay|ok|well|what about|how about),? )?"
_APOS = "['\u2019]"
_PICTURE = _any("image", "picture", "photo", "photograph", "scene", "frame", "shot", "view")
_NUMBER = _any(r"\d+", *(w for w in NUMBER_WORDS if w != "one"))

# Polar (yes/no) questions open with an auxiliary verb (as score.POLAR_PATTERN); requests in
# question form ("Can you describe ...?") are not polar. "... Is that right?" is polar too.
POLAR = rx(
    _LEAD + r"(?:is|are|was|were|do|does|did|can|could|will|would|has|have|had|should|shall|"
    r"may|might|must|(?:is|are|was|were|does|do|did|ca|wo|has|have)n" + _APOS + r"t)\b"
    r"|\b(?:is|isn" + _APOS + r"t) (?:that|this|it) (?:right|correct|true)\b"
)
REQUEST = rx(
    _LEAD + r"(?:can|could|would|will) you (?:please )?(?:describe|tell|explain|list|give|"
    r"provide|identify|name|show|point|count|share|summarize|summarise|write|detail|elaborate|"
    r"help|talk|analyze|analyse)\b"
)

# A box or region named in the text: coordinates, region tokens, or a drawn mark.
REGION = rx(
    r"\[\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+\s*\]"
    r"|\(\s*\d*\.?\d+\s*,\s*\d*\.?\d+\s*\)\s*,?\s*\(\s*\d*\.?\d+\s*,\s*\d*\.?\d+\s*\)"
    r"|<(?:region|box|bbox|ref|obj|objs|quad|point|patch|mask)\b"
    r"|\b(?:red|green|blue|yellow|white|black|drawn|colou?red) (?:box|rectangle|frame|outline|"
    r"square|circle|border|bounding box|mark)\b"
    r"|\bbounding box(?:es)?\b"
    r"|\b(?:boxed|outlined|highlighted|circled|encircled|framed)\b"
    r"|\b(?:this|the|that|given|specified|marked|selected|indicated|designated) (?:region|box)\b"
    r"|\b(?:marked|selected|indicated|specified|designated) (?:area|object|part)\b"
)
TEXT_IN_IMAGE = rx(
    r"\b(?:text|texts|written|writing|handwriting|printed|inscription|inscriptions|lettering|"
    r"logo|logos|slogan|headline|ocr)\b"
    r"|\bwhat (?:does|do|did) (?:the|this|that|it|its) [^?]{0,40}\b(?:say|read)\b"
    r"|\b(?:sign|signs|label|banner|poster|screen|shirt|board|plate|display) (?:say|says|read|"
    r"reads)\b|\bwhat (?:word|words|letters|brand|title|number is (?:on|written))\b"
    r"|\bread (?:the|what|out)\b"
)
COUNTING = rx(r"\bhow many\b|\bcount(?:s|ing)?\b|\bnumber of\b|\bquantity of\b")
# A yes/no question stating a number ("Are there three dogs?", "I think I see one cat. Is that
# right?") asks about a count.
NUMBER_NOUN = rx(
    r"\b" + _NUMBER + r" [a-z]|\b(?:see|show|shows|count|there|exactly|only|just|has|have|"
    r"contain|contains|include|includes) one [a-z]"
)
EXISTENCE = rx(
    _LEAD + r"(?:is|are|was|were) there\b"
    r"|" + _LEAD + r"any\b"
    r"|" + _LEAD + r"(?:is|are) (?:anyone|anybody|someone|somebody|anything)\b"
    r"|\b(?:see|spot|notice|find|detect|observe|identify) (?:a|an|any|some|anyone|anybody|"
    r"someone|somebody|anything)\b"
    r"|" + _LEAD + r"(?:does|do|did) (?:the|this|that) " + _PICTURE + r" (?:contain|include|"
    r"show|have|feature|depict|display)\b"
    r"|\b(?:is|are) (?:a|an|any) [^?]{1,30} (?:visible|present|shown|pictured)\b"
)
REASONING_STRONG = rx(
    _LEAD + r"why\b|\bwhy (?:is|are|was|were|do|does|did|would|might|could|should|has|have)\b"
    r"|\bhow come\b|\bwhat if\b|\bwhat (?:would|might|could|will) (?:happen|be|cause)\b"
    r"|\b(?:do|would) you think\b|\bin your opinion\b|\bexplain why\b|\breasons? (?:why|for)\b"
    r"|\bwhat (?:is|are|was|were) the (?:purpose|reason|reasons|significance|benefits?|"
    r"advantages?|disadvantages?|risks?|dangers?|implications?|consequences?)\b"
)
SPATIAL_STRONG = rx(
    r"\bwhere (?:is|are|was|were|in|exactly)\b"
    r"|\b(?:left|right)(?: side| hand side)? of\b"
    r"|\bleft or (?:to the )?right\b|\babove or below\b|\bin front of\b|\bon top of\b"
    r"|\b(?:further|farther) (?:left|right)\b|\bhigher or lower\b|\blarger or smaller\b"
    r"|\blooks (?:bigger|larger|smaller)\b"
    r"|\b(?:next to|beside|behind|beneath|underneath|under|below|above|between|near|nearby|"
    r"across from|adjacent to|close to|far from|opposite)\b"
    r"|\b(?:relative to|in relation to|with respect to|compared (?:with|to)|compare (?:with|to)|"
    r"relationship between|positioned|located|location|position of|positions of|placed|"
    r"situated|arranged|surrounding|surrounded by|closer to|farther from|further from)\b"
    r"|\b(?:bigger|larger|smaller|taller|shorter|wider|narrower) (?:than|in the|or)\b"
    r"|\bwhich (?:looks|is|one is) (?:bigger|larger|smaller|taller|closer|higher|lower)\b"
    r"|\b(?:standing|sitting|lying|resting|perched|parked|hanging|leaning|floating|stacked) "
    r"(?:on|in|at|by|against|inside|atop)\b"
    r"|\bpoint (?:out|to)\b|\blocate\b"
)
DESCRIPTION = rx(
    r"\bdescri(?:be|bes|bing|ption)\b|\bsummari[sz]e\b|\bsummary\b|\boverview\b|\bcaption\b"
    r"|\bvisual content\b"
    r"|\b(?:explanation|interpretation|account|narrative|analysis) of (?:the|this)\b"
    r"|\b(?:analy[sz]e|explain|elaborate on) (?:the|this) (?:elements|details|contents?|"
    + _PICTURE
    + r")\b"
    r"|\bwhat(?:" + _APOS + r"s| is) (?:happening|going on)\b"
    r"|\bwhat (?:does|do) (?:the|this|that) " + _PICTURE + r" (?:show|depict|contain|capture|"
    r"portray|present)\b"
    r"|\bwhat (?:can|do) you (?:see|observe|notice)\b"
    r"|\bwhat (?:is|are) (?:shown|depicted|pictured|visible|in) (?:in )?(?:the|this) "
    + _PICTURE
    + r"\b|\btell me (?:about|what)\b|\bwhat (?:is|are) the (?:main|key) (?:elements|objects|"
    r"features|things|subjects?|points?)\b|\bwhat (?:is|are) (?:the|this) "
    + _PICTURE
    + r" (?:about|of)\b"
)
# A modal only counts before a subject: "could the car ...", not the polite "could you ...".
REASONING_WEAK = rx(
    r"\b(?:might|could|may|would|should|must) (?:the|this|that|these|those|it|they|he|she|"
    r"there|someone|people|a|an|we|i|one)\b"
    r"|\b(?:likely|unlikely|possibly|possible|probably|perhaps|potentially|potential|suppose|"
    r"imagine|predict|infer|guess|purpose|usually|typically|generally|commonly|often|"
    r"characteristics?|known for|used for|benefits?|advantages?|risks?|dangers?|dangerous|"
    r"safety|safe|consequences?|significance|explain|reason|reasons|why|opinion|"
    r"suggests?|indicates?|implies|implications?|history|historical|culture|cultural)\b"
    r"|" + _LEAD + r"how (?:does|do|did|can|could|would|might|should|is|are|was|were|has|have|to)\b"
)
SPATIAL_WEAK = rx(
    r"\b(?:left|right|top|bottom|upper|lower|far)(?:-| )(?:side|half|part|corner|edge|left|right)\b"
    r"|\b(?:foreground|background|corner|centre|center|middle|distance)\b"
)

# Rules answered by the question alone, in order; the first that matches decides the kind.
# The absent-object rule, which also reads the answer, sits between the first two.
_RULES: tuple[tuple[str, str, bool], ...] = (  # kind, pattern, only for yes/no questions
    ("region", REGION, False),
    ("text_in_image", TEXT_IN_IMAGE, False),
    ("counting", COUNTING, False),
    ("counting", NUMBER_NOUN, True),
    ("existence", EXISTENCE, False),
    ("reasoning", REASONING_STRONG, False),
    ("spatial", SPATIAL_STRONG, False),
    ("description", DESCRIPTION, False),
    ("reasoning", REASONING_WEAK, False),
    ("spatial", SPATIAL_WEAK, False),
)

# Questions whose "no" denies that the object is there: presence ("Is there a cat?") and open
# questions that presuppose it ("Where is the cat?", "How many cats are there?").
LOCATING_OR_OPEN_COUNT = rx(
    r"\bwhere\b|\bpoint (?:out|to)\b|\blocate\b|\bfind the\b|\bshow me\b"
    r"|\bhow many\b|\bnumber of\b|\bcount the\b"
)
# "Any other dogs?" answered "no" denies more of them, not the object itself.
OTHER_THAN = rx(r"\b(?:other|others|another|besides|apart from|except|else|more|additional)\b")

# Answers are read raw, case-insensitively, and only up to the end of the first sentence.
_FIRST_SENTENCE = r"(?i)^[^.!?\n]*?"
_NEG_WORDS = _any(
    "no", "not", "never", "neither", "nor", "none", "nothing", "nobody", "nowhere", "nope",
    "nah", "cannot",
    *(f"{stem}n{_APOS}t" for stem in
      ("is", "are", "was", "were", "does", "do", "did", "ca", "could", "wo", "has", "have")),
)  # fmt: skip
# Any negation in the first sentence: the gate for every answer-dependent rule.
NEGATION_FIRST = rx(_FIRST_SENTENCE + r"\b" + _NEG_WORDS + r"\b")
NO_START = rx(r"(?i)^\s*(?:no|nope|nah|none|not at all|not really|neither)\b")
AFFIRM_START = rx(r"(?i)^\s*(?:yes|yeah|yep|yup|sure|indeed|correct|certainly|absolutely|right)\b")
_NT = "n" + _APOS + "t"
EXISTENCE_DENIAL = rx(
    _FIRST_SENTENCE + r"(?:"
    r"\bthere (?:is|are|was|were|" + _APOS + r"s) no\b"
    r"|\bthere (?:is" + _NT + "|are" + _NT + "|was" + _NT + "|were" + _NT + r"|is not|are not|"
    r"was not|were not) (?:any|a|an)\b"
    r"|\b(?:do"
    + _NT
    + "|do not|ca"
    + _NT
    + r"|cannot|could"
    + _NT
    + r"|could not|did"
    + _NT
    + r"|did not) (?:see|spot|find|notice|detect|observe|identify) (?:any|a|an)\b"
    r"|\b(?:does not|does" + _NT + "|do not|do" + _NT + "|did not|did" + _NT + r") (?:contain|"
    r"include|show|have|feature|depict|display) (?:any|a|an)\b"
    r"|\bno \w+(?: \w+)? (?:is|are|can be) (?:visible|present|shown|pictured|seen)\b"
    r"|\b(?:is|are) not (?:visible|present|shown|pictured)\b"
    r"|\bnot in (?:the|this) " + _PICTURE + r"\b|\bnowhere to be (?:seen|found)\b|\bno such\b"
    r"|^\s*none\b)"
)


def _require(conversations: pl.DataFrame) -> None:
    missing = [c for c in ("conversation_id", "turns") if c not in conversations.columns]
    if missing:
        raise ValueError(f"infer_task_kinds: the conversations frame lacks columns {missing}")
    dtype = conversations.schema["turns"]
    fields = (
        {f.name for f in dtype.inner.fields}
        if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
        else set()
    )
    if not {"from", "value"} <= fields:
        raise ValueError(
            f"infer_task_kinds: column 'turns' must be a list of struct{{from, value}}, got {dtype}"
        )


def question_turns(conversations: pl.DataFrame) -> pl.DataFrame:
    """One row per user turn, in conversation then turn order.

    Columns: ``_row`` (position of the conversation in the input), ``question`` (lowercased)
    and ``answer`` (the raw text of the next turn when it is the assistant's, else empty).
    """
    turns = (
        conversations.select(pl.col("turns"))
        .with_row_index("_row")
        .explode("turns", keep_nulls=False)
        .select(
            "_row",
            role=pl.col("turns").struct.field("from"),
            value=pl.col("turns").struct.field("value").fill_null(""),
        )
    )
    asks = pl.col("role").is_in(QUESTION_ROLES)
    answered = (pl.col("_row").shift(-1) == pl.col("_row")) & ~asks.shift(-1).fill_null(True)
    return (
        turns.with_columns(
            answer=pl.when(answered).then(pl.col("value").shift(-1)).otherwise(pl.lit(""))
        )
        .filter(asks.fill_null(False))
        .select("_row", question=pl.col("value").str.to_lowercase(), answer="answer")
    )


def _polar(question: pl.Expr) -> pl.Expr:
    return question.str.contains(POLAR) & ~question.str.contains(REQUEST)


def _answer_flags(frame: pl.DataFrame) -> pl.DataFrame:
    answer = pl.col("answer")
    return frame.with_columns(
        says_no=answer.str.contains(NO_START),
        affirms=answer.str.contains(AFFIRM_START),
        denies_existence=answer.str.contains(EXISTENCE_DENIAL),
    )


def _absent(frame: pl.DataFrame) -> pl.Series:
    """Absent-object questions among turns whose answer's first sentence has a negation."""
    q = pl.col("question")
    presupposes = q.str.contains(EXISTENCE) | q.str.contains(LOCATING_OR_OPEN_COUNT)
    asks_count = _polar(q) & q.str.contains(NUMBER_NOUN)
    return frame.select(
        ~q.str.contains(OTHER_THAN)
        & (
            (pl.col("denies_existence") & ~pl.col("affirms"))
            | (pl.col("says_no") & presupposes & ~asks_count)
        )
    ).to_series()


def classify_questions(questions: pl.DataFrame) -> pl.DataFrame:
    """Add ``kind`` and ``denied_premise`` to a ``question_turns`` frame.

    ``denied_premise``: a yes/no question about a count, a presence or a spatial relation whose
    answer denies it ("Are there three dogs?" - "No, two."; "Is the cup left of the plate?" -
    "No, it is to the right."). Kinds are decided by a cascade: each rule reads only the rows
    that no earlier rule claimed.
    """
    n = questions.height
    kind = pl.repeat("other", n, dtype=pl.String, eager=True).alias("kind")
    rest = questions.select("question", "answer").with_row_index("_i")

    def claim(hit: pl.Series, name: str) -> None:
        nonlocal rest
        kind.scatter(rest.get_column("_i").filter(hit), name)
        rest = rest.filter(~hit)

    claim(rest.select(pl.col("question").str.contains(REGION)).to_series(), "region")
    # Only an answer with a negation in its first sentence can make a turn absent or denied.
    negated = rest.filter(pl.col("answer").str.contains(NEGATION_FIRST))
    negated = _answer_flags(negated)
    absent_hit = _absent(negated)
    absent_idx = negated.get_column("_i").filter(absent_hit)
    kind.scatter(absent_idx, "absent_object")
    rest = rest.filter(~pl.col("_i").is_in(absent_idx.implode()))
    for name, pattern, polar_only in _RULES[1:]:
        if rest.is_empty():
            break
        hit = pl.col("question").str.contains(pattern)
        if polar_only:
            hit = hit & _polar(pl.col("question"))
        claim(rest.select(hit).to_series(), name)

    candidates = negated.filter(~absent_hit)
    denied = candidates.with_columns(kind=kind.gather(candidates.get_column("_i"))).filter(
        pl.col("kind").is_in(["counting", "spatial", "existence"])
        & (pl.col("says_no") | ~pl.col("affirms"))
        & _polar(pl.col("question"))
    )
    flags = pl.repeat(False, n, dtype=pl.Boolean, eager=True).alias("denied_premise")
    flags.scatter(denied.get_column("_i"), True)
    return questions.with_columns(kind, flags)


def _primary_rank(ranks: pl.Expr) -> pl.Expr:
    """The most frequent rank of a list, ties to the smaller; null for an empty list.

    The largest of count * 16 + (15 - rank) over the kinds: list counts are linear, where a
    group_by over (conversation, kind) hashes every question (ten times slower at 1M).
    """
    best = pl.max_horizontal(ranks.list.count_matches(k) * 16 + (15 - k) for k in range(len(KINDS)))
    return pl.when(ranks.list.len() > 0).then(15 - best % 16)


def infer_task_kinds(conversations: pl.DataFrame) -> pl.DataFrame:
    """One row per conversation: its inferred paper type, the evidence, and a kind per question.

    ``conversations`` needs ``conversation_id`` and ``turns`` (list of struct{from, value},
    user turns from ``human`` or ``user``), as in ``generated__conversations``; rows come back
    in input order with the columns of ``OUTPUT_SCHEMA``. ``inferred_type`` is ``region`` when
    any question names a box or region, else ``negative`` when any question is about an absent
    object or states a count, presence or relation that its answer denies, else ``global``; null
    when there is no question. ``type_evidence`` names the rule (see ``TYPE_EVIDENCE``).
    ``task_kinds`` holds one kind (see ``KINDS``) per user turn, in turn order; ``primary_kind``
    is the most frequent one, ties going to the earlier kind in ``KINDS``.
    """
    _require(conversations)
    questions = classify_questions(question_turns(conversations))
    rank = pl.col("kind").replace_strict({k: i for i, k in enumerate(KINDS)}, return_dtype=pl.Int64)
    questions = questions.with_columns(rank=rank)
    per_conv = questions.group_by("_row", maintain_order=True).agg(
        task_kinds=pl.col("kind"),
        ranks=pl.col("rank"),
        any_region=(pl.col("rank") == KINDS.index("region")).any(),
        any_absent=(pl.col("rank") == KINDS.index("absent_object")).any(),
        any_denied=pl.col("denied_premise").any(),
    )
    evidence = (
        pl.when(pl.col("any_region"))
        .then(pl.lit("region_reference"))
        .when(pl.col("any_absent"))
        .then(pl.lit("absent_object"))
        .when(pl.col("any_denied"))
        .then(pl.lit("denied_premise"))
        .when(pl.col("task_kinds").is_not_null())
        .then(pl.lit("no_denial"))
    )
    return (
        conversations.select(pl.col("conversation_id").cast(pl.String))
        .with_row_index("_row")
        .join(per_conv, on="_row", how="left", maintain_order="left")
        .with_columns(type_evidence=evidence)
        .select(
            "conversation_id",
            inferred_type=pl.col("type_evidence").replace_strict(
                TYPE_EVIDENCE, default=None, return_dtype=pl.String
            ),
            type_evidence="type_evidence",
            task_kinds=pl.col("task_kinds").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            primary_kind=_primary_rank(pl.col("ranks")).replace_strict(
                dict(enumerate(KINDS)), default=None, return_dtype=pl.String
            ),
        )
    )


def type_precision_recall(truth: pl.Series, inferred: pl.Series) -> pl.DataFrame:
    """Per paper type: rows of that true type, rows inferred as it, hits, precision and recall.

    For measuring the rules on data whose types are known (template output, the paper's
    release format). A precision or recall with a zero denominator is null, not 0 or 1.
    """
    if truth.len() != inferred.len():
        raise ValueError(f"truth has {truth.len()} rows, inferred has {inferred.len()}")
    pairs = pl.DataFrame({"truth": truth.cast(pl.String), "inferred": inferred.cast(pl.String)})
    rows = []
    for t in INFERRED_TYPES:
        n_true = pairs.filter(pl.col("truth") == t).height
        n_inferred = pairs.filter(pl.col("inferred") == t).height
        hits = pairs.filter((pl.col("truth") == t) & (pl.col("inferred") == t)).height
        rows.append(
            {
                "type": t,
                "n_true": n_true,
                "n_inferred": n_inferred,
                "hits": hits,
                "precision": hits / n_inferred if n_inferred else None,
                "recall": hits / n_true if n_true else None,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "type": pl.String,
            "n_true": pl.Int64,
            "n_inferred": pl.Int64,
            "hits": pl.Int64,
            "precision": pl.Float64,
            "recall": pl.Float64,
        },
    )
