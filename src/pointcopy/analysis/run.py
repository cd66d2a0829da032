"""What every analysis command shares: models by condition, items, traces and a resumable per-item loop.

    pointcopy analyze <analysis> --items SRC --model copy=DIR_A --model copy=DIR_B --model nocopy=DIR_C --out OUT

Models given the same label are runs (seeds) of one condition; the first label is the condition the others are
compared with. Each model gets OUT/models/<label>-<n>/ holding `model.json` (which checkpoint; a rerun with another
one there, or another analysis, is refused), `traces.jsonl` (its generated traces), `items.jsonl` (one summary per analysed item) and
`skipped.jsonl` (items that could not be analysed, with the field and reason). Both JSONL files are appended batch
by batch, so a killed run resumes where it stopped, without losing or repeating an item.

Under torchrun / accelerate launch (`RunOptions.ranks`), the items are cut into batches in order and batch k goes
to rank k mod N (`ranks.shard_batches`, as `pointcopy eval` does), for generation and analysis alike: each batch
holds the items a one-process run gives it. Each rank works in OUT/models/<label>-<n>/ranks/R-of-N/ (the same
files, resumable, its own model.json); rank 0, after its own share of every model, waits until every item is in
some rank's items.jsonl or skipped.jsonl (`ranks.wait_for_items`), writes the model's traces.jsonl, items.jsonl,
skipped.jsonl and model.json in item order (the bytes one process writes), and goes on to the report; the other
ranks return None. A one-process run's files are not read by ranks, nor the reverse.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..decoding import DecodingOptions
from ..files import write_atomic
from ..ranks import DEFAULT_RANK_TIMEOUT
from .items import AnalysisItem, ItemError, load_items
from .traces import ModelInfo, Traced, generate_traces, given_trace_ids, load_model, read_jsonl_rows, traced

__all__ = ["ModelSpec", "RunOptions", "parse_model_spec", "analyse_models"]


@dataclass(frozen=True)
class ModelSpec:
    label: str
    path: str


def parse_model_spec(value: str) -> ModelSpec:
    """`LABEL=PATH` or `PATH` (label: the folder name, or its parent's for a `final` folder)."""
    if "=" in value and not Path(value).exists():
        label, path = value.split("=", 1)
    else:
        p = Path(value)
        label, path = (p.parent.name if p.name == "final" else p.name), value
    if not re.fullmatch(r"[A-Za-z0-9._-]+", label or ""):
        raise ValueError(f"--model {value!r}: the label must be letters, digits, '.', '_' or '-'")
    return ModelSpec(label, path)


@dataclass
class RunOptions:
    items: str
    out: str
    models: list[ModelSpec]
    limit: int | None = None
    layers: list[int] | None = None  # None: `probe.default_layers`
    traces: str = "generated"  # or "given"
    batch_size: int = 8
    max_new_tokens: int = 640
    pointing: bool | None = None
    threads: int | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)  # all but its max_new_tokens (the one above)
    device: str | None = None  # None: where the model loads (the CPU)
    ranks: tuple[int, int] | None = None  # (rank, world) under torchrun: this rank's share, rank 0 merges
    rank_timeout: float = DEFAULT_RANK_TIMEOUT  # how long rank 0 waits for the other ranks' items (seconds)


@dataclass
class ModelRun:
    spec: ModelSpec
    name: str
    info: ModelInfo
    rows: dict[str, dict]  # item id -> the analysis' summary of it
    skipped: list[dict]
    seconds: float

    def summary(self) -> dict:
        """What a report says about this model's run."""
        return {"label": self.spec.label, "path": self.spec.path, "analysed": len(self.rows),
                "skipped": len(self.skipped), "seconds": self.seconds, "pointing": self.info.pointing_enabled}


def model_dirs(opts: RunOptions) -> list[tuple[ModelSpec, str]]:
    counts: dict[str, int] = {}
    out = []
    for spec in opts.models:
        counts[spec.label] = counts.get(spec.label, 0) + 1
        out.append((spec, f"{spec.label}-{counts[spec.label]}"))
    return out


def analyse_models(opts: RunOptions, summarise: Callable[[list[Traced], object, object, ModelInfo], list[dict]],
                   *, echo=print, needs_copies: bool = False, analysis: str = "analysis"
                   ) -> tuple[list[AnalysisItem], list[ModelRun] | None]:
    """Run `summarise(batch of Traced, model, processor, info) -> one row per item` for every model on every item.

    `needs_copies`: an item whose trace has no copy is skipped (recorded) instead of summarised. `analysis` names
    the analysis: a folder holding another analysis' rows is refused (its rows would be read as this one's).
    Under `opts.ranks`: this rank's share of every model; then rank 0 merges (see the module docstring) and the
    other ranks get None for the runs."""
    if not opts.models:
        raise ValueError("no --model given")
    if opts.traces not in ("generated", "given"):
        raise ValueError(f"--traces must be 'generated' or 'given', got {opts.traces!r}")
    items, item_errors = load_items(opts.items, opts.limit)
    if not items:
        reasons = "; ".join(str(e) for e in item_errors[:3])
        raise ValueError(f"{opts.items}: no usable item" + (f" ({reasons})" if reasons else ""))
    if opts.ranks is None or opts.ranks[0] == 0:
        for e in item_errors:
            echo(f"skipped: {e}")
    started = time.perf_counter()
    runs = []
    for spec, name in model_dirs(opts):
        folder = Path(opts.out) / "models" / name
        if opts.ranks is not None:
            folder = folder / RANKS_DIR / f"{opts.ranks[0]}-of-{opts.ranks[1]}"
        runs.append(_analyse_model(opts, spec, name, folder, items, item_errors, summarise, echo, needs_copies,
                                   analysis))
    if opts.ranks is None:
        return items, runs
    if opts.ranks[0] != 0:
        return items, None
    return items, [_merge_ranks(opts, run, items, item_errors, started) for run in runs]


RANKS_DIR = "ranks"


def _meta(opts: RunOptions, spec: ModelSpec, analysis: str) -> dict:
    """What a model's rows depend on: a folder holding rows made otherwise is refused."""
    meta = {"analysis": analysis, "label": spec.label, "path": str(spec.path), "traces": opts.traces,
            "pointing": opts.pointing, "max_new_tokens": opts.max_new_tokens,
            "decoding": {**opts.decoding.settings(), "suffix": opts.decoding.suffix}}
    if opts.extra:  # an analysis' own settings (e.g. faithfulness' events per item): rows made with others differ
        meta["extra"] = dict(opts.extra)
    return meta


# model.json written before the decoding flags existed: greedy, no penalty passed, no suffix
LEGACY_META = {"decoding": {"decoding": "greedy", "repetition_penalty": 1.0, "suffix": ""}}


def _check_meta(folder: Path, meta: dict) -> None:
    meta_file = folder / "model.json"
    if meta_file.is_file():
        before = json.loads(meta_file.read_text())
        before = {k: before.get(k, LEGACY_META.get(k)) for k in meta}
        if before != meta:
            raise ValueError(f"{folder} holds an analysis of {before}, not {meta}: use another --out")


def _analyse_model(opts, spec, name, folder, items, item_errors, summarise, echo, needs_copies, analysis) -> ModelRun:
    from tqdm.auto import tqdm

    from ..ranks import shard_batches

    folder.mkdir(parents=True, exist_ok=True)
    meta = _meta(opts, spec, analysis)
    meta_file = folder / "model.json"
    _check_meta(folder, meta)
    if opts.ranks is not None:  # the folder rank 0 merges into must not hold another analysis either
        _check_meta(Path(opts.out) / "models" / name, meta)
    started = time.perf_counter()
    model, processor, info = load_model(spec.path, opts.pointing, opts.threads, device=opts.device)
    write_atomic(meta_file, json.dumps({**meta, "model": info.to_dict()}, indent=1))
    echo(f"{name}: {spec.path} ({info.model_type}, pointing {'on' if info.pointing_enabled else 'off'})")
    errors: list[ItemError] = list(item_errors)
    suffix = opts.decoding.suffix
    if opts.traces == "generated":
        traces = generate_traces(model, processor, items, folder / "traces.jsonl", max_new_tokens=opts.max_new_tokens,
                                 batch_size=max(opts.batch_size, 1), progress=opts.progress, errors=errors,
                                 decoding=opts.decoding, shard=opts.ranks)
    rows_file = folder / "items.jsonl"
    rows = read_jsonl_rows(rows_file)
    skipped_file = folder / "skipped.jsonl"
    skipped = read_jsonl_rows(skipped_file) if skipped_file.exists() else {}
    by_id = {it.id: it for it in items}
    batches, total = shard_batches([it.id for it in items], opts.batch_size, opts.ranks,
                                   done=rows.keys() | skipped.keys())
    with rows_file.open("a", encoding="utf-8") as fh, skipped_file.open("a", encoding="utf-8") as sk, \
            tqdm(total=total, initial=total - sum(map(len, batches)), desc=f"analyse {name}", unit="item",
                 disable=not opts.progress) as bar:
        for ids in batches:
            batch = []
            for it in (by_id[i] for i in ids):
                try:
                    if opts.traces == "generated":
                        if it.id not in traces:
                            continue  # its images could not be read: already in `errors`
                        row = traces[it.id]
                        t = traced(processor, it, row["ids"], text=row["text"], finished=row["finished"],
                                   suffix=suffix)
                    else:
                        given = given_trace_ids(processor, it, info.render)
                        t = traced(processor, it, given, text=processor.decode(given), suffix=suffix)
                    if t.steps < 2:
                        raise ItemError(it.id, "trace", f"{t.steps} trace token(s): nothing to analyse")
                    if needs_copies and not t.copy_events():
                        raise ItemError(it.id, "trace", "the trace copies nothing (no pointer token)")
                    batch.append(t)
                except ItemError as e:
                    errors.append(e)
            if batch:
                for row in summarise(batch, model, processor, info):
                    rows[row["id"]] = row
                    fh.write(json.dumps(row) + "\n")
                fh.flush()
            bar.update(len(ids))
        order = {it.id: n for n, it in enumerate(items)}
        for e in sorted(errors, key=lambda e: order.get(e.item_id, -1)):  # load errors first, then in item order
            if e.item_id not in skipped:
                skipped[e.item_id] = e.to_dict()
                sk.write(json.dumps(e.to_dict()) + "\n")
    return ModelRun(spec, name, info, rows, list(skipped.values()), round(time.perf_counter() - started, 1))


def _merge_ranks(opts: RunOptions, run: ModelRun, items: list[AnalysisItem], item_errors: list[ItemError],
                 started: float) -> ModelRun:
    """Rank 0: wait for every rank's rows of `run`'s model, then write OUT/models/<name>/ as one process does."""
    from ..ranks import wait_for_items

    world = opts.ranks[1]
    folder = Path(opts.out) / "models" / run.name
    shards = [folder / RANKS_DIR / f"{k}-of-{world}" for k in range(world)]
    ids = [it.id for it in items]

    def read(name: str) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        for shard in shards:
            rows.update(read_jsonl_rows(shard / name, read_only=True))
        return rows

    def read_done() -> dict[str, dict]:
        return {**read("items.jsonl"), **read("skipped.jsonl")}

    _, missing = wait_for_items(read_done, ids, opts.rank_timeout)
    if missing:
        raise ValueError(f"{run.name}: {len(missing)} items never appeared in the ranks' files under "
                         f"{folder / RANKS_DIR} (first: {missing[:3]}); rerun the same command to finish them")
    rows, skipped = read("items.jsonl"), read("skipped.jsonl")
    order = [e.item_id for e in item_errors] + ids
    lines = {"items.jsonl": [rows[i] for i in ids if i in rows],
             "skipped.jsonl": [skipped[i] for i in dict.fromkeys(order) if i in skipped]}
    if opts.traces == "generated":
        traces = read("traces.jsonl")
        lines["traces.jsonl"] = [traces[i] for i in ids if i in traces]
    for name, rows_of in lines.items():
        write_atomic(folder / name, "".join(json.dumps(r) + "\n" for r in rows_of))
    write_atomic(folder / "model.json", (shards[0] / "model.json").read_text())
    return ModelRun(run.spec, run.name, run.info, {r["id"]: r for r in lines["items.jsonl"]}, lines["skipped.jsonl"],
                    round(time.perf_counter() - started, 1))


def paired_indices(ids_a: list[str], ids_b: list[str]) -> tuple[list[str], list[int], list[int]]:
    """The items both conditions analysed (in `ids_a`'s order) and their row indices in each: what a matched
    comparison pairs."""
    where_b = {i: n for n, i in enumerate(ids_b)}
    common = [i for i in ids_a if i in where_b]
    where_a = {i: n for n, i in enumerate(ids_a)}
    return common, [where_a[i] for i in common], [where_b[i] for i in common]


def write_report(out: Path, stem: str, result: dict, plot: Callable[[dict, Path], None],
                 markdown: Callable[[dict], str]) -> None:
    """OUT/<stem>.json (every number), OUT/<stem>.png and OUT/<stem>.md, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{stem}.json", json.dumps(result, indent=1))
    plot(result, out / f"{stem}.png")
    write_atomic(out / f"{stem}.md", markdown(result))


def json_num(v) -> float | None:
    """A float for a report's JSON: 6 significant digits, None for NaN / inf."""
    v = float(v)
    return None if not math.isfinite(v) else float(f"{v:.6g}")


def json_nums(a) -> list:
    return [json_num(v) for v in np.asarray(a, dtype=float).ravel()]


def rounded(values, digits: int = 5) -> list[float]:
    """Floats for JSON with `digits` significant digits (masses span 1e-6 .. 1)."""
    return [float(f"{float(v):.{digits}g}") for v in values]
