"""`pointcopy ground`: boxes for object descriptions by attention contrast (the paper's Algorithm 1), with their
IoU report when the records carry ground-truth boxes.

    pointcopy ground --model src/pointcopy/embedded/assets/shapes-tiny --records runs/shapes/data/test \\
        --out runs/ground/shapes-tiny

Records: a JSONL file, one object a line ({"id", "image" | "images", "description", optional "box" [x0, y0, x1,
y1] pixels, optional "image_index"}), or a shapes split folder (one record per scene object, described in its
canonical words). Writes OUT/boxes.jsonl (box + evidence per record; bad records as rows with an "error"),
OUT/report.json (mean IoU, peaks inside their own box, the centre-box baseline) and OUT/run.json (settings). A
killed run resumes where it stopped. See `pointcopy.pipeline.ground` for the algorithm and its choices.
"""

from __future__ import annotations

import argparse

from .args import output_dir, positive_float, positive_int


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def _heads(value: str) -> dict:
    """`LAYER:H,H;LAYER:H` -> {layer: [heads]}."""
    out = {}
    try:
        for part in value.split(";"):
            if part.strip():
                layer, heads = part.split(":")
                out[int(layer)] = [int(h) for h in heads.split(",") if h.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER:H,H;LAYER:H, got {value!r}") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Qwen2.5-VL-family checkpoint (ours, official v1, base)")
    parser.add_argument("--records", required=True, help="JSONL of grounding records, or a shapes split folder")
    parser.add_argument("--out", type=output_dir, required=True, help="output directory (resumable)")
    parser.add_argument("--limit", type=positive_int, help="first N records only")
    add_ground_options(parser)
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")


def add_ground_options(parser: argparse.ArgumentParser) -> None:
    """The `GroundOptions` flags (also used by `pointcopy pipeline build`)."""
    from pointcopy.pipeline.ground import CENTRES, DEFAULT_RATIOS, SHARPNESS, GroundOptions

    d = GroundOptions()
    parser.add_argument("--prompt", default=d.prompt, help="user text; {description} is replaced")
    parser.add_argument("--baseline", default=d.baseline, help="what replaces the description for A'")
    parser.add_argument("--answer-prefix", default=d.answer_prefix,
                        help="text after the assistant turn opens (may hold {description})")
    parser.add_argument("--layers", type=_ints, help="decoder layers averaged (default: early, middle, last)")
    parser.add_argument("--heads", type=_heads, help="only these heads, e.g. '2:0,3;3:1' (default: all)")
    parser.add_argument("--crop-ratios", type=_floats, default=DEFAULT_RATIOS, help="box side / image side")
    parser.add_argument("--centre", choices=CENTRES, default=d.centre)
    parser.add_argument("--sharpness", choices=SHARPNESS, default=d.sharpness)
    parser.add_argument("--eps-scale", type=float, default=d.eps_scale, help="zero guard: eps = scale x mean(A')")
    parser.add_argument("--min-contrast", type=positive_float, default=d.min_contrast,
                        help="R at the peak / median R below this marks a result low-confidence")
    parser.add_argument("--image-scale", type=positive_float, default=d.image_scale,
                        help="resize images by this factor before encoding (finer cells; boxes stay original)")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="suffix rows per forward")


def ground_options_from(args: argparse.Namespace):
    from pointcopy.pipeline.ground import GroundOptions

    return GroundOptions(prompt=args.prompt, baseline=args.baseline, answer_prefix=args.answer_prefix,
                         layers=args.layers, heads=args.heads, crop_ratios=args.crop_ratios, centre=args.centre,
                         sharpness=args.sharpness, eps_scale=args.eps_scale, min_contrast=args.min_contrast,
                         image_scale=args.image_scale, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from pointcopy.pipeline.ground import ground_file

    options = ground_options_from(args)
    started = time.perf_counter()
    ground_file(args.model, args.records, args.out, options, limit=args.limit, threads=args.threads,
                progress=not args.no_progress)
    report = json.loads((args.out / "report.json").read_text())
    print(format_report(report))
    print(f"wrote {args.out}/boxes.jsonl and report.json in {time.perf_counter() - started:.1f}s")
    return 0


def format_report(report: dict) -> str:
    lines = [f"records {report['rows']}: errors {report['errors']}, ground-truth errors {report['gt_errors']}, "
             f"scored {report['scored']} ({report['ambiguous']} with a description shared in their scene, "
             f"left out below)"]
    for label, key in (("attention contrast", "model"), ("centre box (median size)", "centre_baseline")):
        s = report.get(key) or {}
        if s.get("n"):
            other = f", on another object {s['peak_on_other']:.1%}" if "peak_on_other" in s else ""
            lines.append(f"  {label:26s} n={s['n']}  mean IoU {s['mean_iou']:.3f}  peak inside own box "
                         f"{s['peak_inside']:.1%}{other}")
    chance = (report.get("centre_baseline") or {}).get("random_peak_inside")
    if chance is not None:
        lines.append(f"  {'random image token':26s} peak inside own box {chance:.1%}")
    return "\n".join(lines)
