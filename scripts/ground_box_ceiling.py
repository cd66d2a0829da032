"""The ceiling of Algorithm 1's box step on a shapes split: boxes from *ideal* contrast maps.

An attention map can at best say how much of each merged cell an object covers. This script gives `choose_box`
exactly that map (R = 1 + 4 x the share of each cell inside the object's box, at the given image scale) and reports
the mean IoU of the boxes it picks, per sharpness criterion, centre rule and crop-ratio set: how much IoU is lost
to the cell grid and the box rule alone, before any model is involved.

    .venv/bin/python scripts/ground_box_ceiling.py runs/ground/data/test [--scales 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image

from pointcopy.geometry import box_iou
from pointcopy.layout import QWEN2_5_VL, SlotMap
from pointcopy.pipeline.ground import DEFAULT_RATIOS, SHARPNESS, _cell_overlap, choose_box, shapes_records

FINE = tuple(round(r, 3) for r in np.arange(0.08, 0.42, 0.02))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split")
    parser.add_argument("--scales", default="1,2")
    parser.add_argument("--json")
    args = parser.parse_args()
    records = [r for r in shapes_records(args.split) if not r.meta["ambiguous"]]
    sizes = {}
    results = []
    for scale in (float(s) for s in args.scales.split(",")):
        for ratios_name, ratios in (("default", DEFAULT_RATIOS), ("fine", FINE)):
            for centre in ("centroid", "peak"):
                for sharpness in SHARPNESS:
                    ious = {"small": [], "large": []}
                    for rec in records:
                        path = rec.images[0]
                        if path not in sizes:
                            with Image.open(path) as im:
                                sizes[path] = im.size
                        w, h = sizes[path]
                        grid = SlotMap.for_images([(round(w * scale), round(h * scale))], **QWEN2_5_VL).grids[0]
                        layout = SlotMap((grid,), ((w, h),))
                        r = 1 + 4 * _cell_overlap(rec.box, grid.rows, grid.cols, (w, h)).ravel()
                        choice = choose_box(r, layout, ratios, centre, sharpness)
                        ious[rec.meta["size"]].append(box_iou(choice.box, rec.box))
                    every = ious["small"] + ious["large"]
                    row = {"scale": scale, "ratios": ratios_name, "centre": centre, "sharpness": sharpness,
                           "n": len(every), "mean_iou": round(float(np.mean(every)), 4),
                           "small": round(float(np.mean(ious["small"])), 4),
                           "large": round(float(np.mean(ious["large"])), 4)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
