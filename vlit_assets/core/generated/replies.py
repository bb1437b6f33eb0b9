"""Reading LLM replies: self-instruct conversations and verification verdicts, from rough JSON.

A reply may come fenced, wrapped in prose, with trailing commas or without its closing brackets;
what cannot be read gets a failure code (``FAILURES``) instead of turns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from vlit_assets.core.generated.prompts import VERDICTS

FAILURES = {
    "empty": "the reply has no text",
    "refusal": "the model declined to answer",
    "no_json": "the reply holds no JSON object",
    "truncated_json": "the JSON ends before it is closed: cut by the length limit, or (with "
    "finish_reason=stop) unclosed in a way that closing its brackets does not mend",
    "bad_json": "the JSON is closed but cannot be parsed, even after repairs",
    "bad_shape": "the JSON has no list of question/answer pairs under 'conversation'",
    "non_alternating": "turns given with speakers do not alternate human, gpt, human, ...",
    "empty_turn": "a question or answer is empty",
    "too_few_turns": "fewer question/answer exchanges than a multi-turn conversation needs",
}


@dataclass(frozen=True)
class ParsedReply:
    """Turns of a usable reply, or the reason (a key of ``FAILURES``) why there are none."""

    turns: list[dict[str, str]] = field(default_factory=list)
    failure: str | None = None
    detail: str | None = None
    repaired: str | None = None  # what was mended to parse it (e.g. "closed 1 bracket")

    @property
    def ok(self) -> bool:
        return self.failure is None


_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?")
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:'|no)?t|i cannot|i am unable|"
    r"i'?m unable|i won'?t|as an ai|unfortunately,? i)",
    re.IGNORECASE,
)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_HUMAN = {"human", "user", "q", "question"}
_GPT = {"gpt", "assistant", "ai", "a", "answer", "model"}
_MAX_CANDIDATES = 20
_OPENER = re.compile(r"[{\[]")


def _scan_balanced(text: str, start: int) -> tuple[int | None, str]:
    """End index (exclusive) of the JSON value opening at ``start``, or None if it never closes.

    The second item tells why it did not close ("open" or "mismatch").
    """
    stack: list[str] = []
    in_string = escaped = False
    pairs = {"{": "}", "[": "]"}
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None, "mismatch"
            if not stack:
                return i + 1, ""
    return None, "open"


def _closers(text: str, start: int) -> str | None:
    """The brackets that would close the value opening at ``start``; None if the text ends
    inside a string (then more than brackets is missing)."""
    stack: list[str] = []
    in_string = escaped = False
    pairs = {"{": "}", "[": "]"}
    for ch in text[start:]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]" and stack:
            stack.pop()
    return None if in_string else "".join(reversed(stack))


def _close_unclosed(
    body: str, start: int, finish_reason: str | None, min_exchanges: int
) -> ParsedReply:
    """A value that never closes: mended when the model stopped on its own (``stop``) and only
    closing brackets are missing; otherwise ``truncated_json`` saying which case it was."""
    if finish_reason == "length":
        return ParsedReply(
            failure="truncated_json",
            detail=f"cut by the length limit (finish_reason=length): ...{body[-80:]}",
        )
    closers = _closers(body, start)
    if closers and finish_reason == "stop":
        obj, parsed = _loads(body[start:].rstrip() + closers)
        if parsed:
            reply = _shape(obj, min_exchanges)
            if reply.ok:
                n = len(closers)
                return ParsedReply(
                    turns=reply.turns, repaired=f"closed {n} bracket{'s' * (n != 1)}"
                )
    why = (
        "ends inside a string"
        if closers is None
        else "closing its brackets does not give a valid reply"
    )
    return ParsedReply(
        failure="truncated_json",
        detail=f"unclosed with finish_reason={finish_reason}; {why}: ...{body[-80:]}",
    )


def _strip_trailing_commas(candidate: str) -> str:
    """Drop commas before a closing bracket, outside strings: a common, unambiguous LLM slip."""
    out: list[str] = []
    pieces = re.split(r'("(?:[^"\\]|\\.)*")', candidate)
    for k, piece in enumerate(pieces):
        out.append(piece if k % 2 else _TRAILING_COMMA.sub(r"\1", piece))
    return "".join(out)


def _loads(candidate: str) -> tuple[object | None, bool]:
    for text in (candidate, _strip_trailing_commas(candidate)):
        try:
            return json.loads(text), True
        except json.JSONDecodeError:
            continue
    return None, False


def _pairs_from_qa(items: list) -> tuple[list[tuple[str, str]] | None, str | None]:
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            return None, "bad_shape"
        keys = {k.lower(): v for k, v in item.items()}
        q = keys.get("q", keys.get("question"))
        a = keys.get("a", keys.get("answer"))
        if not isinstance(q, str) or not isinstance(a, str):
            return None, "bad_shape"
        pairs.append((q, a))
    return pairs, None


def _pairs_from_turns(items: list) -> tuple[list[tuple[str, str]] | None, str | None]:
    speakers, values = [], []
    for item in items:
        keys = {k.lower(): v for k, v in item.items()}
        who = keys.get("from", keys.get("role"))
        value = keys.get("value", keys.get("content"))
        if not isinstance(who, str) or not isinstance(value, str):
            return None, "bad_shape"
        who = who.lower()
        if who not in _HUMAN | _GPT:
            return None, "bad_shape"
        speakers.append("human" if who in _HUMAN else "gpt")
        values.append(value)
    expected = ["human", "gpt"] * (len(speakers) // 2 + 1)
    if speakers != expected[: len(speakers)] or len(speakers) % 2:
        return None, "non_alternating"
    return list(zip(values[::2], values[1::2], strict=True)), None


def _conversation_items(obj: object) -> list | None:
    if isinstance(obj, dict):
        lowered = {k.lower(): v for k, v in obj.items()}
        obj = lowered.get("conversation", lowered.get("conversations"))
    return obj if isinstance(obj, list) else None


def _shape(obj: object, min_exchanges: int) -> ParsedReply:
    items = _conversation_items(obj)
    if items is None or not items or not all(isinstance(i, dict) for i in items):
        return ParsedReply(failure="bad_shape", detail="no list of objects under 'conversation'")
    is_turns = any({"from", "role"} & {k.lower() for k in item} for item in items)
    pairs, failure = (_pairs_from_turns if is_turns else _pairs_from_qa)(items)
    if failure or pairs is None:
        return ParsedReply(failure=failure or "bad_shape")
    if any(not q.strip() or not a.strip() for q, a in pairs):
        return ParsedReply(failure="empty_turn")
    if len(pairs) < min_exchanges:
        return ParsedReply(
            failure="too_few_turns", detail=f"{len(pairs)} exchange(s), need {min_exchanges}"
        )
    turns = []
    for q, a in pairs:
        turns += [{"from": "human", "value": q.strip()}, {"from": "gpt", "value": a.strip()}]
    return ParsedReply(turns=turns)


def _prefer(current: ParsedReply | None, new: ParsedReply) -> ParsedReply:
    """The failure to report: the first one, unless it was only unparseable bracketed prose."""
    if current is None or current.failure == "bad_json":
        return new
    return current


def parse_reply(
    text: str | None, *, min_exchanges: int = 2, finish_reason: str | None = None
) -> ParsedReply:
    """Turns from an LLM reply asked for ``{"conversation": [{"q": .., "a": ..}, ..]}``.

    Tolerates code fences, prose around the JSON, trailing commas and a list of
    ``{"from"/"role", "value"/"content"}`` turns in place of q/a pairs. A JSON value that never
    closes is closed when ``finish_reason`` is ``stop`` (small models often drop the final
    ``}``) and reported as ``truncated_json`` otherwise, the detail saying whether the length
    limit cut it. Every other reply gets a failure code from ``FAILURES``.
    """
    if text is None or not text.strip():
        return ParsedReply(failure="empty")
    body = _FENCE.sub("", text)
    first_failure: ParsedReply | None = None
    position, tried = 0, 0
    while tried < _MAX_CANDIDATES:
        match = _OPENER.search(body, position)
        if match is None:
            break
        tried += 1
        end, why = _scan_balanced(body, match.start())
        if end is None:
            if why == "open":
                # Everything after an unclosed opener is inside it: nothing more to try.
                unclosed = _close_unclosed(body, match.start(), finish_reason, min_exchanges)
                if unclosed.ok:
                    return unclosed
                first_failure = _prefer(first_failure, unclosed)
                break
            position = match.start() + 1
            continue
        obj, parsed = _loads(body[match.start() : end])
        reply = _shape(obj, min_exchanges) if parsed else ParsedReply(failure="bad_json")
        if reply.ok:
            return reply
        # Prose may hold brackets of its own, so a later value may still be the reply; values
        # nested in this one are not tried, so wrong keys are not papered over.
        first_failure = _prefer(first_failure, reply)
        position = end
    no_reply_json = first_failure is None or first_failure.failure == "bad_json"
    if no_reply_json and _REFUSAL.search(text.strip()):
        return ParsedReply(failure="refusal", detail=text.strip()[:200])
    return first_failure or ParsedReply(failure="no_json", detail=text.strip()[:200])


# ---------------------------------------------------------------------------------------------
# Verification replies


@dataclass(frozen=True)
class Verdicts:
    """One verdict per answer (in order), or why the reply gave none."""

    verdicts: list[str] = field(default_factory=list)
    failure: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def parse_verdicts(
    text: str | None, n_answers: int, *, finish_reason: str | None = None
) -> Verdicts:
    """Verdicts from a reply to :func:`build_verify_messages`; each of the ``n_answers``
    answers needs exactly one verdict from ``VERDICTS`` (numbered 1..n or given in order)."""
    if text is None or not text.strip():
        return Verdicts(failure="empty")
    body = _FENCE.sub("", text)
    match = _OPENER.search(body)
    if match is None:
        return Verdicts(failure="no_json", detail=text.strip()[:200])
    end, _ = _scan_balanced(body, match.start())
    if end is None:
        if finish_reason == "stop" and (closers := _closers(body, match.start())):
            candidate = body[match.start() :].rstrip() + closers
        else:
            return Verdicts(failure="truncated_json", detail=f"finish_reason={finish_reason}")
    else:
        candidate = body[match.start() : end]
    obj, parsed = _loads(candidate)
    if not parsed:
        return Verdicts(failure="bad_json")
    items = obj.get("verdicts") if isinstance(obj, dict) else obj
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return Verdicts(failure="bad_shape", detail="no list of objects under 'verdicts'")
    out: dict[int, str] = {}
    for position, item in enumerate(items, start=1):
        verdict = str(item.get("verdict", "")).strip().lower()
        number = item.get("answer", position)
        if verdict not in VERDICTS or not isinstance(number, int) or number in out:
            return Verdicts(failure="bad_shape", detail=f"verdict item {position}: {item}")
        out[number] = verdict
    if sorted(out) != list(range(1, n_answers + 1)):
        return Verdicts(
            failure="bad_shape", detail=f"verdicts for answers {sorted(out)}, need 1..{n_answers}"
        )
    return Verdicts(verdicts=[out[k] for k in range(1, n_answers + 1)])
