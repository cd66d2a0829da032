"""`pointcopy app`: a Gradio web app around grounded generation.

Upload one or more images or draw a shapes scene (its seed is shown, so a run can be reproduced), ask a question,
and watch the grounded trace stream in: every copied region drawn on the image with its `<objN>` label, the trace
with its regions highlighted (hover one to see it on the image), and the answer. The HTML comes from the demo's
renderer (`pointcopy.demo.render.fragment`).

    build_app(model_dir=None) -> gradio.Blocks    (queued; one generation at a time)
    launch(model_dir=None, host="127.0.0.1", port=7860, share=False)

The helpers below the UI (`read_images`, `draw_scene`, `answer_stream`, `load_model`) need no browser. Models load
once per path / hub id and stay cached for the life of the process.
"""

from __future__ import annotations

import html
import queue
import random
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_IMAGES = 8
SHIPPED_NOTE = ("The shipped model, shapes-tiny, only knows the shapes world (scenes like those of \"Draw a shapes "
                "scene\"): on other pictures its answers mean nothing.")
STREAM_INTERVAL = 0.25  # seconds between two page updates while a trace streams

_MODELS: dict[str, tuple] = {}
_MODELS_LOCK = threading.Lock()


class UserError(ValueError):
    """A problem with what the user gave (file, question, model): shown as one line in the page."""


# --------------------------------------------------------------------------------------------- models
def model_key(spec: str | Path | None) -> str:
    """The cache key of a model: the resolved directory of a local checkpoint, the id of a hub one; blank -> the
    shipped shapes-tiny. UserError for a mistyped path or a damaged checkpoint (nothing is loaded)."""
    from .embedded.demo import ensure_model
    from .model.convert import check_model_source

    text = str(spec or "").strip()
    if not text:
        return str(ensure_model(progress=False))
    try:
        kind = check_model_source(text)
    except (OSError, ValueError) as exc:
        raise UserError(f"model: {exc}") from None
    return str(Path(text).expanduser().resolve()) if kind == "local" else text


def load_model(spec: str | Path | None, threads: int = 2):
    """(model, processor, key), loaded once per key (see `model_key`) and then reused."""
    import torch

    from .model import PointCopyForConditionalGeneration
    from .processing import PointCopyProcessor

    key = model_key(spec)
    with _MODELS_LOCK:
        if key not in _MODELS:
            torch.set_num_threads(threads)
            try:
                processor = PointCopyProcessor.from_pretrained(key)
                model = PointCopyForConditionalGeneration.from_pretrained(key, dtype="auto").eval()
            except (OSError, ValueError) as exc:  # no network for a hub id, a checkpoint of another kind, ...
                raise UserError(f"model {key}: cannot be loaded ({type(exc).__name__}: {exc})") from None
            _MODELS[key] = (model, processor)
    model, processor = _MODELS[key]
    return model, processor, key


# --------------------------------------------------------------------------------------------- inputs
def read_images(paths) -> list:
    """Uploaded files -> RGB images; UserError naming the first file that is not a readable image."""
    from .images import open_rgb

    paths = [p for p in (paths or []) if p]
    if len(paths) > MAX_IMAGES:
        raise UserError(f"{len(paths)} images uploaded; at most {MAX_IMAGES} per question")
    images = []
    for p in paths:
        p = getattr(p, "name", p)  # a path, or a file object of an older Gradio
        name = Path(p).name
        try:
            images.append(open_rgb(p))
        except Exception as exc:  # noqa: BLE001 -- not an image, truncated, a decompression bomb, ...
            detail = str(exc).replace(str(p), name)
            raise UserError(f"{name} cannot be read as an image ({type(exc).__name__}: {detail})") from None
    return images


@dataclass
class Scene:
    seed: int
    image: object  # PIL image
    question: str
    expected: str


def draw_scene(seed: int | None = None, model_spec: str | None = None) -> Scene:
    """Scene `seed` of the demo's split (`pointcopy demo --seed`), drawn with the scene settings of the chosen
    model's recipe (the default recipe for a model without one), and its generated question."""
    from .data.shapes.build import make_item
    from .data.shapes.scene import render
    from .embedded.demo import DEMO_SEED
    from .embedded.recipe import load_recipe

    seed = random.randrange(1 << 30) if seed is None else int(seed)
    if seed < 0:
        raise UserError(f"scene seed must be >= 0, got {seed}")
    try:
        key = model_key(model_spec)
        recipe = load_recipe(key) if Path(key).is_dir() else load_recipe(model_key(None))
    except (OSError, ValueError):
        recipe = load_recipe(model_key(None))
    item = make_item(DEMO_SEED, seed, recipe.scenes)
    return Scene(seed, render(item.scene), item.question.text, item.question.answer)


# --------------------------------------------------------------------------------------------- generation
@dataclass
class Update:
    status: str  # one line of plain text
    html: str  # the rendered answer so far (render.fragment)
    done: bool = False
    text: str = ""  # the raw trace so far
    warnings: tuple[str, ...] = ()  # the picture is unlike the model's world, a runaway loop was stopped


def world_warnings(images: list, model_key: str) -> list[str]:
    """For a shapes model (one with a RECIPE.json): why each picture does not look like its world (the demo's
    `embedded.input_check`); nothing for other models."""
    if not (Path(model_key) / "RECIPE.json").is_file():
        return []
    from .embedded.input_check import world_warning
    from .embedded.recipe import load_recipe

    scenes = load_recipe(model_key).scenes
    found = (world_warning(image, scenes, f"image {n + 1}" if len(images) > 1 else "this image")
             for n, image in enumerate(images))
    return [w for w in found if w]


def answer_stream(images: list, question: str, model_spec: str | None = None, max_new_tokens: int = 640,
                  expected: str | None = None, threads: int = 2, interval: float = STREAM_INTERVAL,
                  cancel: threading.Event | None = None, check_world: bool = True) -> Iterator[Update]:
    """Generate an answer and yield the page's state as the trace grows (at most one update per `interval`
    seconds), then once more with `done=True`. Raises UserError for a bad question / model / prompt length.
    `check_world`: warn when a picture is unlike a shapes model's world (uploads; a drawn scene is not)."""
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    from .demo.render import fragment
    from .grounded import GroundedAnswer
    from .inference import RepeatedPointerStop, generate

    question = (question or "").strip()
    if not images:
        raise UserError("no image: upload one or more images, or draw a shapes scene")
    if not question:
        raise UserError("type a question first")
    if max_new_tokens < 1:
        raise UserError(f"max new tokens must be >= 1, got {max_new_tokens}")
    model, processor, key = load_model(model_spec, threads)
    warnings = world_warnings(images, key) if check_world else []  # on the pictures as given, before fitting
    try:
        processor.check_user_text(question)
        # the pictures the vision tower sees: the overlay shows exactly the cells the model could copy
        images = [processor.model_view(im) for im in images]
        _, slot_map = processor.encode_images(images)
    except ValueError as exc:
        raise UserError(str(exc)) from None

    tokens: queue.Queue = queue.Queue()
    cancel = cancel or threading.Event()

    class Streamer(BaseStreamer):
        first = True

        def put(self, value):
            if self.first:  # generate() hands over the prompt first
                self.first = False
                return
            tokens.put([int(v) for v in value.reshape(-1)])

        def end(self):
            pass

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    runaway = RepeatedPointerStop(processor.copy_token_start)
    outcome: dict = {}

    def work():
        try:
            outcome["gen"] = generate(model, processor, [question], [images], max_new_tokens=max_new_tokens,
                                      streamer=Streamer(),
                                      stopping_criteria=StoppingCriteriaList([Cancelled(), runaway]))[0]
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread
            outcome["error"] = exc
        finally:
            tokens.put(None)

    eos = {processor.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    eos_cfg = model.generation_config.eos_token_id
    eos |= set(eos_cfg if isinstance(eos_cfg, (list, tuple)) else [eos_cfg] if eos_cfg is not None else [])
    worker = threading.Thread(target=work, name="pointcopy-generate", daemon=True)
    started = time.monotonic()
    worker.start()
    ids: list[int] = []
    last = 0.0
    try:
        while True:
            item = tokens.get()
            if item is None:
                break
            ids.extend(item)
            while True:  # take every token already waiting before rendering
                try:
                    more = tokens.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    tokens.put(None)
                    break
                ids.extend(more)
            if time.monotonic() - last >= interval:
                last = time.monotonic()
                shown = [i for i in ids if i not in eos]
                text = processor.decode(shown)
                partial = GroundedAnswer.from_text(text, slot_map)
                yield Update(f"generating with {Path(key).name or key}: {len(ids)} tokens, "
                             f"{time.monotonic() - started:.1f} s", fragment(images, partial, pending=True),
                             text=text, warnings=tuple(warnings))
        worker.join()
        if "error" in outcome:
            exc = outcome["error"]
            if isinstance(exc, ValueError):
                raise UserError(str(exc)) from None
            raise exc
        gen = outcome["gen"]
        answer = gen.grounded()
        if runaway.stopped:
            warnings.append(runaway.message)
        cut = "" if gen.finished or runaway.stopped else f" (cut at {max_new_tokens} new tokens)"
        yield Update(f"done: {len(gen.ids)} tokens in {time.monotonic() - started:.1f} s{cut}",
                     fragment(images, answer, expected=expected), done=True, text=gen.text,
                     warnings=tuple(warnings))
    finally:
        cancel.set()  # the page went away (generator closed) or we are done: stop generating


# --------------------------------------------------------------------------------------------- the page
CSS = """
#pc-status { font-size: 14px; }
#pc-status .pc-error { color: #b42318; font-weight: 600; }
#pc-status .pc-ok { color: #1a7f37; }
#pc-status .pc-warn { color: #9a6700; }
"""


def _status(text: str, kind: str = "info", warnings=()) -> str:
    cls = {"error": "pc-error", "ok": "pc-ok"}.get(kind, "pc-info")
    return (f'<p class="{cls}">{html.escape(text)}</p>'
            + "".join(f'<p class="pc-warn">warning: {html.escape(w)}</p>' for w in warnings))


def build_app(model_dir: str | Path | None = None, max_new_tokens: int = 640, threads: int = 2,
              interval: float = STREAM_INTERVAL):
    """The app as a `gradio.Blocks`, queued (one generation at a time, others wait their turn). `model_dir`:
    the model box's default (blank: the shipped shapes-tiny)."""
    import gradio as gr

    default_model = "" if model_dir is None else str(model_dir)

    def on_draw(seed, model_spec, random_seed=True):
        try:
            scene = draw_scene(None if random_seed or seed is None else int(seed), model_spec)
        except (UserError, ValueError, OverflowError) as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), _status(f"error: {exc}", "error")
        state = {"seed": scene.seed, "question": scene.question, "expected": scene.expected}
        return (scene.seed, scene.image, scene.question, None, state,
                _status(f"drawn scene {scene.seed}: ask its question, or type your own"))

    def on_upload(files):
        n = len([f for f in (files or []) if f])
        return None, {}, _status(f"{n} image{'s' if n != 1 else ''} uploaded: type a question and press Ask")

    def on_ask(files, scene_state, question, model_spec, max_tokens):
        try:
            if files:
                images, expected = read_images(files), None
            elif scene_state and scene_state.get("seed") is not None:
                scene = draw_scene(scene_state["seed"], model_spec)
                images = [scene.image]
                same = (question or "").strip() == scene.question
                expected = scene.expected if same else None
            else:
                raise UserError("no image: upload one or more images, or draw a shapes scene")
            yield _status("loading the model…"), gr.skip()
            for update in answer_stream(images, question, model_spec, int(max_tokens or max_new_tokens),
                                        expected=expected, threads=threads, interval=interval,
                                        check_world=bool(files)):
                yield _status(update.status, "ok" if update.done else "info", update.warnings), update.html
        except UserError as exc:  # a user's mistake: one line in the status box, nothing on the console
            yield _status(f"error: {exc}", "error"), ""
        except Exception as exc:  # noqa: BLE001 -- a bug: one line in the page, the traceback on the console
            traceback.print_exc()
            yield _status(f"error: {type(exc).__name__}: {exc}", "error"), ""

    with gr.Blocks(title="pointcopy", analytics_enabled=False) as app:
        gr.Markdown("## pointcopy: point-and-copy grounded reasoning\n" + SHIPPED_NOTE, elem_id="pc-note")
        scene_state = gr.State({})
        with gr.Row():
            with gr.Column(scale=2):
                files = gr.File(label="images (one or more)", file_count="multiple", file_types=["image"],
                                elem_id="pc-files")
                with gr.Row():
                    draw = gr.Button("Draw a shapes scene", elem_id="pc-draw")
                    seed = gr.Number(None, label="scene seed (Enter: draw this one)", precision=0, minimum=0,
                                     elem_id="pc-seed")
                preview = gr.Image(label="drawn scene", type="pil", interactive=False, elem_id="pc-preview",
                                   height=220)
                question = gr.Textbox(label="question", placeholder="e.g. How many objects are there?",
                                      elem_id="pc-question")
                model = gr.Textbox(label="model: blank for the shipped shapes-tiny, or a checkpoint directory / "
                                   "hub id", value=default_model, placeholder="shapes-tiny (shipped)",
                                   elem_id="pc-model")
                max_tokens = gr.Slider(16, 2048, value=max_new_tokens, step=16, label="max new tokens",
                                       elem_id="pc-max-tokens")
                ask = gr.Button("Ask", variant="primary", elem_id="pc-ask")
            with gr.Column(scale=3):
                status = gr.HTML(_status("upload images or draw a scene, then ask"), elem_id="pc-status")
                result = gr.HTML("", elem_id="pc-result")

        draw.click(on_draw, [seed, model], [seed, preview, question, files, scene_state, status])
        seed.submit(lambda s, m: on_draw(s, m, random_seed=False), [seed, model],
                    [seed, preview, question, files, scene_state, status])
        files.upload(on_upload, [files], [preview, scene_state, status])
        ask.click(on_ask, [files, scene_state, question, model, max_tokens], [status, result],
                  concurrency_limit=1, concurrency_id="generate")
        question.submit(on_ask, [files, scene_state, question, model, max_tokens], [status, result],
                        concurrency_limit=1, concurrency_id="generate")
    app.queue(max_size=32, default_concurrency_limit=1)
    return app


def launch(model_dir: str | Path | None = None, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           max_new_tokens: int = 640, threads: int = 2, block: bool = True, quiet: bool = False):
    """Serve `build_app(...)` on http://host:port (a public gradio.live link only with `share=True`). `block=False`
    returns at once (the server runs in a thread; `app.close()` stops it)."""
    app = build_app(model_dir, max_new_tokens=max_new_tokens, threads=threads)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=quiet,
               css=CSS, footer_links=[], ssr_mode=False)
    return app
