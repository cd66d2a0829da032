"""Training-step time with length chunks vs one padded batch, on shapes-tiny batches (same model, same batches).

Builds a small shapes split (the recipe's world and traces), the `shapes-tiny` preset with its vision tower frozen
as in the recipe, and random batches of `--batch-size` rows (one data-parallel rank's share of the recipe's 16).
Each step is forward + backward + AdamW through `PointCopyTrainer.compute_loss`, chunked and unchunked interleaved
in one process; medians are compared. Prints the padding removed, then `figure length_chunks_ratio <x>` per
chunk count (chunked seconds / unchunked seconds; below 1.0 = faster).

    .venv/bin/python benchmarks/length_chunks.py [--steps 12] [--batch-size 8] [--chunks 2 3 4]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainingArguments

from pointcopy.collate import GroundedCollator
from pointcopy.data.shapes import build_split
from pointcopy.data.shapes.traces import COPY_BOX_TEXT, REGION_RENDER
from pointcopy.embedded.recipe import PRESET, ShapesRecipe
from pointcopy.presets import build_preset
from pointcopy.training.chunks import split_by_length
from pointcopy.training.dataset import V1GDataset
from pointcopy.training.trainer import PointCopyTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = ShapesRecipe()

    with tempfile.TemporaryDirectory() as tmp:
        records = build_split(Path(tmp) / "train", 256, seed=5, config=recipe.scenes, progress=False)["copy"]
        data = V1GDataset([records])
        model, processor = build_preset(PRESET, seed=0)
        for name, param in model.named_parameters():
            if re.search(recipe.freeze, name):
                param.requires_grad_(False)
        collate = GroundedCollator(processor, region_key_mode="keep" if REGION_RENDER["keep_key"] else "replace",
                                   region_occurrences=REGION_RENDER["occurrences"], box_text=COPY_BOX_TEXT,
                                   max_side=None)
        rng = random.Random(0)
        batches = [collate([data[rng.randrange(len(data))] for _ in range(args.batch_size)]) for _ in range(6)]

        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        trainers = {n: PointCopyTrainer(model=model, args=TrainingArguments(output_dir=tmp, report_to=[],
                                                                            use_cpu=True),
                                        data_collator=collate, length_chunks=n) for n in [1, *args.chunks]}
        model.train()

        def step(n: int, batch) -> float:
            t0 = time.perf_counter()
            trainers[n].compute_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        for b in batches[:2]:  # warm-up
            for n in trainers:
                step(n, b)
        times = {n: [] for n in trainers}
        order = list(trainers)
        for s in range(args.steps):
            for n in order[:: 1 if s % 2 == 0 else -1]:
                times[n].append(step(n, batches[s % len(batches)]))

    start = model.config.vision_start_token_id
    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"shapes-tiny, batch {args.batch_size}, {args.threads} thread(s), {args.steps} interleaved steps; "
          f"real tokens / padded = {real / padded:.3f}")
    base = statistics.median(times[1])
    print(f"{'chunks':>6} {'computed/padded':>16} {'median s/step':>14} {'ratio':>7}")
    for n in trainers:
        computed = sum(c["input_ids"].numel() for b in batches for c in split_by_length(b, n, start))
        print(f"{n:>6} {computed / padded:>16.3f} {statistics.median(times[n]):>14.4f} "
              f"{statistics.median(times[n]) / base:>7.3f}")
    for n in args.chunks:
        print(f"figure length_chunks_ratio[{n}] {statistics.median(times[n]) / base:.3f}")


if __name__ == "__main__":
    main()
