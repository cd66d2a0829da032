"""Build shapes splits on disk: v1g JSONL per variant + shared PNGs + a ground-truth sidecar ``items.jsonl``.

Layout of ``out_dir``::

    copy.jsonl  coord.jsonl  nocopy.jsonl   v1g records (released layout, via ``write_v1g``), same ids
    images/<id>.png                         one image per item, shared by the variants
    items.jsonl                             per item: id, family, question, answer, steps (query + GT object
                                            ids), the scene (objects with attributes and boxes), trace lengths

Item ``i`` of seed ``s`` is a pure function of ``(s, i, config, families)`` (its rng is seeded with
``"shapes:s:i"``), so a split of ``n`` items is a prefix of any larger split with the same seed, a killed build
resumes without duplicates (ids already in every file are skipped without rendering), and two builds write
identical bytes. Families cycle in order (item ``i`` has family ``families[i % len(families)]``); answers are
balanced within each family by :func:`questions.sample_question`.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from pointcopy.data.v1g import IMAGE_PREFIX, V1GRecord, write_v1g
from pointcopy.jsonl import drop_partial_last_line

from .questions import FAMILIES, Question, sample_question
from .scene import Scene, SceneConfig, generate_scene, render
from .traces import TRACE_FORMAT, VARIANTS, model_text, variants

SETTINGS_FILE = "split.json"  # what a split folder was built from (see _check_settings)

__all__ = ["Item", "item_id", "make_item", "item_record", "item_row", "png_bytes", "build_split", "read_items",
           "trace_lengths"]


@dataclass
class Item:
    """One item: its id, position, scene and question (the answer is ``question.answer``)."""

    id: str
    index: int
    seed: int
    scene: Scene
    question: Question


def item_id(seed: int, index: int) -> str:
    return f"shapes-{seed}-{index:06d}"


def make_item(seed: int, index: int, config: SceneConfig | None = None, families: Sequence[str] = FAMILIES) -> Item:
    """Item ``index`` of the split with ``seed`` (deterministic; independent of every other item)."""
    if not families:
        raise ValueError("make_item: families is empty")
    rng = random.Random(f"shapes:{seed}:{index}")
    counter = [0]

    def new_scene() -> Scene:
        counter[0] += 1
        return generate_scene(f"shapes:{seed}:{index}:scene{counter[0]}", config)

    family = families[index % len(families)]
    scene, question = sample_question(family, rng, new_scene)
    return Item(item_id(seed, index), index, seed, scene, question)


def png_bytes(scene: Scene) -> bytes:
    """The rendered scene as PNG bytes (deterministic for a given Pillow build)."""
    buf = io.BytesIO()
    render(scene).save(buf, format="PNG")
    return buf.getvalue()


def item_record(item: Item, variant: str, image: Any = None) -> V1GRecord:
    """The v1g record of ``item`` for ``variant``; ``image`` defaults to the rendered PNG bytes."""
    if variant not in VARIANTS:
        raise ValueError(f"item {item.id}: unknown variant {variant!r}; choose from {VARIANTS}")
    text, regs = variants(item.scene, item.question)[variant]
    conv = [{"from": "human", "value": IMAGE_PREFIX + item.question.text}, {"from": "gpt", "value": text}]
    return V1GRecord(item.id, png_bytes(item.scene) if image is None else image, conv, regs, item.scene.size)


def trace_lengths(item: Item, tokenizer) -> dict[str, int]:
    """Assistant-text length in tokens per variant, as the model sees it (copy tokens count one each)."""
    from pointcopy.tokens import encode_with_pointers

    out = {}
    for v, (text, regs) in variants(item.scene, item.question).items():
        out[v] = len(encode_with_pointers(tokenizer, model_text(text, regs, item.scene.size), len(tokenizer)))
    return out


def item_row(item: Item, tokenizer=None) -> dict:
    """The ground-truth sidecar row of ``item`` (what :mod:`pointcopy.eval.shapes` scores against)."""
    row = {
        "id": item.id,
        "index": item.index,
        "seed": item.seed,
        "n_objects": len(item.scene.objects),
        **item.question.to_dict(),
        "question": item.question.text,
        "scene": item.scene.to_dict(),
    }
    del row["text"]
    if tokenizer is not None:
        row["trace_tokens"] = trace_lengths(item, tokenizer)
    return row


def _done_ids(path: Path) -> set[str]:
    done: set[str] = set()
    if path.exists():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    done.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut off by a kill is rewritten
    return done


def _append_items(path: Path, rows: Iterable[dict]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
        fh.flush()


def build_split(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    variants_: str | Sequence[str] = VARIANTS,
    *,
    config: SceneConfig | None = None,
    families: Sequence[str] = FAMILIES,
    resume: bool = True,
    progress: bool | None = None,
    tokenizer: Any = "tiny",
    chunk: int = 256,
) -> dict[str, Path]:
    """Write items ``0..n-1`` of ``seed`` as v1g records for each variant plus ``items.jsonl``.

    Args:
        out_dir: output directory (created).
        n: number of items.
        seed: split seed (use different seeds for train / validation / test).
        variants_: one variant name or several of ``VARIANTS``.
        config: scene settings.
        families: question families, cycled in order.
        resume: keep what ``out_dir`` already holds and add only missing ids (a killed build resumes);
            ``False`` rewrites every file.
        progress: tqdm bar (default: on for ``n >= 2000``).
        tokenizer: tokenizer for the ``trace_tokens`` field of ``items.jsonl``; ``"tiny"`` builds
            :func:`pointcopy.presets.build_tiny_tokenizer`, ``None`` skips the field.
        chunk: items per write batch.
    Returns:
        ``{variant: path of its JSONL, "items": path of items.jsonl}``.
    """
    names = [variants_] if isinstance(variants_, str) else list(variants_)
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise ValueError(f"build_split: unknown variants {bad or names!r}; choose from {VARIANTS}")
    if n < 0:
        raise ValueError(f"build_split: n must be >= 0, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {v: out / f"{v}.jsonl" for v in names}
    paths["items"] = out / "items.jsonl"
    if not resume:
        for p in [*paths.values(), out / SETTINGS_FILE]:
            p.unlink(missing_ok=True)
    _check_settings(out, seed, config, families, fresh=not any(p.exists() for p in paths.values()))
    if tokenizer == "tiny":
        from pointcopy.presets import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
    for p in paths.values():
        drop_partial_last_line(p)
    done = {k: _done_ids(p) for k, p in paths.items()}
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=f"shapes seed {seed}", unit="item", disable=not (n >= 2000 if progress is None else progress))
    for lo in range(0, n, chunk):
        records: dict[str, list[V1GRecord]] = {v: [] for v in names}
        rows = []
        for i in range(lo, min(n, lo + chunk)):
            rid = item_id(seed, i)
            if all(rid in d for d in done.values()):
                continue
            item = make_item(seed, i, config, families)
            image = png_bytes(item.scene)  # rendered once, shared by the variants
            for v in names:
                if rid not in done[v]:
                    records[v].append(item_record(item, v, image))
            if rid not in done["items"]:
                rows.append(item_row(item, tokenizer))
        for v in names:
            if records[v]:
                write_v1g(records[v], paths[v], resume=True)
        if rows:
            _append_items(paths["items"], rows)
        bar.update(min(n, lo + chunk) - lo)
    bar.close()
    return paths


def _check_settings(out: Path, seed: int, config: SceneConfig | None, families: Sequence[str], fresh: bool) -> None:
    """Record what a split is built from (`split.json`), and refuse to add to a split built from anything else.

    Resuming appends only missing ids, so without this check a folder built by an older scene generator or trace
    layout would be silently reused (or mixed) under a newer recipe."""
    wanted = {"seed": seed, "scenes": asdict(config or SceneConfig()), "families": list(families),
              "trace_format": TRACE_FORMAT}
    path = out / SETTINGS_FILE
    if path.exists():
        built = json.loads(path.read_text())
        if built != wanted:
            diff = sorted(k for k in wanted if built.get(k) != wanted[k])
            raise ValueError(f"{out}: this split was built with other settings ({', '.join(diff)} differ); delete "
                             f"the folder or use another --root")
    elif not fresh:
        raise ValueError(f"{out}: holds a split without {SETTINGS_FILE} (built by an older pointcopy), so its scene and "
                         f"trace settings are unknown; delete the folder or use another --root")
    else:
        path.write_text(json.dumps(wanted, indent=1))


def read_items(path: str | Path) -> list[dict]:
    """Rows of an ``items.jsonl`` sidecar (or the ``items.jsonl`` inside a split directory), in file order."""
    p = Path(path)
    if p.is_dir():
        p = p / "items.jsonl"
    with p.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
