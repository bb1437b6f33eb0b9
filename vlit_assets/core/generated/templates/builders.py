"""Template conversation builders: the question/answer pairs of global, negative and region rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vlit_assets.core.generated.templates.phrasing import (
    ABSENT_Q,
    AXIS,
    CONFIRM_A,
    CONFIRM_CROWD_A,
    CONFIRM_Q,
    COUNT_A,
    COUNT_Q,
    DESCRIBE_A,
    DESCRIBE_Q,
    DESCRIBE_REQUEST_A,
    FALSE_COUNT_A,
    FALSE_COUNT_Q,
    FALSE_RELATION_A,
    FALSE_RELATION_Q,
    INVENTORY_A,
    INVENTORY_Q,
    INVENTORY_TAIL,
    OPPOSITE,
    PRESENCE_A,
    PRESENCE_CROWD_A,
    PRESENCE_Q,
    REDESCRIBE_Q,
    REGION_ALONE_CROWD_A,
    REGION_ALONE_NO_A,
    REGION_ALONE_Q,
    REGION_ALONE_YES_A,
    REGION_COUNT_A,
    REGION_COUNT_Q,
    REGION_CROWD_A,
    REGION_MORE_CROWD_A,
    REGION_MORE_NO_A,
    REGION_MORE_Q,
    REGION_MORE_YES_A,
    REGION_ONLY_A,
    REGION_REL_A,
    REGION_REL_MORE,
    REGION_REL_NO_A,
    REGION_REL_POLAR_Q,
    REGION_REL_Q,
    REGION_REL_YES_A,
    REGION_SIZE_A,
    REGION_SIZE_Q,
    REGION_WHAT_A,
    REGION_WHAT_Q,
    REGION_WHERE_A,
    REGION_WHERE_NO_A,
    REGION_WHERE_POLAR_Q,
    REGION_WHERE_Q,
    REGION_WHERE_YES_A,
    REL_SHORT,
    REL_TEXT,
    RELATION_A,
    RELATION_Q,
    REQUEST_STARTS,
    TRUE_COUNT_A,
    TRUE_RELATION_A,
    cap,
    crowd_phrase,
    sentence,
)
from vlit_assets.core.generated.templates.scene import Cat, Draw, Scene, box_relations
from vlit_assets.core.text.inflect import (
    MASS,
    a_phrase,
    count_noun,
    count_phrase,
    no_phrase,
    number_word,
    plural,
    the_phrase,
    unit_noun,
)

MIN_PAIRS = 3
MAX_PAIRS = 4
ABSENT_POOL = 5  # absent categories drawn from the top of the ranking

Pair = tuple[str, str]
Fact = tuple[Pair, list[str]]


def _relation_qa(d: Draw, a: Cat, b: Cat, rel: str) -> Pair:
    if d.below(2):
        a, b, rel = b, a, OPPOSITE[rel]
    an, be = the_phrase(a.name, a.n)
    bn, _ = the_phrase(b.name, b.n)
    q = d.pick(RELATION_Q[AXIS[rel]]).format(a=an, b=bn, be=be, Be=cap(be))
    ans = d.pick(RELATION_A).format(A=cap(an), a=an, b=bn, be=be, rel=REL_TEXT[rel])
    return q, ans


def _describe(d: Draw, scene: Scene, used: set[str], questions: Sequence[str]) -> Fact | None:
    caps = [c for c in scene.img.captions if c[0] not in used]
    if not caps:
        return None
    cid, text = d.pick(caps)
    used.add(cid)
    q = d.pick(questions)
    answers = DESCRIBE_REQUEST_A if q.startswith(REQUEST_STARTS) else DESCRIBE_A
    return (q, d.pick(answers).format(c=sentence(text))), [cid]


# --------------------------------------------------------------------------- global


def _g_presence(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    cats = [c for c in s.cats if c.name not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.add(c.name)
    q = d.pick(PRESENCE_Q).format(a=a_phrase(c.name), pl=plural(c.name))
    if c.crowd:
        a = d.pick(PRESENCE_CROWD_A).format(crowd=crowd_phrase(c.name))
    else:
        be = "is" if c.n == 1 else "are"
        a = d.pick(PRESENCE_A).format(be=be, cp=count_phrase(c.n, c.name))
    return (q, a), list(c.ids)


def _g_count(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    cats = [c for c in s.countable if c.name not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.add(c.name)
    cp = count_phrase(c.n, c.name)
    q = d.pick(COUNT_Q).format(cn=count_noun(c.name))
    a = d.pick(COUNT_A).format(be="is" if c.n == 1 else "are", cp=cp, Cp=cap(cp))
    return (q, a), list(c.ids)


def _g_relation(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    rels = s.relations
    if not rels:
        return None
    a, b, rel = d.pick(rels)
    return _relation_qa(d, a, b, rel), [*a.ids, *b.ids]


def _g_inventory(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    if not s.cats:
        return None
    inv, number, ids = s.inventory(limit=5)
    a = d.pick(INVENTORY_A).format(inv=inv, be="is" if number == 1 else "are")
    return (d.pick(INVENTORY_Q), a), ids


def _g_redescribe(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    return _describe(d, s, used, REDESCRIBE_Q)


Builder = Callable[[Draw, Scene, set[str]], "Fact | None"]


def _assemble(
    d: Draw,
    s: Scene,
    first: Sequence[Builder],
    rest: Sequence[Builder],
    fallback: Sequence[Builder],
) -> tuple[list[Pair], list[str]]:
    """Pairs from ``first``, then ``rest`` in a drawn order, then ``fallback`` while short."""
    pairs: list[Pair] = []
    ids: list[str] = []
    used: set[str] = set()
    for builders, limit in (
        (first, MAX_PAIRS),
        (d.shuffled(rest), MAX_PAIRS),
        (fallback, MIN_PAIRS),
    ):
        for build in builders:
            if len(pairs) >= limit:
                break
            fact = build(d, s, used)
            if fact is not None:
                pairs.append(fact[0])
                ids.extend(fact[1])
    return pairs, ids


def _g_describe(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    return _describe(d, s, used, DESCRIBE_Q)


def build_global(d: Draw, s: Scene) -> tuple[list[Pair], list[str]]:
    return _assemble(
        d, s, (_g_describe,), (_g_presence, _g_count, _g_relation), (_g_redescribe, _g_inventory)
    )


# --------------------------------------------------------------------------- negative


def _n_absent(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    pool = [x for x in s.absent[:ABSENT_POOL] if x not in used]
    if not pool:
        return None
    x = d.pick(pool)
    # "And is there ...?" cannot open a conversation; nothing is used before the first pair.
    questions = ABSENT_Q if used else ABSENT_Q[:-1]
    used.add(x)
    question, answers = d.pick(questions)
    be, no = no_phrase(x)
    one = x if x in MASS else unit_noun(x)
    q = question.format(a=a_phrase(x), pl=plural(x), x=one, cn=count_noun(x))
    a = d.pick(answers).format(be=be, no=no, x=one)
    ids: list[str] = []
    if s.cats:
        inv, _, ids = s.inventory()
        a += d.pick(INVENTORY_TAIL).format(inv=inv)
    return (q, a), ids


def _n_false_count(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    cats = [c for c in s.countable if ("#" + c.name) not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.add("#" + c.name)
    m = c.n + 1 + d.below(3)
    q = d.pick(FALSE_COUNT_Q).format(mcp=count_phrase(m, c.name), Be="Are")
    a = d.pick(FALSE_COUNT_A).format(
        be="is" if c.n == 1 else "are", cp=count_phrase(c.n, c.name), m=number_word(m)
    )
    return (q, a), list(c.ids)


def _n_false_relation(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    rels = s.relations
    if not rels or "#rel" in used:
        return None
    used.add("#rel")
    a, b, rel = d.pick(rels)
    if d.below(2):
        a, b, rel = b, a, OPPOSITE[rel]
    an, be = the_phrase(a.name, a.n)
    bn, _ = the_phrase(b.name, b.n)
    frel = REL_TEXT[OPPOSITE[rel]]
    q = d.pick(FALSE_RELATION_Q).format(a=an, b=bn, be=be, Be=cap(be), frel=frel)
    ans = d.pick(FALSE_RELATION_A).format(
        a=an, b=bn, be=be, rel=REL_TEXT[rel], fshort=REL_SHORT[OPPOSITE[rel]]
    )
    return (q, ans), [*a.ids, *b.ids]


def _n_confirm(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    cats = [c for c in s.cats if c.name not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.add(c.name)
    q = d.pick(CONFIRM_Q).format(a=a_phrase(c.name), pl=plural(c.name))
    if c.crowd:
        a = d.pick(CONFIRM_CROWD_A).format(crowd=crowd_phrase(c.name))
    else:
        a = d.pick(CONFIRM_A).format(be="is" if c.n == 1 else "are", cp=count_phrase(c.n, c.name))
    return (q, a), list(c.ids)


def _n_true_count(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    # Its own key: the true count and a false one are both fair probes of one category, and a
    # small scene needs both to fill a conversation.
    cats = [c for c in s.countable if ("=" + c.name) not in used]
    if not cats:
        return None
    c = d.pick(cats)
    used.update((c.name, "=" + c.name))
    cp = count_phrase(c.n, c.name)
    be = "is" if c.n == 1 else "are"
    q = d.pick(FALSE_COUNT_Q).format(mcp=cp, Be=cap(be))
    return (q, d.pick(TRUE_COUNT_A).format(be=be, cp=cp)), list(c.ids)


def _n_true_relation(d: Draw, s: Scene, used: set[str]) -> Fact | None:
    rels = s.relations
    if not rels or "#rel" in used:
        return None
    used.add("#rel")
    a, b, rel = d.pick(rels)
    if d.below(2):
        a, b, rel = b, a, OPPOSITE[rel]
    an, be = the_phrase(a.name, a.n)
    bn, _ = the_phrase(b.name, b.n)
    q = d.pick(FALSE_RELATION_Q).format(a=an, b=bn, be=be, Be=cap(be), frel=REL_TEXT[rel])
    ans = d.pick(TRUE_RELATION_A).format(a=an, b=bn, be=be, rel=REL_TEXT[rel])
    return (q, ans), [*a.ids, *b.ids]


def _take(d: Draw, s: Scene, used: set[str], queue: list[Builder]) -> Fact | None:
    while queue:
        fact = queue.pop()(d, s, used)
        if fact is not None:
            return fact
    return None


def build_negative(d: Draw, s: Scene) -> tuple[list[Pair], list[str]]:
    """Denials interleaved with confirmations of what is there, as POPE samples them.

    The first pair denies (an absent object when the ranking has one); then confirmations and
    denials alternate, the last pair's side drawn, so a model meets "yes" and "no" to the same
    question forms. A side that runs out of facts yields its turn to the other; a conversation
    with no denial at all has no pairs (it is not a negative conversation).
    """
    # Queues pop from the end: the first builder to try is the last element.
    denials: list[Builder] = [_n_false_count, _n_absent, _n_absent]
    denials += d.shuffled((_n_false_count, _n_false_relation, _n_absent))
    denials.append(_n_absent)
    confirms: list[Builder] = [_n_true_count, _n_confirm]
    confirms += d.shuffled((_n_confirm, _n_true_count, _n_true_relation))
    pairs: list[Pair] = []
    ids: list[str] = []
    used: set[str] = set()
    denied = 0
    # The last side leans to "no": global conversations add yes-answers of their own.
    for want_yes in (False, True, False, d.below(3) == 0):
        first, second = (confirms, denials) if want_yes else (denials, confirms)
        fact = _take(d, s, used, first)
        if fact is None:
            fact = _take(d, s, used, second)
            want_yes = not want_yes
        if fact is None:
            break
        denied += not want_yes
        pairs.append(fact[0])
        ids.extend(fact[1])
    return (pairs, ids) if denied else ([], [])


# --------------------------------------------------------------------------- region


Obj = tuple[str, str, float, float, float, float]  # object_id, name, x, y, w, h
_FLIP = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
_CORNERS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))


def _cells(s: Scene, x: float, y: float, w: float, h: float) -> tuple[str, str]:
    """(row, column) of the image third holding the box centre."""
    cx, cy = (x + w / 2) / s.img.width, (y + h / 2) / s.img.height
    col = "left" if cx < 1 / 3 else "centre" if cx < 2 / 3 else "right"
    row = "top" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "bottom"
    return row, col


def _loc(row: str, col: str) -> str:
    return "centre" if (row, col) == ("middle", "centre") else f"{row}-{col} part"


def _wrong_cell(d: Draw, row: str, col: str) -> tuple[str, str]:
    """A third the centre is clearly not in: across the image, never a neighbouring third."""
    if col != "centre":
        return row, _FLIP[col]
    if row != "middle":
        return _FLIP[row], col
    return d.pick(_CORNERS)


def build_region(d: Draw, s: Scene, obj: Obj) -> tuple[list[Pair], list[str]]:
    """What is boxed, then its relations and two of position, count and size (all three when
    no relation holds).

    Which kinds appear, and whether each is asked openly or as a yes/no question, is drawn, so
    conversations about same-category boxes of different photos do not share one shape.
    """
    oid, name, *_ = obj
    the, be = the_phrase(name, 1, boxed=True)
    pairs: list[Pair] = [(d.pick(REGION_WHAT_Q), d.pick(REGION_WHAT_A).format(a=a_phrase(name)))]
    ids = [oid]
    related = _region_relation(d, s, obj, the, be)
    kinds = _REGION_KINDS if related is None else d.shuffled(_REGION_KINDS)[:2]
    rest = [kind(d, s, obj, the) for kind in kinds]
    if related is not None:
        rest.append(related)
    for pair, extra in d.shuffled(rest):
        pairs.append(pair)
        ids.extend(i for i in extra if i not in ids)
    return pairs, ids


def _region_where(d: Draw, s: Scene, obj: Obj, the: str) -> tuple[Pair, list[str]]:
    _, name, x, y, w, h = obj
    row, col = _cells(s, x, y, w, h)
    loc, The = _loc(row, col), cap(the)
    kind = d.below(3)
    if kind == 0:
        return (
            d.pick(REGION_WHERE_Q).format(x=unit_noun(name)),
            d.pick(REGION_WHERE_A).format(loc=loc, The=The),
        ), []
    qloc = loc if kind == 1 else _loc(*_wrong_cell(d, row, col))
    answers = REGION_WHERE_YES_A if kind == 1 else REGION_WHERE_NO_A
    q = d.pick(REGION_WHERE_POLAR_Q).format(x=unit_noun(name), qloc=qloc)
    return (q, d.pick(answers).format(loc=loc, The=The)), []


def _region_size(d: Draw, s: Scene, obj: Obj, the: str) -> tuple[Pair, list[str]]:
    _, name, _, _, w, h = obj
    p = max(1, round(100 * w * h / (s.img.width * s.img.height)))
    q = d.pick(REGION_SIZE_Q).format(x=unit_noun(name))
    return (q, d.pick(REGION_SIZE_A).format(p=p, The=cap(the))), []


def _box_relations(
    box: tuple[float, float, float, float], b: Cat, width: float, height: float
) -> list[str]:
    """``relations_between`` for one box against a category, without building a ``Cat``."""
    x, y, w, h = box
    return box_relations((x, x + w, y, y + h, w * h, w * h), b.ext, width, height)


def _region_relation(
    d: Draw, s: Scene, obj: Obj, the: str, be: str
) -> tuple[Pair, list[str]] | None:
    """The box against other categories, asked openly or as yes/no; None when nothing holds."""
    _, name, x, y, w, h = obj
    box = (x, y, w, h)
    width, height = s.img.width, s.img.height
    found: list[tuple[Cat, str]] = []
    for other in s.countable:
        if other.name != name:
            for rel in _box_relations(box, other, width, height):
                found.append((other, rel))
    if not found:
        return None
    picked = [found[i] for i in sorted(d.shuffled(range(len(found)))[:2])]
    other, rel = picked[0]
    bn, _ = the_phrase(other.name, other.n)
    kind = d.below(3)
    if kind:
        qrel = REL_TEXT[rel if kind == 1 else OPPOSITE[rel]]
        q = d.pick(REGION_REL_POLAR_Q).format(x=unit_noun(name), qrel=qrel, b=bn)
        answers = REGION_REL_YES_A if kind == 1 else REGION_REL_NO_A
        return (q, d.pick(answers).format(the=the, be=be, rel=REL_TEXT[rel], b=bn)), list(other.ids)
    ans = d.pick(REGION_REL_A).format(the=the, The=cap(the), be=be, rel=REL_TEXT[rel], b=bn)
    ans = cap(ans)
    ids = list(other.ids)
    if len(picked) > 1:
        other2, rel2 = picked[1]
        bn2, _ = the_phrase(other2.name, other2.n)
        ans += REGION_REL_MORE.format(rel=REL_TEXT[rel2], b=bn2)
        ids.extend(other2.ids)
    return (d.pick(REGION_REL_Q).format(x=unit_noun(name)), ans), ids


def _region_count(d: Draw, s: Scene, obj: Obj, the: str) -> tuple[Pair, list[str]]:
    """Other boxes of the boxed category: "how many", "are there more" or "is it the only"."""
    name = obj[1]
    own = s.by_name[name]
    kind = d.below(3)
    cn = count_noun(name)
    crowd_a: Sequence[str]
    alone_a: Sequence[str]
    more_a: Sequence[str]
    if kind == 0:
        q = d.pick(REGION_COUNT_Q).format(cn=cn)
        crowd_a, alone_a, more_a = REGION_CROWD_A, REGION_ONLY_A, REGION_COUNT_A
    elif kind == 1:
        q = d.pick(REGION_MORE_Q).format(cn=cn)
        crowd_a, alone_a, more_a = REGION_MORE_CROWD_A, REGION_MORE_NO_A, REGION_MORE_YES_A
    else:
        q = d.pick(REGION_ALONE_Q).format(x=unit_noun(name))
        crowd_a, alone_a, more_a = REGION_ALONE_CROWD_A, REGION_ALONE_YES_A, REGION_ALONE_NO_A
    if own.crowd:
        a = d.pick(crowd_a).format(crowd=crowd_phrase(name, other=True))
    elif own.n == 1:
        a = d.pick(alone_a).format(x=unit_noun(name), the=the, The=cap(the))
    else:
        k = own.n - 1
        cp = count_phrase(own.n, name)
        a = d.pick(more_a).format(
            be="are", cp=cp, Cp=cap(cp), k=number_word(k), others="other" if k == 1 else "others"
        )
    return (q, a), list(own.ids)


_RegionKind = Callable[[Draw, Scene, Obj, str], tuple[Pair, list[str]]]
_REGION_KINDS: tuple[_RegionKind, ...] = (_region_where, _region_count, _region_size)
