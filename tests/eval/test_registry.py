"""Every registered benchmark spec is complete and consistent on the shared data, and the commands hold no
per-benchmark tables of their own (a fact about a benchmark lives in its spec only)."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from pointcopy.eval import eval_cli, registry, runner, score_cli
from pointcopy.eval.registry import BenchmarkSpec, ScoreOptions

SPECS = list(registry.BENCHMARKS.values())


def _loaded_splits(spec: BenchmarkSpec, benchmarks_path):
    """(split, Benchmark) for every split of the spec whose data is in shared/benchmarks/<name>."""
    out = []
    for split in spec.splits:
        try:
            out.append((split, spec.load(benchmarks_path / spec.name, split)))
        except FileNotFoundError:
            continue  # e.g. MathVerse testmini (5 image versions) and MathVista test are not available offline
    return out


def test_registry_lookup():
    assert registry.names() == tuple(registry.BENCHMARKS) and len(SPECS) >= 3
    for name, spec in registry.BENCHMARKS.items():
        assert registry.get(name) is spec and spec.name == name
    with pytest.raises(ValueError) as exc:
        registry.get("mathvistaa")
    assert all(name in str(exc.value) for name in registry.BENCHMARKS)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec_is_complete(spec: BenchmarkSpec):
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        assert value is not None and value != "" or f.name == "split_help", f"{spec.name}: {f.name} is empty"
    assert spec.title and spec.id_key == spec.prediction_id_keys[0]
    assert spec.splits and len(set(spec.splits)) == len(spec.splits) and spec.default_split == spec.splits[0]
    assert spec.prompt_modes and spec.default_prompt_mode == spec.prompt_modes[0]
    assert "answer" in spec.gold_fields and spec.id_key not in spec.gold_fields
    assert {"correct", "strict_correct"} <= set(spec.item_fields) and "id" not in spec.item_fields
    assert spec.groups and all(callable(g) for g in spec.groups.values())
    for fn in (spec.loader, spec.prompt_builder, spec.score_item, spec.aggregate, spec.describe, spec.uses_judge,
               spec.notes):
        assert callable(fn)
    assert "id-1" in spec.unknown_id("id-1", "some-split")
    opts = ScoreOptions()
    assert isinstance(spec.describe(opts), str) and spec.describe(opts)
    assert isinstance(spec.uses_judge(opts), bool) and spec.uses_judge(opts) is False  # defaults never call an LLM
    assert isinstance(spec.notes(opts), list)
    with pytest.raises(ValueError, match="split must be one of"):
        spec.check_split("no-such-split")
    with pytest.raises(ValueError, match="prompt mode must be one of"):
        spec.check_prompt_mode("no-such-mode")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec_works_on_the_shared_data(spec: BenchmarkSpec, benchmarks_path, evaluator):
    loaded = _loaded_splits(spec, benchmarks_path)
    assert loaded, f"{spec.name}: no split of {spec.splits} loads from {benchmarks_path / spec.name}"
    for split, bench in loaded:
        assert bench.split == split and len(bench) > 0
        # items are keyed by the id a predictions row would carry (the spec's id key, or an accepted alternative)
        bad = [k for k, it in bench.items.items() if spec.row_id(it) != k]
        assert not bad, f"{spec.name} {split}: items not keyed by {spec.prediction_id_keys}: {bad[:5]}"
    split, bench = loaded[0]
    key, item = next(iter(bench.items.items()))
    # every prompt mode builds a prompt for the first item; the default mode is what `spec.prompt` uses
    for mode in spec.prompt_modes:
        text = spec.prompt(item, mode)
        assert isinstance(text, str) and text.strip()
    assert spec.prompt(item) == spec.prompt(item, spec.default_prompt_mode)
    # the per-item scorer returns the documented fields, in order, and agrees with the gold answer
    opts = ScoreOptions()
    for response, want in ((str(item["answer"]), True), ("zzz-not-an-answer", False)):
        row = {"_id": key, spec.id_key: item.get(spec.id_key, key), "response": response}
        scored, mismatch = spec.with_gold(item, row)
        assert mismatch == []
        fields = spec.score_item(scored, row, opts, evaluator, None)
        assert tuple(fields) == spec.item_fields, spec.name
        assert fields["correct"] is want, (spec.name, response, fields)
        assert isinstance(fields["strict_correct"], bool)
    # aggregation gives the official summary layout (a dict) and every breakdown group has a value for the item
    assert isinstance(spec.aggregate([(item, True)]), dict)
    for group in spec.groups.values():
        group(item)
    # a row that carries its own gold answer is recorded, and the benchmark's answer is kept
    forged, mismatch = spec.with_gold(item, {"_id": key, "answer": "forged-gold", "response": "x"})
    assert mismatch == ["answer"] and forged["answer"] == item["answer"]


def test_score_options_are_checked():
    for bad in ({"integer_rule": "floor"}, {"mathverse_mode": "vibes"}, {"math_backend": "eval"}, {"timeout": 0}):
        with pytest.raises(ValueError, match="scoring option"):
            ScoreOptions(**bad)
    with pytest.raises(ValueError, match="cache"):
        ScoreOptions(mathverse_mode="judge").judge()


@pytest.mark.parametrize("module", [eval_cli, runner, score_cli], ids=lambda m: m.__name__)
def test_commands_name_no_benchmark(module):
    """No per-benchmark branch or table in the commands: a benchmark name appears there only in docstrings."""
    tree = ast.parse(inspect.getsource(module))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    names = set(registry.BENCHMARKS)
    hits = [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docstrings
            and isinstance(n.value, str) and n.value in names]
    assert not hits, f"{module.__name__} names benchmarks outside the registry: {hits}"
