"""MathVerse scoring (EVAL.md §3.2): the official two-stage LLM judge, and a judge-free deterministic mode.

Stage 1 (extract): few-shot extraction prompt + `Model response: '{response}'\\nExtracted Answer: `; a repeated
`Extracted Answer:` prefix in the reply is stripped. Stage 2 (judge): scoring prompt with `[Question]`,
`[Standard Answer]`, `[Model_answer] :` ending `Judgement: `; the reply (minus `Judgement:`) is asked again until
it is `0` or `1` (official: no limit; here `max_judge_attempts`, after which the sample is recorded as a judge
failure and counted wrong). The prompts are modelled on the official `prompts.py` as documented in EVAL.md §3.2
(same structure, rules sentence and demo cases, including its 'Judement' spelling); the exact official wording is
not guaranteed, so judged numbers name the judge model and are not leaderboard-comparable.

Deterministic mode: stage 1 is the strict rule-based extraction (`strict.extract_final`) and stage 2 is the
official `--quick_match` (`answer == extraction`, exact string). Metrics: per problem_version, subject,
subject-subfield, and total (the released data calls the category object `metadata`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from pointcopy.eval import strict
from pointcopy.eval.judge import ChatJudge

EXTRACT_PROMPT = """I am providing you a response from a model to a math problem, termed 'Model Response'. You should \
extract the answer from the response as 'Extracted Answer'. Directly output the extracted answer with no explanation.

1.
Model response: 'Rounded to two decimal places, the perimeter of the sector is approximately:\\n\\n(-2, 1)'
Extracted Answer: (-2, 1)

2.
Model response: 'at those points.\\n\\nTherefore, the correct option that represents the meaning of the \
intersection points of the graphs is:\\n\\nD. They give the solutions to the equation $f(t)=g(t)$.",'
Extracted Answer: D

3.
Model response: ' at 1 (there's a closed circle at y = 1), the range in interval notation is \\\\((-4, 1]\\\\).\\n\\n\
Final values:\\nDomain: \\\\((-3, 3]\\\\)\\nRange: \\\\((-4, 1]\\\\)'
Extracted Answer: Domain: \\((-3, 3]\\)\\nRange: \\((-4, 1]\\)

4.
Model response: 'As it stands, I cannot provide the correct option letter because there isn't enough information \
to solve for 'y'.'
Extracted Answer: null

5.
Model response: 'Given that AB = 17.6 meters, we can now substitute into the equation:\\n\\nd = 17.6 / cos(38\\u00b0)\\n\
\\nTherefore, to one decimal place, the distance d between Ned and Bart is approximately 22.3 meters.'
Extracted answer: 22.3

6.
Model response:  have all the coefficients for the quadratic function:\\n\\\\( f(x) = ax^2 + bx + c \\\\)\\n\
\\\\( f(x) = -1x^2 - 2x + 1 \\\\)\\n\\nTherefore, the equation for the graphed function \\\\( f \\\\) is:\\n\
\\\\( f(x) = -x^2 - 2x + 1 \\\\)"'
Extracted answer: f(x) = -x^2 - 2x + 1

7.
"""

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
B:2\\sqrt{{3}}
C:\\sqrt{{3}}
D:2\\sqrt{{2}}
[Standard Answer]: C
[Model_answer] : B:2\\sqrt{{3}}
Judgement: 0

[Question]: Find the domain and range of the function f using interval notation.
[Standard Answer]: domain: [-4, 0) and range: (-3, 1]
[Model_answer] : Range: \\((-4, 1]\\)
Judgement: 0

[Question]: As shown in the figure, circle O has a radius 1.0, if angle BAC = 60.0, then the length of BC is ()
Choices:
A:2
B:2\\sqrt{{3}}
C:\\sqrt{{3}}
D:2\\sqrt{{2}}
[Standard Answer]: C
[Model_answer] : null
Judgement: 0

[Question]: Given the graph of the ellipse that intersects with x-axis at 9 and -9 and with y-axis at 3 and -3, \
determine its equation.A. \\frac{{x^2}}{{81}} + \\frac{{y^2}}{{9}} = 1 B. Can not determine.

[Standard Answer]: A
[Model_answer] : \\frac{{x^2}}{{81}} + \\frac{{y^2}}{{9}} = 1
Judgement: 1

[Question]: {question}
[Standard Answer]: {gt}
[Model_answer] : {extraction}
Judgement: """


def sample_id(item: dict) -> str:
    for key in ("sample_index", "pid", "id"):
        if key in item:
            return str(item[key])
    raise ValueError("MathVerse sample without 'sample_index' (or 'pid')")


def extract_prompt(response: str) -> str:
    return EXTRACT_PROMPT + f"Model response: '{response}'\nExtracted Answer: "


def judge_prompt(question: str, answer: str, extraction: str) -> str:
    return JUDGE_PROMPT.replace("{{", "{").replace("}}", "}").replace("{question}", question) \
        .replace("{gt}", answer).replace("{extraction}", extraction)


def llm_extract(judge: ChatJudge, response: str, trunk_words: int | None = None) -> str:
    if trunk_words:
        response = " ".join(response.split()[-trunk_words:])
    reply = judge.ask(extract_prompt(response)).strip()
    return reply.replace("Extracted Answer:", "").strip()


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
        ext = extraction if extraction is not None else strict.extract_final(response)
        return {"extraction": ext, "correct": ext is not None and str(item.get("answer")) == ext,
                "judge_failed": False}
    if mode != "judge":
        raise ValueError(f"MathVerse mode must be 'judge' or 'deterministic', got {mode!r}")
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
