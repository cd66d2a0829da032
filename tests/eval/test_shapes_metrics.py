"""Shapes metrics: perfect traces score 1.0; each corruption lowers exactly the field it should."""

from __future__ import annotations

import re

import pytest

from pointcopy.data.shapes.build import item_row, make_item
from pointcopy.data.shapes.traces import variants
from pointcopy.data.shapes.traces import model_text
from pointcopy.eval.shapes import evaluate, extract_answer, format_markdown, normalize_answer, score_item
from pointcopy.geometry import MergedGrid, box_to_cells

ITEMS = [make_item(11, i) for i in range(40)]
ROWS = [item_row(it) for it in ITEMS]
PERFECT_FIELDS = ("answer_accuracy", "pointer_precision", "pointer_recall", "region_iou",
                  "object_count_accuracy", "attribute_accuracy", "step_query_accuracy", "step_objects_accuracy",
                  "step_accuracy", "step_count_accuracy")


def texts(variant: str = "copy") -> dict[str, str]:
    out = {}
    for it in ITEMS:
        text, regs = variants(it.scene, it.question)[variant]
        out[it.id] = model_text(text, regs, it.scene.size)
    return out


def scores_without(result: dict) -> dict:
    return {k: result[k] for k in PERFECT_FIELDS}


def test_perfect_traces_score_one():
    res = evaluate(texts(), ROWS)
    assert all(res[k] == 1.0 for k in PERFECT_FIELDS), scores_without(res)
    assert res["parse_problem_rate"] == 0.0 and res["n"] == 40
    assert res["box_text_iou"] is None  # the copy variant points without box text
    for v in ("coord", "nocopy"):
        r = evaluate(texts(v), ROWS)
        assert r["answer_accuracy"] == r["step_accuracy"] == r["attribute_accuracy"] == 1.0
        assert r["pointer_precision"] is None and r["pointer_recall"] is None and r["region_iou"] is None
        assert (r["box_text_iou"] == 1.0) == (v == "coord")


def _only_lower(corrupted: dict[str, str], *fields: str) -> dict:
    res = evaluate(corrupted, ROWS)
    for k in PERFECT_FIELDS:
        if k in fields:
            assert res[k] < 1.0, (k, res[k])
        else:
            assert res[k] == 1.0, (k, res[k])
    return res


def test_wrong_answer_lowers_answer_accuracy_only():
    t = texts()
    first = ITEMS[0].id
    t[first] = re.sub(r"Answer: \S+$", "Answer: 99", t[first])
    res = _only_lower(t, "answer_accuracy")
    assert res["answer_accuracy"] == pytest.approx(39 / 40)
    assert res["accuracy_by_family"][ITEMS[0].question.family]["accuracy"] < 1.0


def test_pointer_outside_objects_lowers_precision_and_region_iou():
    t = texts()
    it = next(i for i in ITEMS if len(i.scene.objects) <= 5)
    grid = MergedGrid.for_image(it.scene.size)
    occupied = {k for o in it.scene.objects for k in box_to_cells(o.box, it.scene.size, grid)}
    empty = next(k for k in range(grid.num_cells) if k not in occupied)
    t[it.id] = t[it.id].replace("</region>", f"<|copy_{empty}|></region>", 1)  # first object gets a stray pointer
    _only_lower(t, "pointer_precision", "region_iou")


def test_missing_pointers_lower_recall():
    t = texts()
    it = ITEMS[1]
    # Drop the copies of the first object everywhere it is mentioned.
    t[it.id] = re.sub(r"(<obj1><region>)(?:<\|copy_\d+\|>)+", r"\1", t[it.id])
    res = evaluate(t, ROWS)
    assert res["pointer_recall"] < 1.0 and res["pointer_precision"] == 1.0


def test_box_text_and_attributes_and_steps():
    t = texts("coord")
    a = ITEMS[2].id
    t[a] = re.sub(r"<obj1><region>\[[^\]]*\]", "<obj1><region>[0.00, 0.00, 0.05, 0.05]", t[a])
    res = evaluate(t, ROWS)
    assert res["box_text_iou"] < 1.0 and res["answer_accuracy"] == 1.0

    t = texts()
    colour = ITEMS[3].scene.objects[0].color
    t[ITEMS[3].id] = t[ITEMS[3].id].replace(f" {colour} ", " purple " if colour != "purple" else " red ", 1)
    _only_lower(t, "attribute_accuracy")

    t = texts()
    it = next(i for i in ITEMS if i.question.steps[0].objects)
    q = it.question.steps[0].query
    t[it.id] = t[it.id].replace(f"Find: {q} =", "Find: wrong things =", 1)  # the plan line names the steps
    _only_lower(t, "step_query_accuracy", "step_accuracy", "step_count_accuracy")

    t = texts()
    it = next(i for i in ITEMS if i.question.steps[0].objects and len(i.scene.objects) > len(i.question.steps[0].objects))
    missing = next(o.id for o in it.scene.objects if o.id not in it.question.steps[0].objects)
    # Mark a non-matching object "yes" for step 1: its object set changes, nothing else.
    t[it.id] = re.sub(rf"(<obj{missing}><region>[^\n]*?: [a-z =-]*? )no\b", r"\1yes", t[it.id], count=1)
    _only_lower(t, "step_objects_accuracy", "step_accuracy")

    t = texts()
    it = next(i for i in ITEMS if i.question.family in ("count", "subtraction"))
    step_q = re.escape(it.question.steps[0].query)
    t[it.id] = re.sub(rf"^({step_q}): (\d+)\.", lambda m: f"{m.group(1)}: {int(m.group(2)) + 1}.", t[it.id], count=1,
                      flags=re.M)
    _only_lower(t, "step_count_accuracy")


def test_broken_output_is_scored_not_fatal():
    t = texts()
    for k in list(t)[:5]:
        t[k] = t[k][: len(t[k]) // 2]  # generation cut off mid-trace
    t[ITEMS[5].id] = ""
    res = evaluate(t, ROWS)
    assert res["answer_accuracy"] == pytest.approx(34 / 40)
    assert res["answer_missing"] == pytest.approx(6 / 40)


def test_answer_normalisation_and_extraction():
    assert normalize_answer("Ball.") == "sphere" and normalize_answer("a block") == "cube"
    assert normalize_answer("tiny") == "small" and normalize_answer("shiny") == "metal"
    assert normalize_answer("matte") == "rubber" and normalize_answer("three") == "3"
    assert normalize_answer(" 3.0 ") == "3" and normalize_answer("True") == "yes" and normalize_answer("") is None
    assert extract_answer("x\nAnswer: 2\nmore\nAnswer: big") == "large"
    assert extract_answer("no answer line") is None


def test_evaluate_errors_and_markdown():
    t = texts()
    del t[ITEMS[0].id]
    with pytest.raises(ValueError, match=ITEMS[0].id):
        evaluate(t, ROWS)
    res = evaluate(t, ROWS, allow_missing=True)
    assert res["missing"] == 1 and res["n"] == 39
    with pytest.raises(ValueError, match="unknown item ids"):
        evaluate({"nope": "Answer: 1"}, ROWS, allow_missing=True)
    md = format_markdown(res, "copy")
    assert "| answer_accuracy | 1.000 |" in md and "| subtraction |" in md and "| trace tokens |" in md
    one = score_item(texts()[ITEMS[0].id], ROWS[0])
    assert one["correct"] and one["pointers"] == one["pointers_correct"] > 0
