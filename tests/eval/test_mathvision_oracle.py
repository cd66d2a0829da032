"""Oracle: reproduce every official MATH-V per-item output file and every string of its `_result.json`.

The only allowed differences are the three documented in EVAL.md §5.1, listed here by (file, id) with reasons.
They are applied in this test only; the scorer has no per-id cases.
"""

from __future__ import annotations

import json

import pytest

from pointcopy.eval import mathvision
from eval_oracle_files import MATHV_FILES

# (file, id) -> reason.  Documented in EVAL.md §5.1.
MODEL_ANSWER_EXCEPTIONS = {
    ("closed-source/Qwen/Qwen-VL-Max-CoT.jsonl", "1787"):
        "extraction drift: stored 'a', the official code today gives 'a)' for response 'A)'; correct is False "
        "either way",
    ("closed-source/Qwen/Qwen-VL-Plus.jsonl", "2394"):
        "extraction drift: stored the option text '\\frac{8}{5}', today's code gives 'b' for response 'B'; "
        "correct is True either way",
}
CORRECT_EXCEPTIONS = {
    ("closed-source/Gemini/Gemini-Pro.jsonl", "3013"):
        "latex2sympy/sympy version effect: gold '\\frac{4}{3}' vs answer '4/3' is True with today's code "
        "(4/3 -> \\frac{4}{3}), stored False",
}


@pytest.fixture(scope="module")
def rescored(mathv_test, mathv_outputs, evaluator):
    """file -> list of (stored row, re-extracted model_answer, recomputed correct)."""
    out = {}
    for name, rows in mathv_outputs.items():
        res = []
        for row in rows:
            item = mathv_test.items[row["id"]]
            ans = mathvision.extract_answer(row["response"])
            res.append((row, ans, mathvision.score_item(item, ans, evaluator)))
        out[name] = res
    return out


@pytest.mark.parametrize("name", MATHV_FILES)
def test_model_answer_matches_official(rescored, name):
    rows = rescored[name]
    assert len(rows) == 3040
    diffs = {(name, row["id"]): (row["model_answer"], ans) for row, ans, _ in rows if ans != row["model_answer"]}
    expected = {k for k in MODEL_ANSWER_EXCEPTIONS if k[0] == name}
    assert set(diffs) == expected, {k: v for k, v in diffs.items() if k not in expected}


@pytest.mark.parametrize("name", MATHV_FILES)
def test_correct_matches_official(rescored, name):
    diffs = {(name, row["id"]) for row, _, c in rescored[name] if c != row["correct"]}
    assert diffs == {k for k in CORRECT_EXCEPTIONS if k[0] == name}


@pytest.mark.parametrize("name", MATHV_FILES)
def test_correct_from_stored_model_answer(mathv_test, mathv_outputs, evaluator, name):
    """Scoring that starts from the stored extraction (what `pointcopy score` does for official files)."""
    diffs = {(name, r["id"]) for r in mathv_outputs[name]
             if mathvision.score_item(mathv_test.items[r["id"]], r["model_answer"], evaluator) != r["correct"]}
    assert diffs == {k for k in CORRECT_EXCEPTIONS if k[0] == name}


@pytest.mark.parametrize("name", MATHV_FILES)
def test_result_json_strings(mathv_root, mathv_test, rescored, name):
    official = json.loads((mathv_root / "outputs" / name.replace(".jsonl", "_result.json")).read_text())
    # documented `correct` exceptions keep their stored flag (the _result.json was written from stored flags)
    rows = [(mathv_test.items[row["id"]], row["correct"] if (name, row["id"]) in CORRECT_EXCEPTIONS else c)
            for row, _, c in rescored[name]]
    ours = mathvision.aggregate(rows)
    assert len(official) == 178
    assert list(ours) == list(official)  # same keys, same (sorted) order
    assert ours == official


def test_result_json_differs_without_exception(mathv_test, rescored):
    """The Gemini-Pro exception is real: aggregating our own flags moves exactly the cells of item 3013."""
    name = "closed-source/Gemini/Gemini-Pro.jsonl"
    ours = mathvision.aggregate((mathv_test.items[r["id"]], c) for r, _, c in rescored[name])
    assert ours["-all"] == "538/3040=17.7%"  # official 537/3040=17.66%


def test_aggregate_format_edge_cases():
    items = [{"subject": "logic", "level": 1}] * 7
    assert mathvision.aggregate((it, False) for it in items)["-all"] == "0/7=0.0%"
    res = mathvision.aggregate([({"subject": "s", "level": 2}, True)] * 295 + [({"subject": "s", "level": 2}, False)]
                               * (3040 - 295))
    assert res["-all"] == "295/3040=9.7%"  # Python float repr, unpadded
    assert set(res) == {"-all", "-level2", "s", "s_level2", "-level2_s"}


@pytest.mark.parametrize("name", ["closed-source/Gemini/Gemini-Pro-CoT.jsonl", "closed-source/Qwen/Qwen-VL-Plus.jsonl"])
def test_optional_latex2sympy2_backend_agrees(mathv_test, mathv_outputs, name):
    """Optional extra `latex2sympy`: the same safe evaluation over latex2sympy2's parse gives the same flags."""
    pytest.importorskip("latex2sympy2")
    from pointcopy.eval import safe_math

    with safe_math.Evaluator(backend="latex2sympy2") as ev:
        diffs = {(name, r["id"]) for r in mathv_outputs[name]
                 if mathvision.score_item(mathv_test.items[r["id"]], r["model_answer"], ev) != r["correct"]}
    assert diffs == {k for k in CORRECT_EXCEPTIONS if k[0] == name}
