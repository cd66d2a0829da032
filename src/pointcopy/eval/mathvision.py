"""MATH-Vision (MATH-V) official-compatible scoring.

Re-implements the behaviour of the official `evaluation/evaluate.py` + `evaluation/utils.py` (EVAL.md §2.4-2.6):
rule-based extraction `response -> model_answer`, the `is_equal` correctness test and the `"c/n=xx.xx%"`
aggregation. The official code compares numbers with `eval(str(latex2sympy(x)))`; here that step goes through
`safe_math` (own LaTeX parser -> sympy objects -> Python-math-semantics evaluator, in a worker with a timeout), so
model text is never executed. Known official parser bugs are kept on purpose (they decide the official flags);
`strict.py` holds the fixed version.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from pointcopy.eval import safe_math

LETTERS = "ABCDE"
_ANSWER_FLAGS = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")


# --------------------------------------------------------------------------------------------- extraction
def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _fix_fracs(s: str) -> str:
    r"""`\frac12` -> `\frac{1}{2}`; official: only called when 'sqrt' is present (a known bug, kept)."""
    parts = s.split("\\frac")
    out = [parts[0]]  # a list, not repeated string concatenation: linear for any number of parts
    for sub in parts[1:]:
        out.append("\\frac")
        if sub[:1] == "{":
            out.append(sub)
            continue
        if len(sub) < 2:
            return s  # official gives up on the whole string
        a, b, rest = sub[0], sub[1], sub[2:]
        out.append("{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest)
    return "".join(out)


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    if s != f"{a}/{b}":
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _fix_sqrt(s: str) -> str:
    r"""`\sqrt2` -> `\sqrt{2}`; breaks `\sqrt[3]{8}` into `\sqrt{[}3]{8}` exactly like the official code."""
    if "\\sqrt" not in s:
        return s
    parts = s.split("\\sqrt")
    out = [parts[0]]
    for sub in parts[1:]:
        if sub and sub[0] != "{":
            out.append("\\sqrt{" + sub[0] + "}" + sub[1:])
        else:
            out.append("\\sqrt" + sub)
    return "".join(out)


def _strip_string(s: str) -> str:
    """Hendrycks-MATH style normalisation as in the official utils (order matters)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.split("\\text{ ")[0]  # drop units on the right
    s = s.replace("\\%", "")  # the official code replaces the same two-character string twice
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2:
        s = s.split("=")[-1]
    if len(s.split("\\approx")) == 2:
        s = s.split("\\approx")[-1]
    if "sqrt" in s:
        s = _fix_sqrt(s)
    s = s.replace(" ", "")
    if "sqrt" in s:
        s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def _greedy_boxed(s: str) -> str:
    r"""Last item of the official `re.findall(r"oxed{(.*)}", s, flags=re.S)`, or s when there is none.

    The greedy match runs from the first `oxed{` to the last `}` of the whole text, so findall has at most one
    item: s between them when that `}` comes after the `oxed{`. (The regex rescans to the end from every
    `oxed{` that has no `}` after it: quadratic, and extract_answer's case-sensitive `oxed{` count does not
    prevent it, since this runs after lower-casing: `\BOXED{` x 100k.)"""
    start = s.find("oxed{")
    if start < 0:
        return s
    end = s.rfind("}")
    return s[start + 5:end] if end >= start + 5 else s


def find_math_answer(s: str) -> str:
    """Official `find_math_answer`: greedy last `oxed{...}` then LaTeX clean-up."""
    s = s.lower()
    s = s.replace("{}", "")
    ans = _greedy_boxed(s)
    close, open_ = ans.find("}"), ans.find("{")
    if close != -1 and (open_ == -1 or close < open_):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1]
    ans = ans.split("\\approx")[-1]
    ans = ans.replace(" ", "").replace("\\,", "").replace("∞", "\\infty")
    ans = ans.replace("+\\infty", "\\infty").replace("\\\\", "\\").replace("\n", "")
    ans = ans.replace("\\text", "").replace("\\mbox", "").replace("bmatrix", "pmatrix")
    ans = ans.replace("\\left", "").replace("\\right", "").replace("^{\\circ}", "")
    ans = ans.replace("^\\circ", "").replace("{m}^3", "").replace("m^3", "")
    ans = ans.replace("{units}", "").replace("units", "").replace("{km}", "").replace("km", "")
    return _strip_string(ans)


def extract_answer(response: str) -> str:
    """Official rule-based extraction `response -> model_answer` (EVAL.md §2.4)."""
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    a = response.strip()
    for c in LETTERS:
        if (a.endswith(f" {c}.") or a.endswith(f" ({c}).") or a.startswith(f"{c}\n")
                or a.startswith(f"({c})\n") or a.startswith(f"({c}) {c}\n")):
            a = c
    tail = a.rpartition("is ")[2].rstrip(".")  # == a.split("is ")[-1]
    if _is_number(tail):
        a = tail
    if "oxed{" not in a:
        for flag in _ANSWER_FLAGS:
            for f in (flag, flag.replace("the", "The")):
                before = a
                a = a.split(f)[-1].strip()
                if f in before:
                    a = a.split("\n")[0].split(". ")[0]
    elif a.count("oxed{") > 1:
        a = "\\boxed{" + a.split("oxed{")[-1]
    a = find_math_answer(a)
    for c in "abcde":
        a = a.replace(f"({c})", c)
    for c in "abcde":
        a = a.replace("{" + c + "}", c)
    return a.rstrip(".").lstrip(":").strip()


# --------------------------------------------------------------------------------------------- equality
def _eval_tuple(s: str, evaluator: "safe_math.Evaluator") -> str:
    """Official `eval_tuple`: '(a,b)' / '[a,b]' -> elements numerically rounded to 2 dp; any failure -> s."""
    if not s:
        # the official code indexes s[0] outside its try block; callers never pass "" (is_equal returns first)
        return s
    inner = s[1:-1].split(",")
    if len(inner) <= 1 or not ((s[0] == "(" and s[-1] == ")") or (s[0] == "[" and s[-1] == "]")):
        return s
    out = []
    for sub in inner:
        if "infty" in sub or sub in ("a", "-a"):
            out.append(sub)
            continue
        v = evaluator.official_value(sub)
        if v is None:
            return s
        out.append(safe_math.py_str(safe_math.py_round2(v)))
    return s[0] + ",".join(out) + s[-1]


def is_equal(a: str, b: str, evaluator: "safe_math.Evaluator | None" = None) -> bool:
    """Official `is_equal` (EVAL.md §2.5), symmetric in its arguments up to evaluation order."""
    ev = evaluator or safe_math.default_evaluator()
    a, b = a.lower(), b.lower()
    if a.replace(" ", "") == "" or b.replace(" ", "") == "":
        return False
    if a.strip() == b.strip():
        return True
    # _eval_tuple keeps the number of commas, so sides with different comma counts stay different; a side with
    # more commas than the evaluator's input cap (MAX_INPUT_CHARS) stays longer than that cap and has no value:
    # False, without evaluating a model's 100k-element "tuple" element by element
    ca, cb = a.count(","), b.count(",")
    if ca != cb and max(ca, cb) > safe_math.MAX_INPUT_CHARS:
        return False
    a, b = _eval_tuple(a, ev), _eval_tuple(b, ev)
    if a == b:
        return True
    va = ev.official_value(a)
    if va is None:
        return False
    vb = ev.official_value(b)
    if vb is None:
        return False
    return safe_math.py_round2_equal(va, vb)


def gold_option_text(item: dict) -> str:
    """Text of the gold option for MC items ('' for free-form), as the official evaluate.py builds it."""
    options = item.get("options") or []
    if not options:
        return ""
    answer = str(item["answer"])
    if len(answer) != 1 or not 0 <= ord(answer) - ord("A") < len(options):
        raise ValueError(f"MATH-V item {item.get('id')!r}: field 'answer' {answer!r} is not an option letter")
    return options[ord(answer) - ord("A")]


def score_item(item: dict, model_answer: str, evaluator: "safe_math.Evaluator | None" = None) -> bool:
    """`correct` flag: equal to the gold answer or to the gold option text."""
    if not isinstance(model_answer, str):
        raise ValueError(f"MATH-V item {item.get('id')!r}: field 'model_answer' must be a string")
    gt = str(item["answer"])
    return is_equal(gt, model_answer, evaluator) or is_equal(gold_option_text(item), model_answer, evaluator)


# --------------------------------------------------------------------------------------------- aggregation
def _fmt(c: int, n: int) -> str:
    if n == 0:
        return f"{c}/{n}=0"
    return f"{c}/{n}={round(c / n * 100, 2)}%"


def aggregate(rows: Iterable[tuple[dict, bool]]) -> dict[str, str]:
    """Official `_result.json` dict from (item, correct) pairs: keys sorted, values 'c/n=xx.xx%'."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item, correct in rows:
        subject, level = item["subject"], item["level"]
        for key in ("-all", f"-level{level}", f"{subject}", f"{subject}_level{level}", f"-level{level}_{subject}"):
            counts[key][0] += 1 if correct else 0
            counts[key][1] += 1
    return {k: _fmt(*counts[k]) for k in sorted(counts)}
