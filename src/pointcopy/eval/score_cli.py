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
first row and records the dropped ones in `summary.json["coverage"]`); gold fields (`data.GOLD_FIELDS`) come from the
benchmark data only, and a row that carries a different value is recorded as a gold mismatch; `coverage` says how
many of the split's items the predictions cover.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pointcopy.commands.args import existing_file, output_dir, positive_float
from pointcopy.eval import data, mathverse, mathvision, mathvista, safe_math, strict
from pointcopy.eval.report import breakdown_counts, render_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=data.BENCHMARKS)
    p.add_argument("predictions", type=existing_file, help="predictions / official output file")
    p.add_argument("--data", type=Path, required=True, help="benchmark data directory (e.g. shared/benchmarks/"
                   "mathvision)")
    p.add_argument("--out", type=output_dir, required=True, help="output directory")
    p.add_argument("--split", default=None, help="split (default: test for MATH-V, testmini otherwise; MathVerse: "
                   "testmini | testmini_text_only | public_subset)")
    p.add_argument("--integer-rule", choices=mathvista.INTEGER_RULES, default="current",
                   help="MathVista integer normalisation: current int(float(x)) or legacy int(x)")
    p.add_argument("--re-extract", action="store_true", help="ignore stored extractions and extract again")
    p.add_argument("--quick-extract", action="store_true", help='MathVista: also try `The answer is "x".`')
    p.add_argument("--llm-extract", action="store_true", help="MathVista: LLM extraction for items the fast "
                   "paths cannot extract (uses POINTCOPY_JUDGE_* environment variables)")
    p.add_argument("--mathverse-mode", choices=("deterministic", "judge"), default="deterministic",
                   help="MathVerse: judge-free quick match (default) or the official two-stage LLM judge")
    p.add_argument("--judge-cache", type=Path, default=None, help="judge cache directory (default OUTDIR/"
                   "judge_cache)")
    p.add_argument("--math-backend", choices=("native", "latex2sympy2"), default="native",
                   help="MATH-V numeric parser: own safe parser (default) or latex2sympy2 (optional extra)")
    p.add_argument("--timeout", type=positive_float, default=safe_math.DEFAULT_TIMEOUT_S, help="per-item math time limit, s")
    p.add_argument("--keep-first", action="store_true", help="an id repeated in the predictions: score its first "
                   "row and record the rest in summary.json (default: refuse the file)")


# --------------------------------------------------------------------------------------------- reading
def read_predictions(path: Path, key: str) -> list[dict]:
    """Rows from a JSON dict (keyed by id), JSON list or JSON lines file; each row gets `_id`."""
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
        rid = r.get("_id") or next((str(r[k]) for k in key.split("|") if k in r), None)
        if rid is None:
            raise ValueError(f"{path}: row {n} has no {key.replace('|', ' / ')} field")
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


def with_gold(benchmark: str, base: dict, row: dict) -> tuple[dict, list[str]]:
    """The benchmark item with the row's other fields (official output files carry the item, with the metadata its
    score breakdowns were computed from), gold fields always from `base`; plus the gold fields the row tried to
    change."""
    gold = data.GOLD_FIELDS[benchmark]
    item = {**base, **{k: v for k, v in row.items() if not k.startswith("_") and k not in gold}}
    return item, [k for k in gold if k in row and row[k] != base.get(k)]


def coverage(n_rows: int, n_split: int, n_unscored: int, dropped: dict[str, int], mismatched: int) -> dict:
    """`summary.json["coverage"]`: how much of the split the scored predictions are, and what was set aside."""
    return {"predictions": n_rows, "items_in_split": n_split, "fraction": round(n_rows / n_split, 4) if n_split
            else 0.0, "complete": n_rows == n_split and not n_unscored, "not_scored": n_unscored,
            "duplicate_rows_dropped": sum(dropped.values()), "duplicate_ids": sorted(dropped)[:100],
            "rows_with_gold_mismatch": mismatched}


def _judge(args):
    from pointcopy.eval.judge import ChatJudge, JudgeConfig

    return ChatJudge(JudgeConfig.from_env(), args.judge_cache or args.out / "judge_cache")


# --------------------------------------------------------------------------------------------- per benchmark
def score_mathvision(args, bench, preds, ev):
    items, pairs, strict_pairs, errors = [], [], [], []
    for r in preds:
        rid = r["_id"]
        try:
            base = bench.items.get(rid)
            if base is None:
                raise ValueError(f"MATH-V item {rid!r}: id not in {bench.split}")
            item, mismatch = with_gold("mathvision", base, r)
            response = r.get("response")
            if "model_answer" in r and not args.re_extract:
                answer, source = r["model_answer"], "stored"
            else:
                if not isinstance(response, str):
                    raise ValueError(f"MATH-V item {rid!r}: field 'response' missing or not a string")
                answer, source = mathvision.extract_answer(response), "rules"
            correct = mathvision.score_item(item, answer, ev)
            s_ext, s_ok = strict.mathvision(item, response, ev) if isinstance(response, str) else (None, False)
        except ValueError as exc:
            errors.append({"id": rid, "error": str(exc)})
            items.append({"id": rid, "error": str(exc), "correct": False, "strict_correct": False})
            continue
        pairs.append((item, correct))
        strict_pairs.append((item, s_ok))
        items.append({"id": rid, "model_answer": answer, "extraction_source": source, "correct": correct,
                      "strict_extraction": s_ext, "strict_correct": s_ok, **_mismatch(mismatch)})
    summary = mathvision.aggregate(pairs)
    strict_summary = mathvision.aggregate(strict_pairs)
    groups = {"level": [(it["level"], c, s) for (it, c), (_, s) in zip(pairs, strict_pairs)],
              "subject": [(it["subject"], c, s) for (it, c), (_, s) in zip(pairs, strict_pairs)]}
    return items, summary, strict_summary, groups, errors


def score_mathvista(args, bench, preds, ev):
    judge = _judge(args) if args.llm_extract else None
    items, pairs, strict_pairs, errors = [], [], [], []
    for r in preds:
        rid = r["_id"]
        try:
            base = bench.items.get(rid)
            if base is None:
                raise ValueError(f"MathVista item {rid!r}: pid not in {bench.split}")
            item, mismatch = with_gold("mathvista", base, r)
            response = r.get("response")
            if "extraction" in r and not args.re_extract:
                extraction, source = r["extraction"], "stored"
            else:
                extraction, source = mathvista.extract_answer(item, response, args.quick_extract), "rules"
                if extraction is None and judge is not None:
                    extraction, source = mathvista.llm_extract(judge, item, response), "llm"
            pred, tf = mathvista.score_item(item, extraction, args.integer_rule)
            s_ext, s_pred, s_ok = strict.mathvista(item, response, ev) if isinstance(response, str) else (
                None, None, False)
        except ValueError as exc:
            errors.append({"id": rid, "error": str(exc)})
            items.append({"id": rid, "error": str(exc), "correct": False, "strict_correct": False})
            continue
        pairs.append((item, tf))
        strict_pairs.append((item, s_ok))
        items.append({"id": rid, "extraction": extraction, "extraction_source": source if extraction is not None
                      else "none", "prediction": pred, "correct": tf, "strict_extraction": s_ext,
                      "strict_prediction": s_pred, "strict_correct": s_ok, **_mismatch(mismatch)})
    summary = mathvista.aggregate(pairs)
    strict_summary = mathvista.aggregate(strict_pairs)
    groups = {k: [((it.get("metadata") or {}).get(k), c, s) for (it, c), (_, s) in zip(pairs, strict_pairs)]
              for k in ("task", "category")}
    groups["question_type"] = [(it["question_type"], c, s) for (it, c), (_, s) in zip(pairs, strict_pairs)]
    return items, summary, strict_summary, groups, errors


def score_mathverse(args, bench, preds, ev):
    judge = _judge(args) if args.mathverse_mode == "judge" else None
    items, pairs, strict_pairs, errors = [], [], [], []
    for r in preds:
        rid = r["_id"]
        try:
            base = bench.items.get(rid)
            if base is None:
                raise ValueError(f"MathVerse sample {rid!r}: not in {bench.split}")
            item, mismatch = with_gold("mathverse", base, r)
            response = r.get("response", r.get("model_answer"))
            stored = r.get("extraction") if not args.re_extract else None
            res = mathverse.score_item(item, response, args.mathverse_mode, judge, stored)
            s_ext, s_ok = strict.mathverse(item, response, ev) if isinstance(response, str) else (None, False)
        except ValueError as exc:
            errors.append({"id": rid, "error": str(exc)})
            items.append({"id": rid, "error": str(exc), "correct": False, "strict_correct": False})
            continue
        pairs.append((item, res["correct"]))
        strict_pairs.append((item, s_ok))
        items.append({"id": rid, "extraction": res["extraction"], "correct": res["correct"],
                      "judge_failed": res["judge_failed"], "strict_extraction": s_ext, "strict_correct": s_ok,
                      **_mismatch(mismatch)})
    summary = mathverse.aggregate(pairs)
    if judge is not None:
        summary["judge"] = {"model": judge.config.model, "base_url": judge.config.base_url,
                            "http_calls": judge.calls, "cache_hits": judge.cache_hits}
    strict_summary = mathverse.aggregate(strict_pairs)
    groups = {"problem_version": [(it.get("problem_version") or (it.get("metadata") or {}).get("problem_version"),
                                   c, s) for (it, c), (_, s) in zip(pairs, strict_pairs)]}
    return items, summary, strict_summary, groups, errors


def _mismatch(fields: list[str]) -> dict:
    return {"gold_mismatch": fields} if fields else {}


# ids as predictions files spell them (MathVerse: testmini's sample_index, or the public subset's pid)
_ID_KEYS = {**data.ID_KEYS, "mathverse": "sample_index|pid"}


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
        bench = data.load(args.benchmark, args.data, args.split)
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} is a file, not a directory")
        rows = read_predictions(args.predictions, _ID_KEYS[args.benchmark])
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
        return _score(args, bench, preds, dropped)
    finally:
        lock.release()


def _score(args, bench, preds, dropped) -> int:
    if dropped:
        print(f"pointcopy score: WARNING: {sum(dropped.values())} duplicate rows dropped (kept the first row of "
              f"{len(dropped)} ids); recorded in summary.json['coverage']", file=sys.stderr)
    scorer = {"mathvision": score_mathvision, "mathvista": score_mathvista, "mathverse": score_mathverse}
    try:
        with safe_math.Evaluator(args.timeout, args.math_backend) as ev:
            items, summary, strict_summary, groups, errors = scorer[args.benchmark](args, bench, preds, ev)
            timeouts = ev.timeouts
    except Exception as exc:  # noqa: BLE001 - judge misconfiguration, missing optional backend: one clear line
        if type(exc).__name__ in ("JudgeError", "ImportError", "ModuleNotFoundError"):
            print(f"pointcopy score: {exc}", file=sys.stderr)
            return 2
        raise
    profile = {"benchmark": args.benchmark, "split": bench.split, "items in predictions": len(preds),
               "items in split": len(bench), "official-compatible scorer": {
                   "mathvision": f"MATH-V evaluate.py rules, math backend {args.math_backend}",
                   "mathvista": f"MathVista calculate_score.py rules, integer rule {args.integer_rule}",
                   "mathverse": f"MathVerse two-stage, mode {args.mathverse_mode}"}[args.benchmark]}
    notes = scoring_notes(args, n_rows=len(preds), n_split=len(bench), timeouts=timeouts)
    cover = coverage(len(preds), len(bench), len(errors), dropped, sum(1 for it in items if it.get("gold_mismatch")))
    n_ok, n_strict = write_outputs(args.out, benchmark=args.benchmark, predictions=str(args.predictions),
                                   items=items, summary=summary, strict_summary=strict_summary, groups=groups,
                                   errors=errors, profile=profile, notes=notes, cover=cover)
    print(f"{args.benchmark}: official-compatible {n_ok}/{len(items)}, strict {n_strict}/{len(items)}, "
          f"{len(errors)} items not scored, coverage {len(preds)}/{len(bench)} -> {args.out}")
    return 0


def scoring_notes(args, *, n_rows: int, n_split: int, timeouts: int) -> list[str]:
    """Report notes every scored run shares (`pointcopy score` and `pointcopy eval`)."""
    notes = []
    if args.benchmark == "mathverse" and args.mathverse_mode == "deterministic":
        notes.append(mathverse.DETERMINISTIC_NOTE)
    if n_rows != n_split:
        notes.append(f"predictions cover {n_rows} of {n_split} items; totals are over the predictions")
    if timeouts:
        notes.append(f"{timeouts} math evaluations hit the {args.timeout:g} s limit and counted as not equal")
    return notes
