"""Benchmark generation runner: items -> prompts + images -> batched generation -> `predictions.jsonl`.

Decoding: greedy by default; `run_generation(decoding=...)` takes the commands' `decoding.DecodingOptions`.

    OUTDIR/run.json           settings that determine the predictions (compared on resume) + informational fields
    OUTDIR/predictions.jsonl  one line per item, appended, flushed and fsync'd after every batch

Crash safety: a batch's lines go out in one write, then flush + fsync. After `kill -9` the file holds whole lines
plus at most one torn tail line; `PredictionLog.load` drops that tail (and truncates the file to the last good
newline, so the next append starts a fresh line), and the run continues with the ids not yet present. Items are
processed in benchmark order, so a resumed run forms the same batches as an uninterrupted one whenever it was
killed between batches (the only place a kill leaves whole lines behind in practice).

Items whose image is missing or unreadable get a line with `error` and `response: null` and are not generated;
they count as done (a resume does not retry them).

Row layout: the benchmark's own id key (`BenchmarkSpec.id_key`: `id` MATH-V, `pid` MathVista, `sample_index`
MathVerse, what `pointcopy score` reads), `prompt` (question text sent, from `BenchmarkSpec.prompt`, suffix included),
`response` (pointers as `<|copy_k|>`, trailing end-of-turn token removed), `finished` (stopped at end-of-turn rather
than the token limit), `n_tokens`, `n_copies`, `copied_cells` ([image, row, col] per pointer), `batch_seconds` (wall
time of the item's batch) and `batch_size` (items generated in it).
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointcopy.eval import registry
from pointcopy.eval.registry import BenchmarkSpec
from pointcopy.files import dumps, write_atomic

MODEL_KINDS = ("pointcopy", "pointcopy-no-pointing", "baseline-qwen")
PREDICTIONS = "predictions.jsonl"
RUN_JSON = "run.json"


class RunMismatch(ValueError):
    """OUTDIR holds a run made with different settings (resuming into it would mix two runs)."""


# --------------------------------------------------------------------------------------------- images
def load_images(item: dict, item_id: str) -> list:
    """The item's images as RGB PIL images ([] for a text-only item); ValueError naming id and field otherwise."""
    from PIL import Image

    from pointcopy.images import open_rgb

    if item.get("image_bytes"):
        source, what = io.BytesIO(item["image_bytes"]), "field 'image_bytes'"
    elif item.get("image_path"):
        source, what = item["image_path"], f"field 'image' ({item['image_path']})"
        if item.get("image_missing") or not os.path.isfile(source):
            raise ValueError(f"item {item_id!r}: image missing: {what} is not on disk")
    elif item.get("image"):
        raise ValueError(f"item {item_id!r}: image missing: field 'image' ({item['image']!r}) was not resolved")
    else:
        return []
    try:
        return [open_rgb(source)]  # decodes the pixels: a truncated file fails here, not in the batch
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"item {item_id!r}: image unreadable: {what}: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------------------------- run.json
def legacy_settings(run: dict) -> dict:
    """Settings an older run.json did not record, as that run had them: it decoded greedily with the checkpoint's
    generation_config, so its repetition penalty is the one recorded there (1.0 when none). A resume with equal
    values is allowed."""
    generation_config = (run.get("info") or {}).get("generation_config") or {}
    return {"repetition_penalty": generation_config.get("repetition_penalty", 1.0)}


def check_run_json(out_dir: Path, settings: dict, info: dict) -> bool:
    """Write run.json for a new run, or verify an existing one; True when resuming. Raises RunMismatch."""
    path = out_dir / RUN_JSON
    if path.is_file():
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
            old = {**legacy_settings(run), **run["settings"]}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RunMismatch(f"{path}: unreadable run.json ({exc}); use a new --out directory") from None
        diffs = [f"{k}: run.json has {old.get(k)!r}, this run has {settings.get(k)!r}"
                 for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diffs:
            raise RunMismatch(f"{out_dir} holds a run with different settings; refusing to resume into it "
                              f"(use a new --out directory or the same settings):\n  " + "\n  ".join(diffs))
        return True
    if (out_dir / PREDICTIONS).exists():
        raise RunMismatch(f"{out_dir / PREDICTIONS} exists but {path} does not: cannot tell which settings made it")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, dumps({"settings": settings, "info": info}, indent=2) + "\n")  # never half-written
    return False


# --------------------------------------------------------------------------------------------- predictions log
class PredictionLog:
    """Append-only JSON lines file, crash safe (see module docstring)."""

    def __init__(self, path: Path, id_key: str):
        self.path, self.id_key = Path(path), id_key

    def load(self, read_only: bool = False) -> dict[str, dict]:
        """id -> row of the complete lines; drops (and truncates away) a torn last line. Raises ValueError on a
        malformed line that is not the last, or a duplicated id (the file was edited or written by two runs).
        `read_only`: another process may be appending: a torn last line is skipped, never truncated."""
        if not self.path.exists():
            return {}
        raw = self.path.read_bytes()
        rows: dict[str, dict] = {}
        pos = good_end = 0  # good_end: byte offset just past the last good line
        n = 0
        while pos < len(raw):
            n += 1
            nl = raw.find(b"\n", pos)
            end = len(raw) if nl == -1 else nl + 1
            line, is_last = raw[pos:end], not raw[end:].strip()
            if line.strip():
                try:
                    if nl == -1:
                        raise ValueError("no final newline")  # a write cut short, even if the JSON parses
                    row = json.loads(line)
                    if not isinstance(row, dict) or self.id_key not in row:
                        raise ValueError(f"no {self.id_key!r} field")
                except ValueError as exc:
                    if is_last:
                        if not read_only:
                            print(f"pointcopy eval: {self.path}:{n}: dropping torn last line ({exc})",
                                  file=sys.stderr)
                        break
                    raise ValueError(f"{self.path}:{n}: malformed line ({exc}); not a torn tail, refusing to "
                                     f"guess") from None
                rid = str(row[self.id_key])
                if rid in rows:
                    raise ValueError(f"{self.path}:{n}: {self.id_key} {rid!r} appears twice")
                rows[rid] = row
            pos = good_end = end
        if good_end < len(raw) and not read_only:
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        return rows

    def append(self, rows: list[dict]) -> None:
        """One write per batch, then flush + fsync: after a kill the file ends at a batch boundary or mid-line."""
        if not rows:
            return
        blob = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------- models
DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model(path: str, kind: str, dtype: str = "auto", device: str = "cpu"):
    """(model, processor) for a model kind; the processor's pointer range matches the model."""
    import torch

    from pointcopy.model.convert import check_model_source
    from pointcopy.processing import PointCopyProcessor

    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if kind == "baseline-qwen":
        check_model_source(path)  # one line for a mistyped or damaged checkpoint (from_pretrained does it for ours)
        from transformers import AutoModelForImageTextToText

        # the plain backbone by config.json's model_type (qwen2_5_vl, qwen3_vl, ...)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        # A plain Qwen has no pointers: put the pointer range past its vocabulary, so an id beyond the tokenizer
        # (Qwen pads its embedding matrix) decodes as text instead of being read as <|copy_k|>.
        copy_start = model.get_output_embeddings().weight.shape[0]
    else:
        from pointcopy import PointCopyForConditionalGeneration

        if kind == "pointcopy-no-pointing":
            kwargs["pointing_enabled"] = False
        model = PointCopyForConditionalGeneration.from_pretrained(path, **kwargs)
        copy_start = model.config.copy_token_start
    processor = PointCopyProcessor.from_pretrained(path, copy_token_start=copy_start)
    model = model.to(device).eval()
    return model, processor  # inference.generate moves each batch to model.device


ENGINES = ("transformers", "vllm")


def load_engine(path: str, kind: str, dtype: str = "auto", max_num_seqs: int = 8):
    """(PointCopyEngine, processor) for `--engine vllm` (vLLM's environment, `scripts/setup_vllm`)."""
    from pointcopy.model.convert import check_model_source
    from pointcopy.processing import PointCopyProcessor

    if kind == "baseline-qwen":
        raise ValueError("--engine vllm serves point-and-copy checkpoints; run a plain Qwen2.5-VL with vLLM itself")
    check_model_source(path)
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError("--engine vllm needs vLLM, which this environment lacks; make its environment with "
                         "scripts/setup_vllm and run .venv-vllm/bin/pointcopy")
    from pointcopy.serving.engine import PointCopyEngine

    overrides = {"hf_overrides": {"pointing_enabled": False}} if kind == "pointcopy-no-pointing" else {}
    engine = PointCopyEngine(path, max_num_seqs=max_num_seqs, dtype=dtype, **overrides)
    return engine, PointCopyProcessor.from_pretrained(path, copy_token_start=engine.copy_token_start)


# --------------------------------------------------------------------------------------------- the run
@dataclass
class RunStats:
    total: int  # items selected
    skipped: int  # already in predictions.jsonl (resume)
    generated: int
    errors: int  # items recorded with an error this run
    seconds: float  # wall time of generation (model calls + image loading) this run

    @property
    def items_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def run_generation(model, processor, benchmark: str | BenchmarkSpec, items: dict[str, dict], out_dir: Path, *,
                   prompt_mode: str | None = None, suffix: str = "", batch_size: int = 8, max_new_tokens: int = 1024,
                   progress: bool = True, generate_kwargs: dict | None = None,
                   shard: tuple[int, int] | None = None, decoding=None, generator=None) -> RunStats:
    """Generate for every item of `items` (id -> item, benchmark order) not yet in OUTDIR/predictions.jsonl;
    `benchmark` is a registered name or a spec, `prompt_mode` one of its prompt modes (default: its default).

    `decoding` (a `decoding.DecodingOptions`) gives the suffix, max_new_tokens and the decoding kwargs in place of
    `suffix` / `max_new_tokens` / `generate_kwargs`; with sampling, each batch is seeded from the seed and its
    first item id (`DecodingOptions.seed_for`), so a batch samples the same ids on any rank or after a resume.

    `generator(processor, questions, images, max_new_tokens=, seed=, **decoding)` -> `Generation`s replaces
    `inference.generate(model, ...)`, e.g. `serving.engine.PointCopyEngine.generate` (`model` is then unused).

    `shard=(rank, world)`: the items are cut into batches in benchmark order and batch k goes to rank k mod world
    (`ranks.shard_batches`), so every batch holds exactly the items (and padding) a one-process run gives it, and a
    merge of the ranks' files equals the one-process file item for item. A resumed rank cuts the same batches."""
    from tqdm import tqdm

    from functools import partial

    from pointcopy.inference import generate
    from pointcopy.ranks import shard_batches

    generator = generator or partial(generate, model)

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    spec = benchmark if isinstance(benchmark, BenchmarkSpec) else registry.get(benchmark)
    prompt_mode = spec.check_prompt_mode(prompt_mode)
    if decoding is not None:
        suffix, max_new_tokens = decoding.suffix, decoding.max_new_tokens
        generate_kwargs = {**decoding.generate_kwargs(), **(generate_kwargs or {})}
    id_key = spec.id_key
    log = PredictionLog(out_dir / PREDICTIONS, id_key)
    done = log.load()
    batches, total = shard_batches(list(items), batch_size, shard, done)
    pending = [k for b in batches for k in b]
    stats = RunStats(total=total, skipped=total - len(pending), generated=0, errors=0, seconds=0.0)
    bar = tqdm(total=total, initial=stats.skipped, unit="item", desc=spec.name, disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        for ids in batches:
            t0 = time.perf_counter()
            rows: dict[str, dict] = {}
            questions, images, gen_ids = [], [], []
            for k in ids:
                item = items[k]
                try:
                    question = spec.prompt(item, prompt_mode) + suffix
                    processor.check_user_text(question, what=f"item {k!r}: prompt")
                except ValueError as exc:
                    rows[k] = {id_key: _native_id(item, id_key, k), "prompt": None, "response": None,
                               "error": str(exc)}
                    continue
                try:
                    imgs = load_images(item, k)
                except ValueError as exc:
                    rows[k] = {id_key: _native_id(item, id_key, k), "prompt": question, "response": None,
                               "error": str(exc)}
                    continue
                questions.append(question)
                images.append(imgs)
                gen_ids.append(k)
            if gen_ids:
                try:
                    seed = decoding.seed_for(str(ids[0])) if decoding is not None else None
                    gens = generator(processor, questions, images, max_new_tokens=max_new_tokens, seed=seed,
                                     **(generate_kwargs or {}))
                except Exception as exc:
                    raise RuntimeError(f"generation failed for the batch of items {gen_ids}: {exc}") from exc
                dt = time.perf_counter() - t0
                for k, q, g in zip(gen_ids, questions, gens):
                    text, finished = g.text, g.finished
                    rows[k] = {id_key: _native_id(items[k], id_key, k), "prompt": q, "response": text,
                               "finished": finished, "n_tokens": len(g.ids), "n_copies": len(g.cells),
                               "copied_cells": [[c.image, c.row, c.col] for c in g.cells],
                               "batch_seconds": round(dt, 4), "batch_size": len(gen_ids)}
            log.append([rows[k] for k in ids])  # benchmark order within the batch
            stats.seconds += time.perf_counter() - t0
            stats.generated += len(gen_ids)
            stats.errors += len(ids) - len(gen_ids)
            bar.update(len(ids))
            if stats.errors:
                bar.set_postfix(errors=stats.errors, refresh=False)
    finally:
        bar.close()
    return stats


def _native_id(item: dict, id_key: str, fallback: str):
    """The id as the benchmark spells it (MathVerse's sample_index is an int in the official files)."""
    return item.get(id_key, fallback)
