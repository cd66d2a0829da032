"""What a client does with a served answer: its `<|copy_k|>` pointers -> the image cells and pixel boxes they copy.

The server returns text only (OpenAI's schema has no field for it); the layout of the request's images is
recomputed here with the checkpoint's processor, the same way the model saw them (`processing.PointCopyProcessor`):

    from pointcopy.processing import PointCopyProcessor
    processor = PointCopyProcessor.from_pretrained("path/to/checkpoint")
    regions = copied_regions(response_text, [image], processor)
    # [{"pointer": 12, "image": 0, "row": 2, "col": 3, "box": [x0, y0, x1, y1]}, ...] in text order
"""

from __future__ import annotations

from ..tokens import COPY_TOKEN_RE


def copied_regions(text: str, images: list, processor) -> list[dict]:
    """Every pointer of `text`, in order, located on the request's `images` (PIL, in request order); pointers past
    the images' tokens are left out, as `inference.Generation.cells` leaves them out."""
    from ..images import to_rgb

    _, layout = processor.encode_images([to_rgb(im) for im in images])
    regions = []
    for match in COPY_TOKEN_RE.finditer(text):
        k = int(match.group(1))
        if k not in layout:
            continue
        image, row, col = layout.locate(k)
        regions.append({"pointer": k, "image": image, "row": row, "col": col,
                        "box": [round(float(v), 2) for v in layout.slot_box(k)]})
    return regions
