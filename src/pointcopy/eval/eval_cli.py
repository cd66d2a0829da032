"""`pointcopy eval <benchmark> --model PATH_OR_ID --data DIR --out OUTDIR`: generate, then score.

Generation (`eval.runner`) appends to OUTDIR/predictions.jsonl and resumes after any interruption; settings are
recorded in OUTDIR/run.json and a rerun with different settings is refused. Scoring then runs over every line of
predictions.jsonl with `pointcopy score`'s scoring (the benchmark's spec in `eval.registry`) and writes
OUTDIR/items.jsonl, summary.json, summary_strict.json and report.md; items recorded with a generation error (missing
or unreadable image) appear in items.jsonl and the report as not scored, like rows `pointcopy score` cannot score.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from pointcopy.commands.args import nonnegative_int, output_dir, positive_int
from pointcopy.decoding import DecodingOptions, add_decoding_arguments, decoding_from_args
from pointcopy.eval import data, registry, runner, score_cli
from pointcopy.eval.registry import BenchmarkSpec
from pointcopy.ranks import add_rank_timeout_argument


def add_arguments(p) -> None:
    p.add_argument("benchmark", choices=registry.names())
    p.add_argument("--model", required=True, help="checkpoint directory or hub id (pointcopy, official v1, or base "
                   "Qwen2.5-VL, which is converted; a plain Qwen2.5-VL with --baseline-qwen)")
    p.add_argument("--data", type=Path, required=True, help="benchmark data directory (e.g. shared/benchmarks/"
                   "mathvision)")
    p.add_argument("--out", type=output_dir, required=True, help="output directory (resumed if it holds this run)")
    p.add_argument("--split", default=None, help=registry.split_help())
    p.add_argument("--limit", type=nonnegative_int, default=None, help="only the first N items of the split")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--prompt", default=None, help=registry.prompt_help())
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--baseline-qwen", action="store_true", help="run a plain transformers Qwen2.5-VL")
    kind.add_argument("--no-pointing", action="store_true", help="load the pointcopy model with pointing disabled")
    p.add_argument("--dtype", choices=runner.DTYPES, default=None, help="model dtype (default auto: the "
                   "checkpoint's; --preset official: float16 on CUDA)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--engine", choices=runner.ENGINES, default="transformers",
                   help="generate with transformers (default) or vLLM (run from .venv-vllm, made by "
                        "scripts/setup_vllm; --batch-size requests run concurrently)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-score", action="store_true", help="generate only")
    add_rank_timeout_argument(p)
    add_decoding_arguments(p, max_new_tokens=1024)
    score_cli.add_scoring_arguments(p, only=score_cli.EVAL_SCORING_OPTIONS)  # as in `pointcopy score`


def _settings(args, split: str, prompt: str, kind: str, decoding: DecodingOptions) -> dict:
    """What determines the predictions: a resume must match all of it (`runner.check_run_json`)."""
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    return {"benchmark": args.benchmark, "split": split, "model": model, "model_kind": kind, "prompt": prompt,
            "suffix": decoding.suffix, "max_new_tokens": decoding.max_new_tokens, "dtype": decoding.dtype,
            **decoding.settings()}


def _info(args, model, device: str) -> dict:
    """Recorded for the reader, not compared on resume (batch size, device and engine may change)."""
    import torch
    import transformers

    import pointcopy

    versions = {"pointcopy": getattr(pointcopy, "__version__", None), "torch": torch.__version__,
                "transformers": transformers.__version__, "python": platform.python_version()}
    engine = getattr(args, "engine", "transformers")
    if engine == "vllm":
        import vllm

        versions["vllm"] = vllm.__version__
        generation_config = {"eos_token_id": model.eos_token_id}
    else:
        generation_config = model.generation_config.to_diff_dict()
    return {"batch_size": args.batch_size, "device": device, "limit": args.limit, "data": str(args.data.resolve()),
            "engine": engine, "generation_config": generation_config, "command": sys.argv, "versions": versions}


def score_run(args, spec: BenchmarkSpec, bench: data.Benchmark, rows: list[dict]) -> tuple[int, int, int]:
    """Score predictions rows with `pointcopy score`'s scoring; rows carrying a generation error are reported as
    not scored. Returns (official correct, strict correct, items)."""
    key = spec.id_key
    generated = [dict(r, _id=str(r[key])) for r in rows if not r.get("error")]
    failed = [r for r in rows if r.get("error")]
    opts = score_cli.options_from_args(args)
    with opts.evaluator() as ev:
        items, summary, strict_summary, groups, errors = score_cli.score_rows(spec, bench, generated, opts, ev)
        timeouts = ev.timeouts
    for r in failed:
        rid = str(r[key])
        items.append({"id": rid, "error": r["error"], "correct": False, "strict_correct": False})
        errors.append({"id": rid, "error": r["error"]})
    order = {k: n for n, k in enumerate(bench.items)}
    items.sort(key=lambda it: order.get(it["id"], len(order)))
    errors.sort(key=lambda e: order.get(e["id"], len(order)))
    settings = json.loads((args.out / runner.RUN_JSON).read_text(encoding="utf-8"))["settings"]
    profile = {**settings, "items in predictions": len(rows), "items in split": len(bench),
               "generation errors": len(failed), "official-compatible scorer": spec.describe(opts)}
    notes = score_cli.scoring_notes(spec, opts, n_rows=len(rows), n_split=len(bench), timeouts=timeouts)
    if failed:
        notes.append(f"{len(failed)} items were not generated (missing or unreadable image); they count as not "
                     f"scored, and the official-format summary.json covers only the {len(generated)} generated items")
    cover = score_cli.coverage(len(rows), len(bench), len(errors), {},
                               sum(1 for it in items if it.get("gold_mismatch")))
    n_ok, n_strict = score_cli.write_outputs(args.out, benchmark=spec.name,
                                             predictions=str(args.out / runner.PREDICTIONS), items=items,
                                             summary=summary, strict_summary=strict_summary, groups=groups,
                                             errors=errors, profile=profile, notes=notes, cover=cover)
    return n_ok, n_strict, len(items)


def run(args) -> int:
    import torch

    from pointcopy.files import DirLock, LockedError
    from pointcopy.ranks import local_device, rank_and_world

    kind = "baseline-qwen" if args.baseline_qwen else "pointcopy-no-pointing" if args.no_pointing else "pointcopy"
    ranks = rank_and_world()
    device = args.device or (local_device() if ranks is not None else "cuda" if torch.cuda.is_available() else "cpu")
    lock = None
    try:
        spec = registry.get(args.benchmark)
        score_cli.options_from_args(args)  # refuse bad scoring options before generating
        bench = spec.load(args.data, args.split)
        prompt = spec.check_prompt_mode(args.prompt)  # --prompt, or the benchmark's default
        if args.limit is not None and args.limit < 0:
            raise ValueError(f"--limit must be >= 0, got {args.limit}")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        decoding = decoding_from_args(args, device=device)
        settings = _settings(args, bench.split, prompt, kind, decoding)
        if ranks is not None and args.engine == "vllm":
            raise ValueError("--engine vllm runs one engine per command (vLLM batches the requests itself); start "
                             "it without torchrun, or run one eval per GPU with --limit/--split")
        if ranks is not None:  # under torchrun / accelerate launch: this rank's batches, then rank 0 merges
            return _run_rank(args, spec, bench, prompt, settings, kind, ranks, decoding, device)
        # one run per directory: a second `pointcopy eval` into it would interleave its lines with ours
        lock = DirLock(args.out, "pointcopy eval").acquire()
        # refuse a mismatched directory before spending minutes loading a model
        if (args.out / runner.RUN_JSON).is_file():
            runner.check_run_json(args.out, settings, {})
        if args.engine == "vllm":
            model, processor = runner.load_engine(args.model, kind, decoding.dtype or "auto", args.batch_size)
        else:
            model, processor = runner.load_model(args.model, kind, decoding.dtype, device)
        resuming = runner.check_run_json(args.out, settings, _info(args, model, device))
    except (OSError, ValueError, LockedError) as exc:
        if lock is not None:
            lock.release()
        print(f"pointcopy eval: {exc}", file=sys.stderr)
        return 2
    try:
        return _generate_and_score(args, spec, bench, model, processor, prompt, decoding, resuming)
    finally:
        lock.release()


RANKS_DIR = "ranks"


def _run_rank(args, spec: BenchmarkSpec, bench, prompt, settings, kind, ranks, decoding, device) -> int:
    """One rank of a multi-process eval. Batches are cut from the items in benchmark order and dealt round-robin
    (`runner.run_generation(shard=...)`), so every batch is the one a single process forms; each rank appends to
    OUT/ranks/R-of-N/predictions.jsonl (resumable, under its own lock); rank 0 waits until every item is in some
    rank's file, writes OUT/predictions.jsonl in benchmark order and scores it as a one-process run would."""
    from pointcopy.files import DirLock, dumps, write_atomic
    from pointcopy.ranks import wait_for_items

    rank, world = ranks
    item_ids = list(bench.items)[: args.limit]
    items = {k: bench.items[k] for k in item_ids}
    rank_dir = args.out / RANKS_DIR / f"{rank}-of-{world}"
    rank_dir.mkdir(parents=True, exist_ok=True)
    with DirLock(rank_dir, f"pointcopy eval rank {rank}"):
        if (rank_dir / runner.RUN_JSON).is_file():
            runner.check_run_json(rank_dir, settings, {})
        model, processor = runner.load_model(args.model, kind, decoding.dtype, device)
        runner.check_run_json(rank_dir, settings, _info(args, model, device))
        stats = runner.run_generation(model, processor, spec, items, rank_dir, prompt_mode=prompt,
                                      batch_size=args.batch_size, progress=not args.no_progress and rank == 0,
                                      shard=(rank, world), decoding=decoding)
    print(f"rank {rank}/{world}: generated {stats.generated} items in {stats.seconds:.1f} s, {stats.skipped} "
          f"already done", file=sys.stderr)
    if rank != 0:
        return 0
    logs = [runner.PredictionLog(args.out / RANKS_DIR / f"{k}-of-{world}" / runner.PREDICTIONS, spec.id_key)
            for k in range(world)]

    def read() -> dict[str, dict]:  # the other ranks' files grow as they go: read without truncating
        rows: dict[str, dict] = {}
        for log in logs:
            rows.update(log.load(read_only=True))
        return rows

    rows, missing = wait_for_items(read, item_ids, args.rank_timeout)
    if missing:
        print(f"pointcopy eval: {len(missing)} items never appeared in the ranks' files (first: {missing[:3]}); "
              f"rerun the same command to finish them", file=sys.stderr)
        return 2
    with DirLock(args.out, "pointcopy eval (rank 0 merge)"):
        resuming = runner.check_run_json(args.out, settings, {**_info(args, model, device), "ranks": world})
        write_atomic(args.out / runner.PREDICTIONS, "".join(dumps(rows[k]) + "\n" for k in item_ids))
        return _score(args, spec, bench, f" ({world} ranks{', resumed' if resuming else ''})")


def _generate_and_score(args, spec: BenchmarkSpec, bench, model, processor, prompt, decoding, resuming) -> int:
    item_ids = list(bench.items)[: args.limit]
    items = {k: bench.items[k] for k in item_ids}
    generator = model.generate if args.engine == "vllm" else None  # PointCopyEngine.generate
    try:
        stats = runner.run_generation(model, processor, spec, items, args.out, prompt_mode=prompt,
                                      batch_size=args.batch_size, progress=not args.no_progress, decoding=decoding,
                                      generator=generator)
    finally:
        if generator is not None:
            model.close()
    print(f"generated {stats.generated} items in {stats.seconds:.1f} s ({stats.items_per_second:.2f} items/s), "
          f"{stats.errors} recorded with errors, {stats.skipped} already done" + (" (resumed)" if resuming else ""),
          file=sys.stderr)
    return _score(args, spec, bench)


def _score(args, spec: BenchmarkSpec, bench, note: str = "") -> int:
    """Score OUT/predictions.jsonl (unless --no-score) and print the one-line summary."""
    if args.no_score:
        return 0
    rows = list(runner.PredictionLog(args.out / runner.PREDICTIONS, spec.id_key).load().values())
    n_ok, n_strict, n = score_run(args, spec, bench, rows)
    print(f"{spec.name}: official-compatible {n_ok}/{n}, strict {n_strict}/{n}, coverage {len(rows)}/"
          f"{len(bench)}{note} -> {args.out}")
    return 0
