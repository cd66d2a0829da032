"""`PointCopyConfig`: a Qwen2.5-VL config plus the point-and-copy fields.

Field names and defaults follow the official `V1Config` (github.com/jun297/v1, `configuration_v1.py`), so an
official `config.json` maps onto this class one to one (see `convert.py`). Two switches exist only for controlled
experiments and default to the official behaviour:

* `pointing_enabled=False` masks every pointer logit, so a copy-trained model decodes text only
  ("inference w/o pointing", paper Table 1/2). Copy ids already present in the *input* still copy.
* `copy_position="source_patch"` gives a copied token the 3-D M-RoPE position (t, h, w) of the patch it copies
  instead of the next sequential text position (`"sequential"`, official). The text position counter advances by
  one for a copied token in both modes, so the text that follows is positioned identically.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen2_5_VLConfig

COPY_POSITIONS = ("sequential", "source_patch")


@strict
class PointCopyConfig(Qwen2_5_VLConfig):
    model_type = "pointcopy"

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
        super().__post_init__(**kwargs)
        if self.copy_position not in COPY_POSITIONS:
            raise ValueError(f"copy_position must be one of {COPY_POSITIONS}, got {self.copy_position!r}")
        vocab = self.text_config.vocab_size
        if self.copy_token_start > vocab:
            raise ValueError(f"copy_token_start={self.copy_token_start} exceeds the lm_head size {vocab}")
        if not 0 <= self.region_token_id < self.copy_token_start:
            raise ValueError(f"region_token_id={self.region_token_id} must be a text id below copy_token_start")

    @property
    def head_size(self) -> int:
        return self.copy_hidden_size or self.text_config.hidden_size
