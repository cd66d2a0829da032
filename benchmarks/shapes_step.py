"""shapes-tiny training-step time: what each lever of the recipe buys (same model, same batches, one process).

Builds a small shapes split (the recipe's world and traces), the `shapes-tiny` preset with its vision tower frozen
as in the recipe, and random batches of `--batch-size` rows (one data-parallel rank's share of the recipe's 16).
Each step is forward + backward + AdamW through `PointCopyTrainer.compute_loss`; all configurations run
interleaved in one process and median step times are compared. Configurations:

    padded            one padded batch, logits at every position, official top-40 z-loss
    chunks N          N length chunks (training/chunks.py), otherwise as padded
    +supervised       3 chunks, logits only from the first position predicting a supervised token
    +full-Z           and the z-loss over all logits instead of the top 40 (the recipe's `z_loss_top_k=0`)
    -system prompt    and the same rows prompted without Qwen's default system block (the preset's template)

Prints the padding removed, a table, then `figure shapes_step_ratio[<config>] <x>` (seconds / padded seconds;
below 1.0 = faster) and the ratio of each lever to the configuration before it.

    .venv/bin/python benchmarks/shapes_step.py [--steps 12] [--batch-size 8] [--chunks 2 3 4]
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
        model, processor = build_preset(PRESET, seed=0, default_system_prompt=True)
        _, plain_processor = build_preset(PRESET, seed=0, default_system_prompt=False)
        for name, param in model.named_parameters():
            if re.search(recipe.freeze, name):
                param.requires_grad_(False)
        render = dict(region_key_mode="keep" if REGION_RENDER["keep_key"] else "replace",
                      region_occurrences=REGION_RENDER["occurrences"], box_text=COPY_BOX_TEXT, max_side=None)
        collate = GroundedCollator(processor, **render)
        collate_plain = GroundedCollator(plain_processor, **render)
        rng = random.Random(0)
        rows = [[data[rng.randrange(len(data))] for _ in range(args.batch_size)] for _ in range(6)]
        batches = [collate(r) for r in rows]
        plain_batches = [collate_plain(r) for r in rows]  # the same rows without the system block

        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def trainer(chunks: int, supervised: bool) -> PointCopyTrainer:
            return PointCopyTrainer(model=model, args=TrainingArguments(output_dir=tmp, report_to=[], use_cpu=True),
                                    data_collator=collate, length_chunks=chunks, supervised_logits_only=supervised)

        # name -> (trainer, z_loss_top_k, batches); each lever is compared with the configuration listed before it
        configs = {"padded": (trainer(1, False), 40, batches)}
        configs.update({f"chunks {n}": (trainer(n, False), 40, batches) for n in args.chunks})
        configs["+supervised"] = (trainer(3, True), 40, batches)
        configs["+full-Z"] = (trainer(3, True), 0, batches)
        configs["-system prompt"] = (trainer(3, True), 0, plain_batches)
        model.train()

        def step(name: str, i: int) -> float:
            trainer_, model.config.z_loss_top_k, config_batches = configs[name]
            batch = config_batches[i % len(config_batches)]
            t0 = time.perf_counter()
            trainer_.compute_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        for i in range(2):  # warm-up
            for name in configs:
                step(name, i)
        times = {name: [] for name in configs}
        order = list(configs)
        for s in range(args.steps):
            for name in order[:: 1 if s % 2 == 0 else -1]:
                times[name].append(step(name, s))

    start = model.config.vision_start_token_id
    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"shapes-tiny, batch {args.batch_size}, {args.threads} thread(s), {args.steps} interleaved steps; "
          f"real tokens / padded = {real / padded:.3f}")
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'config':>14} {'computed/padded':>16} {'median s/step':>14} {'ratio':>7}")
    for name, (trainer_, _, config_batches) in configs.items():
        n = trainer_.length_chunks
        computed = sum(c["input_ids"].numel() for b in config_batches for c in split_by_length(b, n, start))
        print(f"{name:>14} {computed / padded:>16.3f} {median[name]:>14.4f} {median[name] / median['padded']:>7.3f}")
    for name in configs:
        if name != "padded":
            print(f"figure shapes_step_ratio[{name}] {median[name] / median['padded']:.3f}")
    plain_real = sum(int(b["attention_mask"].sum()) for b in plain_batches)
    print(f"real tokens without the system block / with it = {plain_real / real:.3f}")
    for before, lever in [("chunks 3", "+supervised"), ("+supervised", "+full-Z"), ("+full-Z", "-system prompt")]:
        if before in median:
            print(f"figure lever_ratio[{lever}] {median[lever] / median[before]:.3f}")


if __name__ == "__main__":
    main()
