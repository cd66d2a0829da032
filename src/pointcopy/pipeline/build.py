"""`pointcopy pipeline build`: text-only reasoning traces -> v1g records that `pointcopy train` reads as they are.

    inputs.jsonl --read--> SourceRecord | InputError
                 --decompose (pipeline.decompose)--> detect() calls, <objN> ids, obj_list     shards/I-of-N/decomposed.jsonl
                 --filter (pipeline.filter, the paper's rules)-->
                 --ground (pipeline.ground, attention contrast; or the inputs' ground truth)--> shards/I-of-N/ground/
                 --filter (box sanity)--> v1g records                                          v1g.jsonl + images/
                                                                                              dropped.jsonl, report.json

Shards: record ``k`` of the input (its position among the file's records) belongs to shard ``k mod N``. A shard
process (``--shard I/N``, or one rank under ``torchrun`` / ``accelerate launch``, which set RANK and WORLD_SIZE)
decomposes and grounds only its records, then marks its folder done. The *merge* reads every shard in input order
and writes the outputs, so the result does not depend on N or on which process finished first: a one-process run
and an N-shard run give the same bytes. Whoever finishes last merges (under torchrun: rank 0 waits for the others).

Resume: every stage appends one row per record (or object) and flushes; a rerun after ``kill -9`` drops a torn last
line, skips what is done, and does the rest, so nothing is lost or written twice. The decomposition settings and
the grounding settings are recorded per shard; a rerun with other settings is refused (use another --out). The
filters run at every merge from the stored rows, so trying another threshold costs no LLM call and no forward.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..files import dumps, write_atomic
from ..jsonl import drop_partial_last_line
from .decompose import Decomposition, DecomposeError
from .filter import Drop, FilterOptions, check_boxes, check_decomposition, count_drops
from .inputs import InputError, SourceRecord, read_inputs

__all__ = ["BuildOptions", "parse_shard", "shard_from_env", "build", "run_shard", "merge", "object_id",
           "GroundTruthGrounder", "GROUNDERS"]

GROUNDERS = ("attention", "ground-truth")
DECOMPOSED = "decomposed.jsonl"
DONE = "DONE"
SEP = "::"  # grounding-row id = record id + SEP + object key


@dataclass
class BuildOptions:
    """One pipeline run. ``grounder``: "attention" (Algorithm 1 with ``model``) or "ground-truth" (the inputs'
    own boxes, matched by description: the reference the attention grounder is compared with)."""

    input: str
    out: str
    grounder: str = "attention"
    model: str | None = None
    ground: Any = None  # GroundOptions (default: GroundOptions())
    filter: FilterOptions = field(default_factory=FilterOptions)
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    threads: int | None = None
    device: str | None = None
    progress: bool = False
    wait_seconds: float = 24 * 3600.0  # how long rank 0 waits for the other shards before giving up

    def __post_init__(self):
        if self.grounder not in GROUNDERS:
            raise ValueError(f"grounder must be one of {GROUNDERS}, got {self.grounder!r}")
        if self.grounder == "attention" and not self.model:
            raise ValueError("the attention grounder needs a model (--model PATH_OR_HUB_ID)")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard must be I/N with 0 <= I < N, got {i}/{n}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"expected a shard as I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return i, n


def shard_from_env() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when launched by torchrun / accelerate with more than one process, else None."""
    from ..ranks import rank_and_world

    return rank_and_world()


def object_id(record_id: str, key: str) -> str:
    """The grounding row id of object ``key`` ("<obj2>") of a record."""
    return f"{record_id}{SEP}{key}"


# ---------------------------------------------------------------------------------------------------- helpers
def _read_rows(path: Path, key: str = "id") -> dict[str, dict]:
    """Rows of an append-only JSONL stage file by id (the last row of an id wins); drops a torn last line."""
    drop_partial_last_line(path)
    rows: dict[str, dict] = {}
    if path.exists():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    rows[str(row[key])] = row
    return rows


def _check_settings(path: Path, settings: dict, what: str) -> None:
    wanted = json.loads(dumps(settings))
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != wanted:
            diff = sorted(k for k in set(before) | set(wanted) if before.get(k) != wanted.get(k))
            raise ValueError(f"{path.parent} holds a {what} made with other settings ({', '.join(diff)} differ): "
                             f"use another --out")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, dumps(wanted, indent=1))


def _shard_dir(out: Path, shard: tuple[int, int]) -> Path:
    return out / "shards" / f"{shard[0]}-of-{shard[1]}"


def _inputs(opts: BuildOptions) -> list[SourceRecord | InputError]:
    records = read_inputs(opts.input)
    return records[: opts.limit] if opts.limit is not None else records


def _input_drop(rec: SourceRecord | InputError) -> Drop | None:
    if isinstance(rec, InputError):
        return Drop("bad_input", f"field {rec.field!r}: {rec.reason}")
    if len(rec.images) != 1:
        return Drop("multi_image", f"{len(rec.images)} images (a v1g record holds one)")
    return None


class GroundTruthGrounder:
    """Boxes from the inputs' ground truth (``SourceRecord.objects``, matched by description): rows shaped like
    the attention grounder's, with ``contrast`` None (no attention involved)."""

    options = None
    layers: tuple = ()

    def ground_group(self, group) -> list[dict]:
        from ..images import open_rgb

        rows = []
        for rec in group:
            row = {"id": rec.id, "description": rec.description, "image": 0, "contrast": None, "error": None}
            if rec.box is None:
                row.update(box=None, error={"field": "objects", "reason": "no unique ground-truth box has this "
                                                                          "description"})
            else:
                with open_rgb(rec.images[0]) as im:
                    size = im.size
                row.update(box=list(rec.box), image_size=list(size))
            if rec.meta:
                row["meta"] = rec.meta
            rows.append(row)
        return rows


# ---------------------------------------------------------------------------------------------------- stages
def _decompose(decomposer, records: list[SourceRecord], sdir: Path, progress: bool, echo) -> dict[str, dict]:
    """Stage 1: one row per record in sdir/decomposed.jsonl ({"id", "index", "decomposition" | "error"}).
    A record whose last try failed for a transient reason (HTTP, timeout, connection) is tried again."""
    _check_settings(sdir / "decompose.json", decomposer.settings(), "decomposition")
    path = sdir / DECOMPOSED
    done = _read_rows(path)
    transient = ("llm_http", "llm_timeout", "llm_connection")
    todo = [r for r in records if r.id not in done or (done[r.id].get("error") or {}).get("kind") in transient]
    if todo:
        echo(f"decompose: {len(todo)} records ({len(records) - len(todo)} done before)")
    with path.open("a", encoding="utf-8") as fh:
        for rec, result in decomposer.decompose_many(todo, progress=progress):
            row = {"id": rec.id, "index": rec.index}
            if isinstance(result, DecomposeError):
                row["error"] = {"kind": result.kind, "detail": result.detail}
            else:
                row["decomposition"] = result.to_dict()
            fh.write(dumps(row) + "\n")
            fh.flush()
            done[rec.id] = row
    return done


def _ground_records(rec: SourceRecord, dec: Decomposition):
    from .ground import GroundRecord

    return [GroundRecord(object_id(rec.id, key), list(rec.images), obj["description"], rec.gt_box(obj["description"]),
                         0, {"record": rec.id, "object": key}) for key, obj in dec.objects.items()]


def _ground(opts: BuildOptions, grounder_factory: Callable, kept: list[tuple[SourceRecord, Decomposition]],
            sdir: Path, echo) -> dict[str, dict]:
    """Stage 2: every object of the kept records grounded (pipeline.ground.ground_records, itself resumable)."""
    from .ground import ROWS_FILE, ground_records

    gdir = sdir / "ground"
    records = [g for rec, dec in kept for g in _ground_records(rec, dec)]
    done = _read_rows(gdir / ROWS_FILE)
    if records and any(g.id not in done for g in records):
        grounder = grounder_factory()
        settings = {"grounder": opts.grounder, "model": opts.model}
        rows = ground_records(grounder, records, gdir, settings=settings, progress=opts.progress, echo=echo)
        done = {r["id"]: r for r in rows}
    return done


def run_shard(opts: BuildOptions, decomposer, grounder_factory: Callable, echo=print) -> Path:
    """Decompose, filter and ground this shard's records; mark the shard done. Returns the shard folder."""
    out = Path(opts.out)
    sdir = _shard_dir(out, opts.shard)
    sdir.mkdir(parents=True, exist_ok=True)
    i, n = opts.shard
    mine = [r for r in _inputs(opts) if isinstance(r, SourceRecord) and r.index % n == i and _input_drop(r) is None]
    started = time.perf_counter()
    decomposed = _decompose(decomposer, mine, sdir, opts.progress, echo)
    t_dec = time.perf_counter() - started
    kept = []
    for rec in mine:
        row = decomposed[rec.id]
        if "decomposition" in row:
            dec = Decomposition.from_dict(row["decomposition"])
            if not check_decomposition(dec, opts.filter):
                kept.append((rec, dec))
    grounded = _ground(opts, grounder_factory, kept, sdir, echo)
    write_atomic(sdir / DONE, dumps({"records": len(mine), "grounded_objects": len(grounded),
                                     "decompose_seconds_this_run": round(t_dec, 2),
                                     "seconds_this_run": round(time.perf_counter() - started, 2)}))
    return sdir


def _wait_for_shards(out: Path, n: int, seconds: float, echo) -> None:
    from ..ranks import wait_for_files

    wait_for_files([_shard_dir(out, (k, n)) / DONE for k in range(n)], seconds, echo, what="shards")


# ---------------------------------------------------------------------------------------------------- merge
def _stats(values: Sequence[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": round(statistics.fmean(values), 3), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def merge(opts: BuildOptions, echo=print) -> dict:
    """Read every shard in input order and write OUT/v1g.jsonl (+ images/), OUT/dropped.jsonl and
    OUT/report.json (+ report.md). Idempotent: a merge killed half-way is completed by the next one."""
    from ..data.v1g import IMAGE_PREFIX, V1GRecord, validation_errors, write_v1g
    from ..trace import parse
    from .ground import ROWS_FILE, evaluate_rows

    out = Path(opts.out)
    n = opts.shard[1]
    decomposed: dict[str, dict] = {}
    grounded: dict[str, dict] = {}
    for k in range(n):
        sdir = _shard_dir(out, (k, n))
        if not (sdir / DONE).exists():
            raise ValueError(f"shard {k}/{n} has not finished ({sdir}): run it first")
        decomposed.update(_read_rows(sdir / DECOMPOSED))
        grounded.update(_read_rows(sdir / "ground" / ROWS_FILE))
    inputs = _inputs(opts)
    records: list[V1GRecord] = []
    drops: list[dict] = []
    per_record: list[list[Drop]] = []
    ground_rows: list[dict] = []
    n_objects: list[int] = []
    n_copies: list[int] = []
    decomposer_failures: dict[str, int] = {}
    reached_grounding = 0
    for rec in inputs:
        rid = rec.record_id if isinstance(rec, InputError) else rec.id
        reasons: list[Drop] = []
        stage = "input"
        first = _input_drop(rec)
        if first is not None:
            reasons = [first]
        else:
            row = decomposed.get(rec.id)
            if row is None:
                raise ValueError(f"record {rec.id!r} has no decomposition row in shard {rec.index % n}/{n}")
            stage = "decompose"
            if "error" in row:
                kind = row["error"]["kind"]
                decomposer_failures[kind] = decomposer_failures.get(kind, 0) + 1
                reasons = [Drop("decompose_failed", f"{kind}: {row['error']['detail']}")]
            else:
                dec = Decomposition.from_dict(row["decomposition"])
                reasons = check_decomposition(dec, opts.filter)
                if not reasons:
                    stage = "ground"
                    reached_grounding += 1
                    rows = {key: grounded[object_id(rec.id, key)] for key in dec.objects}
                    size = _image_size(rec.images[0])
                    reasons = check_boxes(rows, size, opts.filter)
                    ground_rows.extend(rows.values())
                    if not reasons:
                        v1g = V1GRecord(rec.id, rec.images[0], [
                            {"from": "human", "value": IMAGE_PREFIX + rec.question},
                            {"from": "gpt", "value": dec.reasoning}],
                            {key: _box(rows[key]["box"]) for key in dec.objects}, size)
                        errs = validation_errors(v1g)
                        if errs:
                            reasons = [Drop("invalid_v1g", f"{e.field}: {e.reason}") for e in errs]
                        else:
                            records.append(v1g)
                            n_objects.append(len(dec.objects))
                            n_copies.append(len(parse(v1g.expanded_trace()).copy_ids))
        per_record.append(reasons)
        if reasons:
            drops.append({"id": rid, "index": getattr(rec, "index", None), "stage": stage,
                          "reasons": [d.to_dict() for d in reasons]})
    tmp = out / "v1g.jsonl.partial"
    write_v1g(records, tmp, resume=True)  # images/ beside it; a killed merge continues where it stopped
    os.replace(tmp, out / "v1g.jsonl")
    write_atomic(out / "dropped.jsonl", "".join(dumps(d) + "\n" for d in drops))
    valid = sum(1 for r in inputs if not isinstance(r, InputError))
    kept_ground = [r for r in ground_rows if r.get("iou") is not None]
    report = {
        "input": str(opts.input), "records_in": len(inputs), "valid_inputs": valid, "records_out": len(records),
        "retention": round(len(records) / len(inputs), 4) if inputs else None,
        "reached_grounding": reached_grounding,
        "drops": count_drops(per_record), "decompose_failures": decomposer_failures,
        "objects_per_trace": _stats(n_objects), "copies_per_trace": _stats(n_copies),
        "grounder": opts.grounder, "model": opts.model, "filter": opts.filter.to_dict(), "shards": n,
        "grounding": evaluate_rows(kept_ground) if kept_ground else None,
    }
    write_atomic(out / "report.json", dumps(report, indent=1))
    write_atomic(out / "report.md", report_markdown(report))
    echo(f"wrote {out / 'v1g.jsonl'} ({len(records)} of {len(inputs)} records), dropped.jsonl, report.json")
    return report


def _box(box) -> list:
    """Pixels to 2 decimals; whole numbers stay ints (as in the released data)."""
    return [int(v) if float(v).is_integer() else round(float(v), 2) for v in box]


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def report_markdown(report: dict) -> str:
    """A short human-readable summary of a build report."""
    lines = [f"# v1g build report", "", f"input: `{report['input']}`", "",
             f"records in: {report['records_in']}, out: {report['records_out']} "
             f"(retention {100 * (report['retention'] or 0):.1f}%; {report['reached_grounding']} passed the "
             f"decomposition filters)", "",
             "| rule | records it hit | first reason |", "|---|---|---|"]
    for rule, count in report["drops"]["by_rule"].items():
        if count:
            lines.append(f"| {rule} | {count} | {report['drops']['first_reason'][rule]} |")
    o, c = report["objects_per_trace"], report["copies_per_trace"]
    if o.get("n"):
        lines += ["", f"objects per trace: mean {o['mean']}, median {o['median']} ({o['min']}-{o['max']}); "
                      f"copy tokens per trace (Qwen2.5-VL layout): mean {c['mean']}, median {c['median']}"]
    g = report.get("grounding")
    if g and g["model"].get("n"):
        m = g["model"]
        lines += ["", f"grounding vs ground truth ({m['n']} objects of the kept records): mean IoU {m['mean_iou']}, "
                      f"IoU >= 0.5 {100 * m['iou_at_0.5']:.1f}%, peak inside the box {100 * m['peak_inside']:.1f}%"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- entry
def build(opts: BuildOptions, decomposer, grounder_factory: Callable | None = None, echo=print) -> dict | None:
    """Run this process's shard, then merge when every shard is done. Under torchrun/accelerate (WORLD_SIZE > 1)
    rank 0 waits for the other ranks and merges; the others return None after their shard. A ``--shard I/N``
    process merges if it finds every shard done (the last one to finish does; a lock keeps two from merging
    at once)."""
    if grounder_factory is None:
        grounder_factory = default_grounder_factory(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    run_shard(opts, decomposer, grounder_factory, echo=echo)
    i, n = opts.shard
    ranks = shard_from_env()
    if ranks is not None and ranks == opts.shard:
        if i != 0:
            return None
        _wait_for_shards(out, n, opts.wait_seconds, echo)
    elif any(not (_shard_dir(out, (k, n)) / DONE).exists() for k in range(n)):
        echo(f"shard {i}/{n} done; the merge runs when every shard is done")
        return None
    with (out / ".merge.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return merge(opts, echo=echo)


def default_grounder_factory(opts: BuildOptions) -> Callable:
    """Loads the grounding model on first use (nothing is loaded when every object is grounded already)."""

    def make():
        if opts.grounder == "ground-truth":
            return GroundTruthGrounder()
        from ..analysis.traces import load_model
        from .ground import GroundOptions, Grounder

        if not opts.progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        model, processor, _ = load_model(opts.model, threads=opts.threads, device=opts.device)
        return Grounder(model, processor, opts.ground or GroundOptions())

    return make
