"""Generation throughput: vLLM serving (`pointcopy.serving`) vs our transformers `generate`, same model and prompts.

A random point-and-copy model (Qwen2.5-VL layout, hidden 512, 8 layers, ~25M parameters: large enough that batching
matters on a CPU) is saved once; both engines then generate exactly `--new-tokens` tokens for the same B prompts
(scene images of four sizes, greedy; eos ignored), at B = 1, 8 and 32. Runs are interleaved per repeat and the
median generated tokens/s of each engine is compared. Prints a table, then `figure vllm_vs_hf_batch{B} <x>`
(vLLM tokens/s divided by transformers tokens/s; above 1 vLLM is faster).

    .venv-vllm/bin/python benchmarks/serve.py [--repeats 3] [--new-tokens 64]

Runs in vLLM's environment (scripts/setup_vllm), where pointcopy's transformers path runs too. Engine start-up
(~30 s on CPU) is not timed; vLLM's first batch of each size is a warm-up and not timed either.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

BATCHES = (1, 8, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vllm-compile", action="store_true", help="let vLLM compile the model (torch.compile) "
                        "instead of running eagerly, the CPU default here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from decode import scene  # benchmarks/decode.py: the same drawn scenes

    from pointcopy.inference import generate, prepare_batch
    from pointcopy.model import PointCopyForConditionalGeneration
    from pointcopy.presets import save_tiny
    from pointcopy.processing import PointCopyProcessor
    from pointcopy.serving.engine import PointCopyEngine

    tmp = Path(tempfile.mkdtemp(prefix="pointcopy-serve-bench-"))
    model_dir = save_tiny(tmp / "model", seed=0, hidden_size=512, layers=8, heads=8, kv_heads=4, vision_hidden=128,
                          vision_depth=2)
    model = PointCopyForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = PointCopyProcessor.from_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    sizes = [(168, 112), (112, 112), (140, 84), (112, 168)]
    questions = [f"How many squares are there in picture {n}? Count them." for n in range(max(BATCHES))]
    images = [[scene(*sizes[n % 4], seed=n)] for n in range(max(BATCHES))]
    steps = args.new_tokens

    def run_hf(b: int) -> float:
        t0 = time.perf_counter()
        gens = generate(model, processor, questions[:b], images[:b], max_new_tokens=steps, min_new_tokens=steps)
        dt = time.perf_counter() - t0
        assert all(len(g.ids) == steps or g.finished for g in gens)
        return b * steps / dt

    batch = prepare_batch(processor, questions, images)  # the prompts `generate` builds, unpadded for vLLM
    prompts = [(ids[mask.bool()].tolist(), imgs)
               for ids, mask, imgs in zip(batch["input_ids"], batch["attention_mask"], images)]

    with PointCopyEngine(model_dir, max_num_seqs=max(BATCHES), max_model_len=1024,
                         enforce_eager=not args.vllm_compile) as engine:
        def run_vllm(b: int) -> float:
            t0 = time.perf_counter()
            rows = engine.generate_ids(prompts[:b], steps, ignore_eos=True)
            dt = time.perf_counter() - t0
            assert all(len(r) == steps for r in rows)
            return b * steps / dt

        for b in BATCHES:
            run_vllm(b)  # warm-up
        hf, vl = {b: [] for b in BATCHES}, {b: [] for b in BATCHES}
        for _ in range(args.repeats):
            for b in BATCHES:
                hf[b].append(run_hf(b))
                vl[b].append(run_vllm(b))
    print(f"model: {params / 1e6:.1f}M parameters (hidden 512, 8 layers), {steps} new tokens, greedy, "
          f"{args.threads} threads, median of {args.repeats}, vLLM {'compiled' if args.vllm_compile else 'eager'}")
    print(f"{'batch':>5} {'transformers tok/s':>19} {'vLLM tok/s':>11} {'vLLM / transformers':>20}")
    for b in BATCHES:
        h, v = statistics.median(hf[b]), statistics.median(vl[b])
        print(f"{b:>5} {h:>19.1f} {v:>11.1f} {v / h:>20.2f}")
    for b in BATCHES:
        print(f"figure vllm_vs_hf_batch{b} {statistics.median(vl[b]) / statistics.median(hf[b]):.3f}")


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    main()
