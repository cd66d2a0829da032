"""`PointCopyProcessor`: chat messages + PIL images -> model tensors, and generated ids -> text.

Qwen2.5-VL's own processor class cannot be constructed without torchvision (its video-processor slot), so this
is a small processor of our own around the tokenizer and transformers' PIL image processor:

    text  (chat template, one `<|image_pad|>` per image) --expand--> `<|image_pad|>` x (t*h*w / merge^2)
    images --Qwen2VLImageProcessorPil--> pixel_values (sum_i t*h*w, C*T*14*14), image_grid_thw (n_images, 3)
    batch: left padding; mm_token_type_ids = 1 at image tokens
    per text: a `SlotMap` (`batch.slot_maps[b]`) -- slot k -> (image, row, col) -> pixel box, box -> slots,
    built from this image processor's own patch and merge sizes (`slot_map`)

Images are assigned to texts in order: text b consumes as many images as it has `<|image_pad|>` placeholders.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .geometry import MergedGrid
from .layout import SlotMap
from .tokens import COPY_TOKEN_RE, decode_with_pointers, encode_with_pointers

IMAGE_PAD = "<|image_pad|>"
PROCESSOR_FILE = "pointcopy_processor.json"


class PointCopyBatch(BatchFeature):
    """The processor's tensors (a `BatchFeature`: `model.generate(**batch)` sees only them) plus
    `slot_maps`: one `SlotMap` per text, the layout of that text's images (kept by `.to(device)`)."""

    def __init__(self, data=None, slot_maps: list[SlotMap] | None = None):
        super().__init__(data)
        self.slot_maps = list(slot_maps or [])

    def __getstate__(self):
        return {"data": self.data, "slot_maps": self.slot_maps}

    def __setstate__(self, state):
        self.data = state["data"]
        self.slot_maps = state.get("slot_maps", [])


class PointCopyProcessor:
    def __init__(self, tokenizer, image_processor: Qwen2VLImageProcessorPil, copy_token_start: int | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.copy_token_start = len(tokenizer) if copy_token_start is None else copy_token_start
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.merge_size = image_processor.merge_size
        self.patch_size = image_processor.patch_size

    # ---- persistence ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, copy_token_start: int | None = None, **kwargs) -> "PointCopyProcessor":
        local = Path(path)
        if local.is_dir() and not any((local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise ValueError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json); a processor needs "
                             f"the checkpoint's tokenizer and preprocessor_config.json")
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), **kwargs)
        if copy_token_start is None:
            copy_token_start = _config_copy_start(Path(path))
        return cls(tokenizer, image_processor, copy_token_start)

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))
        self.image_processor.save_pretrained(str(path))

    # ---- user input ----------------------------------------------------------------------------------------
    @cached_property
    def _markup_re(self) -> re.Pattern:
        """The tokenizer's special (control) tokens and the pointer spelling `<|copy_k|>`."""
        specials = {str(t) for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        specials |= set(self.tokenizer.all_special_tokens)
        alternatives = [re.escape(t) for t in sorted(specials, key=len, reverse=True) if t]
        return re.compile("|".join(alternatives + [COPY_TOKEN_RE.pattern]))

    def check_user_text(self, text: str, what: str = "question") -> None:
        """ValueError if user text holds a control token (`<|im_end|>`, `<|image_pad|>`, ...) or a pointer
        `<|copy_k|>`: the chat template, the image expansion or the pointer encoder would read it as markup (a
        second image placeholder, an injected turn, a copied patch) instead of text."""
        m = self._markup_re.search(text)
        if m:
            raise ValueError(f"{what} contains the special token {m.group(0)!r} at character {m.start()}; the model "
                             f"would read it as markup, not text: remove or reword it")

    # ---- vision layout -------------------------------------------------------------------------------------
    def grid_for(self, image_size: tuple[int, int]) -> MergedGrid:
        """The merged grid this image processor gives an image of `image_size = (width, height)` (its own patch
        and merge sizes and pixel bounds), without processing pixels."""
        size = self.image_processor.size
        return MergedGrid.for_image(image_size, patch_size=self.patch_size, merge_size=self.merge_size,
                                    min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])

    def slot_map(self, image_grid_thw, image_sizes) -> SlotMap:
        """The `SlotMap` of one sample: its rows of `image_grid_thw` (n_images, 3) and the `(width, height)`
        of its images as given to this processor; patch and merge sizes are this image processor's."""
        if image_grid_thw is None or len(image_sizes) == 0:
            return SlotMap.empty()
        return SlotMap.from_grid_thw(image_grid_thw, image_sizes, patch_size=self.patch_size,
                                     merge_size=self.merge_size)

    def encode_images(self, images) -> tuple[dict[str, torch.Tensor], SlotMap]:
        """One sample's PIL images -> ({pixel_values, image_grid_thw}, its SlotMap); ({}, empty) for none.
        Errors of the image processor (e.g. an aspect ratio over 200) propagate as ValueError."""
        images = list(images or [])
        if not images:
            return {}, SlotMap.empty()
        vision = self.image_processor(images=images, return_tensors="pt")
        data = {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        return data, self.slot_map(data["image_grid_thw"], [image_size(im) for im in images])

    @staticmethod
    def expand_image_pads(text: str, slot_map: SlotMap) -> str:
        """Each `<|image_pad|>` placeholder of `text` (one per image, in order) repeated as many times as that
        image has LLM tokens (`slot_map.tokens_per_image`)."""
        pieces = text.split(IMAGE_PAD)
        if len(pieces) - 1 != slot_map.num_images:
            raise ValueError(f"{len(pieces) - 1} {IMAGE_PAD} placeholders but {slot_map.num_images} images")
        return pieces[0] + "".join(IMAGE_PAD * n + p for n, p in zip(slot_map.tokens_per_image, pieces[1:]))

    def model_view(self, image):
        """`image` resized to what the vision tower sees (the image processor's smart resize, same resampling);
        the processor leaves an image of this size as it is, so generating on it gives the same tensors."""
        from PIL import Image

        w, h = self.grid_for(image.size).resized_size
        if (w, h) == image.size:
            return image
        return image.resize((w, h), Image.Resampling(self.image_processor.resample))

    # ---- encoding ------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def __call__(self, text: str | list[str], images=None, padding_side: str = "left") -> PointCopyBatch:
        """texts (with one `<|image_pad|>` per image) + flat list of PIL images -> `PointCopyBatch`: tensors
        (input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw) and `slot_maps[b]`, the
        layout of text b's images (text b takes as many images, in order, as it has placeholders)."""
        texts = [text] if isinstance(text, str) else list(text)
        images = list(images or [])
        n_placeholders = [t.count(IMAGE_PAD) for t in texts]
        if sum(n_placeholders) != len(images):
            raise ValueError(f"{sum(n_placeholders)} {IMAGE_PAD} placeholders in the texts "
                             f"(per text {n_placeholders}) but {len(images)} images")
        data, _ = self.encode_images(images)
        grid_thw = data.get("image_grid_thw")
        sequences, slot_maps, image = [], [], 0
        for t, n in zip(texts, n_placeholders):
            mine = slice(image, image + n)
            layout = self.slot_map(grid_thw[mine] if n else None, [image_size(im) for im in images[mine]])
            image += n
            slot_maps.append(layout)
            sequences.append(encode_with_pointers(self.tokenizer, self.expand_image_pads(t, layout),
                                                  self.copy_token_start))
        data.update(self.pad(sequences, padding_side))
        return PointCopyBatch(data, slot_maps)

    def pad(self, sequences: list[list[int]], padding_side: str = "left") -> dict[str, torch.Tensor]:
        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for b, s in enumerate(sequences):
            sl = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
            ids[b, sl] = torch.tensor(s, dtype=torch.long)
            mask[b, sl] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "mm_token_type_ids": (ids == self.image_token_id).int() * mask.int()}

    # ---- decoding ------------------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Generated ids -> text; pointers rendered as `<|copy_k|>`."""
        return decode_with_pointers(self.tokenizer, ids, self.copy_token_start, skip_special_tokens)

    def batch_decode(self, batch_ids, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch_ids]


def image_size(image) -> tuple[int, int]:
    """`(width, height)` of a PIL image, or of an array / tensor (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4."""
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 2:
        return int(shape[1]), int(shape[0])
    if len(shape) == 3:
        return (int(shape[1]), int(shape[0])) if shape[-1] in (1, 3, 4) else (int(shape[2]), int(shape[1]))
    raise TypeError(f"cannot tell the size of an image of type {type(image).__name__}")


def _config_copy_start(path: Path) -> int | None:
    import json

    cfg = path / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("copy_token_start")
    return None


from .auto import register as _register  # noqa: E402 - the Auto classes, now that the processor exists

_register(finishing="pointcopy.processing")
