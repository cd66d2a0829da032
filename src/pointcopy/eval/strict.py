r"""Deterministic "strict" profile: final-answer extraction + math equivalence, reported beside official scores.

Extraction (`extract_final`, MATH-V and MathVista): the last brace-matched `\boxed{...}`; else the last
`<answer>...</answer>`; else the text after the last "answer is"/"answer:" phrase (first line); else the whole
response if it is one short line (a direct answer such as "D" or "1577"). No guessing: nothing found -> None.
MathVerse (`mathverse_extract`) reads, before the short-line rule, the final statement of the response
("... is 14 cm.", "would be 14", "So the answer should be B."; `final_statement`): its official extractor is an
LLM that reads such statements.

Time: every step on model text is linear in its length (or reads a documented bounded tail), and numeric
evaluation runs in `safe_math`'s worker under its time limit (tests/eval/test_extraction_time_bound.py).

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
from functools import lru_cache

from pointcopy.eval import safe_math

# Every pattern below runs on model text: each is linear (no nested or adjacent overlapping quantifiers, no lazy
# scan that restarts at every occurrence), and the loops that used such patterns are rewritten as single passes
# that return exactly what the original patterns returned (tests/eval/test_extraction_time_bound.py).
_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_TAG_OPEN = re.compile(r"<answer>", re.I)
_TAG_CLOSE = re.compile(r"</answer>", re.I)
_PHRASE_HEAD = re.compile(r"(?:final answer|answer)\s*(?:is|:)", re.I)
_SPACES = re.compile(r"\s*")
_TEXT_WRAP_NAMES = ("\\text", "\\textbf", "\\mathrm", "\\mbox", "\\mathbf")
_TEXT_WRAP_MAX = max(map(len, _TEXT_WRAP_NAMES))
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_TEXT_OR_BRACE = re.compile(r"[^{}]+|[{}]")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_REL_TOL = 1e-6
_BARE_MAX_CHARS = 32


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` / `\fbox{...}` with nested braces matched; None if absent/unclosed.

    One pass: every `{` is matched to its `}` with a stack (the `}` that first brings the depth counted from that
    `{` back to zero, as a forward scan from each start would find), so thousands of unclosed `\boxed{` cost
    O(n), not O(n^2)."""
    starts = [m.end() for m in _BOXED_START.finditer(text)]
    if not starts:
        return None
    close_of: dict[int, int] = {}  # position of '{' -> position of its matching '}'
    stack: list[int] = []
    for m in _BRACE.finditer(text, starts[0] - 1):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            close_of[stack.pop()] = m.start()
    for start in reversed(starts):
        end = close_of.get(start - 1)
        if end is not None:
            return text[start:end]
    return None


def _answer_tags(text: str) -> list[str]:
    """`re.findall(r"<answer>(.*?)</answer>", text, re.S | re.I)` in one pass (the lazy pattern rescans to the
    end from every unclosed `<answer>`: quadratic)."""
    out, pos = [], 0
    while True:
        m = _TAG_OPEN.search(text, pos)
        if m is None:
            return out
        c = _TAG_CLOSE.search(text, m.end())
        if c is None:  # no later `<answer>` can be closed either
            return out
        out.append(text[m.end():c.start()])
        pos = c.end()


def _answer_phrases(text: str) -> list[str]:
    r"""`re.findall(r"(?:final answer|answer)\s*(?:is|:)\s*[:]?\s*(.+)", text, re.I)` without the backtracking.

    After the head, the pattern takes the maximal whitespace run, an optional colon and another maximal run, then
    the rest of the line. The two `\s*` can only backtrack (quadratically) when only whitespace follows up to the
    end of the text; the engine then settles on the last non-newline character of the run (a 1-character
    group), or, after a colon, on the colon itself. Those outcomes are computed directly here."""
    out, pos, n = [], 0, len(text)
    last_non_nl = None  # index of the last character that is not '\n' (computed once, only when needed)
    while True:
        m = _PHRASE_HEAD.search(text, pos)
        if m is None:
            return out
        p = m.end()
        q = _SPACES.match(text, p).end()
        if q < n and text[q] == ":":
            r = _SPACES.match(text, q + 1).end()
            if r < n:
                start = r
            else:
                if last_non_nl is None:
                    last_non_nl = len(text.rstrip("\n")) - 1
                start = last_non_nl if last_non_nl >= q + 1 else q
        elif q < n:
            start = q
        else:
            if last_non_nl is None:
                last_non_nl = len(text.rstrip("\n")) - 1
            if last_non_nl < p:  # only newlines after the head: no match here; nothing can follow
                return out
            start = last_non_nl
        eol = text.find("\n", start)
        end = n if eol < 0 else eol
        out.append(text[start:end])
        pos = end


def marked_answer(response: str) -> str | None:
    """Answer behind an explicit marker: last boxed, else last answer tag, else last answer phrase; or None."""
    if not isinstance(response, str):
        return None
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed.strip()
    tags = _answer_tags(response)
    if tags:
        inner = tags[-1]
        return (last_boxed(inner) or inner).strip()
    phrases = _answer_phrases(response)
    if phrases:
        return phrases[-1].split("\n")[0].strip().rstrip(".").strip()
    return None


def direct_answer(response: str) -> str | None:
    """The whole response when it is one short line (a direct answer such as "D" or "1577"), else None."""
    bare = response.strip() if isinstance(response, str) else ""
    if bare and "\n" not in bare and len(bare) <= _BARE_MAX_CHARS:
        return bare.rstrip(".").strip()
    return None


def extract_final(response: str) -> str | None:
    """Final answer text of a response (boxed, answer tag, answer phrase, short direct answer) or None."""
    ext = marked_answer(response)
    return ext if ext is not None else direct_answer(response)


def _unwrap_text_macros(s: str) -> str:
    r"""Fixed point of `re.sub(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}", r"\1", s)` in one pass.

    Repeating the substitution costs one pass per nesting level (quadratic for deep nesting). Its redexes never
    overlap and each rewrite shortens the text, so the fixed point is unique; this left-to-right reduction
    reaches it too: the text is kept as a linked list of chunks, and a `}` whose last unclosed `{` has no brace
    after it and a wrapper name right before it deletes the name, the `{` and itself (the name may be assembled
    from pieces by earlier rewrites: "\\te" + "\\text{}" + "xt{a}" -> "a")."""
    for _ in range(2):  # the usual one or two levels: plain substitution passes
        t = _TEXT_WRAP.sub(r"\1", s)
        if t == s:
            return s
        s = t
    return _unwrap_reduce(s) if _TEXT_WRAP.search(s) else s


def _unwrap_reduce(s: str) -> str:
    """The left-to-right reduction of `_unwrap_text_macros` (any nesting depth, linear)."""
    # node k is s[lo[k]:hi[k]] (a brace, or a brace-free chunk that rewrites only shorten at its end)
    lo, hi, prev, nxt = [0], [0], [-1], [-1]  # node 0: head sentinel
    braces: list[int] = []  # brace nodes still in the list, in order
    tail = 0
    for m in _TEXT_OR_BRACE.finditer(s):
        a, b = m.span()
        if s[a] == "}" and braces and s[lo[braces[-1]]] == "{":
            j = braces[-1]
            name = None
            if prev[j] > 0 and s[hi[prev[j]] - 1] in "tfmx":  # last letters of the wrapper names
                before, k = "", prev[j]
                while k > 0 and len(before) < _TEXT_WRAP_MAX and s[lo[k]] not in "{}":
                    before = s[max(lo[k], hi[k] - _TEXT_WRAP_MAX):hi[k]] + before
                    k = prev[k]
                name = next((w for w in _TEXT_WRAP_NAMES if before.endswith(w)), None)
            if name is not None:
                braces.pop()
                left, k = len(name), prev[j]  # delete the name (it may span several chunks), the '{' and '}'
                while True:
                    cut = min(left, hi[k] - lo[k])
                    hi[k] -= cut
                    left -= cut
                    if not left:
                        break
                    k = prev[k]
                first = prev[j]
                while first > 0 and hi[first] == lo[first]:  # emptied chunks are unlinked with the '{'
                    first = prev[first]
                after = nxt[j]
                nxt[first] = after
                if after == -1:
                    tail = first
                else:
                    prev[after] = first
                continue
        lo.append(a)
        hi.append(b)
        prev.append(tail)
        nxt.append(-1)
        node = len(lo) - 1
        nxt[tail] = node
        tail = node
        if s[a] in "{}":
            braces.append(node)
    out, k = [], nxt[0]
    while k != -1:
        out.append(s[lo[k]:hi[k]])
        k = nxt[k]
    return "".join(out)


def normalize(s: str) -> str:
    """Canonical string for comparison: unwrap text macros, drop $, spaces, degrees, trailing dot; lower-case."""
    return _normalize(s)


@lru_cache(maxsize=32)  # scorers normalise the same (possibly 1 MB) extraction once per choice
def _normalize(s: str) -> str:
    s = _unwrap_text_macros(s.strip())
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)  # official only does this when 'sqrt' is present (bug)
    for a, b in (("$", ""), ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("°", ""),
                 ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                 ("\\%", "%")):
        s = s.replace(a, b)
    s = re.sub(r"\s+", "", s).rstrip(".").lower()
    return s


_LETTER = re.compile(r"^\(?([a-h])\)?(?:[.:)]|$)", re.I)
_LETTER_SPLIT = re.compile(r"[\s,;]+|\band\b")


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


# `^(.*?\d)\s*(?:[a-z°掳]+\.?\s*)+$` (re.I) had nested quantifiers: exponential on "14 square centimeters (x)".
# Its tail language (whitespace, then unit words: letters, a dot only right after a letter, whitespace) holds no
# digit, so the only digit that can end group 1 is the last one; `.` excludes newlines from the prefix.
_UNIT_CHAR = "a-z°掳"
_UNIT_WORDS = re.compile(rf"\s*[{_UNIT_CHAR}](?:[{_UNIT_CHAR}\s]|(?<=[{_UNIT_CHAR}])\.)*", re.I)
_LAST_DIGIT = re.compile(r"\d\D*\Z")


def _strip_unit(s: str) -> str:
    """'14 cm' -> '14', '2191.7 metres' -> '2191.7' (number followed only by unit-like words); else s."""
    t = s.strip()
    m = _LAST_DIGIT.search(t)
    if m is None or "\n" in t[:m.start()] or not _UNIT_WORDS.fullmatch(t, m.start() + 1):
        return s
    return t[:m.start() + 1]


def mathverse_letters(s: str) -> set[str]:
    """Option letters named by a MathVerse gold/extracted MC answer: 'C', '(C)', 'C\\nD' (multi-answer)."""
    letters = set()
    for p in _LETTER_SPLIT.split(s.strip()):
        if p:
            letter = option_letter(p, 8)
            if letter is None:
                return set()  # any part that is not a letter: not a letter answer (stop at the first)
            letters.add(letter)
    return letters


# ------------------------------------------------------------------ natural-language endings (MathVerse only)
# "... is 14 cm.", "would be 14", "Therefore, the length is 5√3.", "So the answer should be B.", "...is:\n\n14".
# Only the last ENDING_TAIL_CHARS characters are read: an ending is, by definition, at the end of the text.
ENDING_TAIL_CHARS = 400
_ENDING_MAX_CHARS = 40
_COPULA = re.compile(r"\b(?:is|are|be|equals?|was|becomes)\b|=|≈", re.I)
_FILLER = re.compile(r"(?:(?:approximately|approx\.|about|around|roughly|nearly|exactly|equal\s+to|given\s+by|"
                     r"option|choice|answer|the)\b\s*|:\s*)+", re.I)
_MATH_WRAP = re.compile(r"\\[()\[\]]|\*\*")
_ANSWERISH = re.compile(r"\d|√|π|\\(?:sqrt|frac|pi)\b")
_LETTERISH = re.compile(r"\(?[A-H]\)?(?:[.:)].*)?|true|false|yes|no", re.I | re.S)


def clean_answer(c: str) -> str:
    """Extractor-style clean-up of an answer phrase: markdown bold, `\\( \\)` and `$...$` wrappers, a final
    period, leading filler ('approximately', 'option', ...), and unit words after a number ('14 cm' -> '14';
    degree marks are kept: MathVerse gold answers carry them)."""
    c = _MATH_WRAP.sub("", c).strip()
    if len(c) > 1 and c[0] == "$" and c[-1] == "$":
        c = c[1:-1].strip()
    c = c.rstrip(".。").strip()
    m = _FILLER.match(c)
    if m:
        c = c[m.end():]
    if "°" not in c and "掳" not in c:
        c = _strip_unit(c)
    return c.strip()


def _answerish(c: str) -> bool:
    return 0 < len(c) <= _ENDING_MAX_CHARS and bool(_ANSWERISH.search(c) or _LETTERISH.fullmatch(c))


def final_statement(response: str) -> str | None:
    """Answer stated by the last line of a response without an answer marker, or None.

    The last non-empty line after a line ending in ':' ("... is:\\n\\n14"), else what follows the last copula
    ('is', 'be', 'equals', '=', ...) on the last line, cleaned (`clean_answer`); accepted only when it looks like
    an answer (a number or math, an option letter, true/false/yes/no) of at most 40 characters."""
    if not isinstance(response, str):
        return None
    tail = response.rstrip()[-ENDING_TAIL_CHARS:]
    lines = [ln.strip() for ln in tail.split("\n") if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    if len(lines) > 1 and lines[-2].rstrip("*").endswith(":"):
        c = clean_answer(last)
        return c if _answerish(c) else None
    cop = None
    for cop in _COPULA.finditer(last):
        pass
    if cop is None:
        return None
    c = clean_answer(last[cop.end():])
    return c if _answerish(c) else None


def mathverse_extract(response: str) -> str | None:
    """MathVerse extraction: a marked answer, else the final statement, else a short direct answer."""
    for step in (marked_answer, final_statement, direct_answer):
        ext = step(response)
        if ext is not None:
            return ext
    return None


def mathverse(item: dict, response: str, ev: safe_math.Evaluator | None = None) -> tuple[str | None, bool]:
    """(strict extraction, correct) for a MathVerse sample (testmini layout or public-subset layout); a response
    without a boxed answer, answer tag or answer phrase is read from its final statement (`final_statement`)
    before the short-direct-answer rule (MathVerse only: MATH-V and MathVista keep `extract_final`)."""
    ext = mathverse_extract(response)
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
