"""`pointcopy score <benchmark> PREDICTIONS --data DIR --out OUTDIR`: score an existing predictions file.

Accepted predictions files:
  mathvision  JSON lines with `id` and `response` (our runs; official `outputs/**/<model>.jsonl` also carry
              `model_answer`, from which scoring starts unless --re-extract);
  mathvista   a JSON dict pid -> record (official `results/*/output_*.json`) or JSON lines with `pid` and
              `response`; a stored `extraction` is used as is, otherwise the deterministic fast paths run, then
              the LLM extractor if --llm-extract (else the item has no extraction and scores False);
  mathverse   a JSON list (official submission layout: the sample plus `model_answer` = full response) or JSON
              lines with `sample_index`/`pid` and `response`.
Writes OUTDIR/items.jsonl (one line per item), OUTDIR/summary.json (official layout: MATH-V `_result.json`
strings, MathVista `scores_*.json`; MathVerse per-version metrics; plus a `coverage` entry), OUTDIR/summary_strict.json
and report.md, all atomically (a crash leaves the previous outputs or the new ones) under a lock on OUTDIR.
Never imports torch or transformers.

A score cannot be inflated by the predictions file: an id that appears twice is refused (`--keep-first` scores its
first row and records the dropped ones in `summary.json["coverage"]`); gold fields (`BenchmarkSpec.gold_fields`) come
from the benchmark data only, and a row that carries a different value is recorded as a gold mismatch; `coverage`
says how many of the split's items the predictions cover.

Everything benchmark-specific (loader, id keys, splits, gold fields, per-item scorer, summary layout, breakdowns,
scorer description) comes from the benchmark's spec in `pointcopy.eval.registry`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pointcopy.commands.args import add_dataclass_arguments, dataclass_from_args, existing_file, output_dir
from pointcopy.eval import data, registry, safe_math
from pointcopy.eval.registry import BenchmarkSpec, ScoreOptions
from pointcopy.eval.report import breakdown_counts, render_report


# the scoring options `pointcopy eval` offers (it scores its own generations: nothing stored to re-extract)
EVAL_SCORING_OPTIONS = ("integer_rule", "mathverse_mode", "math_backend", "timeout")


def add_scoring_arguments(p, only=None) -> None:
    """A flag per `ScoreOptions` field (or the fields named in `only`)."""
    add_dataclass_arguments(p, ScoreOptions, only=only)


def add_arguments(p) -> None:
    p.add_argument("benchmark", choices=registry.names())
    p.add_argument("predictions", type=existing_file, help="predictions / official output file")
    p.add_argument("--data", type=Path, required=True, help="benchmark data directory (e.g. shared/benchmarks/"
                   "mathvision)")
    p.add_argument("--out", type=output_dir, required=True, help="output directory")
    p.add_argument("--split", default=None, help=registry.split_help())
    add_scoring_arguments(p)
    p.add_argument("--keep-first", action="store_true", help="an id repeated in the predictions: score its first "
                   "row and record the rest in summary.json (default: refuse the file)")


def options_from_args(args) -> ScoreOptions:
    """`ScoreOptions` from parsed command-line arguments (options a command does not offer take their defaults;
    the judge cache defaults to OUTDIR/judge_cache)."""
    return dataclass_from_args(ScoreOptions, args,
                               judge_cache=getattr(args, "judge_cache", None) or args.out / "judge_cache")


# --------------------------------------------------------------------------------------------- reading
def read_predictions(path: Path, spec: BenchmarkSpec) -> list[dict]:
    """Rows from a JSON dict (keyed by id), JSON list or JSON lines file; each row gets `_id` (the dict key, else
    the first of `spec.prediction_id_keys` the row has)."""
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None  # not one JSON document: JSON lines
    rows: list
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        rows = [dict(v, _id=str(k)) for k, v in obj.items()]
    elif isinstance(obj, list):
        rows = obj
    elif isinstance(obj, dict):
        rows = [obj]  # a one-line JSON lines file
    else:
        rows = data.read_jsonl(path)
    out = []
    for n, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: row {n} is not an object")
        rid = r.get("_id") or spec.row_id(r)
        if rid is None:
            raise ValueError(f"{path}: row {n} has no {' / '.join(spec.prediction_id_keys)} field")
        out.append(dict(r, _id=rid))
    return out


def unique_rows(rows: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """The first row of each `_id`, in file order, and id -> number of further rows dropped."""
    seen: dict[str, dict] = {}
    dropped: dict[str, int] = {}
    for r in rows:
        if r["_id"] in seen:
            dropped[r["_id"]] = dropped.get(r["_id"], 0) + 1
        else:
            seen[r["_id"]] = r
    return list(seen.values()), dropped


def coverage(n_rows: int, n_split: int, n_unscored: int, dropped: dict[str, int], mismatched: int) -> dict:
    """`summary.json["coverage"]`: how much of the split the scored predictions are, and what was set aside."""
    return {"predictions": n_rows, "items_in_split": n_split, "fraction": round(n_rows / n_split, 4) if n_split
            else 0.0, "complete": n_rows == n_split and not n_unscored, "not_scored": n_unscored,
            "duplicate_rows_dropped": sum(dropped.values()), "duplicate_ids": sorted(dropped)[:100],
            "rows_with_gold_mismatch": mismatched}


# --------------------------------------------------------------------------------------------- scoring
def score_rows(spec: BenchmarkSpec, bench: data.Benchmark, preds: list[dict], opts: ScoreOptions,
               ev: safe_math.Evaluator):
    """Score predictions rows (each with `_id`) with the benchmark's per-item scorer. Returns (items, summary,
    strict_summary, groups, errors): items.jsonl rows, the official-layout summaries of the official-compatible and
    strict verdicts, report breakdowns (group -> [(value, official, strict)]) and the rows that could not be
    scored. A row the scorer refuses (ValueError) is recorded as not scored and the others go on."""
    judge = opts.judge() if spec.uses_judge(opts) else None
    items, pairs, strict_pairs, errors = [], [], [], []
    for r in preds:
        rid = r["_id"]
        try:
            base = bench.items.get(rid)
            if base is None:
                raise ValueError(spec.unknown_id(rid, bench.split))
            item, mismatch = spec.with_gold(base, r)
            fields = spec.score_item(item, r, opts, ev, judge)
        except ValueError as exc:
            errors.append({"id": rid, "error": str(exc)})
            items.append({"id": rid, "error": str(exc), "correct": False, "strict_correct": False})
            continue
        pairs.append((item, fields["correct"]))
        strict_pairs.append((item, fields["strict_correct"]))
        items.append({"id": rid, **fields, **({"gold_mismatch": mismatch} if mismatch else {})})
    summary = spec.aggregate(pairs)
    if judge is not None:
        summary["judge"] = {"model": judge.config.model, "base_url": judge.config.base_url,
                            "http_calls": judge.calls, "cache_hits": judge.cache_hits}
    strict_summary = spec.aggregate(strict_pairs)
    groups = {name: [(value(it), c, s) for (it, c), (_, s) in zip(pairs, strict_pairs)]
              for name, value in spec.groups.items()}
    return items, summary, strict_summary, groups, errors


def write_outputs(out, *, benchmark: str, predictions: str, items, summary, strict_summary, groups, errors,
                  profile: dict, notes: list[str], cover: dict) -> tuple[int, int]:
    """items.jsonl, summary.json (official layout + `coverage`), summary_strict.json and report.md, all encoded
    first and then renamed into place; returns the official and strict correct counts. Shared by `pointcopy score`
    and `pointcopy eval`."""
    from pointcopy.files import dumps, write_all_atomic

    n_ok = sum(1 for it in items if it.get("correct"))
    n_strict = sum(1 for it in items if it.get("strict_correct"))
    mismatched = [it["id"] for it in items if it.get("gold_mismatch")]
    if mismatched:
        notes = notes + [f"{len(mismatched)} prediction rows carry gold fields that differ from the benchmark data "
                         f"(ignored; gold comes from the benchmark): {', '.join(mismatched[:20])}"]
    if cover["duplicate_rows_dropped"]:
        notes = notes + [f"{cover['duplicate_rows_dropped']} duplicate rows dropped (first row of each id scored): "
                         f"{', '.join(cover['duplicate_ids'][:20])}"]
    report = render_report(benchmark=benchmark, predictions=predictions, profile={**profile, "coverage": (
                               f"{cover['predictions']}/{cover['items_in_split']} items of the split")},
                           official_correct=n_ok, strict_correct=n_strict, total=len(items),
                           breakdown={k: breakdown_counts(v) for k, v in groups.items()}, errors=errors, notes=notes)
    write_all_atomic({
        out / "items.jsonl": data.jsonl_text(items),
        out / "summary.json": dumps({**summary, "coverage": cover}, indent=4) + "\n",
        out / "summary_strict.json": dumps({**strict_summary, "coverage": cover}, indent=4) + "\n",
        out / "report.md": report,
    })
    return n_ok, n_strict


def run(args) -> int:
    from pointcopy.files import DirLock, LockedError

    try:
        spec = registry.get(args.benchmark)
        opts = options_from_args(args)
        bench = spec.load(args.data, args.split)
        rows = read_predictions(args.predictions, spec)
        if not rows:
            raise ValueError(f"{args.predictions}: no prediction rows (empty file)")
        preds, dropped = unique_rows(rows)
        if dropped and not args.keep_first:
            ids = ", ".join(f"{k} (x{n + 1})" for k, n in list(dropped.items())[:10])
            raise ValueError(f"{args.predictions}: {sum(dropped.values())} rows repeat an id already scored: {ids}"
                             f"{' ...' if len(dropped) > 10 else ''}; refusing (a repeated row would be counted "
                             f"twice); fix the file or pass --keep-first to score the first row of each id")
        lock = DirLock(args.out, "pointcopy score").acquire()
    except (OSError, ValueError, LockedError) as exc:
        print(f"pointcopy score: {exc}", file=sys.stderr)
        return 2
    try:
        return _score(args, spec, opts, bench, preds, dropped)
    finally:
        lock.release()


def _score(args, spec: BenchmarkSpec, opts: ScoreOptions, bench, preds, dropped) -> int:
    if dropped:
        print(f"pointcopy score: WARNING: {sum(dropped.values())} duplicate rows dropped (kept the first row of "
              f"{len(dropped)} ids); recorded in summary.json['coverage']", file=sys.stderr)
    try:
        with opts.evaluator() as ev:
            items, summary, strict_summary, groups, errors = score_rows(spec, bench, preds, opts, ev)
            timeouts = ev.timeouts
    except Exception as exc:  # noqa: BLE001 - judge misconfiguration, missing optional backend: one clear line
        if type(exc).__name__ in ("JudgeError", "ImportError", "ModuleNotFoundError"):
            print(f"pointcopy score: {exc}", file=sys.stderr)
            return 2
        raise
    profile = {"benchmark": spec.name, "split": bench.split, "items in predictions": len(preds),
               "items in split": len(bench), "official-compatible scorer": spec.describe(opts)}
    notes = scoring_notes(spec, opts, n_rows=len(preds), n_split=len(bench), timeouts=timeouts)
    cover = coverage(len(preds), len(bench), len(errors), dropped, sum(1 for it in items if it.get("gold_mismatch")))
    n_ok, n_strict = write_outputs(args.out, benchmark=spec.name, predictions=str(args.predictions),
                                   items=items, summary=summary, strict_summary=strict_summary, groups=groups,
                                   errors=errors, profile=profile, notes=notes, cover=cover)
    print(f"{spec.name}: official-compatible {n_ok}/{len(items)}, strict {n_strict}/{len(items)}, "
          f"{len(errors)} items not scored, coverage {len(preds)}/{len(bench)} -> {args.out}")
    return 0


def scoring_notes(spec: BenchmarkSpec, opts: ScoreOptions, *, n_rows: int, n_split: int, timeouts: int) -> list[str]:
    """Report notes every scored run shares (`pointcopy score` and `pointcopy eval`)."""
    notes = list(spec.notes(opts))
    if n_rows != n_split:
        notes.append(f"predictions cover {n_rows} of {n_split} items; totals are over the predictions")
    if timeouts:
        notes.append(f"{timeouts} math evaluations hit the {opts.timeout:g} s limit and counted as not equal")
    return notes
