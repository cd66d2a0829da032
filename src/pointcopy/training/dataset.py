"""Grounded training data: v1g records read once (bad ones recorded, not fatal), served to the collator.

Bad data never stops training. Everything wrong with it goes to one log, ``bad_log`` (``bad_records.jsonl`` in
the run's output directory), one JSON object a line with ``source``, ``index`` (row in that source), ``id``,
``field``, ``reason``, ``stage`` and ``action``:

* ``stage="load"``, ``action="skipped"``: the record failed validation when the data set was read (including,
  with ``check_image=True``, the cheap header check: the file exists, reads as an image, has ``image_size``).
* ``stage="load"``, ``action="clamped"``: the record is used, but a box slightly past its image was clamped
  (``data.v1g.clamp_regions``); ``clamped_boxes`` counts them and a single warning reports the count.
* ``stage="train"``, ``action="skipped"``: the record passed the reader but could not be prepared when training
  reached it (a file truncated after its header, deleted mid-run, a size that disagrees, too many tokens...).

**Skipping during training** (``prepare`` given): ``dataset[i]`` runs ``prepare`` (the collator's per-sample
work) on record ``i``. If that fails, the failure is logged and record ``i+1`` (then ``i+2``, ..., wrapping
around) is served in its place. The choice, rather than dropping the sample from its batch: the batch keeps its
size (so no batch is ever empty, the loss average and the data-parallel ranks' shapes are as planned), the
sampler's order and the Trainer's resume bookkeeping are untouched, and the substitute is a function of the
index and the files alone, so a run is deterministic and a resumed run takes the same substitute again instead
of dying at the same record. Only if no record at all can be prepared does ``dataset[i]`` raise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from ..data.v1g import V1GError

logger = logging.getLogger(__name__)


class V1GDataset(Dataset):
    """Records from one or more v1g sources (JSONL/JSON/parquet files or folders, or in-memory rows). Items are
    `V1GRecord`s, or with `prepare` the prepared samples (`prepare(record)`, e.g. `GroundedCollator.prepare`).

    Memory stays flat in the data: each file source is a `data.index.RecordIndex` (where each valid row is, built
    once and cached beside the data), and a record -- its image bytes or path included -- is read from disk when
    it is served, in the DataLoader worker that asks for it. In-memory sources (a `datasets.Dataset`, a list of
    rows) are kept as given.

    Args:
        sources: v1g files / directories / iterables.
        bad_log: JSONL file for bad and clamped records (see the module docstring); None: kept in memory only.
        prepare: per-item work that may fail on bad data (see the module docstring); None: serve records.
        write_log: write the load-time entries to ``bad_log`` (False on data-parallel ranks other than 0, which
            only append what they skip while training).
        keep_train_log: keep the ``stage="train"`` entries an earlier session of this run wrote to ``bad_log``
            (when resuming), so nothing already logged is lost and nothing is logged twice.
        index_cache: keep each file's index in its cache (``data.index.index_cache_path``); False rebuilds it.
        **validation: passed to ``data.v1g.check_row`` (``check_image``, ``require_object_regions``, ...).
    """

    def __init__(self, sources: list[str | Path], bad_log: str | Path | None = None,
                 prepare: Callable[[Any], Any] | None = None, *, write_log: bool = True,
                 keep_train_log: bool = False, index_cache: bool = True, **validation):
        from ..data.index import RecordIndex

        self.indexes = [RecordIndex.build(s, cache=index_cache, **validation) if isinstance(s, (str, Path))
                        else RecordIndex.in_memory(s, **validation) for s in sources]
        self._starts = np.cumsum([0] + [len(ix) for ix in self.indexes])
        bad = [{**e, "stage": "load", "action": "skipped"} for ix in self.indexes for e in ix.bad]
        clamped = [{**e, "stage": "load", "action": "clamped"} for ix in self.indexes for e in ix.clamped]
        self.bad, self.clamped = bad, clamped
        self.prepare = prepare
        self.bad_log = Path(bad_log) if bad_log is not None else None
        self.train_bad: list[dict] = []  # stage="train" entries (an earlier session's too, when kept)
        self._failed: set[int] = set()
        if self.bad_log is not None:
            if keep_train_log and self.bad_log.is_file():
                self.train_bad = [e for e in _read_jsonl(self.bad_log) if e.get("stage") == "train"]
            if write_log:
                _write_jsonl(self.bad_log, bad + clamped + self.train_bad)
        self._logged = {(e.get("source"), e.get("index")) for e in self.train_bad}
        if clamped:
            logger.warning("clamped %d box(es) in %d record(s) that lay slightly past their image (within the "
                           "clamp tolerance)%s", len(clamped), len({(c["source"], c["index"]) for c in clamped}),
                           f"; listed in {self.bad_log}" if self.bad_log else "")
        if bad:
            logger.warning("skipped %d bad record(s) when loading%s", len(bad),
                           f"; listed in {self.bad_log}" if self.bad_log else "")
        if not len(self):
            raise ValueError(f"no valid records in {[str(s) for s in sources]} ({len(bad)} bad)")

    @property
    def clamped_boxes(self) -> int:
        return len(self.clamped)

    @property
    def lengths(self) -> list[int]:
        """A length per record for length-grouped batching (``data.index``: ``num_tokens`` or a proxy), from the
        index: no record is read."""
        return [int(v) for ix in self.indexes for v in ix.lengths]

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) over the records served, in order: a single source's is its index's (the same
        value earlier versions computed by reading every record); several sources' combine theirs."""
        if len(self.indexes) == 1:
            return self.indexes[0].fingerprint
        return hashlib.sha256(" ".join(ix.fingerprint for ix in self.indexes).encode()).hexdigest()[:16]

    def _locate(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range ({len(self)} records)")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.indexes[k], index - int(self._starts[k])

    def record(self, index: int):
        """Record ``index`` (a `V1GRecord`), read from its source now."""
        ix, i = self._locate(index)
        return ix.record(i)

    def origin(self, index: int) -> tuple[str, int]:
        """(source, row in that source) of record ``index``."""
        ix, i = self._locate(index)
        return str(ix.source), int(ix.positions[i])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int):
        if self.prepare is None:
            return self.record(index)
        n = len(self)
        for step in range(n):
            j = (index + step) % n
            if j in self._failed:
                continue
            try:
                item = self.prepare(self.record(j))
            except (V1GError, OSError) as e:
                self._skip(j, e)
                continue
            if step:
                logger.warning("record #%d (%s row %d) is unusable; serving record #%d (%s row %d) in its place",
                               index, *self.origin(index), j, *self.origin(j))
            return item
        raise RuntimeError(f"no usable record left: all {n} records failed when prepared"
                           + (f" (see {self.bad_log})" if self.bad_log else ""))

    def _skip(self, j: int, error: Exception) -> None:
        self._failed.add(j)
        source, row = self.origin(j)
        field = getattr(error, "field", "image")
        reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        rid = getattr(error, "record_id", None)
        if rid is None:
            try:
                rid = self.record(j).id
            except (V1GError, OSError, ValueError):
                rid = None
        logger.warning("skipping record %r (%s row %d): field %r: %s", rid, source, row, field, reason)
        if (source, row) in self._logged:
            return
        self._logged.add((source, row))
        entry = {"source": source, "index": row, "id": rid, "field": field, "reason": reason,
                 "stage": "train", "action": "skipped"}
        self.train_bad.append(entry)
        if self.bad_log is not None:
            self.bad_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.bad_log, "a", encoding="utf-8") as fh:  # one line per write: ranks may append too
                fh.write(json.dumps(entry, default=str) + "\n")
                fh.flush()


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _write_jsonl(path: Path, entries: list[dict]) -> None:
    """Replace `path` atomically (a reader, or a rank appending, never sees half a file); remove it if empty."""
    if not entries:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps(e, default=str) + "\n" for e in entries), encoding="utf-8")
    os.replace(tmp, path)
