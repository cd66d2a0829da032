"""Render a `GroundedAnswer`: the image with each copied region outlined and labelled, and an HTML page with the
trace (each region highlighted in its object's colour) and the answer.

The HTML is self-contained (the overlay is embedded as a data URI), so it can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import re

from PIL import Image, ImageDraw, ImageFont

from ..grounded import GroundedAnswer
from ..tokens import COPY_TOKEN_RE

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#000075",
           "#808000", "#469990", "#800000"]
REGION_RE = re.compile(r"<region>(.*?)(</region>|$)", re.S)


def colour_for(obj_id: int | None, index: int) -> str:
    return PALETTE[((obj_id if obj_id is not None else index) - 1) % len(PALETTE)]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


DISPLAY_SIDE = 896  # small images are enlarged (nearest neighbour) up to this longer side, never shrunk


def display_scale(image: Image.Image, scale: int | None = None) -> int:
    """Integer upscaling for display: `scale` if given, else the largest of 1..4 keeping the longer side within
    DISPLAY_SIDE. Render the image the model saw (`PointCopyProcessor.model_view`), not an upload of any size."""
    if scale is not None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        return scale
    return max(1, min(4, DISPLAY_SIDE // max(image.size)))


def overlay(image: Image.Image, answer: GroundedAnswer, image_index: int = 0, scale: int | None = None) -> Image.Image:
    """Upscaled copy of `image` with every copied cell shaded and each object's box outlined and labelled.

    `image` is image `image_index` of the sample as the processor got it: the boxes in `answer` (located on its
    `slot_map`) are in its pixels. The outline of an object is its first region's box, the union of all that
    region's cells (`SlotMap.union_box`)."""
    sizes = answer.slot_map.image_sizes
    if image_index < len(sizes) and tuple(image.size) != sizes[image_index]:
        raise ValueError(f"image is {image.size[0]}x{image.size[1]} but the answer's boxes are in pixels of a "
                         f"{sizes[image_index][0]}x{sizes[image_index][1]} image (image {image_index} of its "
                         f"slot map): draw on the image the model was given")
    scale = display_scale(image, scale)
    base = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    shade = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(shade)
    font = ImageFont.load_default(size=max(11, 4 * scale))
    objects = [r for r in answer.objects if r.image == image_index and r.box is not None]
    sx = sy = scale
    for n, region in enumerate(objects):
        rgb = _rgb(colour_for(region.obj_id, n + 1))
        for reg in (r for r in answer.regions if r.obj_id == region.obj_id and r.image == image_index):
            for (i, _, _), (x0, y0, x1, y1) in zip(reg.cells, reg.cell_boxes):
                if i == image_index:
                    draw.rectangle([x0 * sx, y0 * sy, x1 * sx, y1 * sy], fill=rgb + (60,))
        x0, y0, x1, y1 = region.box
        draw.rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=rgb + (255,), width=max(2, scale))
        label = f"<obj{region.obj_id}>" if region.obj_id is not None else "region"
        tw, th = draw.textlength(label, font=font), font.size + 4
        ty = y0 * sy - th if y0 * sy >= th else y0 * sy  # above the box, or inside it at the top edge
        draw.rectangle([x0 * sx, ty, x0 * sx + tw + 6, ty + th], fill=rgb + (230,))
        draw.text((x0 * sx + 3, ty + 1), label, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(base.convert("RGBA"), shade).convert("RGB")


def trace_html(answer: GroundedAnswer) -> str:
    """The trace as HTML: every region becomes a highlighted chip `[box] copy ×n`, hover shows the cells."""
    out, pos, n = [], 0, 0
    text = answer.text
    regions = iter(answer.regions)
    for m in REGION_RE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        region = next(regions, None)
        n += 1
        obj = region.obj_id if region is not None else None
        colour = colour_for(obj, n)
        body = m.group(1)
        box = re.match(r"\s*(\[[^\]]*\])", body)
        copies = COPY_TOKEN_RE.findall(body)
        cells = ", ".join(f"({r},{c})" for _, r, c in region.cells) if region is not None else ""
        # everything from the model is escaped: a box text may hold any characters
        label = f"{html.escape(box.group(1)) + ' ' if box else ''}copy &times;{len(copies)}"
        out.append(f'<span class="region" style="border-color:{colour};background:{colour}22" '
                   f'title="copied cells (row,col): {html.escape(cells)}" data-obj="{html.escape(str(obj))}">'
                   f'{label}</span>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out).replace("\n", "<br>\n")


def _cell_note(answer: GroundedAnswer) -> str:
    sides = sorted({g.cell for g in answer.slot_map.grids})
    return f"{sides[0]}&times;{sides[0]} cells" if len(sides) == 1 else "cells"


def png_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _object_rows(answer: GroundedAnswer) -> str:
    rows = []
    for n, r in enumerate(answer.objects, start=1):
        if r.box is None:
            continue
        colour = colour_for(r.obj_id, n)
        box = ", ".join(f"{v:.0f}" for v in r.box)
        rows.append(f'<tr><td><span class="swatch" style="background:{colour}"></span>'
                    f'&lt;obj{r.obj_id}&gt;</td><td>{html.escape(r.query or "")}</td>'
                    f"<td>{len(r.cells)}</td><td>[{box}]</td></tr>")
    return "".join(rows)


def _verdict(answer: GroundedAnswer, expected: str | None) -> str:
    if expected is None:
        return ""
    ok = (answer.answer or "").strip().lower() == expected.strip().lower()
    return (f'<p class="verdict {"ok" if ok else "bad"}">expected: {html.escape(expected)} '
            f'({"correct" if ok else "wrong"})</p>')


def page(image_overlay: Image.Image, question: str, answer: GroundedAnswer, title: str = "pointcopy demo",
         expected: str | None = None, model_note: str = "", original: Image.Image | None = None,
         legend: str = "") -> str:
    """The demo's HTML page. `original`: the image as the model saw it, shown untinted beside the overlay (the
    overlay's shading shifts colours); `legend`: one line explaining the world's drawings and the trace's marks."""
    rows, verdict = _object_rows(answer), _verdict(answer, expected)
    plain = ""
    if original is not None:
        # half the overlay's size: beside it on a laptop screen, large enough to read the colours
        shown = original.resize((max(1, image_overlay.width // 2), max(1, image_overlay.height // 2)),
                                Image.Resampling.NEAREST)
        plain = (f'<figure><img id="original" src="{png_data_uri(shown)}" width="{shown.width}" '
                 f'height="{shown.height}" alt="the image as the model saw it">'
                 f'<figcaption class="note">the image, untinted</figcaption></figure>\n')
    legend_html = f'<p class="note legend">{html.escape(legend)}</p>\n' if legend else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
main {{ display: flex; gap: 32px; align-items: flex-start; flex-wrap: wrap; }}
img {{ border: 1px solid #ccc; image-rendering: pixelated; max-width: 100%; height: auto; }}
figure {{ margin: 0; flex: 0 0 auto; max-width: 100%; }}
section {{ flex: 1 1 420px; min-width: 0; }}
.trace {{ font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.7; max-width: 720px; }}
.region {{ border: 2px solid; border-radius: 4px; padding: 0 3px; white-space: nowrap; }}
.answer {{ font-size: 22px; font-weight: 600; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: middle; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border-bottom: 1px solid #ddd; padding: 3px 8px; }}
.verdict.ok {{ color: #1a7f37; }} .verdict.bad {{ color: #b42318; }}
.note {{ color: #666; font-size: 12px; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p><b>Question:</b> {html.escape(question)}</p>
{legend_html}<main>
<figure><img id="overlay" src="{png_data_uri(image_overlay)}" width="{image_overlay.width}"
 height="{image_overlay.height}" alt="image with copied regions outlined">
<figcaption class="note">shaded: copied {_cell_note(answer)}; outline: union box of an object's cells</figcaption></figure>
{plain}<section>
<p class="answer">Answer: {html.escape(answer.answer or "(none)")}</p>{verdict}
<table><tr><th>object</th><th>query</th><th>cells</th><th>box (px)</th></tr>{rows}</table>
<h2>Trace</h2>
<div class="trace">{trace_html(answer)}</div>
<p class="note">{html.escape(model_note)}</p>
</section></main></body></html>
"""


def _hover_css(scope: str, answer: GroundedAnswer) -> str:
    """Hovering a region of the trace (`.region[data-obj=N]`) shows object N's box (`.pc-box[data-obj=N]`) on the
    image and dims the rest; CSS only (`:has`), so it works where scripts do not run (an HTML component)."""
    ids = sorted({str(r.obj_id) for r in answer.regions if r.obj_id is not None}, key=lambda v: int(v))
    rules = [f'{scope}:has(.region[data-obj="{i}"]:hover) .pc-box[data-obj="{i}"]' for i in ids]
    return (f"{scope} .pc-stage {{ position: relative; display: inline-block; max-width: 100%; overflow: hidden; "
            f"line-height: 0; }}\n"
            f"{scope} .pc-stage img {{ display: block; max-width: 100%; height: auto; image-rendering: pixelated; "
            f"border: 1px solid #ccc; }}\n"
            f"{scope} .pc-box {{ position: absolute; box-sizing: border-box; border: 3px solid; opacity: 0; "
            f"pointer-events: none; transition: opacity .12s; }}\n"
            f"{scope} .trace .region {{ cursor: crosshair; border: 2px solid; border-radius: 4px; padding: 0 3px; "
            f"white-space: nowrap; }}\n"
            f"{scope} .trace .region:hover {{ outline: 2px solid #222; }}\n"
            f"{scope} .trace {{ font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.7; }}\n"
            f"{scope} .answer {{ font-size: 22px; font-weight: 600; }}\n"
            f"{scope} .swatch {{ display: inline-block; width: 12px; height: 12px; margin-right: 6px; }}\n"
            f"{scope} .verdict.ok {{ color: #1a7f37; }} {scope} .verdict.bad {{ color: #b42318; }}\n"
            + "".join(f"{r} {{ opacity: 1; box-shadow: 0 0 0 9999px rgba(0, 0, 0, .45); }}\n" for r in rules))


def fragment(images: list[Image.Image], answer: GroundedAnswer, expected: str | None = None,
             scale: int | None = None, pending: bool = False, scope: str = "pc-result") -> str:
    """The demo page's content as one embeddable HTML fragment, nothing written: every image of the sample with its
    copied regions drawn (`overlay`), the answer, the object table and the trace (`trace_html`); hovering a region
    of the trace highlights its object's box on the image. `images` are the images the model was given
    (`PointCopyProcessor.model_view`); `pending`: the trace is still being generated (the answer may come)."""
    figures = []
    for i, image in enumerate(images):
        picture = overlay(image, answer, image_index=i, scale=scale)
        boxes = []
        for n, r in enumerate(o for o in answer.objects if o.image == i and o.box is not None):
            x0, y0, x1, y1 = r.box
            w, h = image.size
            boxes.append(f'<div class="pc-box" data-obj="{html.escape(str(r.obj_id))}" style="border-color:'
                         f'{colour_for(r.obj_id, n + 1)};left:{100 * x0 / w:.3f}%;top:{100 * y0 / h:.3f}%;'
                         f'width:{100 * (x1 - x0) / w:.3f}%;height:{100 * (y1 - y0) / h:.3f}%"></div>')
        caption = f"image {i + 1}: " if len(images) > 1 else ""
        figures.append(f'<figure><div class="pc-stage"><img class="pc-overlay" src="{png_data_uri(picture)}" '
                       f'width="{picture.width}" height="{picture.height}" alt="image {i + 1} with copied regions '
                       f'outlined">{"".join(boxes)}</div><figcaption class="note">{caption}shaded: copied '
                       f'{_cell_note(answer)}; outline: union box of an object\'s cells</figcaption></figure>')
    shown = answer.answer or ("…" if pending else "(none)")
    return (f'<div class="{scope}"><style>{_hover_css("." + scope, answer)}</style>{"".join(figures)}'
            f'<p class="answer">Answer: {html.escape(shown)}</p>{_verdict(answer, expected) if not pending else ""}'
            f'<table><tr><th>object</th><th>query</th><th>cells</th><th>box (px)</th></tr>{_object_rows(answer)}'
            f'</table><h3>Trace</h3><div class="trace">{trace_html(answer)}</div></div>')
