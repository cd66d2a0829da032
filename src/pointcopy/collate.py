"""Training batches from grounded samples: images + question + trace + regions -> model tensors with labels.

    V1GRecord / GroundedSample
      -> images resized as the official trainer does (longer side <= max_side), boxes rescaled consistently
      -> processor.encode_images -> pixel_values, image_grid_thw and the sample's SlotMap (the processor's own
         patch and merge sizes: the merged grid of *this* image decides the cells)
      -> every region key in the trace becomes <region>[box]<|copy_k|>...</region> (SlotMap.box_to_slots: k
         counts the earlier images' slots)
      -> chat template: ids = prompt ids + assistant ids (tokenised separately, so the label boundary is exact)
      -> labels: "assistant" (default) trains the assistant turn only; "official" trains everything but padding
         and image tokens (the released trainer's policy)
      -> right padding; mm_token_type_ids

Box text is normalised by each sample's own image size (the official collator used the batch's last image).

Per-sample work (decode, resize, expand, tokenise) is :meth:`GroundedCollator.prepare`, which raises
:class:`SampleError` (a ``V1GError``: record id, field, reason) for a sample that cannot be used: an image that is
missing, truncated or not an image, a size that disagrees with ``image_size``, a region key missing from the
trace, too many tokens. Training runs ``prepare`` in the dataset (``V1GDataset(prepare=...)``), which skips such a
sample and logs it; the collator then only pads the :class:`EncodedSample` items it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image

from . import geometry
from .data.v1g import V1GError, V1GRecord, expand_regions, training_view
from .images import to_rgb
from .processing import PointCopyProcessor
from .tokens import encode_with_pointers

IGNORE_INDEX = -100
LABEL_POLICIES = ("assistant", "official")


class SampleError(V1GError):
    """A sample the collator cannot encode: ``record_id``, ``field``, ``reason`` (as :class:`V1GError`)."""

    def __init__(self, record_id: Any, field: str, reason: str):
        self.record_id, self.field, self.reason, self.index = record_id, field, reason, None
        ValueError.__init__(self, f"sample {record_id!r}: field {field!r}: {reason}")


@dataclass
class EncodedSample:
    """One sample ready for padding: token ids, labels and its images' pixel values (see ``GroundedCollator.encode``)."""

    id: Any
    ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None


@dataclass
class GroundedSample:
    """One conversation turn pair. `regions[i]` maps region keys to pixel boxes in `images[i]`."""

    id: Any
    images: list[Image.Image]
    question: str
    trace: str
    regions: list[dict[str, Sequence[float]]] = field(default_factory=list)

    @classmethod
    def from_record(cls, record: V1GRecord, max_side: int | None = geometry.OFFICIAL_MAX_SIDE) -> "GroundedSample":
        """Decode the record's image (raises :class:`V1GError` naming the record and field if it is missing,
        unreadable, truncated or not of size ``image_size``), resized as the official trainer does."""
        opened = record.open_image()
        try:
            image = to_rgb(opened)  # decodes every pixel: a file cut after its header fails here
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ... for damaged data
            raise V1GError(record.id, "image", f"cannot decode image: {type(e).__name__}: {e}") from e
        finally:
            if opened is not record.image:  # a file opened here: close it (never a caller's PIL image)
                opened.close()
        if tuple(image.size) != tuple(record.image_size):
            raise V1GError(record.id, "image_size", f"{list(record.image_size)} differs from the image's size "
                                                    f"{list(image.size)}")
        size, regions = training_view(record, max_side=max_side)
        if tuple(size) != tuple(image.size):
            image = image.resize(size, Image.BICUBIC)
        return cls(record.id, [image], record.question, record.trace, [regions])


class GroundedCollator:
    def __init__(self, processor: PointCopyProcessor, *, label_policy: str = "assistant",
                 region_key_mode: str = "replace", region_occurrences: str = "all", box_text: bool = True,
                 max_side: int | None = geometry.OFFICIAL_MAX_SIDE, max_length: int | None = None,
                 system_prompt: str | None = None):
        """region_key_mode: "replace" (official: the key becomes the region) or "keep" (`<objN><region>...`);
        region_occurrences: "all" (official: every mention re-copies) or "first"; box_text: write the box
        coordinates before the copies (official)."""
        if label_policy not in LABEL_POLICIES:
            raise ValueError(f"label_policy must be one of {LABEL_POLICIES}, got {label_policy!r}")
        if region_key_mode not in ("replace", "keep"):
            raise ValueError(f"region_key_mode must be 'replace' (official) or 'keep', got {region_key_mode!r}")
        self.processor = processor
        self.label_policy = label_policy
        self.keep_key = region_key_mode == "keep"
        self.region_occurrences, self.box_text = region_occurrences, box_text
        self.max_side = max_side
        self.max_length = max_length
        self.system_prompt = system_prompt
        tok = processor.tokenizer
        self.non_trainable = {tok.pad_token_id, processor.image_token_id,
                              tok.convert_tokens_to_ids("<|vision_start|>"), tok.convert_tokens_to_ids("<|vision_end|>")}

    def prepare(self, sample: V1GRecord | GroundedSample) -> EncodedSample:
        """Everything per sample: decode and resize the image, expand regions, tokenise. Raises
        :class:`V1GError` (a :class:`SampleError` for encoding problems) naming the sample and field."""
        if not isinstance(sample, GroundedSample):
            sample = GroundedSample.from_record(sample, self.max_side)
        return EncodedSample(sample.id, *self.encode(sample))

    def __call__(self, samples: Sequence[V1GRecord | GroundedSample | EncodedSample]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("empty batch: no sample to collate")
        encoded = [s if isinstance(s, EncodedSample) else self.prepare(s) for s in samples]
        encoded = [(e.ids, e.labels, e.pixel_values, e.image_grid_thw) for e in encoded]
        ids, labels = [e[0] for e in encoded], [e[1] for e in encoded]
        batch = self.processor.pad(ids, padding_side="right")
        width = batch["input_ids"].shape[1]
        batch["labels"] = torch.tensor([l + [IGNORE_INDEX] * (width - len(l)) for l in labels], dtype=torch.long)
        pixel_values = [e[2] for e in encoded if e[2] is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)
            batch["image_grid_thw"] = torch.cat([e[3] for e in encoded if e[3] is not None])
        return batch

    def encode(self, sample: GroundedSample):
        """-> (ids, labels, pixel_values | None, image_grid_thw | None) for one sample."""
        proc = self.processor
        if len(sample.regions) not in (0, len(sample.images)):
            raise SampleError(sample.id, "regions", f"{len(sample.regions)} entries for {len(sample.images)} images")
        trace = sample.trace
        try:
            vision, layout = proc.encode_images(sample.images)
        except ValueError as err:  # e.g. an extreme aspect ratio in smart_resize
            raise SampleError(sample.id, "image", f"image processor: {err}") from err
        for i, image in enumerate(sample.images):
            if sample.regions and sample.regions[i]:
                try:
                    trace = expand_regions(trace, sample.regions[i], image.size, layout, image=i,
                                           keep_key=self.keep_key, occurrences=self.region_occurrences,
                                           box_text=self.box_text)
                except ValueError as err:
                    raise SampleError(sample.id, "regions", f"image {i}: {err}") from err
        content = [{"type": "image"}] * len(sample.images) + [{"type": "text", "text": sample.question}]
        messages = [{"role": "user", "content": content}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        prompt = proc.expand_image_pads(proc.apply_chat_template(messages, add_generation_prompt=True), layout)
        prompt_ids = encode_with_pointers(proc.tokenizer, prompt, proc.copy_token_start)
        answer_ids = encode_with_pointers(proc.tokenizer, trace + "<|im_end|>\n", proc.copy_token_start,
                                          num_slots=layout.num_slots)
        ids = prompt_ids + answer_ids
        if self.label_policy == "assistant":
            labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        else:
            labels = [IGNORE_INDEX if i in self.non_trainable else i for i in ids]
        if self.max_length is not None and len(ids) > self.max_length:
            raise SampleError(sample.id, "conversations", f"{len(ids)} tokens exceed max_length={self.max_length}")
        return ids, labels, vision.get("pixel_values"), vision.get("image_grid_thw")
