"""MathVerse: built judge prompts equal the official ones byte for byte; the deterministic mode's extraction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pointcopy.eval import mathverse, strict

OFFICIAL = json.loads((Path(__file__).parent / "data" / "mathverse_official_prompts.json").read_text("utf-8"))


def test_official_prompt_record_names_its_source():
    src = OFFICIAL["SOURCE"]
    assert src["repository"] == "https://github.com/ZrrSkywalker/MathVerse"
    assert src["path"] == "evaluation/prompts.py"
    assert src["commit"] == "ac31a9c8b92eb8eed87477ec7bc40b61ce5d9b61" and src["license"] == "MIT"
    assert len(OFFICIAL["cases"]) >= 3


@pytest.mark.parametrize("case", OFFICIAL["cases"], ids=lambda c: repr(c["response"][:20]))
def test_built_prompts_equal_the_official_ones(case):
    assert mathverse.extract_prompt(case["response"]) == case["extract_prompt"]
    assert mathverse.judge_prompt(case["question"], case["answer"], case["extraction"]) == case["judge_prompt"]


def test_prompt_details_that_were_wrong_before():
    p = mathverse.extract_prompt("R")
    assert "\\n" not in p.replace("\\n\\", "")  # demo responses hold real newlines, not backslash-n
    assert "cos(38°)" in p and "\\((-4, 1]\\)" in p and "\\\\(" not in p
    assert p.endswith("7.\n\nModel response: 'R'\nExtracted Answer: ")
    j = mathverse.judge_prompt("Q {x} {gt}", "A", "{extraction}")
    assert j.endswith("[Question]: Q {x} {gt}\n[Standard Answer]: A\n[Model_answer] : {extraction}\nJudgement:")
    assert "B:2√{3}" in j and "{{" not in j and "\\frac{x^2}{81}" in j


class _Judge:
    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def ask(self, prompt, attempt=0):
        self.prompts.append(prompt)
        return self.reply


def test_llm_extract_and_trunk_follow_the_official_script():
    j = _Judge(" Extracted Answer: 14 ")
    assert mathverse.llm_extract(j, "a b\nc  d", trunk_words=2) == "14"
    assert j.prompts[0].endswith("Model response: ' d'\nExtracted Answer: ")  # split(' '): 'c', '', 'd'
    assert mathverse.trunk_response("a b c", -1) == "a b c" and mathverse.trunk_response("a b c", 0) == "a b c"
    assert mathverse.trunk_response("a b\nc", 1) == "b\nc"


def test_deterministic_note_says_it_is_not_the_official_quick_match():
    note = mathverse.DETERMINISTIC_NOTE
    assert "not the official" in note and "--quick_match" in note and "exact" in note


# ------------------------------------------------------------------------- deterministic extraction: endings
MC = {"sample_index": "m", "question_type": "multi-choice"}
FF = {"sample_index": "f", "question_type": "free-form"}

ENDINGS = [  # (response, item, expected extraction)
    ("So the length of the straw, rounded down to the nearest cm, is 14 cm.", FF, "14"),
    ("Therefore, the length of the longest straw would be 14 cm.", FF, "14"),
    ("Rounded down, the straw would be 14", FF, "14"),
    ("Hence the answer is C", MC, "C"),
    ("Therefore, the length is 5√3.", FF, "5√3"),
    ("So the answer should be B.", MC, "B"),
    ("So the answer should be (B).", MC, "(B)"),
    ("Therefore, the correct option is (C) 145°.", MC, "C"),
    ("Thus the correct choice is D: 4√2.", MC, "D"),
    ("After simplifying, the area of the triangle is 24 square units.", FF, "24"),
    ("Thus, the distance d between Ned and Bart is approximately 22.3 meters.", FF, "22.3"),
    ("The perimeter is about 36.5 cm.", FF, "36.5"),
    ("Then the measure of angle BOC is 145°.", FF, "145°"),
    ("Hence the volume of the cylinder is 904.78 cm³.", FF, "904.78 cm³"),
    ("We get r = 6.", FF, "6"),
    ("So, x = 12.5.", FF, "12.5"),
    ("Hence x ≈ 4.47", FF, "4.47"),
    ("The slope of the line equals -3/4.", FF, "-3/4"),
    ("So the value of k is $\\frac{3}{4}$.", FF, "\\frac{3}{4}"),
    ("Therefore, the height is \\(8\\sqrt{3}\\).", FF, "8\\sqrt{3}"),
    ("The length of BC is **7 cm**.", FF, "7"),
    ("Thus, the statement is False.", MC, "False"),
    ("The length of the hypotenuse is:\n\n13", FF, "13"),
    ("Therefore, the answer is:\n\nB", MC, "B"),
    ("Putting it together, the final answer is:\n\n**C**", MC, "C"),
    ("So the result is 2π.", FF, "2π"),
    ("Final answer: 14 cm", FF, "14"),
    ("The answer is 90°", FF, "90°"),
    ("\\boxed{B}", MC, "B"),
    ("A", MC, "A"),
    ("12", FF, "12"),
    ("The radius of the circle is 10 units, so the diameter is 20 units.", FF, "20"),
    ("Therefore, the perimeter of the sector would be approximately 15.71.", FF, "15.71"),
    # no answer-like final statement: nothing is extracted (a judge would say 'null')
    ("This is because the triangle is isosceles.", FF, None),
    ("I cannot determine the length from the information given, since the figure is missing.", FF, None),
    ("Let me think about the problem step by step.\nFirst, we need the radius.", FF, None),
]


@pytest.mark.parametrize("response,item,expected", ENDINGS, ids=[e[0][:30] for e in ENDINGS])
def test_natural_language_endings(response, item, expected):
    assert mathverse.extract_deterministic(response, item) == expected


def test_endings_only_change_mathverse():
    # MATH-V / MathVista strict extraction is unchanged: a final statement is not an answer marker there
    assert strict.extract_final("Therefore, the length of the longest straw would be 14 cm and more.") is None
    assert strict.extract_final("So it is 14 cm.") == "So it is 14 cm"  # short one-liner: direct-answer rule
    assert strict.mathverse_extract("So it is 14 cm.") == "14"


def test_deterministic_scoring_on_official_output_templates(benchmarks_path):
    root = benchmarks_path / "mathverse" / "output_templates"
    rows = []
    for name in ("output_testmini.json", "output_testmini_text_only.json"):
        rows += json.loads((root / name).read_text("utf-8"))
    res = [mathverse.score_item(r, r["model_answer"], "deterministic") for r in rows]
    assert [r["extraction"] for r in res] == ["14", "14", "14", "14", "13", "14"]  # Vision Only really says 13
    assert sum(r["correct"] for r in res) == 5  # was 1 of 6 (only 'Final answer: 14' was found)
