"""Safe evaluator (no eval, time limit, official semantics) and the strict profile's bug fixes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from pointcopy.eval import mathvision, safe_math, strict


@pytest.mark.parametrize("text,value", [
    ("\\frac{5}{6}", 5 / 6), ("$3\\sqrt{3}$", 3 * math.sqrt(3)), ("1,187.50", 1187.5), ("$5: 6: 9$", 5 / 6 / 9),
    ("$6\\frac{1}{4}$", 1.5), ("13!", 6227020800), ("$30\\%$", 0.3), ("\\sqrt[3]{8}", 2.0),
    ("17.the area is", 17), ("18\\choose3", 18), ("2^3^2", 64), ("e^2", math.exp(2)), ("0.5", 0.5),
    ("\\lfloor 2.5 \\rfloor", 2), ("(48+48-5)/(2-4.5)", -36.4),
])
def test_official_values_follow_latex2sympy_semantics(text, value):
    v = safe_math.official_value_unguarded(text)
    assert v is not None and round(v, 2) == round(value, 2)


@pytest.mark.parametrize("text", [
    "e",  # sympy prints E, unknown to Python's math module
    "|-3|", "\\lceil 2.5\\rceil", "x", "2ab", "\\infty", "(1,2)", "1,2", "$30 \\%$", "$-\\!2$", "15°", "6π",
    "\\frac12", "(-8)^{1/3}", "1/0", "10^{10^{10}}", "9^{9^{9}}", "100000!",
    "__import__('os').system('echo hacked')", "().__class__.__bases__[0]", "lambda: 1",
])
def test_no_official_value(text):
    assert safe_math.official_value_unguarded(text) is None


@given(st.text(alphabet="0123456789+-*/^(){}[]\\fracsqrtpie.,:!%$ ", max_size=40))
@settings(max_examples=300, deadline=None)
def test_parser_never_crashes(text):
    v = safe_math.official_value_unguarded(text)
    assert v is None or isinstance(v, (int, float))


def test_evaluator_timeout_kills_and_restarts_worker():
    ev = safe_math.Evaluator(timeout_s=1e-4)  # shorter than the worker's start-up: the first request times out
    try:
        assert ev.official_value("\\frac{1}{3}") is None
        assert ev.timeouts == 1 and ev._proc is None  # worker killed
        ev.timeout_s = 30
        assert ev.official_value("\\frac{1}{4}") == 0.25  # a fresh worker answers
        assert ev.official_value("\\frac{1}{3}") is None  # cached outcome of the timed-out call
    finally:
        ev.close()


def test_input_length_cap(evaluator):
    assert evaluator.official_value("1+" * 3000 + "1") is None


def test_is_equal_official_cases(evaluator):
    assert mathvision.is_equal("\\frac{1}{2}", "0.5", evaluator)
    assert mathvision.is_equal("(1,2)", "(1.0, 2)", evaluator)  # eval_tuple: '1.0' is the integer 1 in latex2sympy
    # ...and compares printed roundings: int 2 prints '2', 2.004 rounds to the float 2.0 -> '2.0' (official quirk)
    assert not mathvision.is_equal("(1,2)", "(1,2.004)", evaluator)
    assert not mathvision.is_equal("e", "2.72", evaluator)  # official: NameError on E -> False
    assert not mathvision.is_equal("", "", evaluator)
    assert mathvision.is_equal("11 ", "11", evaluator)


# ---- strict profile: the four known official parser bugs are fixed here (and only here)
def test_official_keeps_greedy_boxed_bug_strict_fixes_it(evaluator):
    resp = "So \\boxed{3}. Wait, actually \\boxed{5}"
    item = {"id": "t", "options": [], "answer": "5"}
    assert mathvision.extract_answer(resp) == "5"  # two boxes -> official keeps the last opening
    one_box = "\\boxed{\\frac{1}{2}} for the set {x}"
    assert mathvision.extract_answer(one_box) != "\\frac{1}{2}"  # greedy regex runs to the last brace
    assert strict.extract_final(one_box) == "\\frac{1}{2}"
    assert strict.mathvision(item, resp, evaluator) == ("5", True)


def test_strict_unwraps_text_box(evaluator):
    item = {"id": "t", "options": ["Sunday", "Monday", "Friday", "Tuesday", "Saturday"], "answer": "A"}
    assert strict.mathvision(item, "\\boxed{\\text{Sunday}}", evaluator)[1]


def test_frac12_without_sqrt(evaluator):
    assert mathvision.extract_answer("\\boxed{\\frac12}") == "\\frac12"  # official: no fix without 'sqrt'
    assert not mathvision.score_item({"id": "t", "options": [], "answer": "1/2"}, "\\frac12", evaluator)
    assert strict.equivalent("\\frac12", "1/2", evaluator)


def test_nth_root(evaluator):
    assert mathvision.extract_answer("\\boxed{\\sqrt[3]{8}}") == "\\sqrt{[}3]{8}"  # official _fix_sqrt bug
    assert not mathvision.score_item({"id": "t", "options": [], "answer": "2"}, "\\sqrt{[}3]{8}", evaluator)
    assert strict.mathvision({"id": "t", "options": [], "answer": "2"}, "\\boxed{\\sqrt[3]{8}}", evaluator)[1]


def test_strict_answer_tag_and_phrase(evaluator):
    assert strict.extract_final("<think>..</think><answer>42</answer>") == "42"
    assert strict.extract_final("Thus the answer is 7.\nDone") == "7"
    assert strict.extract_final("Let me think.\nIt depends on the figure, which I cannot see.") is None
    assert strict.extract_final("x" * 40) is None  # long one-liners are not taken as a direct answer


def test_strict_mathvista(evaluator):
    mc = {"pid": "1", "question_type": "multi_choice", "answer_type": "text", "choices": ["3", "5", "8"],
          "answer": "5"}
    assert strict.mathvista(mc, "\\boxed{B}", evaluator)[2]
    assert strict.mathvista(mc, "\\boxed{5}", evaluator)[2]
    assert not strict.mathvista(mc, "I think it is nice", evaluator)[2]  # no Levenshtein guessing
    lst = {"pid": "2", "question_type": "free_form", "answer_type": "list", "answer": "[1, 2, 3]"}
    assert strict.mathvista(lst, "<answer>[1,2,3]</answer>", evaluator)[2]  # spacing no longer matters
    flt = {"pid": "3", "question_type": "free_form", "answer_type": "float", "precision": 1, "answer": "1.2"}
    assert strict.mathvista(flt, "\\boxed{1.24}", evaluator)[1:] == ("1.2", True)


def test_strict_mathverse_multi_answer_and_units(evaluator):
    assert strict.mathverse({"question_type": "multi-choice", "answer": "A\nC"}, "Answer: A, C", evaluator)[1]
    assert not strict.mathverse({"question_type": "multi-choice", "answer": "A\nC"}, "Answer: A", evaluator)[1]
    assert strict.mathverse({"question_type": "multi-choice", "answer": "(C)"}, "\\boxed{C}", evaluator)[1]
    assert strict.mathverse({"question_type": "free-form", "answer": "2191.7 metres"}, "\\boxed{2191.7}",
                            evaluator)[1]


def test_unicode_digits_do_not_crash_the_worker(evaluator):
    assert safe_math.strict_value_unguarded("2²") is None
    assert evaluator.strict_value("٣") is None and evaluator.official_value("2²") is None
    assert evaluator.timeouts == 0 and evaluator.official_value("\\frac{3}{4}") == 0.75


def test_strict_direct_answer_and_option_text(evaluator):
    item = {"id": "t", "options": ["$20 \\mathrm{~cm}$", "$21 \\mathrm{~cm}$", "3", "4", "5"], "answer": "B"}
    # official compares the normalised extraction with the raw option text, so the exact option text fails there
    assert not mathvision.score_item(item, mathvision.extract_answer("$21 \\mathrm{~cm}$"), evaluator)
    assert strict.mathvision(item, "$21 \\mathrm{~cm}$", evaluator) == ("$21 \\mathrm{~cm}$", True)
    assert strict.mathvision(item, "B", evaluator) == ("B", True)
