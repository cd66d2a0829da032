"""MathVerse prompts for items without released queries (the public subset) follow the released composition."""

from __future__ import annotations

from pointcopy.eval import data, prompts


def test_composition_reproduces_every_released_query(benchmarks_path):
    bench = data.load_mathverse(benchmarks_path / "mathverse", "testmini_text_only")
    for item in bench.items.values():
        bare = {k: v for k, v in item.items() if k not in ("query_wo", "query_cot")}
        for mode, key in (("wo", "query_wo"), ("cot", "query_cot")):
            assert prompts.mathverse_query(bare, mode) == item[key]


def test_public_subset_items_get_a_prompt(benchmarks_path):
    bench = data.load_mathverse(benchmarks_path / "mathverse", "public_subset")
    mc = next(it for it in bench.items.values() if it["question_type"] == "multi_choice")
    prompt = prompts.mathverse_query(mc, "wo")
    assert prompt.startswith("Please directly answer the question and provide the correct option letter")
    assert "\nChoices:\nA:" in prompt and prompt.endswith(mc["choices"][-1])
    free = next(it for it in bench.items.values() if it["question_type"] == "free_form")
    assert prompts.mathverse_query(free, "cot").endswith("Question: " + free["question"])
