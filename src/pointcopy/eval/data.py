"""Benchmark loaders: MathVista testmini, MATH-Vision test/testmini, MathVerse (testmini, text-only, public subset).

Items are returned as plain dicts in each benchmark's own official field layout (so official scorers and output
files line up field for field), plus two fields added here:
  `image_path`  absolute path of the item's image, or None when the item has no image;
  `image_missing` True when the item names an image that is not on disk (reported per item, never an error).
Loaders take a data directory and detect the layout. Which loader, id key, splits and gold fields belong to which
benchmark is recorded once, in its spec (`pointcopy.eval.registry`): `registry.get(name).load(data_dir, split)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


@dataclass
class Benchmark:
    """A loaded benchmark split: items keyed by id (insertion order = official order)."""

    name: str
    split: str
    items: dict[str, dict[str, Any]]
    root: Path
    missing_images: list[str] = field(default_factory=list)  # ids whose image is named but absent

    def __len__(self) -> int:
        return len(self.items)


# --------------------------------------------------------------------------------------------- file helpers
def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines; a malformed line raises ValueError naming file and line number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    return rows


def _attach_image(item: dict, base: Path, rel: str | None) -> None:
    if not rel:
        item["image_path"], item["image_missing"] = None, False
        return
    p = (base / rel).resolve()
    item["image_path"] = str(p)
    item["image_missing"] = not p.is_file()


def _finish(name: str, split: str, items: dict[str, dict], root: Path) -> Benchmark:
    missing = [k for k, it in items.items() if it.get("image_missing")]
    return Benchmark(name, split, items, root, missing)


# --------------------------------------------------------------------------------------------- MathVista
def load_mathvista(data_dir: str | Path, split: str = "testmini") -> Benchmark:
    """MathVista from the official repo layout (`data/testmini.json`, images under `data/images/` or beside it)
    or from the Hub parquet layout (`data/testmini-*.parquet`, needs pyarrow); there the picture is embedded
    (`decoded_image`), so its bytes are kept in the item as `image_bytes` instead of a path.
    """
    root = Path(data_dir)
    for cand in (root / f"{split}.json", root / "data" / f"{split}.json"):
        if cand.is_file():
            raw = read_json(cand)
            if not isinstance(raw, dict):
                raise ValueError(f"{cand}: expected a dict pid -> item")
            items = {}
            for pid, it in raw.items():
                it = dict(it)
                it.setdefault("pid", pid)
                _attach_image(it, cand.parent, it.get("image"))
                items[str(pid)] = it
            return _finish("mathvista", split, items, cand.parent)
    parquet = sorted(list(root.glob(f"{split}-*.parquet")) + list(root.glob(f"data/{split}-*.parquet")))
    if parquet:
        return _load_mathvista_parquet(parquet, split, root)
    raise FileNotFoundError(f"MathVista {split}: neither {split}.json nor {split}-*.parquet under {root}")


def _load_mathvista_parquet(files: list[Path], split: str, root: Path) -> Benchmark:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dev dependency
        raise ImportError("reading the Hub parquet layout needs pyarrow (pip install pyarrow)") from exc
    items: dict[str, dict] = {}
    for f in files:
        for row in pq.read_table(f).to_pylist():
            it = dict(row)
            pid = str(it["pid"])
            img = it.pop("decoded_image", None)
            # The Hub stores the picture inline; keep its bytes so a runner can use it without files on disk.
            it["image_bytes"] = img.get("bytes") if isinstance(img, dict) else None
            if it["image_bytes"]:
                it["image_path"], it["image_missing"] = None, False
            else:
                _attach_image(it, f.parent, it.get("image"))
            if isinstance(it.get("metadata"), str):
                it["metadata"] = json.loads(it["metadata"])
            items[pid] = it
    return _finish("mathvista", split, items, root)


# --------------------------------------------------------------------------------------------- MATH-V
def load_mathvision(data_dir: str | Path, split: str = "test") -> Benchmark:
    """MATH-V `data/{test,testmini}.jsonl` with `images/<id>.jpg` (paths in the items are relative to the root)."""
    if split not in ("test", "testmini"):
        raise ValueError(f"MATH-V split must be 'test' or 'testmini', got {split!r}")
    root = Path(data_dir)
    for cand in (root / "data" / f"{split}.jsonl", root / f"{split}.jsonl"):
        if cand.is_file():
            base = cand.parent.parent if cand.parent.name == "data" else cand.parent
            items = {}
            for row in read_jsonl(cand):
                if "id" not in row:
                    raise ValueError(f"{cand}: item without 'id'")
                _attach_image(row, base, row.get("image"))
                items[str(row["id"])] = row
            return _finish("mathvision", split, items, base)
    raise FileNotFoundError(f"MATH-V {split}: no data/{split}.jsonl under {root}")


# --------------------------------------------------------------------------------------------- MathVerse
MATHVERSE_SPLITS = ("testmini", "testmini_text_only", "public_subset")


def load_mathverse(data_dir: str | Path, split: str = "testmini") -> Benchmark:
    """MathVerse: official `data/testmini.json` (5 image versions), `data/testmini_text_only.json`, or the
    public visualizer subset `visualizer_public_subset/mv_data_public.json` (MathVista-like fields)."""
    root = Path(data_dir)
    if split == "public_subset":
        for cand in (root / "visualizer_public_subset" / "mv_data_public.json", root / "mv_data_public.json"):
            if cand.is_file():
                items = {}
                for pid, it in read_json(cand).items():
                    it = dict(it)
                    _attach_image(it, cand.parent / "images", it.get("image"))
                    items[str(pid)] = it
                return _finish("mathverse", split, items, cand.parent)
        raise FileNotFoundError(f"MathVerse public subset: no mv_data_public.json under {root}")
    if split not in MATHVERSE_SPLITS:
        raise ValueError(f"MathVerse split must be one of {MATHVERSE_SPLITS}, got {split!r}")
    for cand in (root / "data" / f"{split}.json", root / f"{split}.json"):
        if cand.is_file():
            raw = read_json(cand)
            if not isinstance(raw, list):
                raise ValueError(f"{cand}: expected a list of samples")
            items = {}
            for it in raw:
                it = dict(it)
                if "sample_index" not in it:
                    raise ValueError(f"{cand}: sample without 'sample_index'")
                # official images live under `images/` next to `data/` (e.g. images/images_version_1-4/...)
                _attach_image(it, cand.parent.parent / "images" if cand.parent.name == "data" else cand.parent,
                              it.get("image"))
                items[str(it["sample_index"])] = it
            return _finish("mathverse", split, items, cand.parent)
    raise FileNotFoundError(f"MathVerse {split}: no data/{split}.json under {root}")


def jsonl_text(rows: Iterable[dict]) -> str:
    """JSON lines text of `rows` (UTF-8-safe: see `pointcopy.files.dumps`)."""
    from pointcopy.files import dumps

    return "".join(dumps(r) + "\n" for r in rows)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write JSON lines atomically (a crash leaves the previous file or the new one, never a torn one)."""
    from pointcopy.files import write_atomic

    write_atomic(path, jsonl_text(rows))
