"""Batched grounded generation: (images, question) pairs -> decoded traces with pointer slots located.

    questions + images --PointCopyProcessor--> tensors --model.generate--> ids --decode--> `<|copy_k|>` text
    pointer slot k --> (image index, row, col) of the merged-patch grid it copies  (the processor's SlotMap)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .images import to_rgb
from .layout import SlotMap

# official inference prompt suffix (inference.py / run_gradio.py of the v1 release)
OFFICIAL_SUFFIX = "\nPlease answer the question using a long-chain reasoning style and think step by step."


@dataclass
class PointedCell:
    slot: int  # k in <|copy_k|>
    image: int  # which image of the sample
    row: int
    col: int


@dataclass
class Generation:
    """One generated answer. `slot_map` is the layout of the sample's images the model saw (from the processor):
    `slot_map.locate(k)`, `slot_map.slot_box(k)` (original-image pixels), `slot_map.box_to_slots(box, image)`.
    `cells` are the pointers the text holds, in order, located on it (out-of-range pointers are left out)."""

    text: str  # decoded up to (not including) the end-of-turn token; pointers as <|copy_k|>
    ids: list[int]
    cells: list[PointedCell] = field(default_factory=list)
    finished: bool = False  # an end-of-turn / eos token was generated (False: cut by max_new_tokens)
    slot_map: SlotMap = field(default_factory=SlotMap.empty)

    def grounded(self):
        """The text parsed into a `GroundedAnswer` on this generation's `slot_map`."""
        from .grounded import GroundedAnswer

        return GroundedAnswer.from_text(self.text, self.slot_map)


def check_layout(model, processor) -> None:
    """ValueError when the processor's patch / merge sizes are not the model's (`model.vision_layout()`): the
    image tokens, and so every slot's place, would be wrong without any other error."""
    if not callable(getattr(model, "vision_layout", None)):
        return
    want = model.vision_layout()
    have = {"patch_size": processor.patch_size, "merge_size": processor.merge_size}
    if have != want:
        raise ValueError(f"the processor's image processor has {have} but the model's vision tower {want}: "
                         f"load the processor saved with this model")


def check_length(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """ValueError when the prompt does not fit the model's positions; a warning when the answer may run past them
    (rotary positions extrapolate, but the model never saw them in training)."""
    limit = getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", None)
    if not limit:
        return
    if prompt_tokens >= limit:
        raise ValueError(f"the prompt is {prompt_tokens} tokens (image tokens included) but the model has "
                         f"{limit} positions; use a shorter question or a smaller image")
    if prompt_tokens + max_new_tokens > limit:
        import warnings

        warnings.warn(f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                      f"{limit} positions", stacklevel=3)


def prompt_text(processor, question: str, n_images: int, what: str = "question") -> str:
    """The chat prompt of one turn: the sample's images first (as in the official demo), then the question; the
    assistant's turn opened. ValueError (naming `what`) for text that would be read as special tokens."""
    processor.check_user_text(question, what=what)
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}])


class RepeatedPointerStop:
    """A stopping criterion for `generate(..., stopping_criteria=[...])`: stops a row whose last `run` tokens are
    one and the same pointer. A region copies each cell once, so one pointer again and again is a runaway loop (a
    model shown input unlike anything it was trained on does this), not an answer. `stopped` holds the rows it
    stopped. Off unless passed: the official decoding has no such stop."""

    def __init__(self, copy_token_start: int, run: int = 8):
        self.start, self.run, self.stopped = copy_token_start, run, set()

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        if input_ids.shape[1] < self.run:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -self.run:]
        hit = (last == last[:, -1:]).all(1) & (last[:, -1] >= self.start)
        self.stopped |= set(hit.nonzero().flatten().tolist())
        return hit

    @property
    def message(self) -> str:
        """What to tell the user when it stopped a row."""
        return (f"stopped: the model repeated one pointer {self.run} times in a row, a runaway loop (typical of "
                f"input unlike its training data)")


def prepare_batch(processor, questions: list[str], images: list[list], suffix: str = ""):
    """One chat turn per question, with that sample's images first (as in the official demo) -> the processor's
    left-padded `PointCopyBatch` (its `slot_maps` give each sample's image layout)."""
    if len(questions) != len(images):
        raise ValueError(f"{len(questions)} questions but {len(images)} image lists")
    texts = [prompt_text(processor, q + suffix, len(imgs), what=f"question {n}" if len(questions) > 1 else "question")
             for n, (q, imgs) in enumerate(zip(questions, images))]
    return processor(texts, [to_rgb(im) for imgs in images for im in imgs])


def end_of_turn_ids(eos_token_id, processor) -> set[int]:
    """Ids that end an answer: the generation config's eos (an id, a list or None) and `<|im_end|>`."""
    eos = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else
              [eos_token_id] if eos_token_id is not None else [])
    eos.add(processor.tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return eos


def to_generations(processor, slot_maps, new_ids, eos: set[int]) -> list[Generation]:
    """Generated ids per sample (any engine; pointer ids included) -> `Generation`s, cut at the first end-of-turn
    id, with pointers decoded as `<|copy_k|>` and located on the sample's `slot_map`."""
    results = []
    start = processor.copy_token_start
    for layout, row in zip(slot_maps, new_ids):
        ids = [int(i) for i in row]
        stop = next((t for t, i in enumerate(ids) if i in eos), None)
        ids = ids[:stop] if stop is not None else ids
        cells = [PointedCell(i - start, *layout.locate(i - start)) for i in ids if i - start in layout]
        results.append(Generation(processor.decode(ids), ids, cells, finished=stop is not None, slot_map=layout))
    return results


@torch.no_grad()
def generate(model, processor, questions: list[str], images: list[list], max_new_tokens: int = 256,
             suffix: str = "", seed: int | None = None, **generate_kwargs) -> list[Generation]:
    """One chat turn per question, with that sample's images first (as in the official demo). Greedy unless
    `do_sample=True` is passed; `seed` seeds torch's generators right before generating (the same seed, inputs and
    batch sample the same ids). Decoding kwargs for the commands' flags: `decoding.DecodingOptions`. vLLM serving
    has the same call: `serving.engine.PointCopyEngine.generate`."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_layout(model, processor)
    batch = prepare_batch(processor, questions, images, suffix).to(model.device)
    check_length(model, batch["input_ids"].shape[1], max_new_tokens)
    generate_kwargs.setdefault("do_sample", False)
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    eos = end_of_turn_ids(model.generation_config.eos_token_id, processor)
    return to_generations(processor, batch.slot_maps, new.tolist(), eos)
