"""Wall time to score one official MATH-V output file (3,040 items) on one core; target <= 30 s.

Each run starts cold: a fresh `Evaluator` (new math worker process, empty cache), then re-extracts every
`model_answer` from the raw response, decides `correct` with the safe evaluator and builds the `_result.json`
strings. The process (and the worker it spawns) is pinned to a single CPU.

    .venv/bin/python benchmarks/score_speed.py [--file closed-source/Gemini/Gemini-Pro-CoT.jsonl] [--runs 3]

Ends with `figure mathvision_score_seconds <median seconds>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from pointcopy.eval import data, mathvision, safe_math

REPO = Path(__file__).resolve().parents[1]


def benchmarks_dir() -> Path:
    if os.environ.get("POINTCOPY_BENCHMARKS"):
        return Path(os.environ["POINTCOPY_BENCHMARKS"])
    shared = os.environ.get("POINTCOPY_SHARED")
    for cand in ([Path(shared)] if shared else []) + [REPO.parent / "shared", Path("/work/shared")]:
        if (cand / "benchmarks").is_dir():
            return cand / "benchmarks"
    sys.exit("shared/benchmarks not found; set POINTCOPY_BENCHMARKS")


def score_once(bench: data.Benchmark, rows: list[dict]) -> tuple[float, int]:
    t0 = time.perf_counter()
    with safe_math.Evaluator() as ev:
        pairs = []
        for row in rows:
            item = bench.items[row["id"]]
            pairs.append((item, mathvision.score_item(item, mathvision.extract_answer(row["response"]), ev)))
        result = mathvision.aggregate(pairs)
    elapsed = time.perf_counter() - t0
    return elapsed, int(result["-all"].split("/")[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default="closed-source/Gemini/Gemini-Pro-CoT.jsonl",
                    help="output file under mathvision/outputs/ (default: a long-CoT file)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # the worker subprocess inherits this
    root = benchmarks_dir() / "mathvision"
    bench = data.load_mathvision(root, "test")
    rows = data.read_jsonl(root / "outputs" / args.file)
    times = []
    print(f"{'run':>4} {'items':>6} {'correct':>8} {'seconds':>8}")
    for i in range(args.runs):
        t, correct = score_once(bench, rows)
        times.append(t)
        print(f"{i + 1:>4} {len(rows):>6} {correct:>8} {t:>8.2f}")
    med = statistics.median(times)
    print(f"file {args.file}: median {med:.2f} s over {args.runs} cold runs (target <= 30 s)")
    print(f"figure mathvision_score_seconds {med:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
