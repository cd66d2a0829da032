"""Tiny offline presets: a Qwen-style tokenizer, processor and point-and-copy configs (Qwen2.5-VL or Qwen3-VL).

Everything is built locally (no hub): a byte-level BPE trained on a small built-in corpus, Qwen's special tokens
appended after the ordinary vocabulary (as in Qwen, so pointer ids start right after them), Qwen2.5-VL's chat
template, and transformers' PIL image processor (no torchvision). Used by tests, the demo and benchmarks.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]

_DEFAULT_SYSTEM = ("{% if loop.first and message['role'] != 'system' %}"
                   "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}")
# Qwen2.5-VL's chat template (same rendering for images, system default and generation prompt).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    + _DEFAULT_SYSTEM +
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The same without the default system block (a system message that is given is still rendered). The tiny tokenizer
# spells that block in 27 tokens, a tenth of an average shapes-tiny row, all of them the same in every row.
CHAT_TEMPLATE_NO_DEFAULT_SYSTEM = CHAT_TEMPLATE.replace(_DEFAULT_SYSTEM, "")

_WORDS = """the a an of to in on is are and or not how many what which color shape size material left right
above below object objects thing things ball balls sphere spheres cube cubes block blocks cylinder cylinders cone
square circle triangle rectangle red green blue yellow purple cyan gray brown black white orange pink small large
tiny big matte shiny metal metallic rubber subtract add count compare there more fewer than same equal number
answer question step think so first then next finally therefore total left are is remaining all every how much area
angle line point length width height degree value find let we have it this that each one two three four five six
seven eight nine ten zero plus minus times divided sum difference product chart bar graph figure image shown
look detect query objects region box copy grounded reasoning please use long chain style step by take away remove
withdraw exist yes no does do as has have it its there are other any""".split()
_COLOURS = "gray red blue green brown purple cyan yellow".split()
_SHAPES = [("cube", "cubes"), ("sphere", "spheres"), ("cylinder", "cylinders"), ("ball", "balls"),
           ("block", "blocks"), ("thing", "things"), ("object", "objects")]


def _corpus() -> list[str]:
    """Deterministic training text: general words, arithmetic, and grounded-trace syntax (detect calls, regions
    with two-decimal boxes, attribute words) so that traces tokenise compactly."""
    lines = [" ".join(_WORDS[i:i + 12]) for i in range(0, len(_WORDS), 12)]
    lines += [f"{a} + {b} = {a + b}, {a} - {b} = {a - b}, {a} > {b}, {a} < {b}." for a, b in itertools.product(range(13), repeat=2)]
    values = [f"{v / 100:.2f}" for v in range(101)]
    for i, (c, (s1, s2)) in enumerate(itertools.product(_COLOURS, _SHAPES)):
        size, mat = ("large", "small")[i % 2], ("shiny", "matte")[i // 2 % 2]
        box = ", ".join(values[(i * 7 + j * 13) % 101] for j in range(4))
        lines.append(f'detect(query="object", objects=["<obj{i % 12 + 1}><region>[{box}]</region>"]) '
                     f'{size} {c} {mat} {s1}\nThere are {i % 9 + 1} objects.\n'
                     f'detect(query="{c} {s2}", objects=["<obj{i % 12 + 1}>", "<obj{i % 5 + 1}>"]) It is {c}.')
    lines += [" ".join(f"[{values[i % 101]}, {values[(i + 31) % 101]}, {values[(i + 57) % 101]}, {values[(i + 83) % 101]}]"
                       for i in range(k, k + 10)) for k in range(0, 101, 10)] * 3
    lines += [" ".join(f'detect(query="{w}' for w in _WORDS[i:i + 8]) for i in range(0, len(_WORDS), 8)] * 2
    # shapes-world marks ("red yes 2; small cube no 0"): " yes" one token like " no"
    lines += [f"{c} yes {i}; {c} no {i}" for c in _COLOURS for i in range(10)]
    lines += ["Answer: 3\nThe answer is (B). Question: How many objects are left?\nChoices:\n(A) 1\n(B) 2"] * 3
    return lines


# Split like GPT-2, but keep decimals such as "0.59" in one piece so box coordinates can become single tokens.
_PRETOKENIZE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+(?:\.\p{N}+)?| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Trace markup kept whole (plain text to the model, not special tokens): the detect-call punctuation alone would
# otherwise cost ~8 tokens per object line.
_MARKUP = (["<region>", "</region>", 'detect(query="', '", objects=["', '"])', '", "']
           + [f"<obj{i}>" for i in range(1, 21)]
           # The shapes world's enumeration call around each object's key and region, opening and closing (added
           # tokens match longest first, so other calls still split as above): 3 tokens less per object line,
           # ~7% of an average shapes-tiny row, none of them informative.
           + ['detect(query="object", objects=["', '</region>"])'])


def build_tiny_tokenizer(vocab_size: int = 1536):
    """A byte-level BPE (any text encodes) with Qwen's special tokens and chat template. Deterministic."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in _MARKUP])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=QWEN_SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE,
                                   padding_side="left")
    missing = [t for t in QWEN_SPECIAL_TOKENS if fast.convert_tokens_to_ids(t) in (None, fast.unk_token_id)]
    if missing:
        raise RuntimeError(f"special tokens not added: {missing}")
    return fast


def tokenizer_fingerprint(tokenizer) -> str:
    """16 hex digits identifying a tokenizer's vocabulary (every token and its id, added tokens included)."""
    import hashlib

    vocab = json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


# Qwen3-VL's image processing (hub preprocessor configs: patch 16, merge 2, mean = std = 0.5) with tiny pixel bounds
# (4 to 256 merged 32-px cells, as the Qwen2.5-VL default's 4 to 256 cells of 28 px).
QWEN3_VL_PROCESSOR = dict(patch_size=16, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                          min_pixels=64 * 64, max_pixels=32 * 32 * 256)


def build_tiny_processor(tokenizer=None, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 256,
                         default_system_prompt: bool = True, patch_size: int = 14, merge_size: int = 2,
                         image_mean: list[float] | None = None, image_std: list[float] | None = None):
    """PointCopyProcessor with the PIL image processor and the tiny tokenizer. Defaults: Qwen2.5-VL's patch 14,
    merge 2 and CLIP mean/std; `**QWEN3_VL_PROCESSOR` gives Qwen3-VL's 16-px patches.

    `default_system_prompt=False` sets `CHAT_TEMPLATE_NO_DEFAULT_SYSTEM` (saved with the processor, so a model
    trained with it is prompted the same way wherever it is loaded)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .processing import PointCopyProcessor

    tokenizer = tokenizer or build_tiny_tokenizer()
    if not default_system_prompt:
        tokenizer.chat_template = CHAT_TEMPLATE_NO_DEFAULT_SYSTEM
    norm = {k: v for k, v in (("image_mean", image_mean), ("image_std", image_std)) if v is not None}
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size,
                                               temporal_patch_size=2, merge_size=merge_size, **norm)
    return PointCopyProcessor(tokenizer, image_processor)


def tiny_config(tokenizer=None, *, backbone: str = "qwen2_5_vl", hidden_size: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32, vision_depth: int = 2, **copy_fields):
    """A tiny point-and-copy config whose ids match `tokenizer` (pointer ids start at len(tokenizer)).

    `backbone="qwen2_5_vl"` (default): a Qwen2.5-VL-shaped `PointCopyConfig`. `backbone="qwen3_vl"`: a
    `PointCopyQwen3VLConfig` (patch 16, learned vision position embeddings, deepstack after the first
    min(2, vision_depth) ViT blocks, interleaved M-RoPE)."""
    tokenizer = tokenizer or build_tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    n = len(tokenizer)
    head_dim = hidden_size // heads
    half = head_dim // 2  # mrope sections (t, h, w) must sum to head_dim / 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(vocab_size=n, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": section},
                eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"), bos_token_id=None)
    fields = dict(copy_token_start=n, region_token_id=ids("<|fim_pad|>"))
    fields.update(copy_fields)
    tokens = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                  vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
                  tie_word_embeddings=False)
    if backbone == "qwen3_vl":
        from .model.qwen3_vl import PointCopyQwen3VLConfig

        text["head_dim"] = head_dim
        text["rope_parameters"]["mrope_interleaved"] = True
        vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                      num_heads=max(1, vision_hidden // 16), out_hidden_size=hidden_size, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=list(range(min(2, vision_depth))), in_channels=3)
        return PointCopyQwen3VLConfig(text_config=text, vision_config=vision, **tokens, **fields)
    if backbone != "qwen2_5_vl":
        raise ValueError(f"unknown tiny backbone {backbone!r}; choose 'qwen2_5_vl' or 'qwen3_vl'")
    from .model import PointCopyConfig

    vision = dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                  num_heads=max(1, vision_hidden // 16), out_hidden_size=hidden_size, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[vision_depth - 1], in_channels=3)
    return PointCopyConfig(text_config=text, vision_config=vision, **tokens, **fields)


def tiny_model(seed: int = 0, tokenizer=None, **config_kwargs):
    """A randomly initialised tiny point-and-copy model (float32, eval mode); `backbone="qwen3_vl"` for Qwen3-VL."""
    import torch

    from .model.convert import adapter_for

    config = tiny_config(tokenizer, **config_kwargs)
    torch.manual_seed(seed)
    model = adapter_for(config.model_type)(config)
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    return model.eval()


def save_tiny(directory: str | Path, seed: int = 0, **config_kwargs) -> Path:
    """Write a tiny checkpoint + processor that `from_pretrained` / `AutoProcessor.from_pretrained` reload."""
    directory = Path(directory)
    processor = build_tiny_processor()
    tiny_model(seed, processor.tokenizer, **config_kwargs).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# name -> tiny_config keyword arguments. Presets build fresh (randomly initialised) models locally.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, layers=2, heads=4, kv_heads=2, vision_hidden=32, vision_depth=2),
    # the embedded default (pointcopy.embedded.recipe): ~1.2M parameters, trains on 2 CPU cores in minutes
    "shapes-tiny": dict(hidden_size=128, layers=4, heads=4, kv_heads=2, vision_hidden=64, vision_depth=2),
    # a tiny Qwen3-VL (16-px patches, deepstack after ViT blocks 0 and 1, copy_deepstack="source")
    "tiny-qwen3": dict(backbone="qwen3_vl", hidden_size=64, layers=3, heads=4, kv_heads=2, vision_hidden=32,
                       vision_depth=3),
}


# name -> build_tiny_processor keyword arguments, where a preset differs from the default.
PRESET_PROCESSORS: dict[str, dict] = {
    # shapes-tiny is prompted without Qwen's default system block: 0.9x the tokens of an average training row
    "shapes-tiny": dict(default_system_prompt=False),
    "tiny-qwen3": QWEN3_VL_PROCESSOR,
}


def build_preset(name: str, seed: int = 0, default_system_prompt: bool | None = None, **overrides):
    """(model, processor) for a preset; `overrides` are extra config fields (e.g. copy switches); `seed` sets
    the initialisation; `default_system_prompt` overrides the preset's chat template (`PRESET_PROCESSORS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    options = dict(PRESET_PROCESSORS.get(name, {}))
    if default_system_prompt is not None:
        options["default_system_prompt"] = default_system_prompt
    processor = build_tiny_processor(**options)
    model = tiny_model(seed, processor.tokenizer, **{**PRESETS[name], **overrides})
    return model, processor


def plain_qwen_config(config):
    """The backbone config of a point-and-copy config (copy fields dropped): a `Qwen2_5_VLConfig`, or a
    `Qwen3VLConfig` for a Qwen3-VL one; for baselines and conversions."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    d = config.to_dict()
    cls = Qwen3VLConfig if isinstance(config, Qwen3VLConfig) else Qwen2_5_VLConfig
    return cls(**{k: v for k, v in d.items()
                  if k in ("text_config", "vision_config", "tie_word_embeddings") or k.endswith("token_id")})


def plain_qwen_twin(model):
    """A plain transformers model (`Qwen2_5_VLForConditionalGeneration` or `Qwen3VLForConditionalGeneration`)
    with `model`'s backbone weights (pointer heads dropped)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    config = plain_qwen_config(model.config)
    cls = Qwen3VLForConditionalGeneration if isinstance(config, Qwen3VLConfig) else Qwen2_5_VLForConditionalGeneration
    plain = cls(config)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pointer.")})
    plain.generation_config.eos_token_id = model.generation_config.eos_token_id
    plain.generation_config.pad_token_id = model.generation_config.pad_token_id
    return plain.train(model.training)
