"""Random access to v1g records without holding them: an index of where each valid row is, built once.

    index = RecordIndex.build("v1g/")            # parquet shards (or a .jsonl file); cached beside the data
    len(index), index.lengths[i]                 # length grouping without reading a row
    record = index.record(i)                     # V1GRecord (image bytes / path) read from disk now

The released v1g set is ~300K traces with ~90 GB of images inside parquet shards. Materialising it (``read_v1g``
keeps every row's image bytes) would hold all of it in RAM before the first step. The index keeps three integers
and a length per valid row (~20 bytes), and a row is read again when a DataLoader worker asks for it:

* parquet: ``(file, row group, row)``; the index is built from every column *but* ``image``, so building it reads
  the text, not the 90 GB. Reading a row decodes its row group (a v1g shard's groups hold ~100 rows); the last
  few row groups a process read are kept (``cache_row_groups``), so neighbouring rows cost one decode.
* JSONL: ``(file, -1, byte offset of the line)``; images are paths beside it, read by the worker.
* JSON lists (the old ``prepare_data.py`` output) cannot be sought into: they are parsed whole (use JSONL or
  parquet for large data).

Validation is the reader's own (``data.v1g.check_row``: clamping, trace and region checks) at build time; bad rows
are recorded with their position, id, field and reason, exactly as ``iter_v1g`` reports them. ``check_image`` at
build time reads image headers (cheap for JSONL paths; for parquet it reads the image column once).

Cache: ``<file>.pcindex.npz`` beside a file, ``<dir>/.pcindex.npz`` for a folder of shards, or, where the data is
read-only, ``~/.cache/pointcopy/index/``. It is keyed by each file's size and modification time and by the
validation options: change a file (or an option) and the index is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .v1g import BadRecord, V1GRecord, check_row

__all__ = ["RecordIndex", "index_cache_path", "INDEX_VERSION"]

INDEX_VERSION = 1
_PLACEHOLDER_IMAGE = b"<image read later>"


def _files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(source.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no .parquet files in {source}")
        return files
    if not source.exists():
        raise FileNotFoundError(f"no such file: {source}")
    return [source]


def _identity(files: list[Path]) -> list[list]:
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def index_cache_path(source: str | Path) -> Path:
    """Where the index of ``source`` is cached: beside the data if that folder is writable, else in
    ``$XDG_CACHE_HOME/pointcopy/index`` (``~/.cache``)."""
    source = Path(source).resolve()
    beside = source / ".pcindex.npz" if source.is_dir() else source.with_name(source.name + ".pcindex.npz")
    if os.access(beside.parent, os.W_OK):
        return beside
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pointcopy" / "index"
    return root / (hashlib.sha256(str(source).encode()).hexdigest()[:24] + ".npz")


def _length(rec: V1GRecord) -> int:
    """Length-grouping key: ``num_tokens`` when the data has it, else characters of the turns plus one per box
    (a proxy: only the order matters)."""
    return rec.num_tokens if rec.num_tokens else sum(len(t["value"]) for t in rec.conversations) + len(rec.regions)


class RecordIndex:
    """Valid rows of one v1g source (a .jsonl / .json / .parquet file or a folder of parquet shards).

    Attributes:
        source: the path; ``kind``: "jsonl", "parquet" or "json".
        locations: int64 (n, 3): file number, row group (-1 for JSONL), row in the group / byte offset.
        positions: int64 (n,): each record's row number in the source (what bad-record logs name).
        lengths: int64 (n,): length-grouping keys.
        bad: the bad rows, as dicts (index, id, field, reason); ``clamped``: one note per clamped box.
        fingerprint: sha256 (16 hex) of the valid records' ids, turns, regions and sizes, in order.
    """

    def __init__(self, source: Path, kind: str, files: list[Path], locations: np.ndarray, positions: np.ndarray,
                 lengths: np.ndarray, bad: list[dict], clamped: list[dict], fingerprint: str, validation: dict,
                 records: list[V1GRecord] | None = None):
        self.source, self.kind, self.files = source, kind, files
        self.locations, self.positions, self.lengths = locations, positions, lengths
        self.bad, self.clamped, self.fingerprint, self.validation = bad, clamped, fingerprint, validation
        self._records = records  # JSON lists only
        self.cache_row_groups = 2
        self._open: dict = {}
        self._groups: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    # ---- building ------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, source: str | Path, *, cache: bool = True, **validation) -> "RecordIndex":
        """The index of ``source`` (read from the cache when it is current; else built and cached).
        ``validation``: ``check_row`` options (``check_image``, ``require_object_regions``, ...)."""
        source = Path(source)
        files = _files(source)
        kind = "parquet" if files[0].suffix.lower() == ".parquet" else files[0].suffix.lower().lstrip(".")
        if kind not in ("parquet", "jsonl", "json"):
            raise ValueError(f"{source}: unsupported v1g file type {files[0].suffix!r} (use .jsonl, .json or "
                             f".parquet)")
        validation = {k: validation[k] for k in sorted(validation)}
        key = {"version": INDEX_VERSION, "files": _identity(files), "validation": validation}
        path = index_cache_path(source)
        if kind != "json" and cache:
            loaded = cls._load(path, key, source, kind, files)
            if loaded is not None:
                return loaded
        built = cls._scan(source, kind, files, validation)
        if kind != "json" and cache:
            built._save(path, key)
        return built

    @classmethod
    def in_memory(cls, rows, name: str = "<rows>", **validation) -> "RecordIndex":
        """An index over rows already in memory (a ``datasets.Dataset``, a list of dicts): records are kept."""
        return cls._scan(Path(name), "memory", [], {k: validation[k] for k in sorted(validation)}, rows=rows)

    @classmethod
    def _scan(cls, source: Path, kind: str, files: list[Path], validation: dict, rows=None) -> "RecordIndex":
        locations, positions, lengths, bad, clamped, records = [], [], [], [], [], []
        digest = hashlib.sha256()
        position = 0

        def take(row: Any, base: Path | None, where: tuple[int, int, int]) -> None:
            nonlocal position
            item = check_row(row, base, position, **validation)
            if isinstance(item, BadRecord):
                bad.append({"source": str(source), **vars(item)})
            else:
                locations.append(where)
                positions.append(position)
                lengths.append(_length(item))
                clamped.extend({"source": str(source), "index": position, "id": item.id, "field": "regions",
                                "reason": note} for note in item.clamped)
                digest.update(json.dumps([item.id, item.conversations, item.regions, list(item.image_size)],
                                         sort_keys=True, default=str).encode() + b"\n")
                if kind in ("json", "memory"):
                    records.append(item)
            position += 1

        if kind == "memory":
            for k, row in enumerate(rows):
                take(row, None, (0, -1, k))

        for f_no, f in enumerate(files if kind != "memory" else []):
            if kind == "jsonl":
                with f.open("rb") as fh:
                    offset = 0
                    for lineno, line in enumerate(fh, 1):
                        here, offset = offset, offset + len(line)
                        if not line.strip():
                            continue
                        try:
                            row = json.loads(line)
                        except (json.JSONDecodeError, UnicodeDecodeError) as e:
                            row = {"__error__": f"line {lineno}: invalid JSON: {e}"}
                        take(row, f.parent, (f_no, -1, here))
            elif kind == "json":
                data = json.loads(f.read_text(encoding="utf-8"))
                if not isinstance(data, list):
                    raise ValueError(f"{f}: expected a JSON list of records, got {type(data).__name__}")
                for k, row in enumerate(data):
                    take(row, f.parent, (f_no, -1, k))
            else:
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(f)
                with_image = bool(validation.get("check_image"))
                columns = [c for c in pf.schema_arrow.names if with_image or c != "image"]
                for rg in range(pf.num_row_groups):
                    for k, row in enumerate(pf.read_row_group(rg, columns=columns).to_pylist()):
                        if not with_image and "image" in pf.schema_arrow.names:
                            row["image"] = _PLACEHOLDER_IMAGE  # validated without its bytes; read when used
                        take(row, f.parent, (f_no, rg, k))
        if kind not in ("json", "memory"):
            records = None
        arr = lambda xs, shape: np.asarray(xs, dtype=np.int64).reshape(shape)  # noqa: E731
        return cls(source, kind, files, arr(locations, (-1, 3)), arr(positions, (-1,)), arr(lengths, (-1,)), bad,
                   clamped, digest.hexdigest()[:16], validation, records)

    def _save(self, path: Path, key: dict) -> None:
        meta = {"key": key, "bad": self.bad, "clamped": self.clamped, "fingerprint": self.fingerprint}
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, locations=self.locations, positions=self.positions, lengths=self.lengths,
                 meta=np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8))
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, path)  # several ranks may build at once: each replaces the file whole
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache we cannot write costs a rebuild next time, nothing else

    @classmethod
    def _load(cls, path: Path, key: dict, source: Path, kind: str, files: list[Path]) -> "RecordIndex | None":
        try:
            with np.load(path) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                if meta.get("key") != json.loads(json.dumps(key)):
                    return None
                return cls(source, kind, files, z["locations"], z["positions"], z["lengths"], meta["bad"],
                           meta["clamped"], meta["fingerprint"], key["validation"])
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None  # missing or damaged: rebuild

    # ---- reading ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.locations)

    def _handle(self, f_no: int):
        if self._pid != os.getpid():  # a forked DataLoader worker: its own file handles and row-group cache
            self._open, self._groups, self._pid = {}, OrderedDict(), os.getpid()
        if f_no not in self._open:
            f = self.files[f_no]
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                # buffered reads, a page range at a time: with the default pre-buffering a row group's whole image
                # column is held twice while it is decoded, which more than doubles a worker's peak memory
                self._open[f_no] = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
            else:
                self._open[f_no] = f.open("rb")
        return self._open[f_no]

    def row(self, i: int) -> dict:
        """The raw row of record ``i`` (image included)."""
        f_no, group, at = (int(v) for v in self.locations[i])
        if self.kind == "jsonl":
            fh = self._handle(f_no)
            fh.seek(at)
            return json.loads(fh.readline())
        key = (f_no, group)
        table = self._groups.get(key)
        if table is None:
            table = self._handle(f_no).read_row_group(group, use_threads=False)
            self._groups[key] = table
            if len(self._groups) > self.cache_row_groups:
                while len(self._groups) > self.cache_row_groups:
                    self._groups.popitem(last=False)
                # Arrow's allocator keeps freed row groups for reuse; hand them back, or a worker's RSS creeps
                # up to many row groups' worth of image bytes.
                import pyarrow as pa

                pa.default_memory_pool().release_unused()
        else:
            self._groups.move_to_end(key)
        return table.slice(at, 1).to_pylist()[0]

    def record(self, i: int) -> V1GRecord:
        """Record ``i``, read from disk now (validated as when indexed: trace checks are not repeated)."""
        if self._records is not None:
            return self._records[i]
        item = check_row(self.row(i), self.files[int(self.locations[i][0])].parent, int(self.positions[i]),
                         **{**self.validation, "check_trace": False, "check_image": False})
        if isinstance(item, BadRecord):  # the file changed under us since it was indexed
            from .v1g import V1GError

            raise V1GError(item.id, item.field, f"{item.reason} (the data changed since it was indexed)")
        return item

    def __getstate__(self):  # DataLoader workers get the index, not open files or cached row groups
        state = dict(self.__dict__)
        state["_open"], state["_groups"] = {}, OrderedDict()
        return state
