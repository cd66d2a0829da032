"""Patch embedding as a matrix product (`model/patch_embed.py`) vs Qwen's Conv3d: the op, and warm-up steps.

1. The op alone: forward + backward of the patch embedding on `--patches` rows (the perception warm-up's batch of
   32 scenes is ~3,200 patches), `--repeats` interleaved runs, medians.
2. The shapes-tiny perception warm-up (`embedded.perception.pretrain_vision`, 2 threads as in the recipe): the
   same `--steps` steps from the same initial weights with each embedding, alternating `--rounds` times, median
   seconds per run.

Prints `figure patch_embed_op_ratio <x>` and `figure warmup_ratio <x>` (matmul seconds / Conv3d seconds; below
1.0 = faster).

    .venv/bin/python benchmarks/patch_embed.py [--steps 30] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pointcopy.data.shapes import build_split
from pointcopy.data.shapes.build import read_items
from pointcopy.embedded.perception import pretrain_vision
from pointcopy.embedded.recipe import PRESET, ShapesRecipe
from pointcopy.model.patch_embed import MatmulPatchEmbed
from pointcopy.presets import build_preset


def _conv_twin(model):
    """A copy of `model` whose patch embedding is Qwen's own Conv3d module again (same weights)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

    twin = copy.deepcopy(model)
    embed = twin.model.visual.patch_embed
    conv = Qwen2_5_VisionPatchEmbed(embed.patch_size, embed.temporal_patch_size, embed.in_channels, embed.embed_dim)
    conv.proj = embed.proj
    twin.model.visual.patch_embed = conv
    return twin


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patches", type=int, default=3200)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=ShapesRecipe().training.threads)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, processor = build_preset(PRESET, seed=0)
    matmul = model.model.visual.patch_embed
    assert isinstance(matmul, MatmulPatchEmbed)
    conv = _conv_twin(model).model.visual.patch_embed
    patches = torch.randn(args.patches, matmul.proj.weight[0].numel())
    ops = {"conv3d": conv, "matmul": matmul}
    op_times = {name: [] for name in ops}
    for _ in range(args.repeats + 2):
        for name, embed in ops.items():
            op_times[name].append(_time(lambda: embed(patches).sum().backward()))
    op = {name: statistics.median(t[2:]) for name, t in op_times.items()}
    print(f"op, {args.patches} patches, forward + backward: conv3d {op['conv3d'] * 1e3:.1f} ms, "
          f"matmul {op['matmul'] * 1e3:.1f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        build_split(Path(tmp) / "train", 400, seed=5, config=ShapesRecipe().scenes, progress=False)
        items, images = read_items(Path(tmp) / "train"), Path(tmp) / "train" / "images"
        runs = {name: [] for name in ops}
        for r in range(args.rounds):
            for name in (ops if r % 2 == 0 else list(ops)[::-1]):
                fresh = copy.deepcopy(model) if name == "matmul" else _conv_twin(model)
                runs[name].append(_time(lambda: pretrain_vision(fresh, processor, items, images, steps=args.steps,
                                                                seed=0, progress=False)))
    warm = {name: statistics.median(t) for name, t in runs.items()}
    print(f"warm-up, {args.steps} steps x {args.rounds} rounds, {args.threads} thread(s): "
          f"conv3d {warm['conv3d']:.2f} s, matmul {warm['matmul']:.2f} s (medians)")
    print(f"figure patch_embed_op_ratio {op['matmul'] / op['conv3d']:.3f}")
    print(f"figure warmup_ratio {warm['matmul'] / warm['conv3d']:.3f}")


if __name__ == "__main__":
    main()
