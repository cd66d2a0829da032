"""Benchmark evaluation: loaders, official prompts, official-compatible and strict scorers, judge, reports.

Nothing in this package imports torch or transformers: `pointcopy score` must run on a laptop without them.
"""
