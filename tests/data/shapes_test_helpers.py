"""Shared helpers for the shapes tests: an independent answer oracle and a small built split."""

from __future__ import annotations

from pathlib import Path

# Independent of questions.py: canonical words re-listed here, not imported.
_CANON = {
    "ball": "sphere", "sphere": "sphere", "block": "cube", "cube": "cube", "cylinder": "cylinder",
    "big": "large", "large": "large", "tiny": "small", "small": "small",
    "matte": "rubber", "rubber": "rubber", "shiny": "metal", "metal": "metal", "metallic": "metal",
    **{c: c for c in ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")},
}
_KIND = {"sphere": "shape", "cube": "shape", "cylinder": "shape", "large": "size", "small": "size",
         "rubber": "material", "metal": "material"}


def phrase_attrs(phrase: str) -> dict[str, str]:
    """Attribute constraints of a question phrase (``tiny matte balls`` -> size/material/shape), re-derived."""
    out = {}
    for w in phrase.split():
        w = w[:-1] if w.endswith("s") and w[:-1] in _CANON | {"thing": 0, "object": 0} else w
        if w in ("thing", "object"):
            continue
        canon = _CANON[w]
        out[_KIND.get(canon, "color")] = canon
    return out


def matching(objects: list[dict], phrase: str) -> set[int]:
    want = phrase_attrs(phrase)
    return {o["id"] for o in objects if all(o[k] == v for k, v in want.items())}


def oracle_answer(question: str, objects: list[dict]) -> str:
    """Answer recomputed from the question text alone (regexes over the templates)."""
    import re

    n = len(objects)
    if m := re.fullmatch(r"(?:(?:Subtract|Take away|Remove|Withdraw) all ([a-z ]+)\. )+How many (?:things|objects) are left\?", question):
        phrases = re.findall(r"(?:Subtract|Take away|Remove|Withdraw) all ([a-z ]+)\.", question)
        gone: set[int] = set()
        for p in phrases:
            gone |= matching(objects, p)
        return str(n - len(gone))
    if m := re.fullmatch(r"How many ([a-z ]+) (?:are there|exist)\?", question):
        return str(len(matching(objects, m.group(1))))
    if m := re.fullmatch(r"Are there (more|fewer) ([a-z ]+) than ([a-z ]+)\?", question):
        a, b = len(matching(objects, m.group(2))), len(matching(objects, m.group(3)))
        return "yes" if (a > b if m.group(1) == "more" else a < b) else "no"
    if m := re.fullmatch(r"Is the number of ([a-z ]+) the same as the number of ([a-z ]+)\?", question):
        return "yes" if len(matching(objects, m.group(1))) == len(matching(objects, m.group(2))) else "no"
    m = re.fullmatch(r"What (color|shape|size) is the ([a-z ]+)\?", question) or re.fullmatch(
        r"What is the ([a-z ]+) made of\?", question)
    if m:
        asked, phrase = (m.group(1), m.group(2)) if m.lastindex == 2 else ("material", m.group(1))
        (oid,) = matching(objects, phrase)  # unique by construction; unpacking fails otherwise
        return next(o for o in objects if o["id"] == oid)[asked]
    raise AssertionError(f"question matches no template: {question!r}")


def build_small(out: Path, n: int = 24, seed: int = 7) -> dict[str, Path]:
    from pointcopy.data.shapes import build_split

    return build_split(out, n, seed=seed, progress=False, tokenizer=None)
