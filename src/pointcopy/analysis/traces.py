"""The sequences an analysis reads: a model, and each item's prompt + trace as token ids the model can re-read.

    load_model(path)                 our / official v1 / base Qwen-VL checkpoints through one class; pointing off
                                     for a base checkpoint (it never learnt to point)
    generate_traces(...)             the model's traces (greedy unless `decoding` says otherwise), one JSON line
                                     per item (resumable; `shard`: one rank's batches)
    traced(processor, item, ...)     -> Traced: prompt ids (as `inference.generate` builds them) + trace ids,
                                     pixel values, the item's SlotMap and where its image tokens are
    given_trace_ids(...)             an item's own trace (a v1g record's, rendered as the model was trained to
                                     read it, or a simple item's `trace` text) as ids, for teacher forcing

Step t of a trace of T tokens is the forward position `prompt_len - 1 + t`: the query that produced trace token t
(the prompt's last token for t = 0), exactly the "most recent token" of generation step t.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..jsonl import drop_partial_last_line
from ..layout import SlotMap
from .items import AnalysisItem, ItemError

__all__ = ["ModelInfo", "load_model", "Traced", "traced", "generate_traces", "given_trace_ids", "read_jsonl_rows"]


@dataclass
class ModelInfo:
    path: str
    model_type: str
    pointing_enabled: bool
    copy_token_start: int
    num_layers: int
    render: dict  # how regions are written in this model's traces (collator settings), for given traces

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def load_model(path: str | Path, pointing: bool | None = None, threads: int | None = None,
               device: str | None = None):
    """(model in eval mode, processor, ModelInfo). `pointing=None`: the checkpoint's own setting for our and
    official v1 checkpoints, off for a base Qwen-VL checkpoint (its fresh pointer heads would point at random).
    `device`: where the model runs (default: where it loads, the CPU)."""
    from ..model import PointCopyForConditionalGeneration
    from ..model.convert import adapter_for, read_config_dict
    from ..processing import PointCopyProcessor
    from .probe import num_text_layers

    if threads:
        torch.set_num_threads(threads)
    model_type = read_config_dict(path).get("model_type")
    if pointing is None and model_type == adapter_for(model_type, where=f"{path}: ").base_model_type:
        pointing = False
    kwargs = {} if pointing is None else {"pointing_enabled": bool(pointing)}
    model = PointCopyForConditionalGeneration.from_pretrained(path, **kwargs).eval()
    if device is not None:
        model = model.to(device)
    processor = PointCopyProcessor.from_pretrained(path)
    info = ModelInfo(str(path), str(model_type), bool(model.config.pointing_enabled), processor.copy_token_start,
                     num_text_layers(model), _render_settings(path))
    return model, processor, info


def _render_settings(path) -> dict:
    """Region rendering of the model's training data: a shapes recipe's (RECIPE.json), else the official one."""
    recipe = Path(path) / "RECIPE.json"
    if recipe.is_file():
        from ..embedded.recipe import load_recipe

        t = load_recipe(path).training
        # a shapes model trained on another variant reads the trace without copies ("nocopy": the region keys stay
        # plain text, as data.shapes.traces writes that variant)
        copies = json.loads(recipe.read_text()).get("variant", "copy") == "copy"
        return {"region_key_mode": t.region_key_mode, "region_occurrences": t.region_occurrences,
                "box_text": t.box_text, "regions": copies}
    return {"region_key_mode": "replace", "region_occurrences": "all", "box_text": True, "regions": True}


@dataclass
class Traced:
    """One item's full sequence: `ids` = prompt (`prompt_len` ids) + trace; pointer ids are >= copy_token_start."""

    item: AnalysisItem
    ids: list[int]
    prompt_len: int
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    slot_map: SlotMap
    image_positions: list[int]  # sequence position of slot k, k = 0 .. slot_map.num_slots - 1
    copy_token_start: int
    text: str = ""
    finished: bool = True

    @property
    def trace_ids(self) -> list[int]:
        return self.ids[self.prompt_len:]

    @property
    def steps(self) -> int:
        return len(self.ids) - self.prompt_len

    def copy_events(self) -> list[tuple[int, list[int]]]:
        """(trace index of its first pointer, slots) per copy event: a maximal run of consecutive pointer ids."""
        events: list[tuple[int, list[int]]] = []
        prev = -2
        for t, i in enumerate(self.trace_ids):
            if i >= self.copy_token_start:
                if t == prev + 1:
                    events[-1][1].append(i - self.copy_token_start)
                else:
                    events.append((t, [i - self.copy_token_start]))
                prev = t
        return events

    def relevant_slots(self) -> list[int]:
        """Slots whose merged cell overlaps one of the item's boxes (the official box -> cell rule)."""
        out: set[int] = set()
        for image, box in self.item.boxes:
            out.update(self.slot_map.box_to_slots(box, image))
        return sorted(out)


def traced(processor, item: AnalysisItem, trace_ids: list[int], images=None, text: str = "",
           finished: bool = True, suffix: str = "") -> Traced:
    """The Traced of `item` with `trace_ids` after the prompt `inference.generate` gives the model (the question
    plus `suffix`, as the traces were generated)."""
    from ..inference import prompt_text

    images = item.images() if images is None else images
    try:
        batch = processor([prompt_text(processor, item.question + suffix, len(images))], images)
    except ValueError as e:
        raise ItemError(item.id, "question", str(e)) from e
    prompt = batch["input_ids"][0].tolist()
    layout = batch.slot_maps[0]
    positions = [p for p, i in enumerate(prompt) if i == processor.image_token_id]
    if len(positions) != layout.num_slots:
        raise ItemError(item.id, "image", f"{len(positions)} image tokens but the layout has {layout.num_slots}")
    bad = [i - processor.copy_token_start for i in trace_ids
           if i >= processor.copy_token_start and i - processor.copy_token_start >= layout.num_slots]
    if bad:
        raise ItemError(item.id, "trace", f"pointer slot {bad[0]} but the item has {layout.num_slots} image tokens")
    return Traced(item, prompt + list(trace_ids), len(prompt), batch.get("pixel_values"),
                  batch.get("image_grid_thw"), layout, positions, processor.copy_token_start, text, finished)


def given_trace_ids(processor, item: AnalysisItem, render: dict) -> list[int]:
    """The item's own trace as ids (no end-of-turn): a v1g record's trace with its regions expanded on the item's
    layout as the model's training data wrote them (`render`), or the simple item's `trace` text."""
    from ..collate import GroundedCollator, GroundedSample
    from ..data.v1g import V1GError
    from ..tokens import encode_with_pointers

    if item.record is not None:
        settings = {k: v for k, v in render.items() if k != "regions"}
        collator = GroundedCollator(processor, max_side=None, **settings)
        try:
            sample = GroundedSample.from_record(item.record, max_side=None)
            if not render.get("regions", True):
                sample.regions = []
            ids, labels, *_ = collator.encode(sample)
        except V1GError as e:
            raise ItemError(item.id, e.field, e.reason) from e
        answer = [i for i, label in zip(ids, labels) if label != -100]
        end = encode_with_pointers(processor.tokenizer, "<|im_end|>\n", processor.copy_token_start)
        return answer[: len(answer) - len(end)] if answer[-len(end):] == end else answer
    if item.trace is not None:
        try:
            return encode_with_pointers(processor.tokenizer, item.trace, processor.copy_token_start)
        except ValueError as e:
            raise ItemError(item.id, "trace", str(e)) from e
    raise ItemError(item.id, "trace", "no given trace (a v1g record or a \"trace\" field): use generated traces")


def read_jsonl_rows(path: Path, read_only: bool = False) -> dict[str, dict]:
    """Rows of a resumable JSONL file by id (a torn last line, from a killed run, is dropped first). `read_only`:
    another process may be appending: a last line without its newline is left out, the file untouched."""
    rows: dict[str, dict] = {}
    if path.exists():
        if read_only:
            text = path.read_bytes().decode("utf-8", errors="replace")
            lines = text.split("\n")[:-1]  # the part after the last newline is not a whole line yet
        else:
            drop_partial_last_line(path)
            lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    return rows


@torch.no_grad()
def generate_traces(model, processor, items: list[AnalysisItem], out_file: Path, *, max_new_tokens: int,
                    batch_size: int = 16, progress: bool = True, errors: list | None = None, decoding=None,
                    shard: tuple[int, int] | None = None) -> dict[str, dict]:
    """Traces {id: {"id", "text", "ids", "finished"}}, appended to `out_file` batch by batch; items already there
    are not generated again. Items whose images cannot be read go to `errors` (ItemError) and are skipped.
    `decoding` (`decoding.DecodingOptions`, default greedy): suffix and decoding kwargs (its max_new_tokens is
    this function's); with sampling each batch is seeded from the seed and its first item id. `shard=(rank,
    world)`: only this rank's batches (`ranks.shard_batches`)."""
    from tqdm.auto import tqdm

    from ..decoding import DecodingOptions
    from ..inference import generate
    from ..ranks import shard_batches

    decoding = decoding or DecodingOptions()
    out_file = Path(out_file)
    done = read_jsonl_rows(out_file)
    by_id = {it.id: it for it in items}
    batches, total = shard_batches([it.id for it in items], batch_size, shard, done)
    with out_file.open("a", encoding="utf-8") as fh, tqdm(total=total, initial=total - sum(map(len, batches)),
                                                          desc="generate", unit="item", disable=not progress) as bar:
        for ids in batches:
            chunk, images = [], []
            for it in (by_id[i] for i in ids):
                try:
                    images.append(it.images())
                    chunk.append(it)
                except ItemError as e:
                    if errors is not None:
                        errors.append(e)
            if chunk:
                gens = generate(model, processor, [it.question for it in chunk], images,
                                max_new_tokens=max_new_tokens, suffix=decoding.suffix,
                                seed=decoding.seed_for(str(ids[0])), **decoding.generate_kwargs())
                for it, g in zip(chunk, gens):
                    row = {"id": it.id, "text": g.text, "ids": g.ids, "finished": g.finished}
                    done[it.id] = row
                    fh.write(json.dumps(row) + "\n")
                fh.flush()
            bar.update(len(ids))
    return done
