"""`PointCopyProcessor`: chat messages + PIL images -> model tensors, and generated ids -> text.

Qwen2.5-VL's own processor class cannot be constructed without torchvision (its video-processor slot), so this
is a small processor of our own around the tokenizer and transformers' PIL image processor:

    text  (chat template, one `<|image_pad|>` per image) --expand--> `<|image_pad|>` x (t*h*w / merge^2)
    images --Qwen2VLImageProcessorPil--> pixel_values (sum_i t*h*w, C*T*14*14), image_grid_thw (n_images, 3)
    batch: left padding; mm_token_type_ids = 1 at image tokens

Images are assigned to texts in order: text b consumes as many images as it has `<|image_pad|>` placeholders.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .geometry import smart_resize
from .tokens import COPY_TOKEN_RE, decode_with_pointers, encode_with_pointers

IMAGE_PAD = "<|image_pad|>"
PROCESSOR_FILE = "pointcopy_processor.json"


class PointCopyProcessor:
    def __init__(self, tokenizer, image_processor: Qwen2VLImageProcessorPil, copy_token_start: int | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.copy_token_start = len(tokenizer) if copy_token_start is None else copy_token_start
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.merge_size = image_processor.merge_size

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

    def model_view(self, image):
        """`image` resized to what the vision tower sees (the image processor's smart resize, same resampling);
        the processor leaves an image of this size as it is, so generating on it gives the same tensors."""
        from PIL import Image

        size = self.image_processor.size
        factor = self.image_processor.patch_size * self.merge_size
        h, w = smart_resize(image.height, image.width, factor=factor, min_pixels=size["shortest_edge"],
                            max_pixels=size["longest_edge"])
        if (w, h) == image.size:
            return image
        return image.resize((w, h), Image.Resampling(self.image_processor.resample))

    # ---- encoding ------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def __call__(self, text: str | list[str], images=None, padding_side: str = "left") -> BatchFeature:
        """texts (with one `<|image_pad|>` per image) + flat list of PIL images -> BatchFeature of tensors."""
        texts = [text] if isinstance(text, str) else list(text)
        images = list(images or [])
        n_placeholders = [t.count(IMAGE_PAD) for t in texts]
        if sum(n_placeholders) != len(images):
            raise ValueError(f"{sum(n_placeholders)} {IMAGE_PAD} placeholders in the texts "
                             f"(per text {n_placeholders}) but {len(images)} images")
        data: dict[str, torch.Tensor] = {}
        tokens_per_image: list[int] = []
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            data["pixel_values"], data["image_grid_thw"] = vision["pixel_values"], vision["image_grid_thw"]
            tokens_per_image = (vision["image_grid_thw"].prod(-1) // self.merge_size**2).tolist()
        sequences, image = [], 0
        for t in texts:
            pieces = t.split(IMAGE_PAD)
            expanded = pieces[0]
            for piece in pieces[1:]:
                expanded += IMAGE_PAD * tokens_per_image[image] + piece
                image += 1
            sequences.append(encode_with_pointers(self.tokenizer, expanded, self.copy_token_start))
        data.update(self.pad(sequences, padding_side))
        return BatchFeature(data)

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


def _config_copy_start(path: Path) -> int | None:
    import json

    cfg = path / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("copy_token_start")
    return None
