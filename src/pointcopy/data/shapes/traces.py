"""Grounded traces for shapes questions (v1g layout) and their three variants.

Layout of the ``copy`` variant (before the processor's region expansion)::

    detect(query="object", objects=["<obj1>"]) large red shiny cube
    detect(query="object", objects=["<obj2>"]) small cyan matte sphere
    ...                                      (every object, raster order: copy first, then its attributes)
    There are 5 objects.
    detect(query="red things", objects=["<obj1>", "<obj4>"]) 5 - 2 = 3.
    detect(query="tiny matte balls", objects=["<obj2>"]) 3 - 1 = 2.
    Answer: 2

* The enumeration declares every object with a ``detect`` call and states its four attributes in fixed canonical
  words (size, colour, ``shiny``/``matte``, shape), so the attributes the answer depends on are supervised right
  after the object's patches are copied.
* Question steps re-detect objects already enumerated under the question's own phrase,
  ``detect(query="<phrase>", objects=["<obj1>", ...])`` (the trace language allows a later ``detect`` to list
  declared ids), then spell out the arithmetic. Every ``<objN>`` occurrence is expanded, so a step re-copies
  the patches of the objects it selects.
* A step with no objects is written ``No purple cylinders. 3 - 0 = 3.`` (``No tiny balls left.`` when the second
  subtraction hop's matches were all removed by the first). Counting: ``detect(...) 2 red cubes.``, comparison:
  ``detect(...) 2 cubes.`` / ``detect(...) 1 sphere.`` / ``2 > 1.``, attribute query:
  ``detect(query="large shiny sphere", objects=["<obj3>"]) It is red.``. Every trace ends ``Answer: X``.

Variants of one item (:func:`variants`), differing only in region markup:

* ``copy``: the text above, ``regions = {"<objN>": pixel box}``; the trainer expands each object's first
  ``<objN>`` into ``<objN><region><|copy_k|>...</region>`` (see ``REGION_RENDER``, ``COPY_BOX_TEXT``).
* ``coord``: that expansion with the copy tokens removed (``<objN><region>[box]</region>``), ``regions = {}``.
* ``nocopy``: the text above (no ``<region>`` at all), ``regions = {}``.
"""

from __future__ import annotations

import re

from pointcopy.data.v1g import expand_regions

from .questions import Question, Step
from .scene import Scene, SceneObject

__all__ = ["VARIANTS", "STEP_CALL", "ENUM_QUERY", "describe", "object_key", "trace_text", "regions", "variants",
           "strip_copies"]

VARIANTS = ("copy", "coord", "nocopy")
STEP_CALL = "detect"
ENUM_QUERY = "object"
_MATERIAL_WORD = {"metal": "shiny", "rubber": "matte"}
_COPY_RE = re.compile(r"<\|copy_\d+\|>")


def object_key(obj_id: int) -> str:
    return f"<obj{obj_id}>"


def describe(o: SceneObject) -> str:
    """Canonical attribute words of an object: ``large red shiny cube``."""
    return f"{o.size} {o.color} {_MATERIAL_WORD[o.material]} {o.shape}"


def _call(query: str, ids: tuple[int, ...], name: str) -> str:
    return f'{name}(query="{query}", objects=[' + ", ".join(f'"{object_key(i)}"' for i in ids) + "])"


def _step_line(step: Step, tail: str, *, left: bool = False) -> str:
    if step.objects:
        return f"{_call(step.query, step.objects, STEP_CALL)} {tail}"
    return f"No {step.query}{' left' if left else ''}. {tail}"


def trace_text(scene: Scene, q: Question) -> str:
    """The ``copy``/``nocopy`` trace text (with ``<objN>`` keys, no regions) of question ``q`` on ``scene``."""
    lines = [f"{_call(ENUM_QUERY, (o.id,), 'detect')} {describe(o)}" for o in scene.objects]
    n = len(scene.objects)
    lines.append(f"There {'is 1 object' if n == 1 else f'are {n} objects'}.")
    if q.family == "subtraction":
        left = n
        for hop, s in enumerate(q.steps):
            k = len(s.objects)
            # Hop 2 "No X left." only when X existed but the first hop already removed all of them.
            gone = hop > 0 and not s.objects and bool(s.filter.select(scene))
            lines.append(_step_line(s, f"{left} - {k} = {left - k}.", left=gone))
            left -= k
        result = str(left)
    elif q.family == "count":
        (s,) = q.steps
        k = len(s.objects)
        lines.append(_step_line(s, f"{s.filter.count_phrase(k)}.") if k else f"No {s.query}.")
        result = str(k)
    elif q.family == "compare":
        ka, kb = (len(s.objects) for s in q.steps)
        for s in q.steps:
            k = len(s.objects)
            lines.append(_step_line(s, f"{s.filter.count_phrase(k)}.") if k else f"No {s.query}.")
        op = ">" if ka > kb else "<" if ka < kb else "="
        lines.append(f"{ka} {op} {kb}.")
        yes = {"more": ka > kb, "fewer": ka < kb, "same": ka == kb}[q.relation]
        result = "yes" if yes else "no"
    elif q.family == "attribute":
        (s,) = q.steps
        if len(s.objects) != 1:
            raise ValueError(f"attribute question {q.text!r}: description must match one object, got {s.objects}")
        value = scene.objects[s.objects[0] - 1].attr(q.asked)
        article = "a " if q.asked == "shape" else ""
        lines.append(f"{_call(s.query, s.objects, STEP_CALL)} It is {article}{value}.")
        result = value
    else:
        raise ValueError(f"question {q.text!r}: unknown family {q.family!r}")
    if result != q.answer:  # the trace's own arithmetic must agree with the question's executed answer
        raise ValueError(f"question {q.text!r}: trace derives {result!r} but the answer is {q.answer!r}")
    lines.append(f"Answer: {result}")
    return "\n".join(lines)


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
