"""Scoring time is bounded for any model text: every extractor / normaliser entry point on adversarial strings.

A safety test, not a speed benchmark: each call must finish well within `BOUND_S` on a slow, shared machine.
Families cover the known blow-ups (nested quantifiers in the unit-tail regex, quadratic `\\boxed{` rescans,
case-insensitive greedy regexes behind case-sensitive guards, whitespace backtracking, repeated rewrites, ...).
`python tests/eval/test_extraction_time_bound.py FAMILY ENTRY` times one pair (used for the before/after table).
"""

from __future__ import annotations

import random
import re
import sys
import time

import pytest

from pointcopy.eval import mathverse, mathvision, mathvista, safe_math, strict

BOUND_S = 5.0
MB = 1 << 20


def _mixed_case(n: int) -> str:
    rng = random.Random(0)
    words = ["The", "ANSWER", "is", "OXED{", "Boxed{", "answer:", "Final", "cm", "14", "\\TEXT{", "{", "}", "(B)",
             "<Answer>", "is ", "So", "would", "be", "THE ANSWER IS", "\\sqrt", "\\frac", ".", "  ", "\n"]
    out, size = [], 0
    while size < n:
        w = rng.choice(words)
        w = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in w)
        out.append(w + " ")
        size += len(w) + 1
    return "".join(out)[:n]


FAMILIES = {
    "boxed_repeat": lambda: "\\boxed{" * 5000,
    "boxed_repeat_big": lambda: "Let me see. \\boxed{1" * 40000,
    "unclosed_braces": lambda: "\\boxed{" + "{" * 200_000 + "x",
    "text_wrap_nested": lambda: "\\boxed{" + "\\text{" * 20_000 + "x" + "}" * 20_001,
    "answer_tag_unclosed": lambda: "<answer>" * 50_000,
    "digits_unit_words": lambda: "The answer is 14 square centimeters approximately rounded (about)",
    "digits_unit_boxed": lambda: "\\boxed{" + "7" * 40 + " " + "cm " * 30 + "!}",
    "long_digits_units": lambda: "1" * 200_000 + " abcdefghijklmnopqrstuvwxyz" * 2 + "?",
    "answer_is_repeat": lambda: "the answer is " * 40_000,
    "answer_is_newlines": lambda: "The final answer is" + "\n" * 100_000,
    "answer_colon_spaces": lambda: "answer:" + " " * 100_000 + ":" + "\n" * 100_000,
    "quick_answer_repeat": lambda: 'The answer is "' * 40_000,
    "nested_parens": lambda: "(" * 100_000 + "1" + ")" * 100_000,
    "long_tuple": lambda: "(" + ",".join(["1"] * 150_000) + ")",
    "long_tuple_distinct": lambda: "(" + ",".join(f"\\frac{{1}}{{{i}}}" for i in range(1, 20_001)) + ")",
    "mixed_case_1mb": lambda: _mixed_case(MB),
    "oxed_upper_1mb": lambda: "\\boxed{1} " + "\\BOXED{ab" * (MB // 9),
    "spaces_dots": lambda: " ." * 200_000 + " " * 200_000 + "." * 200_000,
    "sqrt_frac_repeat": lambda: "\\boxed{" + "\\sqrt\\frac" * 50_000 + "}",
    "is_repeat_digits": lambda: "is 1" * 100_000,
    "natural_ending_spam": lambda: ("Therefore, the length is " + "5" * 50 + " cm" * 30 + ". ") * 2_000,
    "would_be_spaces": lambda: "so it would be" + " " * 200_000 + "14",
    "long_letters": lambda: "a" * MB,
}

MC_V = {"id": "m", "options": ["1", "2", "3", "4", "5"], "answer": "C"}
FREE_V = {"id": "f", "options": [], "answer": "14"}
MC_VISTA = {"pid": "m", "question_type": "multi_choice", "answer_type": "text", "precision": None,
            "choices": ["145°", "135°", "140°", "150°"], "answer": "140°"}
INT_VISTA = {"pid": "i", "question_type": "free_form", "answer_type": "integer", "choices": None, "answer": "14"}
FLT_VISTA = {"pid": "f", "question_type": "free_form", "answer_type": "float", "choices": None, "answer": "1.4",
             "precision": 1}
LST_VISTA = {"pid": "l", "question_type": "free_form", "answer_type": "list", "choices": None, "answer": "[1, 2]"}
MC_VERSE = {"sample_index": "1", "question_type": "multi-choice", "answer": "C", "question": "q {x}"}
FREE_VERSE = {"sample_index": "2", "question_type": "free-form", "answer": "14 cm", "question": "q"}


def _mv_det(item, s, ev):
    return mathverse.score_item(item, s, "deterministic")


ENTRY_POINTS = {
    "strict.extract_final": lambda s, ev: strict.extract_final(s),
    "strict.last_boxed": lambda s, ev: strict.last_boxed(s),
    "strict.normalize": lambda s, ev: strict.normalize(s),
    "strict.option_letter": lambda s, ev: strict.option_letter(s),
    "strict.equivalent": lambda s, ev: strict.equivalent(s, "14", ev),
    "strict._strip_unit": lambda s, ev: strict._strip_unit(s),
    "strict.mathverse_letters": lambda s, ev: strict.mathverse_letters(s),
    "strict.mathvision[mc]": lambda s, ev: strict.mathvision(MC_V, s, ev),
    "strict.mathvision[free]": lambda s, ev: strict.mathvision(FREE_V, s, ev),
    "strict.mathvista[mc]": lambda s, ev: strict.mathvista(MC_VISTA, s, ev),
    "strict.mathvista[int]": lambda s, ev: strict.mathvista(INT_VISTA, s, ev),
    "strict.mathvista[float]": lambda s, ev: strict.mathvista(FLT_VISTA, s, ev),
    "strict.mathvista[list]": lambda s, ev: strict.mathvista(LST_VISTA, s, ev),
    "strict.mathverse[mc]": lambda s, ev: strict.mathverse(MC_VERSE, s, ev),
    "strict.mathverse[free]": lambda s, ev: strict.mathverse(FREE_VERSE, s, ev),
    "mathvision.extract_answer": lambda s, ev: mathvision.extract_answer(s),
    "mathvision.find_math_answer": lambda s, ev: mathvision.find_math_answer(s),
    "mathvision.score_item[mc]": lambda s, ev: mathvision.score_item(MC_V, mathvision.extract_answer(s), ev),
    "mathvision.score_item[raw]": lambda s, ev: mathvision.score_item(FREE_V, s, ev),
    "mathvista.extract_answer[mc]": lambda s, ev: mathvista.extract_answer(MC_VISTA, s, quick_extract=True),
    "mathvista.extract_answer[int]": lambda s, ev: mathvista.extract_answer(INT_VISTA, s, quick_extract=True),
    "mathvista.extract_answer[float]": lambda s, ev: mathvista.extract_answer(FLT_VISTA, s, quick_extract=True),
    "mathvista.score_item[mc]": lambda s, ev: mathvista.score_item(MC_VISTA, s),
    "mathvista.score_item[int]": lambda s, ev: mathvista.score_item(INT_VISTA, s),
    "mathvista.score_item[int,legacy]": lambda s, ev: mathvista.score_item(INT_VISTA, s, "legacy"),
    "mathvista.score_item[float]": lambda s, ev: mathvista.score_item(FLT_VISTA, s),
    "mathvista.score_item[list]": lambda s, ev: mathvista.score_item(LST_VISTA, s),
    "mathverse.score_item[det,mc]": lambda s, ev: _mv_det(MC_VERSE, s, ev),
    "mathverse.score_item[det,free]": lambda s, ev: _mv_det(FREE_VERSE, s, ev),
    "mathverse.extract_deterministic": lambda s, ev: mathverse.extract_deterministic(s, MC_VERSE),
    "mathverse.prompts": lambda s, ev: (mathverse.extract_prompt(s), mathverse.judge_prompt(s, "C", s)),
    "safe_math.parse": lambda s, ev: safe_math.official_value_unguarded(s[:safe_math.MAX_INPUT_CHARS]),
    "safe_math.strict_parse": lambda s, ev: safe_math.strict_value_unguarded(s[:safe_math.MAX_INPUT_CHARS]),
    "safe_math.Evaluator": lambda s, ev: (ev.official_value(s), ev.strict_value(s),
                                          ev.official_value(s[:safe_math.MAX_INPUT_CHARS])),
}


@pytest.fixture(scope="module")
def fast_evaluator():
    # the worker's time limit bounds every step that is not linear in-process (sympy evaluation)
    ev = safe_math.Evaluator(timeout_s=1.0)
    yield ev
    ev.close()


@pytest.fixture(scope="module")
def texts():
    return {name: make() for name, make in FAMILIES.items()}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_is_time_bounded(entry, texts, fast_evaluator):
    fn = ENTRY_POINTS[entry]
    slow = []
    for family, s in texts.items():
        t0 = time.perf_counter()
        fn(s, fast_evaluator)
        dt = time.perf_counter() - t0
        if dt > BOUND_S:
            slow.append(f"{family}: {dt:.1f} s")
    assert not slow, f"{entry} too slow on: {', '.join(slow)}"


def _time_one(family: str, entry: str) -> None:
    s = FAMILIES[family]()
    with safe_math.Evaluator(timeout_s=1.0) as ev:
        fn = ENTRY_POINTS[entry]
        t0 = time.perf_counter()
        try:
            fn(s, ev)
        except AttributeError as exc:  # entry point absent in an older version
            print(f"{family}\t{entry}\tmissing ({exc})")
            return
        print(f"{family}\t{entry}\t{time.perf_counter() - t0:.3f}")



# ------------------------------------------------------------- the single-pass rewrites return what the old code did
_OLD_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_OLD_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*[:]?\s*(.+)", re.I)
_OLD_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_OLD_UNIT_TAIL = re.compile(r"^(.*?\d)\s*(?:[a-z°掳]+\.?\s*)+$", re.I)
_OLD_BOXED_GREEDY = re.compile(r"oxed{(.*)}", flags=re.S)
_OLD_QUICK = re.compile(r'The answer is "(.*)"\.')


def _old_last_boxed(text):
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start:i - 1]
    return None


def _old_unwrap(s):
    prev = None
    while prev != s:
        prev, s = s, _OLD_TEXT_WRAP.sub(r"\1", s)
    return s


def _random_texts(pieces, n, max_len, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


def test_rewrites_match_the_old_patterns_on_short_random_texts():
    # short texts only: the old patterns are exponential / quadratic on long ones
    for t in _random_texts(["<answer>", "</answer>", "<ANSWER>", "x", "\n", " ", "answer", " is", ":", "ſ",
                            "final answer", "Answer:", "\t", "\\boxed{", "{", "}", "\\fbox {"], 6000, 12, 1):
        assert strict._answer_tags(t) == _OLD_TAG.findall(t), t
        assert strict._answer_phrases(t) == _OLD_PHRASE.findall(t), t
        assert strict.last_boxed(t) == _old_last_boxed(t), t
    for t in _random_texts(["\\text", "\\te", "xt", "{", "}", "a", "\\mbox", "bf", "\\textbf", "\\", "t", "ext",
                            "\\mathrm", " "], 6000, 16, 2):
        assert strict._unwrap_text_macros(t) == _old_unwrap(t) == strict._unwrap_reduce(t), t
    for t in _random_texts(["1", "2", " ", "a", "B", ".", "°", "掳", "\n", "cm", "!", "\t", "ſ", "K", "٣", "x."],
                           6000, 9, 3):
        m = _OLD_UNIT_TAIL.match(t.strip())
        assert strict._strip_unit(t) == (m.group(1) if m else t), t
    for t in _random_texts(["oxed{", "}", "{", "a", "\n", "o", "xed{"], 6000, 10, 4):
        found = _OLD_BOXED_GREEDY.findall(t)
        assert mathvision._greedy_boxed(t) == (found[-1] if found else t), t
    for t in _random_texts(['The answer is "', '"', ".", '".', "x", "\n", " "], 6000, 10, 5):
        m = _OLD_QUICK.search(t)
        assert mathvista._quick_extract(t) == (m.group(1) if m else None), t


def test_bit_parallel_levenshtein_equals_the_dp():
    rng = random.Random(6)
    for _ in range(1500):
        alphabet = rng.choice(["ab", "abc°", "xyzé😀", "a"])
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        long_, short = (a, b) if len(a) >= len(b) else (b, a)
        assert mathvista._levenshtein_bits(long_, short) == mathvista.levenshtein(a, b)  # the DP path
    assert mathvista.levenshtein("a" * MB + "b", "bab") == MB - 1


if __name__ == "__main__":
    _time_one(sys.argv[1], sys.argv[2])
