"""Benchmark evaluation: loaders, official prompts, official-compatible and strict scorers, judge, reports.

`registry` holds one `BenchmarkSpec` per benchmark (id keys, splits, prompt modes, loader, prompt builder, gold fields,
per-item scorer, summary layout, breakdowns); `pointcopy eval` (eval_cli, runner) and `pointcopy score` (score_cli)
only use those specs.

Nothing in this package imports torch or transformers: `pointcopy score` must run on a laptop without them.
"""
