"""Memory of training data: the streamed v1g data set (`data.index.RecordIndex` behind `V1GDataset`) vs holding
every record in memory (`read_v1g`, what the data set did before), on a synthetic parquet set shaped like v1g.

The set is generated, not stored: N records (default 20,000) whose images are ~100 KB PNGs (noise, so they do not
compress; a pool of distinct images is reused across rows, each row still stores its own bytes), a grounded
trace with one detect call and its region, in parquet shards with row groups of 100 rows (the Hugging Face
datasets layout for image data). Each approach runs in a fresh subprocess: peak RSS (VmHWM, reset first) after building the
data set, and after iterating 200 batches of 8 through the real collator (decode, resize, tokenise), each
reported as the absolute peak and as the growth over the process's RSS before the data set (imports and the
processor). The ratio uses the growth, the part that depends on the data.

    figure v1g_rss_ratio <x>                     streamed growth / in-memory growth (peak over both phases)
    figure v1g_rss_streamed_mb <MB>              streamed: peak growth
    figure v1g_rss_in_memory_mb <MB>             in memory: peak growth
    figure v1g_index_build_s <s>                 streamed: first build of the index (reads no image column)
    figure v1g_index_load_s <s>                  streamed: the cached index, second process

    .venv/bin/python benchmarks/data_memory.py [--records 20000] [--batches 200] [--dir /tmp/pc-data-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from memory_probe import peak_mb, reset_peak, rss_mb  # benchmarks/memory_probe.py, beside this script

TRACE = 'detect(query="square", objects=["<obj1>"])\nThe <obj1> is {colour}. Answer: {colour}'


def make_set(root: Path, records: int, side: int = 184, pool: int = 64, per_shard: int = 2000) -> float:
    """The synthetic parquet set under `root` (skipped if it is there); returns its size in MB."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    done = root / "DONE"
    if done.exists():
        return json.loads(done.read_text())["mb"]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for _ in range(pool):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    colours = ["red", "green", "blue", "yellow"]
    for shard in range(0, records, per_shard):
        rows = []
        for i in range(shard, min(records, shard + per_shard)):
            colour = colours[i % 4]
            x = 10 + (i * 7) % 100
            rows.append({"id": f"syn-{i:06d}", "image": {"bytes": images[i % pool], "path": None},
                         "conversations": [{"from": "human", "value": "<image>\nWhat colour is the square?"},
                                           {"from": "gpt", "value": TRACE.format(colour=colour)}],
                         "regions": json.dumps({"<obj1>": [x, 20, x + 50, 70]}), "image_size": [side, side]})
        pq.write_table(pa.Table.from_pylist(rows), root / f"train-{shard // per_shard:05d}.parquet",
                       row_group_size=100, use_dictionary=["id"])  # no dictionary: each row stores its bytes
    mb = sum(f.stat().st_size for f in root.glob("*.parquet")) / 2**20
    done.write_text(json.dumps({"records": records, "mb": mb}))
    return mb


def child(mode: str, data: str, batches: int, batch_size: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from pointcopy.collate import GroundedCollator
    from pointcopy.presets import build_tiny_processor

    torch.set_num_threads(1)
    processor = build_tiny_processor()
    collator = GroundedCollator(processor)
    before = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    if mode == "streamed":
        from pointcopy.training.dataset import V1GDataset

        dataset = V1GDataset([data], prepare=collator.prepare)
    else:
        from pointcopy.data.v1g import read_v1g

        records = read_v1g(data).records

        class InMemory(torch.utils.data.Dataset):
            def __len__(self):
                return len(records)

            def __getitem__(self, i):
                return collator.prepare(records[i])

        dataset = InMemory()
    build_s = time.perf_counter() - t0
    after_build = peak_mb()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for k, batch in enumerate(loader):
        if k + 1 >= batches:
            break
    return {"mode": mode, "records": len(dataset), "rss_before_mb": before, "peak_build_mb": after_build,
            "peak_iterate_mb": peak_mb(), "build_s": build_s, "iterate_s": time.perf_counter() - t0}


def run_child(mode: str, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--dir", args.dir, "--batches",
                          str(args.batches), "--batch-size", str(args.batch_size)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dir", default="/tmp/pc-data-memory")
    ap.add_argument("--child", choices=("streamed", "in-memory"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, str(Path(args.dir) / "set"), args.batches, args.batch_size)))
        return 0
    t0 = time.perf_counter()
    mb = make_set(Path(args.dir) / "set", args.records)
    print(f"synthetic set: {args.records} records, {mb:.0f} MB of parquet ({time.perf_counter() - t0:.0f} s)")
    for cache in Path(args.dir, "set").glob(".pcindex*"):
        cache.unlink()  # the first streamed run builds the index, the second reads it
    runs = [run_child("streamed", args), run_child("streamed", args), run_child("in-memory", args)]
    print("| approach | records | RSS before (MB) | peak after build | peak after 200 batches | growth (MB) | "
          "build (s) | iterate (s) |")
    print("|---|---|---|---|---|---|---|---|")
    growth = []
    for label, r in zip(("streamed (index built)", "streamed (index cached)", "in memory (read_v1g)"), runs):
        g = max(r["peak_build_mb"], r["peak_iterate_mb"]) - r["rss_before_mb"]
        growth.append(g)
        print(f"| {label} | {r['records']} | {r['rss_before_mb']:.0f} | {r['peak_build_mb']:.0f} | "
              f"{r['peak_iterate_mb']:.0f} | {g:.0f} | {r['build_s']:.1f} | {r['iterate_s']:.1f} |")
    streamed = max(growth[0], growth[1])
    print(f"figure v1g_rss_ratio {streamed / growth[2]:.4f}")
    print(f"figure v1g_rss_streamed_mb {streamed:.1f}")
    print(f"figure v1g_rss_in_memory_mb {growth[2]:.1f}")
    print(f"figure v1g_index_build_s {runs[0]['build_s']:.2f}")
    print(f"figure v1g_index_load_s {runs[1]['build_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
