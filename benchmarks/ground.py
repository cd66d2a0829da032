"""Grounding throughput: the batched, prefix-sharing grounder vs a naive one (two full forwards per object).

Same model, same scenes (shapes world, 4 and 8 objects per image), same options; both grounders must give the same
box for every object (asserted). Runs of the two are interleaved and the median objects/s of each is compared.
Prints a table, then `figure ground_speedup_4obj <x>` and `figure ground_speedup_8obj <y>` (shared objects/s
divided by naive objects/s; > 1 = sharing faster).

    .venv/bin/python benchmarks/ground.py [--model DIR] [--scenes 6] [--repeats 5] [--threads 1] [--device cpu]

Default model: the shipped shapes-tiny checkpoint (src/pointcopy/embedded/assets/shapes-tiny).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pointcopy.analysis.traces import load_model
from pointcopy.data.shapes.scene import SceneConfig, generate_scene, render
from pointcopy.data.shapes.traces import describe
from pointcopy.pipeline.ground import GroundOptions, Grounder, GroundRecord

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "pointcopy" / "embedded" / "assets" / "shapes-tiny"


def scenes(n_objects: int, count: int):
    config = SceneConfig(min_objects=3, max_objects=8, exclusive_cells=True)
    out = []
    for i in range(count):
        scene = generate_scene(f"ground-bench:{n_objects}:{i}", config, num_objects=n_objects)
        image = render(scene)
        out.append([GroundRecord(f"s{i}/o{o.id}", [image], describe(o), tuple(o.box)) for o in scene.objects])
    return out


def run(grounder: Grounder, groups, naive: bool) -> tuple[float, list]:
    t0 = time.perf_counter()
    rows = [row for group in groups for row in grounder.ground_group(group, naive=naive)]
    if grounder.model.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return sum(len(g) for g in groups) / elapsed, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED))
    parser.add_argument("--scenes", type=int, default=6, help="images per object count")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, processor, info = load_model(args.model)
    model.to(args.device)
    grounder = Grounder(model, processor, GroundOptions())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model} ({info.model_type}, {info.num_layers} layers, {n_params / 1e6:.2f}M parameters); "
          f"layers analysed {list(grounder.layers)}; {args.scenes} images per row; {args.repeats} interleaved "
          f"repeats; {args.threads} thread(s); device {args.device}")
    print(f"{'objects':>7} {'naive obj/s':>12} {'shared obj/s':>13} {'speedup':>8}")
    for n_objects in (4, 8):
        groups = scenes(n_objects, args.scenes)
        _, shared_rows = run(grounder, groups, naive=False)  # warm-up, and the boxes compared below
        _, naive_rows = run(grounder, groups, naive=True)
        for a, b in zip(shared_rows, naive_rows):
            assert a["error"] is None and b["error"] is None, (a.get("error"), b.get("error"))
            assert a["box"] == b["box"] and a["peak"] == b["peak"], (a["id"], a["box"], b["box"])
        shared, naive = [], []
        for r in range(args.repeats):
            order = [(False, shared), (True, naive)][:: 1 if r % 2 == 0 else -1]
            for is_naive, store in order:
                store.append(run(grounder, groups, is_naive)[0])
        s, n = statistics.median(shared), statistics.median(naive)
        print(f"{n_objects:>7} {n:>12.1f} {s:>13.1f} {s / n:>8.2f}")
        print(f"boxes equal: {len(shared_rows)} objects")
        print(f"figure ground_speedup_{n_objects}obj {s / n:.3f}")


if __name__ == "__main__":
    main()
