"""Grounded traces for shapes questions (v1g layout) and their three variants.

Layout of the ``copy`` variant (before the processor's region expansion)::

    Find: red things = red; tiny matte balls = small matte sphere.
    (Compare: more.                  a comparison only: the question's relation word)
    detect(query="object", objects=["<obj1>"]) large red shiny cube: red red equal yes 1; small large not matte shiny not sphere cube not no 0
    detect(query="object", objects=["<obj2>"]) small cyan matte sphere: red cyan not no 1; small small equal matte matte equal sphere sphere equal yes 1
    ...                              (every object in raster order: copy, attributes, then one mark per step;
                                      a comparison's lines end ``. Compare: more``)
    There are 5 objects.
    red things: 2. 5 - 2 = 3.
    tiny matte balls: 1. 3 - 1 = 2.
    Answer: 2

The trace is written so that every decision a small model has to make is *local*:

* the plan line restates each step's phrase (copied from the question, which it directly follows) in the
  enumeration's canonical words, so matching an object needs no synonym lookup later;
* each object's ``detect`` copies its patches and is followed by its four attributes in canonical words (size,
  colour, ``shiny``/``matte``, shape: the attributes the answer depends on are supervised right after the copy),
  then one mark per step: each of the step's canonical words beside the object's own word for that attribute
  and their verdict (``matte shiny not``), ``yes``/``no`` (does the object count for the step: every verdict is
  ``equal`` and, for a second subtraction hop, it was not removed by the first) and the step's running count.
  Choosing the *set* of matching objects in one go (an earlier layout: a ``detect`` call per step listing the
  objects) is a decision a small model failed to learn (measurements: docs/embedded-world.md#marks-with-words);
* step lines read the last running count and spell out the arithmetic; a comparison states the question's
  relation word on its own line under the plan (``Compare: fewer.``, read from the question just above), carries
  it at the end of every object line (``... no 0. Compare: fewer``) and repeats it before the comparison
  (``Compare: fewer. 2 < 4: fewer fewer equal yes.``), so the word is copied after the same prefix from a few
  lines up instead of chosen after ``<``/``>``, and yes/no is a verdict like a mark's (see
  :func:`trace_text`); an attribute question's matching object states the answer in its own mark (``large large
  equal shiny shiny equal yes 1. It is red``), every later mark carries it, and the step line repeats the last
  one: ``large shiny thing: <obj3>. It is red.``. Every trace ends ``Answer: X``.

Variants of one item (:func:`variants`), differing only in region markup:

* ``copy``: the text above, ``regions = {"<objN>": pixel box}``; the trainer expands each object's first
  ``<objN>`` into ``<objN><region><|copy_k|>...</region>`` (see ``REGION_RENDER``, ``COPY_BOX_TEXT``).
* ``coord``: that expansion with the copy tokens removed (``<objN><region>[box]</region>``), ``regions = {}``.
* ``nocopy``: the text above (no ``<region>`` at all), ``regions = {}``.
"""

from __future__ import annotations

import re

from pointcopy.data.v1g import expand_regions

from .questions import ATTR_ORDER, Filter, Question, Step
from .scene import COLORS, SHAPES, SIZES, Scene, SceneObject

__all__ = ["VARIANTS", "TRACE_FORMAT", "STEP_CALL", "ENUM_QUERY", "PLAN_PREFIX", "RELATION_PREFIX", "describe", "canonical_words", "object_key", "LEGEND", "enum_call", "DESCRIPTION", "trace_text", "text_only", "regions", "variants",
           "strip_copies"]

VARIANTS = ("copy", "coord", "nocopy")
# Bumped whenever the text of a trace changes, so a split built with an older layout is not reused (build.py).
TRACE_FORMAT = "verdicts-6"
STEP_CALL = "detect"
ENUM_QUERY = "object"
PLAN_PREFIX = "Find: "
RELATION_PREFIX = "Compare: "
_MATERIAL_WORD = {"metal": "shiny", "rubber": "matte"}
_COPY_RE = re.compile(r"<\|copy_\d+\|>")


# One line for a reader of a rendered scene and its trace (the demo page shows it).
LEGEND = ("Drawings: a cube is a square, a sphere a circle, a cylinder a triangle; shiny objects have a dark rim and a "
          "white highlight. Trace: each object's line is its copy, its four words (size colour material shape), "
          "then per step the step's word, the object's word and equal/not, yes/no (does it count) and the "
          "running count.")


def object_key(obj_id: int) -> str:
    return f"<obj{obj_id}>"


def describe(o: SceneObject) -> str:
    """Canonical attribute words of an object: ``large red shiny cube``."""
    return f"{o.size} {o.color} {_MATERIAL_WORD[o.material]} {o.shape}"


def _call(query: str, ids: tuple[int, ...], name: str) -> str:
    return f'{name}(query="{query}", objects=[' + ", ".join(f'"{object_key(i)}"' for i in ids) + "])"


def enum_call(obj_id: int) -> str:
    """The call that opens object ``obj_id``'s line: ``detect(query="object", objects=["<obj3>"])``."""
    return _call(ENUM_QUERY, (obj_id,), STEP_CALL)


# ``describe``'s words: size colour material shape (what an object line opens with in a text-only trace)
DESCRIPTION = re.compile(r"(?:%s) (?:%s) (?:%s) (?:%s)" % tuple(
    "|".join(map(re.escape, words)) for words in (SIZES, COLORS, _MATERIAL_WORD.values(), SHAPES)))


def canonical_words(f: Filter) -> str:
    """A filter in the enumeration's own words and order (size colour material shape): ``small matte sphere``.

    (Four aligned slots with ``-`` for "any" -- ``small - matte sphere`` -- were tried: the repeated ``-`` tokens
    defeat copying the slots from line to line, and answers got worse; measurements:
    docs/embedded-world.md#canonical-words.)
    """
    attrs = dict(f.attrs)
    return " ".join(_word(a, attrs[a]) for a in ATTR_ORDER if a in attrs)


def _comparison(f: Filter, o: SceneObject) -> str:
    """``small large not matte matte equal``: each of the filter's canonical words, the object's own word for that
    attribute, and whether the two are equal, in the enumeration's order.

    Each verdict compares the two words just before it, and the step's yes/no then only has to see whether any
    verdict of its mark is ``not``. With the pairs written ``small = large matte = matte`` and no verdicts, yes/no
    had to check every pair at once, and a wrong yes/no beside right descriptions was a common error
    (measurements: docs/embedded-world.md#verdicts). Same token count: each ``=`` became a verdict after the pair."""
    attrs = dict(f.attrs)
    pairs = ((_word(a, attrs[a]), _word(a, o.attr(a))) for a in ATTR_ORDER if a in attrs)
    return " ".join(f"{want} {have} {'equal' if want == have else 'not'}" for want, have in pairs)


def _word(attribute: str, value: str) -> str:
    return _MATERIAL_WORD[value] if attribute == "material" else value


def _value_phrase(o: SceneObject, asked: str) -> str:
    """``It is red`` / ``It is a cube``: an attribute question's answer, in the attribute's canonical word."""
    value = o.attr(asked)
    return f"It is {'a ' if asked == 'shape' else ''}{value}"


def _marks(scene: Scene, steps: list[Step], asked: str | None = None) -> dict[int, str]:
    """``{object id: "red red equal yes 1; large small not purple red not no 0"}``: per step, its canonical words
    each paired with the object's own word for that attribute and their verdict, does the object count for it,
    and the step's running count.

    Repeating a step's words on every line keeps the decisions local: the words are copied from the line above
    (or the plan), each is paired with the same attribute's word of the description just written and judged
    (see :func:`_comparison`), and yes/no only reads the verdicts. (Marks without the words -- ``yes 1, no 0`` --
    had to match against the plan line ~100 tokens back; with the words but no pairs --
    ``small matte sphere no 0`` -- the model had to find each word among the description's. Both got fewer marks
    right; measurements: docs/embedded-world.md#marks-with-words.) A step's yes-set is ``Step.objects`` (for a
    second subtraction hop: its matches still left), so the last running count of a step is the number its step
    line states.

    For an attribute question (``asked`` = the asked attribute) the one matching object's mark also states the
    answer, read from the attribute words on its own line: ``large large equal yes 1. It is red``, and every
    later object's mark carries it, like the running count (``small large not no 1. It is red``). The step line
    then copies it from the line just above. (Naming the object there and looking up its colour in its line ~60
    tokens back, or stating the answer only on the matching object's mark so that the step line had to find the
    trace's one earlier ``It is``, were late skills some seeds never learned; measurements:
    docs/embedded-world.md#attribute-answer-carried.)
    """
    counts = [0] * len(steps)
    answer = None  # an attribute question's answer, carried on every mark from its object on
    out = {}
    for o in scene.objects:
        marks = []
        for i, s in enumerate(steps):
            hit = o.id in s.objects
            counts[i] += hit
            if hit and asked:
                answer = _value_phrase(o, asked)
            mark = f"{_comparison(s.filter, o)} {'yes' if hit else 'no'} {counts[i]}"
            marks.append(f"{mark}. {answer}" if answer else mark)
        out[o.id] = "; ".join(marks)
    return out


def trace_text(scene: Scene, q: Question) -> str:
    """The ``copy``/``nocopy`` trace text (with ``<objN>`` keys, no regions) of question ``q`` on ``scene``."""
    steps = list(q.steps)
    lines = [PLAN_PREFIX + "; ".join(f"{s.query} = {canonical_words(s.filter)}" for s in steps) + "."]
    if q.family == "compare":
        lines.append(f"{RELATION_PREFIX}{q.relation}.")
    marks = _marks(scene, steps, q.asked if q.family == "attribute" else None)
    # A comparison's relation word is carried on every object line, like an attribute question's answer, so the
    # comparison line below copies it from a few lines up instead of from the line under the plan, a late skill
    # some seeds missed (measurements: docs/embedded-world.md#relation-line-and-its-carry).
    carry = f". {RELATION_PREFIX}{q.relation}" if q.family == "compare" else ""
    lines += [f"{enum_call(o.id)} {describe(o)}: {marks[o.id]}{carry}" for o in scene.objects]
    n = len(scene.objects)
    lines.append(f"There {'is 1 object' if n == 1 else f'are {n} objects'}.")
    if q.family == "subtraction":
        left = n
        for s in steps:
            k = len(s.objects)
            lines.append(f"{s.query}: {k}. {left} - {k} = {left - k}.")
            left -= k
        result = str(left)
    elif q.family == "count":
        k = len(steps[0].objects)
        lines.append(f"{steps[0].query}: {k}.")
        result = str(k)
    elif q.family == "compare":
        ka, kb = (len(s.objects) for s in steps)
        lines += [f"{s.query}: {len(s.objects)}." for s in steps]
        # The relation line again, then the comparison: yes/no is decided where the word and the sign are both in
        # view. With the word only after the sign (``3 > 1: more yes.``) and nowhere in the trace before, a model
        # wrote the word the sign suggests instead of the question's; after the repeated prefix the word is a copy
        # of the line under the plan (measurements: docs/embedded-world.md#relation-line-and-its-carry).
        # The yes/no is then decided like a mark: the question's word paired with the sign's own word and their
        # verdict (``2 < 4: fewer fewer equal yes``). Deciding it from the word and the sign directly (``2 < 4:
        # yes``) was a late skill some seeds missed (measurements: docs/embedded-world.md#comparison-verdict).
        sign, sign_word = (">", "more") if ka > kb else ("<", "fewer") if ka < kb else ("=", "same")
        holds = sign_word == q.relation  # the question's relation is the counts' own: the verdict and the answer
        result = "yes" if holds else "no"
        lines.append(f"{RELATION_PREFIX}{q.relation}. {ka} {sign} {kb}: "
                     f"{q.relation} {sign_word} {'equal' if holds else 'not'} {result}.")
    elif q.family == "attribute":
        (s,) = steps
        if len(s.objects) != 1:
            raise ValueError(f"attribute question {q.text!r}: description must match one object, got {s.objects}")
        obj = scene.objects[s.objects[0] - 1]
        lines.append(f"{s.query}: {object_key(obj.id)}. {_value_phrase(obj, q.asked)}.")
        result = obj.attr(q.asked)
    else:
        raise ValueError(f"question {q.text!r}: unknown family {q.family!r}")
    if result != q.answer:  # the trace's own arithmetic must agree with the question's executed answer
        raise ValueError(f"question {q.text!r}: trace derives {result!r} but the answer is {q.answer!r}")
    lines.append(f"Answer: {result}")
    return "\n".join(lines)


def text_only(trace: str, scene: Scene) -> str:
    """A :func:`trace_text` of ``scene`` with no grounding markup, as a text-only reasoner would write it: each
    object line opens with its description instead of a ``detect`` call, and a later mention of an object (an
    attribute question's step line) names it by its description. The v1g pipeline's shapes input
    (``pipeline.decompose.ShapesDecomposer`` turns it back into the trace)."""
    names = {object_key(o.id): describe(o) for o in scene.objects}
    return _OBJ_KEY.sub(lambda m: names[m.group()], _ENUM_CALL.sub("", trace))


_ENUM_CALL = re.compile(re.escape(enum_call(0)).replace("0", r"\d+") + " ")
_OBJ_KEY = re.compile(r"<obj\d+>")


def regions(scene: Scene) -> dict[str, list[int]]:
    """``{"<objN>": [x0, y0, x1, y1]}``: every object's exact pixel box."""
    return {object_key(o.id): list(o.box) for o in scene.objects}


def strip_copies(text: str) -> str:
    """Remove every ``<|copy_k|>`` token."""
    return _COPY_RE.sub("", text)


# How this world renders regions. The trainer's collator takes the same settings (`embedded.recipe`):
# `<objN><region>...</region>` at an object's *first* mention (the enumeration) only -- later mentions are bare ids
# (a re-copy there comes after the decision it could inform and doubles the sequence) -- and, in the copy
# variant, pointers without box text, so that copy and coord differ only in *how* a region is referenced.
REGION_RENDER = {"keep_key": True, "occurrences": "first"}
COPY_BOX_TEXT = False


def model_text(text: str, regs: dict[str, list[int]], size: tuple[int, int]) -> str:
    """The assistant text as the model sees it (regions expanded as the trainer expands them)."""
    return expand_regions(text, regs, size, box_text=COPY_BOX_TEXT, **REGION_RENDER) if regs else text


def variants(scene: Scene, q: Question) -> dict[str, tuple[str, dict[str, list[int]]]]:
    """``{variant: (assistant text, regions)}`` for ``copy``, ``coord`` and ``nocopy``."""
    text = trace_text(scene, q)
    regs = regions(scene)
    coord = strip_copies(expand_regions(text, regs, scene.size, box_text=True, **REGION_RENDER))
    return {"copy": (text, regs), "coord": (coord, {}), "nocopy": (text, {})}
