"""`run_demo`: one grounded answer from the embedded model, printed and rendered to demo.html + an overlay PNG.

The model is the shipped `shapes-tiny` checkpoint (`embedded/assets/shapes-tiny`; how it was trained:
docs/embedded-world.md#the-shipped-checkpoint); if it is absent, the recipe trains one on first use (with a progress
bar) and caches it under `~/.cache/pointcopy/shapes-tiny`.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

ASSET = Path(__file__).resolve().parent / "assets" / "shapes-tiny"
DEMO_SEED = 7  # scenes of the demo come from a split no training or test item uses


def cache_dir() -> Path:
    return Path(os.environ.get("POINTCOPY_CACHE", Path.home() / ".cache" / "pointcopy")) / "shapes-tiny"


def ensure_model(progress: bool = True) -> Path:
    """Directory of a trained shapes-tiny model: the shipped asset, else a cached (or freshly trained) one."""
    if (ASSET / "config.json").is_file():
        return ASSET
    from .recipe import ShapesRecipe, build_data, train_variant

    root = cache_dir()
    final = root / "runs" / "copy-seed0" / "final"
    if not (final / "config.json").is_file():
        print(f"no shipped checkpoint; training shapes-tiny once into {root} (a few minutes on 2 CPU cores)")
        build_data(root, ShapesRecipe(), progress=progress)
        final = train_variant(root, ShapesRecipe(), "copy", progress=progress)
    return final


@dataclass
class DemoResult:
    question: str
    expected: str | None
    answer: object  # GroundedAnswer
    html_path: Path
    png_path: Path
    seed: int | None = None  # the scene's (None for the user's own image)
    warnings: list = None  # what the console and the page said about the input or the generation
    trace: str = ""


def summarize_trace(text: str) -> str:
    """The trace with each `<region>[box]<|copy_k|>...</region>` shown as `[box]{n cells}`."""
    def short(m: re.Match) -> str:
        n = len(re.findall(r"<\|copy_\d+\|>", m.group(0)))
        box = re.search(r"\[[^\]]*\]", m.group(0))
        return f"{box.group(0) if box else ''}{{{n} cell{'s' if n != 1 else ''}}}"

    return re.sub(r"<region>.*?(?:</region>|$)", short, text, flags=re.S)


def run_demo(out_dir: str | Path = ".", seed: int | None = None, image_path: str | None = None,
             question: str | None = None, model_dir: str | Path | None = None, max_new_tokens: int = 640,
             threads: int = 2, echo=print, decoding=None) -> DemoResult:
    """Answer one question and render it. Everything a user typed (image, question, output folder, model path,
    numbers) is checked before the model loads; a problem raises ValueError / FileNotFoundError naming it.
    `decoding` (`decoding.DecodingOptions`; default greedy): its suffix is appended to the question sent, and with
    sampling the scene seed seeds it unless it has a seed of its own (`max_new_tokens` is this function's)."""
    import torch

    from ..data.shapes.build import make_item
    from ..data.shapes.scene import render
    from ..demo.render import overlay, page
    from ..images import open_rgb
    from transformers import StoppingCriteriaList

    from ..decoding import DecodingOptions, with_seed
    from ..inference import RepeatedPointerStop, generate
    from ..model import PointCopyForConditionalGeneration
    from ..model.convert import check_model_source
    from ..processing import PointCopyProcessor
    from .recipe import load_recipe

    if max_new_tokens < 1 or threads < 1:
        raise ValueError(f"max_new_tokens and threads must be >= 1, got {max_new_tokens} and {threads}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file")
    if model_dir is not None and check_model_source(model_dir) != "local":
        raise FileNotFoundError(f"{model_dir}: no such model directory (the demo runs local checkpoints)")
    model_dir = Path(model_dir) if model_dir else ensure_model()
    processor = PointCopyProcessor.from_pretrained(model_dir)

    expected = None
    if image_path:
        try:
            image = open_rgb(image_path)
        except (OSError, ValueError) as exc:  # missing, empty, truncated, not an image, a decompression bomb
            raise ValueError(f"image {image_path}: cannot be read as an image ({type(exc).__name__}: {exc})") from None
        question = question or "How many objects are there?"
    else:
        seed = random.randrange(1 << 30) if seed is None else seed
        item = make_item(DEMO_SEED, seed, load_recipe(model_dir).scenes)
        image = render(item.scene)
        if question is None:
            question, expected = item.question.text, item.question.answer
    processor.check_user_text(question)
    decoding = with_seed(decoding or DecodingOptions(), seed)
    warnings = []
    if image_path:  # the picture as the user gave it, before it is fitted to the vision tower
        from .input_check import world_warning

        warning = world_warning(image, load_recipe(model_dir).scenes)
        if warning:
            warnings.append(warning)
    # From here on the picture is the one the vision tower sees: a 10000 x 10000 upload costs what a 448 x 448
    # one does, and the overlay shows exactly the cells the model could copy.
    image = processor.model_view(image)

    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar for a 5 MB model is noise to a demo user
    model = PointCopyForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    runaway = RepeatedPointerStop(processor.copy_token_start)
    gen = generate(model, processor, [question], [[image]], max_new_tokens=max_new_tokens, suffix=decoding.suffix,
                   seed=decoding.seed_for(), stopping_criteria=StoppingCriteriaList([runaway]),
                   **decoding.generate_kwargs())[0]
    if runaway.stopped:
        warnings.append(runaway.message)
    answer = gen.grounded()  # located on the layout generate used (gen.slot_map), not a re-run processor

    if not image_path:
        echo(f"scene seed: {seed} (pointcopy demo --seed {seed} draws this scene again)")
    echo(f"question: {question}")
    echo("trace:\n  " + summarize_trace(gen.text).replace("\n", "\n  "))
    echo(f"{'object':<8} {'query':<24} {'cells':>5}  box (px)")
    for r in answer.objects:
        if r.box is not None:
            echo(f"<obj{r.obj_id}>".ljust(8) + f" {(r.query or '')[:24]:<24} {len(r.cells):>5}  "
                 f"[{', '.join(f'{v:.0f}' for v in r.box)}]")
    verdict = ""
    if expected is not None:
        verdict = " (correct)" if (answer.answer or "").strip().lower() == expected.lower() else f" (expected {expected})"
    cut = "" if gen.finished or runaway.stopped else "  [cut at max_new_tokens]"
    echo(f"answer: {answer.answer}{verdict}{cut}")
    for w in warnings:
        echo(f"warning: {w}")

    out_dir.mkdir(parents=True, exist_ok=True)
    picture = overlay(image, answer)
    png_path, html_path = out_dir / "demo_overlay.png", out_dir / "demo.html"
    picture.save(png_path)
    from ..data.shapes.traces import LEGEND

    html_path.write_text(page(picture, question, answer, expected=expected, original=image, legend=LEGEND,
                              model_note=f"model: {model_dir} (pointcopy shapes-tiny)"
                              + "".join(f". Warning: {w}" for w in warnings)), encoding="utf-8")
    echo(f"wrote {html_path} and {png_path}")
    return DemoResult(question, expected, answer, html_path, png_path, None if image_path else seed, warnings,
                      gen.text)
