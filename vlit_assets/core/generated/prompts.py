"""Self-instruct and verification prompt text (with versions), examples and message builders.

The LLM never sees the image. It gets the image's annotations as text and writes a multi-turn
conversation as if both speakers could see the picture. Any change to the text below changes
what the LLM is asked, so it must bump ``PROMPT_VERSION``: the version is part of the request
cache key and of every generated conversation id. What comes back is read by ``replies``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PROMPT_VERSION = "si-2025.1"


_COMMON = """\
You write training conversations for a vision-language assistant. You cannot see the image. \
You receive its annotations instead: captions written by people, the annotated objects with \
their category and box [x0, y0, x1, y1] in coordinates normalised to the image width and height \
(origin at the top left), the categories that are present and some that are absent. A box \
marked "(crowd)" covers a group whose members were not boxed one by one: do not count them.

Write the conversation between a person asking about the image and the assistant answering, as \
if both could see the picture. Never mention captions, annotations, coordinates or this \
description. State only what the annotations support; where they leave something open, the \
assistant says it cannot tell rather than guessing.

Reply with one JSON object and nothing else:
{"conversation": [{"q": "<question>", "a": "<answer>"}, ...]}"""

_TASKS = {
    "global": """\
Task: a conversation about the whole scene, 3 to 5 exchanges. The first question asks what the \
image shows; its answer describes the scene in detail: the objects, how many there are, where \
they are relative to each other and what is happening. The later questions go beyond what is \
visible: the purpose of the place or activity, likely causes and consequences, useful background \
knowledge, or advice. Answer them with reasoning that starts from the scene.""",
    "negative": """\
Task: a conversation that tests whether the assistant resists false premises, 3 to 5 exchanges. \
At least half of the questions are misleading: they ask about one of the absent categories as if \
it were there, state a wrong number of objects, or assume a relation between objects that the \
boxes contradict. The answer to a misleading question first denies it plainly ("No, ...") and \
then says what the image does show instead. The other questions are ordinary ones with correct \
answers. Never give a misleading question a yes.""",
    "region": """\
Task: a conversation about one object, 2 to 4 exchanges. A red rectangle is drawn into the image \
around that object (the region given below). Questions refer to it as the object in the red box \
and never name it; answers name it and describe it: what it is, how it looks, where it is \
relative to the other objects and what role it plays in the scene.""",
}

SYSTEM_PROMPTS: dict[str, str] = {t: f"{_COMMON}\n\n{task}" for t, task in _TASKS.items()}


@dataclass(frozen=True)
class Example:
    """An in-context example: annotations in, the conversation we would like back."""

    captions: tuple[str, ...]
    objects: tuple[dict, ...]
    present: tuple[str, ...]
    absent: tuple[str, ...]
    conversation: tuple[tuple[str, str], ...]
    region: dict | None = None


_KITCHEN_OBJECTS = (
    {"category": "person", "bbox": (0.402, 0.118, 0.713, 0.985)},
    {"category": "oven", "bbox": (0.051, 0.532, 0.388, 0.991)},
    {"category": "bowl", "bbox": (0.455, 0.561, 0.602, 0.664)},
    {"category": "knife", "bbox": (0.731, 0.702, 0.842, 0.731)},
)

EXAMPLES: dict[str, tuple[Example, ...]] = {
    "global": (
        Example(
            captions=(
                "A woman stirring something in a bowl in a small kitchen.",
                "A cook mixes batter next to an open oven.",
            ),
            objects=_KITCHEN_OBJECTS,
            present=("person", "oven", "bowl", "knife"),
            absent=("refrigerator", "cat"),
            conversation=(
                (
                    "What is going on in this picture?",
                    "A woman is standing in a small kitchen, stirring something in a bowl she "
                    "holds in front of her. To her left is an oven with its door open, and a "
                    "knife lies on the counter to her right. It looks like she is in the middle "
                    "of preparing batter for baking.",
                ),
                (
                    "Why might the oven door be open?",
                    "She is probably preheating the oven or checking on it before putting the "
                    "batter in. An open door lets heat escape, so it is usually opened only "
                    "briefly, for example to slide a tray in.",
                ),
                (
                    "Any tips for getting a smooth batter?",
                    "Add the dry ingredients to the wet ones gradually and stir just until they "
                    "combine; sifting the flour first helps avoid lumps, and over-mixing can "
                    "make cakes tough.",
                ),
            ),
        ),
    ),
    "negative": (
        Example(
            captions=(
                "Two people wait at a bus stop as a red double-decker bus pulls up.",
                "A city bus stopping for passengers on a rainy street.",
            ),
            objects=(
                {"category": "bus", "bbox": (0.210, 0.105, 0.955, 0.880)},
                {"category": "person", "bbox": (0.032, 0.412, 0.128, 0.902)},
                {"category": "person", "bbox": (0.121, 0.436, 0.197, 0.897)},
                {"category": "umbrella", "bbox": (0.015, 0.301, 0.162, 0.455)},
            ),
            present=("bus", "person", "umbrella"),
            absent=("bicycle", "train", "dog"),
            conversation=(
                (
                    "Is there a cyclist riding next to the bus?",
                    "No, there is no bicycle or cyclist in the image. Next to the bus there are "
                    "two people standing at the stop, one of them under an umbrella.",
                ),
                (
                    "What kind of vehicle is arriving?",
                    "A red double-decker bus is pulling up to the stop.",
                ),
                (
                    "Are the three people at the stop about to board?",
                    "There are two people at the stop, not three. They are standing close to "
                    "the bus, so they may well be about to board it.",
                ),
                (
                    "Is the dog under the umbrella staying dry?",
                    "No, there is no dog in the picture. The umbrella is held by one of the two "
                    "waiting people, who is keeping dry under it.",
                ),
            ),
        ),
    ),
    "region": (
        Example(
            captions=(
                "A brown dog sleeping on a grey couch beside a remote control.",
                "A living room with a dog curled up on the sofa.",
            ),
            objects=(
                {"category": "couch", "bbox": (0.020, 0.350, 0.980, 0.960)},
                {"category": "dog", "bbox": (0.310, 0.420, 0.640, 0.760)},
                {"category": "remote", "bbox": (0.700, 0.640, 0.790, 0.690)},
            ),
            present=("couch", "dog", "remote"),
            absent=("cat", "tv"),
            region={"category": "dog", "bbox": (0.310, 0.420, 0.640, 0.760)},
            conversation=(
                (
                    "What is the object in the red box?",
                    "It is a brown dog, curled up asleep in the middle of the couch.",
                ),
                (
                    "What is next to it?",
                    "A remote control lies on the couch to the right of the dog, and the grey "
                    "couch it sleeps on fills most of the lower half of the picture.",
                ),
                (
                    "Does it look comfortable there?",
                    "Yes. Dogs often curl up like this to keep warm while they sleep, and the "
                    "soft couch gives it a cosy spot.",
                ),
            ),
        ),
    ),
}


def _fmt_box(box: Sequence[float], where: str) -> str:
    if len(box) != 4:
        raise ValueError(f"{where}: bbox must have 4 numbers (x0, y0, x1, y1), got {list(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(
            f"{where}: bbox {list(box)} is not normalised to [0, 1] with x0 < x1 and y0 < y1"
        )
    return f"[{x0:.3f}, {y0:.3f}, {x1:.3f}, {y1:.3f}]"


def _fmt_object(obj: Mapping, where: str) -> str:
    if "category" not in obj or "bbox" not in obj:
        raise ValueError(f"{where}: needs 'category' and 'bbox', got keys {sorted(obj)}")
    return f"{obj['category']}: {_fmt_box(obj['bbox'], where + '.bbox')}"


def format_annotations(
    *,
    captions: Sequence[str],
    objects: Sequence[Mapping],
    present: Sequence[str],
    absent: Sequence[str],
    region: Mapping | None = None,
) -> str:
    """The annotation block of a user message, in the fixed layout the examples also use."""
    lines = ["Captions:"]
    lines += [f"- {c.strip()}" for c in captions] or ["- (none)"]
    lines.append("Objects:")
    lines += [f"- {_fmt_object(o, f'objects[{i}]')}" for i, o in enumerate(objects)] or ["- (none)"]
    lines.append(f"Present categories: {', '.join(present) or '(none)'}")
    lines.append(f"Absent categories: {', '.join(absent) or '(none)'}")
    if region is not None:
        lines.append(f"Region (in the red box): {_fmt_object(region, 'region')}")
    return "\n".join(lines)


def _example_messages(example: Example) -> list[dict]:
    user = format_annotations(
        captions=example.captions,
        objects=example.objects,
        present=example.present,
        absent=example.absent,
        region=example.region,
    )
    reply = {"conversation": [{"q": q, "a": a} for q, a in example.conversation]}
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": json.dumps(reply, ensure_ascii=False)},
    ]


def build_messages(
    instruction_type: str,
    *,
    captions: list[str],
    objects: list[dict],
    present: list[str],
    absent: list[str],
    region: dict | None,
) -> list[dict]:
    """Chat messages for one conversation: system prompt, in-context examples, the annotations.

    ``objects`` and ``region`` are ``{"category": str, "bbox": (x0, y0, x1, y1)}`` with the box
    normalised to [0, 1]; a region is required for, and only allowed with, the region type.
    """
    if instruction_type not in SYSTEM_PROMPTS:
        raise ValueError(
            f"instruction_type {instruction_type!r} is not one of {sorted(SYSTEM_PROMPTS)}"
        )
    if (instruction_type == "region") != (region is not None):
        raise ValueError(
            f"instruction_type {instruction_type!r}: region must be given for 'region' "
            f"conversations and only for them (got {region!r})"
        )
    messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPTS[instruction_type]}]
    for example in EXAMPLES[instruction_type]:
        messages += _example_messages(example)
    annotations = format_annotations(
        captions=captions, objects=objects, present=present, absent=absent, region=region
    )
    messages.append({"role": "user", "content": annotations})
    return messages


# ---------------------------------------------------------------------------------------------
# Verification (optional second pass): is each answer supported by the annotations?

# ---------------------------------------------------------------------------------------------
# Verification (optional second pass): is each answer supported by the annotations?

VERIFY_PROMPT_VERSION = "verify-2025.1"
VERDICTS = ("supported", "contradicted", "unknown")

VERIFY_SYSTEM_PROMPT = """\
You check answers in a conversation about an image against the image's annotations. You cannot \
see the image: you receive its captions written by people, the annotated objects with their \
category and box [x0, y0, x1, y1] normalised to the image size, the categories that are present \
and some that are absent, then the numbered answers to check (each after its question).

For every answer, give one verdict:
- "supported": everything the answer states about the image follows from the annotations \
(general knowledge and reasoning that does not claim anything new about the image is fine);
- "contradicted": the answer states something the annotations rule out (an absent object, a \
wrong count, denying an object that is present, a wrong relation);
- "unknown": the answer claims something about the image (an action, a colour, a material) \
that the annotations neither support nor rule out.

Reply with one JSON object and nothing else:
{"verdicts": [{"answer": 1, "verdict": "supported", "reason": "<a few words>"}, ...]}"""


def build_verify_messages(
    turns: Sequence[Mapping[str, str]],
    *,
    captions: list[str],
    objects: list[dict],
    present: list[str],
    absent: list[str],
    region: dict | None,
) -> list[dict]:
    """Chat messages asking for one verdict per answer of ``turns`` (human/gpt turns)."""
    lines = [
        format_annotations(
            captions=captions, objects=objects, present=present, absent=absent, region=region
        ),
        "",
        "Answers to check:",
    ]
    k = 0
    question = ""
    for turn in turns:
        if turn["from"] == "human":
            question = turn["value"]
            continue
        k += 1
        lines += [f"Question {k}: {question}", f"Answer {k}: {turn['value']}"]
    if k == 0:
        raise ValueError("build_verify_messages: the conversation has no answer to check")
    return [
        {"role": "system", "content": VERIFY_SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]
