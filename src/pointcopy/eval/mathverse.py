"""MathVerse scoring (EVAL.md §3.2): the official two-stage LLM judge, and a judge-free deterministic mode.

Stage 1 (extract): the official few-shot extraction prompt, then `Model response: '{response}'\nExtracted Answer: `;
a repeated `Extracted Answer: ` in the reply is stripped (official). Stage 2 (judge): the official scoring prompt
filled with `[Question]`, `[Standard Answer]`, `[Model_answer] :` and ending `Judgement:` (no trailing space); the
reply (minus `Judgement:`) is asked again until it is `0` or `1` (official: no limit; here `max_judge_attempts`,
after which the sample is recorded as a judge failure and counted wrong). The built prompts equal, byte for byte,
those of the official `evaluation/extract_answer_s1.py` / `score_answer_s2.py` with `evaluation/prompts.py`
(ZrrSkywalker/MathVerse at ac31a9c8, MIT; tests/eval/data/mathverse_official_prompts.json), including its
'Judement' spelling. Judged numbers still depend on the judge model (official: gpt-3.5-turbo) and name it.

Deterministic mode (`DETERMINISTIC_NOTE`): stage 1 is rule-based (`extract_deterministic`), stage 2 is exact
string equality with the gold answer. Metrics: per problem_version, subject, subject-subfield, and total (the
released data calls the category object `metadata`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable

from pointcopy.eval import strict
from pointcopy.eval.judge import ChatJudge

MODES = ("deterministic", "judge")  # the first is the default

DETERMINISTIC_NOTE = (
    "MathVerse deterministic mode (judge-free): not the official scoring and not the official `--quick_match` "
    "(that one compares the gold answer with the extraction of the official GPT stage 1). Stage 1 here is "
    "rule-based: the last \\boxed{}, <answer> tag or 'answer is/:' phrase, else the response's final statement "
    "('... is 14 cm.', 'would be 14', 'the answer should be B'), else a short one-line response; cleaned like an "
    "extractor would (option letter for multiple choice, unit words after a number dropped). Stage 2 is exact "
    "string equality with the gold answer, so equivalent forms (0.5 vs 1/2, '14 m' vs '14') count as wrong.")

# Official stage-1 demos (`demo_prompt_extract.strip()`), with the escapes of the official Python source resolved:
# real newlines inside the demo responses, `\(` as a backslash and a parenthesis, a real degree sign.
EXTRACT_PROMPT = """I am providing you a response from a model to a math problem, termed 'Model Response'. You should \
extract the answer from the response as 'Extracted Answer'. Directly output the extracted answer with no explanation.

1.
Model response: 'Rounded to two decimal places, the perimeter of the sector is approximately:

(-2, 1)'
Extracted Answer: (-2, 1)

2.
Model response: 'at those points.

Therefore, the correct option that represents the meaning of the intersection points of the graphs is:

D. They give the solutions to the equation $f(t)=g(t)$.",'
Extracted Answer: D

3.
Model response: ' at 1 (there's a closed circle at y = 1), the range in interval notation is \\((-4, 1]\\).

Final values:
Domain: \\((-3, 3]\\)
Range: \\((-4, 1]\\)'
Extracted Answer: Domain: \\((-3, 3]\\)
Range: \\((-4, 1]\\)

4.
Model response: 'As it stands, I cannot provide the correct option letter because there isn't enough information \
to solve for 'y'.'
Extracted Answer: null

5.
Model response: 'Given that AB = 17.6 meters, we can now substitute into the equation:

d = 17.6 / cos(38\u00b0)

Therefore, to one decimal place, the distance d between Ned and Bart is approximately 22.3 meters.'
Extracted answer: 22.3

6.
Model response:  have all the coefficients for the quadratic function:
\\( f(x) = ax^2 + bx + c \\)
\\( f(x) = -1x^2 - 2x + 1 \\)

Therefore, the equation for the graphed function \\( f \\) is:
\\( f(x) = -x^2 - 2x + 1 \\)"'
Extracted answer: f(x) = -x^2 - 2x + 1

7."""

# Official stage-2 prompt after `.strip()` and `.format()`: `{{3}}` is `{3}`, `\u221a` a real square-root sign. The
# only fields are `{question}`, `{gt}` and `{extraction}`; `judge_prompt` fills them in one pass, so braces in the
# values stay as they are (as `str.format` leaves them).
JUDGE_PROMPT = """Below are two answers to a math question. Question is [Question], [Standard Answer] is the standard \
answer to the question, and [Model_answer] is the answer extracted from a model's output to this question.  Determine \
whether these two answers are consistent.
Please note that only when the [Model_answer] completely matches the [Standard Answer] means they are consistent. For \
non-multiple-choice questions, if the meaning is expressed in the same way, it is also considered consistent, for \
example, 0.5m and 50cm.
If they are consistent, Judement is 1; if they are different, Judement is 0.

[Question]: Write the set of numbers represented on the number line in interval notation.
[Standard Answer]: (-2,1]
[Model_answer] : Extracted Answer: \\((-2, 1)\\)
Judgement: 0

[Question]: As shown in the figure, circle O has a radius 1.0, if angle BAC = 60.0, then the length of BC is ()
Choices:
A:2
B:2\u221a{3}
C:\u221a{3}
D:2\u221a{2}
[Standard Answer]: C
[Model_answer] : B:2\u221a{3}
Judgement: 0

[Question]: Find the domain and range of the function f using interval notation.
[Standard Answer]: domain: [-4, 0) and range: (-3, 1]
[Model_answer] : Range: \\((-4, 1]\\)
Judgement: 0

[Question]: As shown in the figure, circle O has a radius 1.0, if angle BAC = 60.0, then the length of BC is ()
Choices:
A:2
B:2\u221a{3}
C:\u221a{3}
D:2\u221a{2}
[Standard Answer]: C
[Model_answer] : null
Judgement: 0

[Question]: Given the graph of the ellipse that intersects with x-axis at 9 and -9 and with y-axis at 3 and -3, \
determine its equation.A. \\frac{x^2}{81} + \\frac{y^2}{9} = 1 B. Can not determine.

[Standard Answer]: A
[Model_answer] : \\frac{x^2}{81} + \\frac{y^2}{9} = 1
Judgement: 1

[Question]: {question}
[Standard Answer]: {gt}
[Model_answer] : {extraction}
Judgement:"""
_JUDGE_FIELDS = re.compile(r"\{(question|gt|extraction)\}")


def sample_id(item: dict) -> str:
    for key in ("sample_index", "pid", "id"):
        if key in item:
            return str(item[key])
    raise ValueError("MathVerse sample without 'sample_index' (or 'pid')")


def extract_prompt(response: str) -> str:
    """Official stage-1 prompt for one response."""
    return f"{EXTRACT_PROMPT}\n\nModel response: '{response}'\nExtracted Answer: "


def judge_prompt(question: str, answer: str, extraction: str) -> str:
    """Official stage-2 prompt; values are inserted verbatim (braces in them are not fields)."""
    values = {"question": question, "gt": answer, "extraction": extraction}
    return _JUDGE_FIELDS.sub(lambda m: values[m.group(1)], JUDGE_PROMPT)


def trunk_response(response: str, trunk_words: int | None) -> str:
    """Official `--trunk_response N`: the last N space-separated words (split on ' ' only); N <= 0 keeps all."""
    if not trunk_words or trunk_words <= 0:
        return response
    return " ".join(response.split(" ")[-trunk_words:])


def llm_extract(judge: ChatJudge, response: str, trunk_words: int | None = None) -> str:
    reply = judge.ask(extract_prompt(trunk_response(response, trunk_words)))
    return reply.replace("Extracted Answer: ", "").strip()  # official: "sometimes gpt will repeat"


def extract_deterministic(response: str, item: dict | None = None) -> str | None:
    """Rule-based stage 1 (see `DETERMINISTIC_NOTE`): marked answer, else final statement, else a short direct
    answer; cleaned (`strict.clean_answer`); for multiple choice an extraction that starts with an option letter
    and goes on ('B. 8/11', '(B) 8/11', 'C: 4') becomes that letter ('(C)' alone stays as it is, as MathVerse
    gold answers sometimes are). None when nothing is found."""
    ext = strict.mathverse_extract(response)
    if ext is None:
        return None
    ext = strict.clean_answer(ext)
    if len(ext) > 3 and item is not None and item.get("question_type") in ("multi-choice", "multi_choice"):
        letter = strict.option_letter(ext, 8)
        if letter is not None:
            return letter
    return ext


def llm_judge(judge: ChatJudge, item: dict, extraction: str, max_attempts: int = 5) -> tuple[bool | None, int]:
    """(judgement, attempts used); None when the judge never answered 0 or 1."""
    prompt = judge_prompt(str(item.get("question", "")), str(item.get("answer", "")), extraction)
    for attempt in range(max_attempts):
        reply = judge.ask(prompt, attempt=attempt).replace("Judgement:", "").strip()
        if reply in ("0", "1"):
            return reply == "1", attempt + 1
    return None, max_attempts


def score_item(item: dict, response: str, mode: str = "deterministic", judge: ChatJudge | None = None,
               extraction: str | None = None, max_judge_attempts: int = 5) -> dict:
    """One sample -> {'extraction', 'correct', 'judge_failed'}; an existing `extraction` skips stage 1."""
    sid = sample_id(item)
    if not isinstance(response, str) and extraction is None:
        raise ValueError(f"MathVerse sample {sid!r}: field 'response'/'model_answer' must be a string")
    if mode == "deterministic":
        ext = extraction if extraction is not None else extract_deterministic(response, item)
        return {"extraction": ext, "correct": ext is not None and str(item.get("answer")) == ext,
                "judge_failed": False}
    if mode != "judge":
        raise ValueError(f"MathVerse mode must be one of {MODES}, got {mode!r}")
    if judge is None:
        raise ValueError("MathVerse judge mode needs a ChatJudge (set POINTCOPY_JUDGE_* variables)")
    ext = extraction if extraction is not None else llm_extract(judge, response)
    verdict, _ = llm_judge(judge, item, ext, max_judge_attempts)
    return {"extraction": ext, "correct": bool(verdict), "judge_failed": verdict is None}


def _meta(item: dict, key: str) -> str:
    meta = item.get("metadata") or item.get("category") or {}
    # public-subset layout names these 'subjects'/'subfields'
    return str(meta.get(key) or meta.get(key + "s") or "unknown")


def aggregate(rows: Iterable[tuple[dict, bool]]) -> dict:
    """Accuracy (3 decimals, as the official prints) per problem_version, subject, subject-subfield and total."""
    counts: dict[str, dict[str, list[int]]] = {k: defaultdict(lambda: [0, 0]) for k in
                                               ("problem_version", "subject", "subject-subfield")}
    total = [0, 0]
    for item, ok in rows:
        version = item.get("problem_version") or (item.get("metadata") or {}).get("problem_version") or "unknown"
        subject, subfield = _meta(item, "subject"), _meta(item, "subfield")
        for key, value in (("problem_version", version), ("subject", subject),
                           ("subject-subfield", f"{subject}-{subfield}")):
            counts[key][value][0] += int(bool(ok))
            counts[key][value][1] += 1
        total[0] += int(bool(ok))
        total[1] += 1

    def cell(c: int, n: int) -> dict:
        return {"accuracy": round(c / n, 3) if n else 0.0, "correct": c, "total": n}

    out = {"total": cell(*total)}
    for key, vals in counts.items():
        out[key] = {v: cell(*cn) for v, cn in sorted(vals.items())}
    return out
