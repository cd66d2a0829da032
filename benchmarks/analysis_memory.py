"""Peak memory of an attention analysis: `AttentionProbe` vs `output_attentions=True` (eager), by sequence length.

The probe reduces each analysed layer's attention rows to masses over a few key groups as they are computed, so
what it holds grows with length x groups x analysed layers and its transient with one chunk of query rows; an
analysis that asks the model for its attention maps holds (heads x length x length) per layer, for every layer.

One forward of a tiny text-heavy point-and-copy model (one small image, then text up to the length) per
configuration, each in a fresh subprocess: peak RSS (VmHWM, `memory_probe.py`) during the forward minus the
RSS after loading the model and a short warm-up forward (the peak is reset there through /proc/self/clear_refs
where the kernel allows it). Prints a table, then

    figure analysis_peak_mb_probe_2048 <MB>      probe, every layer analysed, longest length
    figure analysis_peak_mb_full_2048 <MB>       output_attentions=True with eager attention, longest length
    figure analysis_memory_ratio_2048 <x>        full / probe
    figure analysis_probe_growth_exponent <e>    log2 of probe(longest) / probe(second longest): ~1 = linear
    figure analysis_full_growth_exponent <e>     the same for full: ~2 = quadratic

    .venv/bin/python benchmarks/analysis_memory.py [--lengths 512 1024 2048] [--layers 6] [--heads 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

from memory_probe import peak_mb, reset_peak, rss_mb  # benchmarks/memory_probe.py, beside this script


def child(cfg: dict) -> dict:
    """One configuration: build the model, warm up, reset the peak, one forward; -> the numbers."""
    import torch
    from PIL import Image

    from pointcopy.analysis.probe import AttentionProbe
    from pointcopy.inference import prompt_text
    from pointcopy.presets import build_tiny_processor, tiny_model

    torch.set_num_threads(cfg["threads"])
    processor = build_tiny_processor()
    model = tiny_model(0, processor.tokenizer, hidden_size=cfg["hidden"], layers=cfg["layers"], heads=cfg["heads"],
                       kv_heads=cfg["kv_heads"], vision_hidden=32, vision_depth=1)
    image = Image.new("RGB", (56, 56), (200, 40, 40))
    batch = processor([prompt_text(processor, "Describe the picture.", 1)], [image])

    def inputs(length: int) -> dict:
        prompt = batch["input_ids"][0]
        gen = torch.Generator().manual_seed(length)
        text = torch.randint(0, processor.copy_token_start - 400, (max(0, length - len(prompt)),), generator=gen)
        ids = torch.cat([prompt, text])[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "mm_token_type_ids": (ids == processor.image_token_id).int(),
                "pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}

    def groups(ids) -> torch.Tensor:
        g = torch.zeros(1, ids.shape[1], cfg["groups"])
        g[0, :, 0] = (ids[0] == processor.image_token_id).float()
        g[0, :, 1] = 1.0
        g[0, :, 2:] = (torch.rand(ids.shape[1], cfg["groups"] - 2, generator=torch.Generator().manual_seed(1)) < 0.1)
        return g

    analysed = list(range(cfg["layers"])) if cfg["analysed"] == "all" else [cfg["layers"] - 1]

    def forward(x) -> int:
        with torch.no_grad():
            if cfg["mode"] == "probe":
                with AttentionProbe(model, analysed, groups(x["input_ids"])) as probe:
                    model(**x, use_cache=False)
                kept = sum(m.numel() * m.element_size() for m in probe.masses().values())
            else:
                out = model(**x, use_cache=False, output_attentions=True)
                kept = sum(a.numel() * a.element_size() for a in out.attentions)
                del out
        return kept

    if cfg["mode"] == "full":
        model.set_attn_implementation("eager")
    forward(inputs(64))  # warm-up: code paths and allocator pools of a short forward
    base = rss_mb()
    reset = reset_peak()
    if not reset:
        base = max(base, peak_mb())
    x = inputs(cfg["length"])
    t0 = time.perf_counter()
    kept = forward(x)
    seconds = time.perf_counter() - t0
    return {**cfg, "peak_mb": max(0.0, peak_mb() - base), "kept_mb": kept / 2 ** 20, "seconds": seconds,
            "seq_len": int(x["input_ids"].shape[1]), "peak_reset": reset}


def run_child(cfg: dict, default_malloc: bool = False) -> dict:
    env = dict(os.environ)
    if not default_malloc:
        # glibc raises its mmap threshold each time a large block is freed, after which freed blocks stay in the
        # heap: peak RSS would then count the freed maps and chunks of earlier layers, not memory in use. A fixed
        # threshold hands every large block back when it is freed, for both methods alike.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(f"configuration {cfg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's dynamic mmap threshold (peaks then include freed heap blocks)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    lengths = sorted(args.lengths)
    base = dict(layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, hidden=args.hidden,
                groups=args.groups, threads=args.threads)
    configs = [("probe", "1"), ("probe", "all"), ("full", "all")]
    print(f"model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads ({args.kv_heads} kv); "
          f"{args.groups} key groups; one fresh process per cell; peak RSS of one forward above the loaded model")
    print("full = output_attentions=True, eager: every layer's (heads x L x L) maps are returned; "
          + ("glibc's default malloc" if args.default_malloc else "MALLOC_MMAP_THRESHOLD_=65536 (freed blocks "
                                                                  "go back to the OS)"))
    results: dict[tuple[str, str], dict[int, dict]] = {c: {} for c in configs}
    started = time.perf_counter()
    for length in lengths:
        for mode, analysed in configs:
            results[(mode, analysed)][length] = run_child({**base, "length": length, "mode": mode,
                                                           "analysed": analysed}, args.default_malloc)
    if not all(r["peak_reset"] for c in results.values() for r in c.values()):
        print("note: /proc/self/clear_refs unavailable; peaks are measured above the loading peak")
    head = f"{'length':>6} {'probe 1 layer MB':>17} {'probe all MB':>13} {'full MB':>9} {'full/probe':>11} " \
           f"{'maps held MB':>13} {'masses held MB':>15}"
    print(head)
    for length in lengths:
        p1, pa, f = (results[c][length] for c in configs)
        print(f"{length:>6} {p1['peak_mb']:>17.1f} {pa['peak_mb']:>13.1f} {f['peak_mb']:>9.1f} "
              f"{f['peak_mb'] / max(pa['peak_mb'], 1e-9):>11.1f} {f['kept_mb']:>13.1f} {pa['kept_mb']:>15.3f}")

    def exponent(cell: dict[int, dict]) -> float:
        a, b = lengths[-2], lengths[-1]
        ya, yb = cell[a]["peak_mb"], cell[b]["peak_mb"]
        return math.log(yb / ya) / math.log(b / a) if ya > 0 and yb > 0 else float("nan")

    longest = lengths[-1]
    probe, full = results[("probe", "all")], results[("full", "all")]
    print(f"({time.perf_counter() - started:.0f} s)")
    print(f"figure analysis_peak_mb_probe_{longest} {probe[longest]['peak_mb']:.1f}")
    print(f"figure analysis_peak_mb_full_{longest} {full[longest]['peak_mb']:.1f}")
    ratio = full[longest]["peak_mb"] / max(probe[longest]["peak_mb"], 1e-9)
    print(f"figure analysis_memory_ratio_{longest} {ratio:.1f}")
    if len(lengths) >= 2:
        print(f"figure analysis_probe_growth_exponent {exponent(probe):.2f}")
        print(f"figure analysis_full_growth_exponent {exponent(full):.2f}")


if __name__ == "__main__":
    main()
