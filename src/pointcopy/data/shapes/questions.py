"""Question families over :mod:`scene` objects, with exact answers, mirroring CLEVR-Math / MathVista items.

Families (``FAMILIES``):

* ``subtraction`` — 1 or 2 hops, CLEVR-Math's ``subtraction`` / ``subtraction-multihop`` templates:
  "Subtract all red things. Subtract all tiny matte balls. How many objects are left?". Semantics as CLEVR-Math
  (``shared/benchmarks/clevr-math/SOURCE.md``): ``n - |A| - |B \\ A|``; the second hop removes only what is left.
* ``count`` — "How many red cubes are there?" (CLEVR ``count``; "exist" synonym "are there").
* ``compare`` — "Are there more cubes than spheres?", "Are there fewer ...", "Is the number of X the same as the
  number of Y?" (Super-CLEVR phrasing) -> ``yes`` / ``no``.
* ``attribute`` — "What color is the large shiny sphere?" (also shape / size / material), asked only when the
  description matches exactly one object and does not mention the asked attribute.

Surface words come from CLEVR-Math's ``synonyms.json`` (ball/sphere, block/cube, big/large, tiny/small,
matte/rubber, shiny/metallic/metal, thing/object, Subtract/Take away/Remove/Withdraw, all/every). A
:class:`Filter` is an attribute conjunction plus the exact words used, so its phrase is the query string that
traces copy verbatim. Answers are canonical CLEVR values (``"3"``, ``"yes"``, ``"red"``, ``"sphere"``,
``"large"``, ``"metal"``).

:func:`sample_question` is deterministic from its rng and balances answers: it draws a target answer uniformly
from the family's answer domain and retries scenes/questions until it hits it (falling back to the last
candidate after a bounded number of tries, counted in ``Question.fallback``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from .scene import COLORS, MATERIALS, SHAPES, SIZES, Scene, SceneObject

__all__ = [
    "FAMILIES",
    "SYNONYMS",
    "Filter",
    "Step",
    "Question",
    "make_filter",
    "sample_question",
    "ATTRIBUTE_VALUES",
]

FAMILIES = ("subtraction", "count", "compare", "attribute")

# CLEVR-Math synonyms.json (the entries used here).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "thing": ("thing", "object"),
    "sphere": ("sphere", "ball"),
    "cube": ("cube", "block"),
    "cylinder": ("cylinder",),
    "large": ("large", "big"),
    "small": ("small", "tiny"),
    "metal": ("metallic", "metal", "shiny"),
    "rubber": ("rubber", "matte"),
    "Subtract": ("Subtract", "Take away", "Remove", "Withdraw"),
    # CLEVR-Math also lists "every", but "every red cubes" is ungrammatical with the plural templates.
    "all": ("all",),
}
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "size": SIZES,
    "color": tuple(COLORS),
    "material": MATERIALS,
    "shape": SHAPES,
}
ATTR_ORDER = ("size", "color", "material", "shape")  # CLEVR's <Z> <C> <M> <S> word order

# Answer domains the sampler balances over (targets outside what a scene allows fall back, see module doc).
COUNT_DOMAIN = tuple(str(i) for i in range(0, 5))
SUBTRACTION_DOMAIN = tuple(str(i) for i in range(0, 9))


@dataclass(frozen=True)
class Filter:
    """A conjunction of attribute values plus the surface words that express it.

    Attributes:
        attrs: ``{attribute: value}`` over ``size``/``color``/``material``/``shape`` (canonical values).
        words: one surface word per attribute, ``{attribute: word}`` (synonym chosen), plus ``"noun"`` for the
            head noun when no shape is given (``thing`` / ``object``).
    """

    attrs: tuple[tuple[str, str], ...]
    words: tuple[tuple[str, str], ...]

    def matches(self, o: SceneObject) -> bool:
        return all(o.attr(a) == v for a, v in self.attrs)

    def select(self, scene: Scene) -> list[int]:
        """Ids of the matching objects, in raster order."""
        return [o.id for o in scene.objects if self.matches(o)]

    def _tokens(self) -> list[str]:
        w = dict(self.words)
        toks = [w[a] for a in ATTR_ORDER[:3] if a in w]
        toks.append(w["shape"] if "shape" in w else w["noun"])
        return toks

    @property
    def singular(self) -> str:
        """e.g. ``large shiny sphere``, ``red thing``."""
        return " ".join(self._tokens())

    @property
    def plural(self) -> str:
        """e.g. ``tiny matte balls``, ``red things`` (CLEVR templates pluralise with ``s``)."""
        return self.singular + "s"

    def count_phrase(self, k: int) -> str:
        """``"No red cubes"`` / ``"1 red cube"`` / ``"2 red cubes"``."""
        if k == 0:
            return f"No {self.plural}"
        return f"{k} {self.singular if k == 1 else self.plural}"


def make_filter(attrs: dict[str, str], rng: random.Random) -> Filter:
    """A :class:`Filter` for ``attrs`` with synonyms drawn from ``rng``."""
    for a, v in attrs.items():
        if a not in ATTRIBUTE_VALUES or v not in ATTRIBUTE_VALUES[a]:
            raise ValueError(f"filter: unknown attribute value {a}={v!r}")
    items = tuple((a, attrs[a]) for a in ATTR_ORDER if a in attrs)
    words = []
    for a, v in items:
        words.append((a, rng.choice(SYNONYMS.get(v, (v,)))))
    if "shape" not in attrs:
        words.append(("noun", rng.choice(SYNONYMS["thing"])))
    return Filter(items, tuple(words))


@dataclass(frozen=True)
class Step:
    """One grounded step of a question: the phrase (query string), its filter and the ground-truth object ids.

    For the second subtraction hop ``objects`` are the matches that are still left (``B \\ A``).
    """

    query: str
    filter: Filter
    objects: tuple[int, ...]


@dataclass
class Question:
    """A question with its exact answer.

    Attributes:
        family: one of ``FAMILIES``.
        text: the question.
        answer: canonical answer string.
        steps: grounded steps in trace order.
        relation: ``compare`` only: ``more`` / ``fewer`` / ``same``.
        asked: ``attribute`` only: the attribute asked for.
        fallback: True if the balanced sampler missed its target answer and kept another one.
    """

    family: str
    text: str
    answer: str
    steps: list[Step]
    relation: str | None = None
    asked: str | None = None
    fallback: bool = False
    hops: int = field(default=0)

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "text": self.text,
            "answer": self.answer,
            "relation": self.relation,
            "asked": self.asked,
            "hops": self.hops,
            "fallback": self.fallback,
            "steps": [
                {"query": s.query, "attrs": dict(s.filter.attrs), "words": dict(s.filter.words), "objects": list(s.objects)}
                for s in self.steps
            ],
        }


# ---------------------------------------------------------------- random filters


def _random_filter(scene: Scene, rng: random.Random, max_attrs: int = 3) -> Filter:
    """1-3 attributes; values usually taken from a scene object so most filters match something."""
    k = rng.choices((1, 2, 3), weights=(4, 4, 2))[0]
    k = min(k, max_attrs)
    names = rng.sample(ATTR_ORDER, k)
    if rng.random() < 0.8:
        src = rng.choice(scene.objects)
        attrs = {a: src.attr(a) for a in names}
    else:
        attrs = {a: rng.choice(ATTRIBUTE_VALUES[a]) for a in names}
    return make_filter(attrs, rng)


def _step(f: Filter, objects: list[int]) -> Step:
    return Step(f.plural, f, tuple(objects))


# ---------------------------------------------------------------- families


def _subtraction(scene: Scene, rng: random.Random) -> Question:
    hops = rng.choice((1, 2))
    a = _random_filter(scene, rng)
    sel_a = a.select(scene)
    steps = [_step(a, sel_a)]
    removed = set(sel_a)
    if hops == 2:
        b = _random_filter(scene, rng)
        while b.attrs == a.attrs:
            b = _random_filter(scene, rng)
        sel_b = [i for i in b.select(scene) if i not in removed]
        steps.append(_step(b, sel_b))
        removed |= set(sel_b)
    verb = rng.choice(SYNONYMS["Subtract"])
    every = rng.choice(SYNONYMS["all"])
    parts = [f"{verb} {every} {s.query}." for s in steps]
    noun = rng.choice(SYNONYMS["thing"])
    text = " ".join(parts) + f" How many {noun}s are left?"
    return Question("subtraction", text, str(len(scene.objects) - len(removed)), steps, hops=hops)


def _count(scene: Scene, rng: random.Random) -> Question:
    f = _random_filter(scene, rng)
    sel = f.select(scene)
    tail = rng.choice(("are there?", "exist?"))
    return Question("count", f"How many {f.plural} {tail}", str(len(sel)), [_step(f, sel)], hops=1)


def _compare(scene: Scene, rng: random.Random) -> Question:
    a = _random_filter(scene, rng, max_attrs=2)
    b = _random_filter(scene, rng, max_attrs=2)
    # No comparison of a filter with a refinement of itself ("more cylinders than matte cylinders").
    while set(a.attrs) <= set(b.attrs) or set(b.attrs) <= set(a.attrs):
        b = _random_filter(scene, rng, max_attrs=2)
    na, nb = len(a.select(scene)), len(b.select(scene))
    relation = rng.choice(("more", "fewer", "same"))
    if relation == "more":
        text, yes = f"Are there more {a.plural} than {b.plural}?", na > nb
    elif relation == "fewer":
        text, yes = f"Are there fewer {a.plural} than {b.plural}?", na < nb
    else:
        text, yes = f"Is the number of {a.plural} the same as the number of {b.plural}?", na == nb
    steps = [_step(a, a.select(scene)), _step(b, b.select(scene))]
    return Question("compare", text, "yes" if yes else "no", steps, relation=relation, hops=2)


_ASK = {
    "color": lambda d: f"What color is the {d}?",
    "shape": lambda d: f"What shape is the {d}?",
    "size": lambda d: f"What size is the {d}?",
    "material": lambda d: f"What is the {d} made of?",
}


def _attribute(scene: Scene, rng: random.Random, asked: str | None = None, target: str | None = None) -> Question | None:
    asked = asked or rng.choices(("color", "shape", "size", "material"), weights=(4, 2, 2, 2))[0]
    cands = [o for o in scene.objects if target is None or o.attr(asked) == target] or list(scene.objects)
    rng.shuffle(cands)
    others = [a for a in ATTR_ORDER if a != asked]
    for o in cands:
        # Smallest description that is unique, attributes tried in a random order.
        subsets = []
        for k in (1, 2, 3):
            names = others[:]
            rng.shuffle(names)
            subsets.append(names[:k])
        for names in subsets:
            f = make_filter({a: o.attr(a) for a in names}, rng)
            if f.select(scene) == [o.id]:
                step = Step(f.singular, f, (o.id,))
                return Question("attribute", _ASK[asked](f.singular), o.attr(asked), [step], asked=asked, hops=1)
    return None  # every object has an identical twin on the other three attributes


# ---------------------------------------------------------------- balanced sampling


def sample_question(
    family: str,
    rng: random.Random,
    new_scene: Callable[[], Scene],
    *,
    max_scenes: int = 20,
    tries_per_scene: int = 10,
) -> tuple[Scene, Question]:
    """A (scene, question) of ``family`` whose answer is a uniformly drawn target from the family's domain.

    Args:
        family: one of ``FAMILIES``.
        rng: drives the target and the question; ``new_scene()`` draws scenes (deterministic on its own).
        max_scenes, tries_per_scene: retry budget before falling back to the last candidate.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown question family {family!r}; choose from {FAMILIES}")
    asked = None
    if family == "count":
        target = rng.choice(COUNT_DOMAIN)
    elif family == "subtraction":
        target = rng.choice(SUBTRACTION_DOMAIN)
    elif family == "compare":
        target = rng.choice(("yes", "no"))
    else:
        asked = rng.choices(("color", "shape", "size", "material"), weights=(4, 2, 2, 2))[0]
        target = rng.choice(ATTRIBUTE_VALUES[asked])
    last: tuple[Scene, Question] | None = None
    for _ in range(max_scenes):
        scene = new_scene()
        for _ in range(tries_per_scene):
            if family == "subtraction":
                q = _subtraction(scene, rng)
            elif family == "count":
                q = _count(scene, rng)
            elif family == "compare":
                q = _compare(scene, rng)
            else:
                q = _attribute(scene, rng, asked, target)
            if q is None:
                break
            last = (scene, q)
            if q.answer == target:
                return scene, q
    if last is None:
        raise ValueError(f"family {family!r}: no question could be asked of {max_scenes} scenes")
    last[1].fallback = True
    return last
