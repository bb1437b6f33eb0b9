"""Template wording: the question/answer phrasing pools and the English helpers they need."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from vlit_assets.core.text.inflect import plural


@lru_cache(maxsize=2048)
def crowd_phrase(name: str, *, other: bool = False) -> str:
    """An uncounted group: "a crowd of people", "a group of boats"."""
    # "crowd" alone reads as people (scorers map it to `person`), so other things are a group.
    word = "crowd" if name == "person" else "group"
    return f"a {word} of {'other ' if other else ''}{plural(name)}"


def join_and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(caption: str) -> str:
    text = " ".join(caption.split())
    text = cap(text)
    return text if text[-1:] in ".!?" else f"{text}."


# Relations are said in the picture's frame: "higher in the picture" is what the boxes show,
# "above" would claim a physical arrangement (trucks in the background are not above a car).
REL_SHORT = {
    "left": "further left",
    "right": "further right",
    "above": "higher",
    "below": "lower",
    "larger": "larger",
    "smaller": "smaller",
}
REL_TEXT = {k: f"{v} in the picture than" for k, v in REL_SHORT.items()}
OPPOSITE = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "larger": "smaller",
    "smaller": "larger",
}
AXIS = {"left": "h", "right": "h", "above": "v", "below": "v", "larger": "s", "smaller": "s"}


# Phrasing pools: one is drawn per pair, so a model meets many forms of each question.

DESCRIBE_Q = (
    "Can you describe the scene in the image?",
    "What is happening in this picture?",
    "Describe the image briefly.",
    "What does this photo show?",
    "Give me a short description of the image.",
    "What can you see in this picture?",
    "Summarize the content of the image in one sentence.",
    "Tell me what is going on in this photo.",
)
DESCRIBE_A = (
    "{c}",
    "Here is what it shows: {c}",
    "In short, the scene is this: {c}",
    "The photo can be summed up like this: {c}",
)
# Only a request ("Describe ...", "Can you ...?") is answered "Sure."; "What does this photo
# show?" is a question, not a request.
DESCRIBE_REQUEST_A = (*DESCRIBE_A, "Sure. {c}")
REQUEST_STARTS = ("Can you", "Could you", "Would you", "Describe", "Give", "Summarize", "Tell")
REDESCRIBE_Q = (
    "Can you describe it in a different way?",
    "How else would you describe the image?",
    "Could you give another description of the scene?",
)
PRESENCE_Q = (
    "Is there {a} in the image?",
    "Can you see any {pl} in this picture?",
    "Does the photo contain {a}?",
    "Do you notice {a} anywhere in the picture?",
    "Are there any {pl} in the scene?",
)
PRESENCE_A = (
    "Yes, there {be} {cp} in the image.",
    "Yes. I can see {cp}.",
    "Yes, the picture contains {cp}.",
    "Yes, {cp} {be} visible.",
)
PRESENCE_CROWD_A = (
    "Yes, there is {crowd} in the image.",
    "Yes. I can see {crowd}, too many to count exactly.",
    "Yes, the picture shows {crowd}.",
)
COUNT_Q = (
    "How many {cn} are there in the image?",
    "How many {cn} can you count?",
    "Count the {cn} in this picture.",
    "What is the number of {cn} in the photo?",
    "How many {cn} does the picture show?",
)
COUNT_A = (
    "There {be} {cp}.",
    "I count {cp}.",
    "The image shows {cp}.",
    "{Cp} in total.",
)
INVENTORY_Q = (
    "What objects can you see, and how many of each?",
    "List the objects in the picture with their counts.",
    "Which things are in the image, and how many of them?",
)
INVENTORY_A = (
    "I can see {inv}.",
    "The picture contains {inv}.",
    "There {be} {inv}.",
)
RELATION_Q = {
    "h": (
        "In the picture, {be} {a} further left or further right than {b}?",
        "Where {be} {a} in the picture relative to {b}?",
        "How {be} {a} positioned in the frame compared with {b}?",
        "Describe where {a} {be} in the picture in relation to {b}.",
    ),
    "v": (
        "In the picture, {be} {a} higher or lower than {b}?",
        "Where {be} {a} in the picture relative to {b}?",
        "How {be} {a} placed vertically in the frame compared with {b}?",
        "Describe where {a} {be} in the picture in relation to {b}.",
    ),
    "s": (
        "Which looks bigger in the picture, {a} or {b}?",
        "How does the size of {a} in the picture compare with {b}?",
        "{Be} {a} larger or smaller in the picture than {b}?",
    ),
}
RELATION_A = (
    "{A} {be} {rel} {b}.",
    "From this viewpoint, {a} {be} {rel} {b}.",
    "Looking at the frame, {a} {be} {rel} {b}.",
)
# Questions about an absent object, each with the answers that fit its form: only a polar
# question is answered "No"; "how many" gets a count of none, "where" and "point out" a
# statement that there is none.
ABSENT_POLAR_A = (
    "No, there {be} no {no} in this image.",
    "No, I don't see any {no} here.",
    "No. The picture does not contain any {no}.",
    "No, there {be} no {no} in the picture.",
)
ABSENT_COUNT_A = (
    "There {be} no {no} in this image, so the count is zero.",
    "None: I can't see any {no} in the picture.",
    "Zero. There {be} no {no} here.",
)
ABSENT_WHERE_A = (
    "There is no {x} in this image.",
    "I can't find any {no} in the picture; there is none.",
    "Nowhere: the photo does not show any {no}.",
)
ABSENT_POINT_A = (
    "I can't: there is no {x} in the picture.",
    "There is nothing to point out; the image does not contain any {no}.",
)
ABSENT_Q = (
    ("Is there {a} in the image?", ABSENT_POLAR_A),
    ("Can you see any {pl} in this picture?", ABSENT_POLAR_A),
    ("Where is the {x} in this photo?", ABSENT_WHERE_A),
    ("Can you point out the {x} in the picture?", ABSENT_POINT_A),
    ("Does the picture include {a}?", ABSENT_POLAR_A),
    ("How many {cn} are in the image?", ABSENT_COUNT_A),
    ("And is there {a}?", ABSENT_POLAR_A),  # last: never the opening question (see _n_absent)
)
# POPE-style probes about present objects. The polar forms are those of ABSENT_Q, so the
# wording of a question never tells whether the answer is yes or no.
CONFIRM_Q = (
    "Is there {a} in the image?",
    "Can you see any {pl} in this picture?",
    "Does the picture include {a}?",
    "And is there {a}?",
)
CONFIRM_A = (
    "Yes, there {be} {cp} in the image.",
    "Yes. I can see {cp}.",
    "Yes, the picture includes {cp}.",
)
CONFIRM_CROWD_A = (
    "Yes, there is {crowd} in the image.",
    "Yes. I can see {crowd}, too many to count exactly.",
)
INVENTORY_TAIL = (
    " It shows {inv}.",
    " Instead, I can see {inv}.",
    " What it does show: {inv}.",
    " The image contains {inv}.",
)
# Asked with the true count too (TRUE_COUNT_A), so a stated number does not give the answer away.
FALSE_COUNT_Q = (
    "{Be} there {mcp} in the image?",
    "Can you count {mcp} in this picture?",
    "I think I see {mcp}. Is that right?",
    "Does the photo show {mcp}?",
)
FALSE_COUNT_A = (
    "No, there {be} {cp}, not {m}.",
    "No. I count {cp}, not {m}.",
    "No, the image shows only {cp}.",
)
FALSE_RELATION_Q = (
    "{Be} {a} {frel} {b}?",
    "Is it true that {a} {be} {frel} {b}?",
    "Would you say {a} {be} {frel} {b}?",
)
TRUE_COUNT_A = (
    "Yes, there {be} exactly {cp}.",
    "Yes, that is right: I count {cp}.",
    "Yes. The image shows {cp}.",
)
# FALSE_RELATION_Q is asked with the relation that holds too, answered by TRUE_RELATION_A.
TRUE_RELATION_A = (
    "Yes, {a} {be} {rel} {b}.",
    "Yes. From this viewpoint, {a} {be} {rel} {b}.",
    "Yes, that is right: {a} {be} {rel} {b}.",
)
FALSE_RELATION_A = (
    "No, {a} {be} {rel} {b}, not {fshort}.",
    "No. Actually, {a} {be} {rel} {b}.",
    "No, it is the other way round: {a} {be} {rel} {b}.",
)
REGION_WHAT_Q = (
    "What is the object inside the red box?",
    "What is marked by the red rectangle?",
    "Can you tell me what the highlighted region contains?",
    "What does the red box show?",
    "Identify the object outlined in red.",
    "What kind of object has been highlighted with the red frame?",
    "Look at the red rectangle. What is inside it?",
)
REGION_WHAT_A = (
    "It is {a}.",
    "The red box marks {a}.",
    "The outlined object is {a}.",
    "That is {a}.",
)
REGION_WHERE_Q = (
    "Where is the boxed {x} located in the image?",
    "In which part of the picture is the {x} in the red box?",
    "Where in the frame does the boxed {x} appear?",
    "Which area of the photo holds the highlighted {x}?",
    "Tell me roughly where the outlined {x} is in the picture.",
)
REGION_WHERE_A = (
    "It is in the {loc} of the image.",
    "{The} sits in the {loc} of the picture.",
    "You can find it in the {loc} of the frame.",
)
# Asked with the true position or a clearly wrong one (the opposite third); answers state
# only the true position.
REGION_WHERE_POLAR_Q = (
    "Is the boxed {x} in the {qloc} of the image?",
    "Would you say the outlined {x} is in the {qloc} of the picture?",
    "Does the highlighted {x} appear in the {qloc} of the frame?",
)
REGION_WHERE_YES_A = (
    "Yes, it is in the {loc} of the image.",
    "Yes. {The} sits in the {loc} of the picture.",
)
REGION_WHERE_NO_A = (
    "No, it is in the {loc} of the image.",
    "No. {The} sits in the {loc} of the picture instead.",
)
REGION_REL_Q = (
    "How does the boxed {x} relate to the other objects?",
    "Where is the boxed {x} compared with the other things in the picture?",
    "Describe the position of the boxed {x} relative to its surroundings.",
    "What is around the highlighted {x}, and where is it relative to those things?",
    "How is the outlined {x} placed with respect to the rest of the scene?",
)
REGION_REL_A = (
    "{The} {be} {rel} {b}.",
    "Relative to the rest of the scene, {the} {be} {rel} {b}.",
    "From this viewpoint, {the} {be} {rel} {b}.",
)
REGION_REL_MORE = " It is also {rel} {b}."
# Asked with the relation that holds or its opposite; the answer states the one that holds.
REGION_REL_POLAR_Q = (
    "Is the boxed {x} {qrel} {b}?",
    "Would you say the outlined {x} is {qrel} {b}?",
    "Is it true that the highlighted {x} is {qrel} {b}?",
)
REGION_REL_YES_A = (
    "Yes, {the} {be} {rel} {b}.",
    "Yes. From this viewpoint, {the} {be} {rel} {b}.",
)
REGION_REL_NO_A = (
    "No, {the} {be} {rel} {b}.",
    "No. Actually, {the} {be} {rel} {b}.",
)
REGION_SIZE_Q = (
    "How much of the image does the boxed {x} take up?",
    "How large is the boxed {x} in the picture?",
    "What share of the frame does the outlined {x} fill?",
)
REGION_SIZE_A = (
    "Its box covers about {p}% of the image.",
    "{The} takes up roughly {p}% of the picture.",
)
REGION_COUNT_Q = (
    "How many other {cn} are there in the image?",
    "How many {cn} apart from the boxed one can you see?",
    "How many {cn} does the picture hold besides the outlined one?",
)
REGION_COUNT_A = (
    "There {be} {cp} in all: the boxed one and {k} {others}.",
    "Apart from the boxed one, I can see {k} more, so {cp} in total.",
    "{Cp} altogether, so {k} besides the boxed one.",
)
REGION_ONLY_A = (
    "None: it is the only {x} in the image.",
    "There are no others; {the} is the only {x} in the picture.",
)
REGION_CROWD_A = (
    "Besides the boxed one there is {crowd}, too many to count exactly.",
    "Too many to count exactly: there is {crowd} besides the boxed one.",
)
# Two polar forms whose yes/no answers swap meaning, so neither answer is the habit.
REGION_MORE_Q = (
    "Are there more {cn} besides the boxed one?",
    "Are there any other {cn} in the image?",
)
# "{k} more" and "{k} {others}", never "two other dogs": a number before a noun reads as
# the count of that category.
REGION_MORE_YES_A = (
    "Yes, {k} more: there are {cp} in all.",
    "Yes. Apart from the boxed one I can see {k} more, so {cp} in total.",
)
REGION_MORE_CROWD_A = ("Yes, there is {crowd} besides the boxed one, too many to count exactly.",)
REGION_MORE_NO_A = (
    "No, {the} is the only {x} in the image.",
    "No. It is the only {x} in the picture.",
)
REGION_ALONE_Q = (
    "Is the boxed {x} the only {x} in the image?",
    "Is the highlighted one the only {x} here?",
)
REGION_ALONE_YES_A = (
    "Yes, it is the only {x} in the image.",
    "Yes. {The} is the only {x} in the picture.",
)
REGION_ALONE_NO_A = (
    "No, there are {cp} in all: the boxed one and {k} {others}.",
    "No. Besides the boxed one I can see {k} more, so {cp} in total.",
)
REGION_ALONE_CROWD_A = ("No, there is also {crowd}, too many to count exactly.",)
