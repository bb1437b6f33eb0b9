"""Template generator: global, negative and region conversations written from annotations.

Every sentence a template answer states is derived from the annotations, and the rules that
decide what may be said are these (the tests check them on coco-mini):

- Counts exclude crowd annotations (``iscrowd``), which box an uncounted group. A category
  with any crowd box in the image is never given a number: presence answers call it "a crowd
  of people" ("a group of boats": scorers read "crowd" as people) and it is not asked about
  in counting, false-count or relation questions.
- Relations are worded in the picture's frame ("further left in the picture than", "higher in
  the picture than", "larger in the picture than"): the boxes show where things are drawn, not
  how they stand in the world (trucks in the background are higher in the picture than a car,
  not above it). A side relation is stated only when, on that axis, every A box ends at least
  ``SPATIAL_GAP`` of the image width (height) before every B box begins: boxes that overlap on
  the axis, or contain one another, are never left/right/higher/lower (a person standing on a
  surfboard, a cup in a hand). "The dogs" means all of them.
- "A is larger in the picture than B" needs every A box to have at least ``SIZE_RATIO`` times
  the area of every B box.
- English comes from ``text.inflect``, the project's one inflector: "people", "a pair of
  skis", "some broccoli" (a mass noun: "the broccoli is", "three pieces of broccoli"), "a
  sheep", "an oven".
- A question gets an answer of its form: only a polar question is answered "Yes"/"No" (a
  how-many question about an absent object gets "There are no ..., so the count is zero", a
  where-question "There is no ... in this image"), and only a request ("Describe ...",
  "Can you ...?") may be answered "Sure.".
- An inventory lists the most numerous categories; when it leaves some out it ends "among
  other things", so it never reads as complete when it is not.
- Region positions use image thirds of the box centre; coverage is the box area over the image
  area. Coordinates are those of the stored pixels, as COCO boxes are. Region objects are the
  largest non-crowd boxes covering at least ``region_min_area_frac`` of the image, distinct
  categories first; the count answer gives the total with the boxed one ("three bananas in
  all: the boxed one and two others"), never "N other <noun>", which reads as a count of N.
  Yes/no region questions ask the true position or the opposite third, the relation that
  holds or its opposite, "the only one?" or "any others?"; the answer states the truth.
- Negative questions about absent objects use the top of the ``raw__tags.absent`` ranking
  (co-occurring, so plausible), minus anything annotated in the image or named by one of its
  captions (``text.reading.caption_mentions``: CHAIR counts those as present); the answer
  denies and then lists what is annotated. False counts ask for the true count plus 1 to 3
  and answer with the true count; false relations ask the opposite of a relation that holds.
- Balance (POPE): a negative conversation opens with a denial (an absent object when the
  ranking has one) and then alternates confirmations and denials, the last side drawn with
  "no" twice as likely (global conversations add yes-answers). Confirmations ask about an
  annotated category, its true count or a relation that holds, in the same question forms as
  the denials, so the form never gives the answer away. A negative conversation without a
  denial is not made (``too_few_facts``).
- Captions are quoted (whitespace tidied, first letter capitalised, a full stop added), never
  attributed; they are the only text not derived from boxes, so a caption may name something
  the boxes lack. A caption stating a count the boxes contradict ("two giraffes" over two
  zebras) is never quoted (``quotable_captions``). Attributes (adjective + category) are not
  generated yet.
- A conversation needs ``MIN_PAIRS`` question/answer pairs; one the annotations cannot fill is
  kept as a row with empty turns, ``drop_reason`` "too_few_facts" and the pairs it lacks in
  ``drop_detail``. A region image that fails to render keeps its turns and gets
  "region_render_failed", with the renderer's error as the detail.

Phrasings are drawn per conversation from pools by a stream of bytes hashed from
``(seed, conversation_id)``, so a seed fixes every row byte for byte, on any machine.

Modules: ``phrasing`` (question/answer pools, English helpers), ``scene`` (per-image facts and
box relations), ``builders`` (the pairs of each conversation type), ``frames`` (raw tables
checked and turned into per-image records) and ``run`` (``generate_templates`` and its rows).
"""
