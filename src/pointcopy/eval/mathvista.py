"""MathVista official-compatible scoring (EVAL.md §1.5).

`extract_answer` holds the deterministic fast paths of the official `extract_answer.py` (the GPT step is optional
and lives in `judge.py`); `normalize_extracted_answer` + `is_correct` reproduce `calculate_score.py`;
`aggregate` builds the official `scores_*.json` layout (average + 9 breakdown keys, sorted by accuracy).

Integer rule: "current" is today's `str(int(float(x)))` (truncates "7.9" -> "7"); "legacy" is the pre-release
`str(int(x))` that produced most stored output files (fails on any decimal string).
"""

from __future__ import annotations

import re
from typing import Iterable

BREAKDOWN_KEYS = ("question_type", "answer_type", "language", "source", "category", "task", "context", "grade",
                  "skills")
INTEGER_RULES = ("current", "legacy")
_LETTER_IN_PARENS = re.compile(r"\(([a-zA-Z])\)")
_QUICK_HEAD = 'The answer is "'  # official quick extraction: re.search(r'The answer is "(.*)"\.', response)


_DP_MAX_CELLS = 200_000  # above this, the bit-parallel form (same distances) is used


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, cost 1), as python-Levenshtein's `distance`."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    if len(a) * len(b) > _DP_MAX_CELLS:
        return _levenshtein_bits(a, b)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _levenshtein_bits(a: str, b: str) -> int:
    """Myers/Hyyrö bit-vector edit distance: one column of the DP over the long string `a` is a pair of Python
    ints, advanced once per character of the short string `b` (the O(len(a) * len(b)) pure-Python DP takes
    minutes for a 1 MB extraction against a few choices; this takes milliseconds)."""
    import numpy as np

    n = len(a)
    codes = np.frombuffer(a.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    peq = {c: int.from_bytes(np.packbits(codes == ord(c), bitorder="little").tobytes(), "little") for c in set(b)}
    mask = (1 << n) - 1
    high = 1 << (n - 1)
    pv, mv, score = mask, 0, n
    for c in b:
        eq = peq[c]
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (mask & ~(xh | pv))
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (mask & ~(xv | ph))
        mv = ph & xv
    return score


def most_similar_choice(text: str, choices: list[str]) -> str:
    """Choice with the smallest edit distance to `text`; the first one on ties (as the official `index(min)`)."""
    dists = [levenshtein(text, c) for c in choices]
    return choices[dists.index(min(dists))]


def _pid(item: dict):
    return item.get("pid")


def extract_answer(item: dict, response, quick_extract: bool = False) -> str | None:
    """Official deterministic fast paths `response -> extraction`; None when only an LLM could extract."""
    if response is None:
        return None
    if not isinstance(response, str):
        raise ValueError(f"MathVista item {_pid(item)!r}: field 'response' must be a string")
    if response == "":
        return ""
    if item.get("question_type") == "multi_choice" and response in (item.get("choices") or []):
        return response
    if item.get("answer_type") == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if item.get("answer_type") == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    if quick_extract:
        return _quick_extract(response)
    return None


def _quick_extract(response: str) -> str | None:
    """Group 1 of the official `re.search(r'The answer is "(.*)"\\.', response)`, in linear time.

    The greedy `.*` stops at the line end and backs off to the last `".` on that line, which the regex re-does
    from every `The answer is "` on a line without one (quadratic). Here: the first head whose line has a `".`
    after it gives the text up to the last `".` of that line; a head on a line without one rules out the rest
    of that line."""
    pos = 0
    while True:
        p = response.find(_QUICK_HEAD, pos)
        if p < 0:
            return None
        start = p + len(_QUICK_HEAD)
        eol = response.find("\n", start)
        eol = len(response) if eol < 0 else eol
        end = response.rfind('".', start, eol)
        if end >= 0:
            return response[start:end]
        pos = eol


def normalize_extracted_answer(item: dict, extraction, integer_rule: str = "current"):
    """Official `normalize_extracted_answer`: extraction -> prediction (choice text, int/float string, list
    string) or None when the extraction does not convert."""
    if integer_rule not in INTEGER_RULES:
        raise ValueError(f"integer_rule must be one of {INTEGER_RULES}, got {integer_rule!r}")
    qtype, atype = item.get("question_type"), item.get("answer_type")
    if qtype == "multi_choice":
        choices = item.get("choices")
        if not choices:
            raise ValueError(f"MathVista item {_pid(item)!r}: multi_choice item without 'choices'")
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = _LETTER_IN_PARENS.findall(text)
        if letters:
            text = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if text in options:
            return choices[options.index(text)]
        return most_similar_choice(text, choices)
    if atype == "integer":
        try:
            return str(int(float(extraction))) if integer_rule == "current" else str(int(extraction))
        except (ValueError, TypeError, OverflowError):
            return None
    if atype == "float":
        precision = item.get("precision")
        try:
            # cast: a precision stored as 1.0 would make round() raise and every float item wrong (lmms-eval bug)
            return str(round(float(extraction), int(precision)))
        except (ValueError, TypeError, OverflowError):
            return None
    if atype == "list":
        return str(extraction)
    raise ValueError(f"MathVista item {_pid(item)!r}: unsupported answer_type {atype!r}")


def is_correct(item: dict, prediction) -> bool:
    """Official `safe_equal`: exact equality with the gold answer string (MC compares choice text)."""
    return prediction == item.get("answer")


def score_item(item: dict, extraction, integer_rule: str = "current") -> tuple[object, bool]:
    """(prediction, true_false) from an extraction; a missing extraction (None) scores False, unnormalised."""
    if extraction is None:
        return None, False
    pred = normalize_extracted_answer(item, extraction, integer_rule)
    return pred, is_correct(item, pred)


def _cell(correct: int, total: int, padded: bool) -> dict:
    acc = correct / total * 100
    # stored score files: average unpadded ("34.8"), breakdown cells always two decimals ("48.70")
    return {"accuracy": f"{acc:.2f}" if padded else str(round(acc, 2)), "correct": correct, "total": total}


def aggregate(rows: Iterable[tuple[dict, bool]]) -> dict:
    """Official score-file layout from (item with metadata, true_false) pairs."""
    rows = list(rows)
    total = len(rows)
    correct = sum(1 for _, tf in rows if tf)
    scores: dict = {"average": _cell(correct, total, padded=False) if total else
                    {"accuracy": "0.0", "correct": 0, "total": 0}}
    for key in BREAKDOWN_KEYS:
        counts: dict[str, list[int]] = {}
        for item, tf in rows:
            value = item[key] if key in ("question_type", "answer_type") else (item.get("metadata") or {}).get(key)
            for v in (value if key == "skills" else [value]) or []:
                c = counts.setdefault(v, [0, 0])
                c[0] += 1 if tf else 0
                c[1] += 1
        cells = {v: _cell(c, n, padded=True) for v, (c, n) in counts.items()}
        # official: sorted by accuracy, descending (stable: first appearance breaks ties)
        scores[key] = dict(sorted(cells.items(), key=lambda kv: -kv[1]["correct"] / kv[1]["total"]))
    return scores


# --------------------------------------------------------------------------------------------- optional LLM step
LLM_EXTRACT_DEMOS = """Please read the following example. Then extract the answer from the model response and type it \
at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final \
value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the \
group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final \
value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], \
[1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B"""


def llm_extract_prompt(item: dict, response: str) -> str:
    """Few-shot extraction prompt in the official shape: demos, then `{query}\\n\\n{response}\\n\\nExtracted
    answer: ` (query = the item's official zero-shot query)."""
    from pointcopy.eval.prompts import mathvista_query

    query = item.get("query") or mathvista_query(item)
    return f"{LLM_EXTRACT_DEMOS.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "


def llm_extract(judge, item: dict, response: str) -> str:
    """Official step 6 through an OpenAI-compatible judge (`judge.ask(prompt) -> str`); '' on an empty reply."""
    return (judge.ask(llm_extract_prompt(item, response)) or "").strip()
