"""Does the loader keep up? Samples/s of the training data loader alone (records read from the index, images decoded
and resized, rows tokenised and collated: `V1GDataset(prepare=GroundedCollator.prepare)` in a `DataLoader`) with 0,
1 and 2 worker processes, next to the samples/s a training step consumes (shapes-tiny, the recipe's model, one
process, forward + backward + AdamW on pre-collated batches of the same rows).

Data: a shapes split as v1g JSONL + PNGs, and the same records as parquet with embedded image bytes (the
released v1g layout, read by row group). The loader's figure divided by the trainer's is its headroom: above 1 the
step, not the data, sets the pace.

    figure loader_samples_per_s_jsonl_w0 / _w1 / _w2      loader alone, JSONL + image files
    figure loader_samples_per_s_parquet_w0 / _w2         loader alone, parquet
    figure trainer_samples_per_s                         what the training step consumes
    figure loader_headroom_w0 <x>                        JSONL, 0 workers / trainer (the CPU default)

    .venv/bin/python benchmarks/data_loader.py [--items 256] [--batch-size 16] [--batches 12] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "training"))


def loader_rate(dataset, collator, batch_size: int, batches: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), persistent_workers=False)
    it = iter(loader)
    next(it)  # the first batch pays for starting the workers
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["input_ids"].shape[0]
    return n / (time.perf_counter() - t0)


def trainer_rate(dataset, collator, batch_size: int, steps: int) -> float:
    from transformers import TrainingArguments

    from pointcopy.presets import build_preset
    from pointcopy.training.trainer import PointCopyTrainer

    model, processor = build_preset("shapes-tiny", seed=0)
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch_size, report_to=[],
                             use_cpu=True)
    trainer = PointCopyTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                               length_chunks=3)
    optimizer = trainer.create_optimizer()
    model.train()
    batches = [collator([dataset[(k * batch_size + i) % len(dataset)] for i in range(batch_size)])
               for k in range(steps + 2)]
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times[2:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from pointcopy.collate import GroundedCollator
    from pointcopy.data.shapes import build_split
    from pointcopy.presets import build_preset
    from pointcopy.training.dataset import V1GDataset
    from test_streaming import to_parquet

    root = Path(tempfile.mkdtemp())
    jsonl = build_split(root / "train", args.items, seed=3, progress=False)["copy"]
    parquet = to_parquet(jsonl, root / "pq", row_group_size=100)
    processor = build_preset("shapes-tiny", seed=0)[1]
    collator = GroundedCollator(processor)
    rates = {}
    for kind, source, workers in (("jsonl", jsonl, (0, 1, 2)), ("parquet", parquet, (0, 2))):
        ds = V1GDataset([source], prepare=collator.prepare)
        for w in workers:
            rates[f"{kind}_w{w}"] = loader_rate(ds, collator, args.batch_size, args.batches, w)
    ds = V1GDataset([jsonl], prepare=collator.prepare)
    train = trainer_rate(ds, collator, args.batch_size, args.steps)
    print("| what | samples/s |\n|---|---|")
    for k, v in rates.items():
        print(f"| loader, {k.replace('_w', ', workers ')} | {v:.1f} |")
    print(f"| training step (shapes-tiny, batch {args.batch_size}, 1 thread) | {train:.1f} |")
    for k, v in rates.items():
        print(f"figure loader_samples_per_s_{k} {v:.2f}")
    print(f"figure trainer_samples_per_s {train:.2f}")
    print(f"figure loader_headroom_w0 {rates['jsonl_w0'] / train:.2f}")
    print(json.dumps({"loader": rates, "trainer": train}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
