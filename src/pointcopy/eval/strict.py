r"""Deterministic "strict" profile: final-answer extraction + math equivalence, reported beside official scores.

Extraction (same for every benchmark): the last brace-matched `\boxed{...}`; else the last `<answer>...</answer>`;
else the text after the last "answer is"/"answer:" phrase (first line); else the whole response if it is one short
line (a direct answer such as "D" or "1577"). No guessing: nothing found -> None.

This is where the known official MATH-V parser bugs (EVAL.md §2.7) are fixed, and only here:
  * boxed content is brace-matched (official: greedy regex, so `\boxed{3}. Wait, \boxed{5}` breaks);
  * `\boxed{\text{Sunday}}` is unwrapped;
  * `\frac12` is normalised whether or not `sqrt` occurs;
  * `\sqrt[3]{8}` is parsed as a cube root (official `_fix_sqrt` turns it into `\sqrt{[}3]{8}`).
Equivalence: option letters for multiple choice; otherwise numbers compared with a relative tolerance of 1e-6 via
the safe evaluator (`e`, `|x|` etc. are numbers here); otherwise normalised strings.
"""

from __future__ import annotations

import math
import re

from pointcopy.eval import safe_math

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*[:]?\s*(.+)", re.I)
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_REL_TOL = 1e-6
_BARE_MAX_CHARS = 32


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` / `\fbox{...}` with nested braces matched; None if absent/unclosed."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start:i - 1]
    return None


def extract_final(response: str) -> str | None:
    """Final answer text of a response (boxed, answer tag, answer phrase) or None."""
    if not isinstance(response, str):
        return None
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed.strip()
    tags = _ANSWER_TAG.findall(response)
    if tags:
        inner = tags[-1]
        return (last_boxed(inner) or inner).strip()
    phrases = _ANSWER_PHRASE.findall(response)
    if phrases:
        return phrases[-1].split("\n")[0].strip().rstrip(".").strip()
    bare = response.strip()
    if bare and "\n" not in bare and len(bare) <= _BARE_MAX_CHARS:
        return bare.rstrip(".").strip()  # a direct answer: the whole (short, one-line) response is the answer
    return None


def normalize(s: str) -> str:
    """Canonical string for comparison: unwrap text macros, drop $, spaces, degrees, trailing dot; lower-case."""
    s = s.strip()
    prev = None
    while prev != s:
        prev, s = s, _TEXT_WRAP.sub(r"\1", s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)  # official only does this when 'sqrt' is present (bug)
    for a, b in (("$", ""), ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("°", ""),
                 ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                 ("\\%", "%")):
        s = s.replace(a, b)
    s = re.sub(r"\s+", "", s).rstrip(".").lower()
    return s


_LETTER = re.compile(r"^\(?([a-h])\)?(?:[.:)]|$)", re.I)


def option_letter(s: str | None, n_options: int = 5) -> str | None:
    """'C', '(C)', 'C.', 'C: text' -> 'C' (if within the first n options), else None."""
    if not s:
        return None
    m = _LETTER.match(normalize(s) if len(s) > 3 else s.strip())
    if not m:
        return None
    letter = m.group(1).upper()
    return letter if ord(letter) - ord("A") < n_options else None


def _numeric(s: str, ev: safe_math.Evaluator) -> float | None:
    t = normalize(s)
    if t.endswith("%"):
        v = ev.strict_value(t[:-1])
        return None if v is None else v / 100
    return ev.strict_value(t)


def equivalent(a: str | None, b: str | None, ev: safe_math.Evaluator | None = None) -> bool:
    """Math equivalence of two answer strings (tuples element-wise)."""
    if a is None or b is None:
        return False
    ev = ev or safe_math.default_evaluator()
    na, nb = normalize(a), normalize(b)
    if not na or not nb:
        return False
    if na == nb:
        return True
    ta, tb = _split_tuple(na), _split_tuple(nb)
    if ta is not None or tb is not None:
        return ta is not None and tb is not None and len(ta) == len(tb) and all(
            equivalent(x, y, ev) for x, y in zip(ta, tb))
    va, vb = _numeric(na, ev), _numeric(nb, ev)
    if va is None or vb is None:
        return False
    return math.isclose(va, vb, rel_tol=_REL_TOL, abs_tol=1e-9)


def _split_tuple(s: str) -> list[str] | None:
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and "," in s:
        parts = s[1:-1].split(",")
        if len(parts) > 1:
            return parts
    return None


# --------------------------------------------------------------------------------------------- per benchmark
def _clean_gold(s: str) -> str:
    r"""Gold answers as stored: '$\boxed{x}$' wrappers, and '\frac' whose '\f' was decoded as a form feed."""
    s = str(s).replace("\x0c", "\\f").strip()
    inner = last_boxed(s)
    return inner if inner is not None else s


def mathvision(item: dict, response: str, ev: safe_math.Evaluator | None = None) -> tuple[str | None, bool]:
    """(strict extraction, correct) for a MATH-V item."""
    ext = extract_final(response)
    if ext is None:
        return None, False
    options = item.get("options") or []
    gold = _clean_gold(item["answer"])
    if options:
        letter = option_letter(ext, len(options))
        if letter is not None:
            return ext, letter == gold.upper()
        gold_text = options[ord(gold.upper()) - ord("A")]
        return ext, list(options) != list("ABCDE") and equivalent(ext, gold_text, ev)
    return ext, equivalent(ext, gold, ev)


def mathvista(item: dict, response: str, ev: safe_math.Evaluator | None = None):
    """(strict extraction, prediction, correct) for a MathVista item; falls back to the official fast paths
    only when the whole response already is the answer (a bare number or a choice text)."""
    from pointcopy.eval import mathvista as mv

    ext = extract_final(response)
    if ext is None:
        ext = mv.extract_answer(item, response) if isinstance(response, str) else None
        if not ext:
            return None, None, False
    answer = item.get("answer")
    if item.get("question_type") == "multi_choice":
        choices = item.get("choices") or []
        letter = option_letter(ext, len(choices))
        if letter is not None:
            pred = choices[ord(letter) - ord("A")]
        else:
            hits = [c for c in choices if normalize(c) == normalize(ext)] or \
                   [c for c in choices if equivalent(c, ext, ev)]
            pred = hits[0] if hits else None
        return ext, pred, pred is not None and pred == answer
    ev = ev or safe_math.default_evaluator()
    atype = item.get("answer_type")
    if atype == "list":
        got, want = _split_tuple(normalize(ext)), _split_tuple(normalize(str(answer)))
        ok = got is not None and want is not None and len(got) == len(want) and all(
            equivalent(x, y, ev) for x, y in zip(got, want))
        return ext, normalize(ext), ok
    v = _numeric(ext, ev)
    if v is None:
        return ext, None, False
    if atype == "integer":
        ok = abs(v - round(v)) < 1e-9 and int(round(v)) == int(answer)
        return ext, str(int(round(v))) if abs(v - round(v)) < 1e-9 else str(v), ok
    if atype == "float":
        pred = str(round(v, int(item.get("precision") or 0)))
        return ext, pred, float(pred) == float(answer)
    raise ValueError(f"MathVista item {item.get('pid')!r}: unsupported answer_type {atype!r}")


_UNIT_TAIL = re.compile(r"^(.*?\d)\s*(?:[a-z°掳]+\.?\s*)+$", re.I)


def _strip_unit(s: str) -> str:
    m = _UNIT_TAIL.match(s.strip())
    return m.group(1) if m else s


def mathverse_letters(s: str) -> set[str]:
    """Option letters named by a MathVerse gold/extracted MC answer: 'C', '(C)', 'C\\nD' (multi-answer)."""
    parts = re.split(r"[\s,;]+|\band\b", s.strip())
    letters = {option_letter(p, 8) for p in parts if p}
    return set() if None in letters else {x for x in letters if x}


def mathverse(item: dict, response: str, ev: safe_math.Evaluator | None = None) -> tuple[str | None, bool]:
    """(strict extraction, correct) for a MathVerse sample (testmini layout or public-subset layout)."""
    ext = extract_final(response)
    if ext is None:
        return None, False
    gold = str(item.get("answer", ""))
    mc = item.get("question_type") in ("multi-choice", "multi_choice")
    if mc:
        want, got = mathverse_letters(gold), mathverse_letters(ext)
        if want:
            return ext, got == want
        return ext, normalize(ext) == normalize(gold)  # e.g. gold 'False'
    return ext, equivalent(ext, gold, ev) or equivalent(_strip_unit(ext), _strip_unit(gold), ev)
