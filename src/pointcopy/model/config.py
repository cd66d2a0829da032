"""Point-and-copy config fields, shared by every backbone's config, and `PointCopyConfig` (Qwen2.5-VL).

`CopyFields` holds the pointer fields and their validation. Each backbone adapter combines it with its HF config
class (`@strict class <Name>(CopyFields, <HF config>)`), so that the fields are real config fields (typed, set by
keyword, saved in config.json) whatever the backbone:

    PointCopyConfig          model_type "pointcopy"           Qwen2.5-VL (the official v1 backbone)
    PointCopyQwen3VLConfig   model_type "pointcopy_qwen3_vl"  Qwen3-VL (qwen3_vl.py)

Field names and defaults follow the official `V1Config` (github.com/jun297/v1, `configuration_v1.py`), so an
official `config.json` maps onto `PointCopyConfig` one to one (see `convert.py`). Switches that exist only for
controlled experiments default to the official behaviour:

* `pointing_enabled=False` masks every pointer logit, so a copy-trained model decodes text only
  ("inference w/o pointing", paper Table 1/2). Copy ids already present in the *input* still copy.
* `copy_position="source_patch"` gives a copied token the 3-D M-RoPE position (t, h, w) of the patch it copies
  instead of the next sequential text position (`"sequential"`, official). The text position counter advances by
  one for a copied token in both modes, so the text that follows is positioned identically.
* `copy_deepstack` (backbones with per-layer visual inputs only, i.e. Qwen3-VL's deepstack; see qwen3_vl.py):
  `"source"` adds the copied patch's per-layer features at the copied position as the backbone adds them at the
  image token, `"none"` copies the merger embedding only. `PointCopyConfig` has no such field (Qwen2.5-VL has no
  deepstack) and refuses `copy_deepstack="source"`.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import Qwen2_5_VLConfig

COPY_POSITIONS = ("sequential", "source_patch")
COPY_DEEPSTACK = ("none", "source")


@dataclass
class CopyFields:
    """The point-and-copy fields (mixed into a backbone config before the HF config class)."""

    # -- ids (official names) --
    copy_token_start: int = 151665  # pointer id of image-token slot k is copy_token_start + k
    copy_token_num: int = 30000  # upper bound on slots (kept for compatibility; not a tokenizer size)
    region_token_id: int = 151662  # placeholder id looked up for pointer positions (`<|fim_pad|>`)
    # -- pointer heads --
    copy_hidden_size: int | None = None  # width of Lq/Lk outputs; None -> text hidden size
    use_embeddings_as_keys: bool = False  # keys from merger embeddings instead of final hidden states
    normalize_copy_states: bool = False  # L2-normalise the head inputs
    tie_copy_heads: bool = False  # one shared head for queries and keys
    use_gate: bool = False  # sigmoid gate scaling gen (1-g) vs copy (g) logits (official, off by default)
    do_copy: bool = True
    # -- loss --
    z_loss_weight: float = 1e-5
    z_loss_top_k: int = 40  # <= 0: logsumexp over all logits (the full partition function)
    label_smoothing: float | bool = 0.0
    separate_copy_loss: bool = False
    # -- controlled-experiment switches (not in the official config) --
    pointing_enabled: bool = True
    copy_position: str = "sequential"

    def __post_init__(self, **kwargs):
        if "copy_deepstack" in kwargs and not hasattr(type(self), "copy_deepstack"):
            value = kwargs.pop("copy_deepstack")
            if value != "none":
                raise ValueError(f"copy_deepstack={value!r}: this backbone ({type(self).__name__}) has no per-layer "
                                 f"visual inputs (deepstack); only 'none' applies")
        super().__post_init__(**kwargs)
        self.validate_copy_fields()

    def validate_copy_fields(self) -> None:
        if self.copy_position not in COPY_POSITIONS:
            raise ValueError(f"copy_position must be one of {COPY_POSITIONS}, got {self.copy_position!r}")
        deepstack = getattr(self, "copy_deepstack", "none")
        if deepstack not in COPY_DEEPSTACK:
            raise ValueError(f"copy_deepstack must be one of {COPY_DEEPSTACK}, got {deepstack!r}")
        vocab = self.get_text_config(decoder=True).vocab_size
        if self.copy_token_start > vocab:
            raise ValueError(f"copy_token_start={self.copy_token_start} exceeds the lm_head size {vocab}")
        if not 0 <= self.region_token_id < self.copy_token_start:
            raise ValueError(f"region_token_id={self.region_token_id} must be a text id below copy_token_start")

    @property
    def head_size(self) -> int:
        return self.copy_hidden_size or self.get_text_config(decoder=True).hidden_size


@strict
class PointCopyConfig(CopyFields, Qwen2_5_VLConfig):
    """Qwen2.5-VL + copy fields. Name, fields, defaults and saved format are those of the official-compatible
    v1 release; do not add fields here (config.json of existing checkpoints must round-trip unchanged)."""

    model_type = "pointcopy"
