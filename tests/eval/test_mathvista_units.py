"""Unit tests for MathVista normalisation rules (EVAL.md §5.2 'extra unit tests')."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from pointcopy.eval import mathvista

MC = {"pid": "x", "question_type": "multi_choice", "answer_type": "text", "choices": ["145°", "135°", "140°"],
      "answer": "140°", "precision": None}
INT = {"pid": "i", "question_type": "free_form", "answer_type": "integer", "choices": None, "answer": "7"}
FLT = {"pid": "f", "question_type": "free_form", "answer_type": "float", "choices": None, "answer": "1.2",
       "precision": 1}
LST = {"pid": "l", "question_type": "free_form", "answer_type": "list", "choices": None, "answer": "[1, 2, 3]"}


def test_letter_and_parenthesised_letter():
    assert mathvista.normalize_extracted_answer(MC, "C") == "140°"
    assert mathvista.normalize_extracted_answer(MC, "The answer is (c) 140") == "140°"  # first (x), upper-cased
    assert mathvista.normalize_extracted_answer(MC, " B ") == "135°"


def test_levenshtein_fallback_and_ties():
    assert mathvista.normalize_extracted_answer(MC, "136°") == "135°"
    # D is not an option of a 3-choice item: Levenshtein over texts; all at distance 4 -> the first choice
    assert mathvista.normalize_extracted_answer(MC, "D") == "145°"
    dup = dict(MC, choices=["yes", "no", "yes"], answer="yes")  # duplicate choice texts (pids 587/740/781)
    assert mathvista.normalize_extracted_answer(dup, "C") == "yes"
    assert mathvista.normalize_extracted_answer(dup, "yes!") == "yes"


def test_integer_rules():
    assert mathvista.normalize_extracted_answer(INT, "7.026") == "7"  # current truncates
    assert mathvista.normalize_extracted_answer(INT, "5.0") == "5"
    assert mathvista.normalize_extracted_answer(INT, "7.026", "legacy") is None
    assert mathvista.normalize_extracted_answer(INT, "-3", "legacy") == "-3"
    assert mathvista.normalize_extracted_answer(INT, "seven") is None
    with pytest.raises(ValueError, match="integer_rule"):
        mathvista.normalize_extracted_answer(INT, "7", "other")


def test_float_precision_cast():
    assert mathvista.normalize_extracted_answer(FLT, "1.24") == "1.2"
    assert mathvista.normalize_extracted_answer(dict(FLT, precision=2.0), "1.236") == "1.24"  # float precision
    assert mathvista.normalize_extracted_answer(FLT, "abc") is None


def test_list_is_exact_string():
    assert mathvista.score_item(LST, "[1, 2, 3]") == ("[1, 2, 3]", True)
    assert mathvista.score_item(LST, "[1,2,3]") == ("[1,2,3]", False)  # spacing matters


def test_fast_path_extraction():
    assert mathvista.extract_answer(INT, "12") == "12"
    assert mathvista.extract_answer(FLT, "1.25") == "1.25"
    assert mathvista.extract_answer(MC, "135°") == "135°"
    assert mathvista.extract_answer(INT, "") == ""
    assert mathvista.extract_answer(INT, "The answer is 12") is None  # needs an LLM (or strict mode)
    assert mathvista.extract_answer(INT, 'The answer is "12".', quick_extract=True) == "12"
    with pytest.raises(ValueError, match="'i'.*response"):
        mathvista.extract_answer(INT, 12)


def test_missing_extraction_scores_false():
    assert mathvista.score_item(MC, None) == (None, False)


def _ref_lev(a, b):
    if not a:
        return len(b)
    if not b:
        return len(a)
    return min(_ref_lev(a[1:], b) + 1, _ref_lev(a, b[1:]) + 1, _ref_lev(a[1:], b[1:]) + (a[0] != b[0]))


@given(st.text("abc", max_size=6), st.text("abc", max_size=6))
def test_levenshtein_matches_recursive_definition(a, b):
    assert mathvista.levenshtein(a, b) == _ref_lev(a, b)


def test_aggregate_skills_count_once_per_skill():
    items = [{"question_type": "free_form", "answer_type": "integer",
              "metadata": {"language": "english", "source": "s", "category": "c", "task": "t", "context": "x",
                           "grade": "g", "skills": ["arithmetic reasoning", "algebraic reasoning"]}}] * 3
    res = mathvista.aggregate(zip(items, [True, False, False]))
    assert res["average"] == {"accuracy": "33.33", "correct": 1, "total": 3}
    assert res["skills"]["algebraic reasoning"] == {"accuracy": "33.33", "correct": 1, "total": 3}
    assert res["question_type"]["free_form"]["accuracy"] == "33.33"
    res = mathvista.aggregate(zip(items * 2 + items[:1] * 4, [True] * 3 + [False] * 7))
    assert res["average"]["accuracy"] == "30.0" and res["answer_type"]["integer"]["accuracy"] == "30.00"
