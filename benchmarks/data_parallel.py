"""Training speed of shapes-tiny: one process with all threads vs data-parallel processes with one thread each.

Same data (a fresh shapes split), same global batch, same number of steps; the two set-ups alternate `--repeats`
times and the median `train()` wall time of each is compared. Prints a table, then
`figure data_parallel_speedup <x>` (single-process seconds / data-parallel seconds; > 1 = data parallel faster).

With `--find-unused` the two set-ups are both data parallel, DDP's search for unused parameters on (the Trainer's
default, which the shapes recipe keeps) and off: `figure ddp_find_unused_off_speedup <x>` (on / off; > 1 = off
faster).

    .venv/bin/python benchmarks/data_parallel.py [--steps 60] [--repeats 3] [--processes 2] [--threads 2] [--batch-size 16]
                                                 [--find-unused]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from pointcopy.embedded.recipe import PRESET, ShapesRecipe, train_options
from pointcopy.training.parallel import train_data_parallel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="total thread budget of both set-ups")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=ShapesRecipe().training.batch_size, help="global batch")
    ap.add_argument("--find-unused", action="store_true", help="compare DDP's unused-parameter search on vs off")
    args = ap.parse_args()

    from pointcopy.data.shapes.build import build_split

    recipe = ShapesRecipe.of(max_steps=args.steps, threads=args.threads, batch_size=args.batch_size)
    # name -> (processes, ddp_find_unused_parameters; None: as the recipe's train_options set it)
    setups = ({"find unused on": (args.processes, True), "find unused off": (args.processes, False)}
              if args.find_unused else {"single": (1, None), "parallel": (args.processes, None)})
    times: dict[str, list[float]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        data = build_split(Path(tmp) / "data", args.items, seed=11, config=recipe.scenes, progress=False)
        for rep in range(args.repeats):
            for name, (processes, find_unused) in setups.items():
                opts = train_options(recipe, data["copy"], Path(tmp) / f"{name}-{rep}".replace(" ", "-"), seed=0,
                                     progress=False, require_object_regions=True)
                opts.save_steps = 10 * args.steps  # no checkpoint inside the timed loop
                if find_unused is not None:
                    opts.ddp_find_unused_parameters = find_unused
                summary = train_data_parallel(opts, processes)
                times[name].append(summary["train_seconds_this_session"])
                print(f"repeat {rep}: {name:<8} {times[name][-1]:.1f} s", flush=True)
    print(f"\n{PRESET}, {args.steps} steps of batch {recipe.training.batch_size}, {args.threads} threads in total")
    if args.find_unused:
        on, off = statistics.median(times["find unused on"]), statistics.median(times["find unused off"])
        print("| DDP find_unused_parameters | median s | s/step |\n|---|---|---|")
        print(f"| on | {on:.1f} | {on / args.steps:.3f} |\n| off | {off:.1f} | {off / args.steps:.3f} |")
        print(f"figure ddp_find_unused_off_speedup {on / off:.3f}")
        return
    single, parallel = statistics.median(times["single"]), statistics.median(times["parallel"])
    print("| set-up | median s | s/step |\n|---|---|---|")
    print(f"| 1 process x {args.threads} threads | {single:.1f} | {single / args.steps:.3f} |")
    print(f"| {args.processes} processes x {max(1, args.threads // args.processes)} thread(s) | {parallel:.1f} | "
          f"{parallel / args.steps:.3f} |")
    print(f"figure data_parallel_speedup {single / parallel:.3f}")


if __name__ == "__main__":
    main()
