"""Checkpoint formats: our own, the official v1 release, and base backbones to convert; the adapter registry.

    format        config.json model_type     weight keys                                              adapter
    pointcopy     "pointcopy"                model.visual.*, model.language_model.*, lm_head.*, pointer.*  Qwen2.5-VL
                  "pointcopy_qwen3_vl"       (same layout)                                            Qwen3-VL
    official v1   "v1" (flat 4.5x config)    visual.*, model.*, lm_head.*, _copy_q_head.*, _copy_k_head.*  Qwen2.5-VL
                                             (_copy_head.* with tie_copy_heads, gate.* with use_gate)
    base          "qwen2_5_vl", "qwen3_vl"   a base checkpoint without heads -> heads = I/sqrt(D), bias 0

`ADAPTERS` maps each model_type to its adapter class; an adapter registers itself (`register_adapter`) with its
config's model_type, its `base_model_type` and its `official_model_type`. All formats go through transformers'
own `from_pretrained` (sharding, dtype, device_map, hub ids) with a key mapping, so loading a 7B checkpoint costs
what loading the backbone costs.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from .config import PointCopyConfig

# regex -> replacement, applied by transformers while loading (no-ops on keys already in the 5.x layout)
OFFICIAL_KEY_MAPPING = {
    r"^visual\.": "model.visual.",
    r"^model\.(?!language_model\.|visual\.)": "model.language_model.",
    r"^_copy_q_head\.": "pointer.q_proj.",
    r"^_copy_k_head\.": "pointer.k_proj.",
    r"^_copy_head\.": "pointer.shared_proj.",
    r"^gate\.": "pointer.gate.",
}
QWEN_KEY_MAPPING = {k: v for k, v in OFFICIAL_KEY_MAPPING.items() if "model" in v and "pointer" not in v}

# official V1Config fields with no counterpart here; `use_cfg` changes outputs, so it is refused if set
_OFFICIAL_ONLY = ("copy_extraction_layer", "copy_scaler", "use_cfg")
_BOOKKEEPING = ("model_type", "architectures", "transformers_version", "auto_map")
COPY_FIELDS = (
    "copy_token_start", "copy_token_num", "region_token_id", "copy_hidden_size", "use_embeddings_as_keys",
    "normalize_copy_states", "tie_copy_heads", "use_gate", "do_copy", "z_loss_weight", "z_loss_top_k",
    "label_smoothing", "separate_copy_loss", "pointing_enabled", "copy_position", "copy_deepstack",
)

# model_type -> adapter class (a PointCopyMixin subclass); filled by `register_adapter` when pointcopy.model loads
ADAPTERS: dict[str, type] = {}


def register_adapter(cls) -> type:
    """Register a backbone adapter for loading (`load_pretrained`) and for transformers' Auto classes."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config_class = cls.config_class
    for model_type in (config_class.model_type, cls.base_model_type, cls.official_model_type):
        if model_type:
            ADAPTERS[model_type] = cls
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForImageTextToText.register(config_class, cls, exist_ok=True)
    return cls


def adapter_for(model_type: str | None, where="") -> type:
    """The adapter class registered for a config.json model_type (ValueError naming the known ones)."""
    if model_type not in ADAPTERS:
        own = sorted({a.config_class.model_type for a in ADAPTERS.values()})
        official = sorted({a.official_model_type for a in ADAPTERS.values() if a.official_model_type})
        bases = sorted({a.base_model_type for a in ADAPTERS.values()})
        raise ValueError(f"{where}config.json model_type {model_type!r} is neither a pointcopy checkpoint {own}, "
                         f"an official release {official} nor a base backbone to convert {bases}")
    return ADAPTERS[model_type]


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def check_model_source(spec: str | os.PathLike) -> str:
    """'local' for an existing checkpoint directory, 'hub' for something that can only be a hub id; raises
    FileNotFoundError for a path that does not exist (a mistyped local path would otherwise be sent to the hub as
    an id: half a minute of retries, then a traceback) and ValueError for a directory that is no checkpoint or
    whose config.json / safetensors files are damaged. Cheap: reads config.json and safetensors headers only."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{spec}: a file, not a checkpoint directory")
        read_config_dict(path)
        check_safetensors(path)
        return "local"
    text = str(spec)
    first = text.split("/", 1)[0]
    if (not _HUB_ID.fullmatch(text) or text.startswith((".", "~")) or (first and Path(first).is_dir())):
        raise FileNotFoundError(f"{spec}: no such model directory (and not a hub id of the form 'org/name')")
    return "hub"


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why a safetensors file cannot be loaded, from its header and size alone (None if it can)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length"
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8:
            return f"header of {n} bytes but the file has only {size} bytes (truncated?)"
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return f"header is not valid JSON ({e})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            return f"tensor {name!r} has no valid data_offsets"
        end = max(end, int(stop))
    if 8 + n + end != size:
        return f"tensors need {8 + n + end} bytes but the file has {size} (truncated or padded)"
    return None


def check_safetensors(directory: str | os.PathLike) -> None:
    """ValueError naming the file if a `*.safetensors` file in `directory` has a malformed header or not exactly
    the bytes its header declares (a truncated download or copy)."""
    for f in sorted(Path(directory).glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            raise ValueError(f"{f}: damaged safetensors file: {problem}")


def read_config_dict(path: str | os.PathLike, **hub_kwargs) -> dict:
    """config.json of a local directory or hub id, as a dict."""
    local = Path(path) / "config.json"
    if local.is_file():
        try:
            d = json.loads(local.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{local}: malformed config.json ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{local}: malformed config.json (not a JSON object)")
        return d
    if Path(path).is_dir():
        raise ValueError(f"{path}: no config.json; not a pointcopy, official v1 or base backbone checkpoint directory")
    from transformers.utils import cached_file

    try:
        found = cached_file(str(path), "config.json", **hub_kwargs)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(f"{path}: no such local directory, and no hub model could be fetched under that "
                                f"name ({reason})") from None
    return json.loads(Path(found).read_text())


def config_from_official(d: dict, **overrides) -> PointCopyConfig:
    """Map an official v1 `config.json` dict (flat, transformers 4.5x) onto PointCopyConfig."""
    d = dict(d)
    if d.get("model_type") != "v1":
        raise ValueError(f"not an official v1 config (model_type={d.get('model_type')!r})")
    if d.get("copy_extraction_layer", -1) != -1:
        raise ValueError("official config: copy_extraction_layer must be -1 (as the official code asserts)")
    if d.get("use_cfg"):
        raise ValueError("official config: use_cfg=True (classifier-free guidance padding) is not supported")
    for key in _OFFICIAL_ONLY + _BOOKKEEPING:
        d.pop(key, None)
    if "torch_dtype" in d:
        d["dtype"] = d.pop("torch_dtype")
    d["label_smoothing"] = float(d.get("label_smoothing") or 0.0)
    # official configs have no bos; without this the Qwen class default (151643) would be used, which lies outside
    # small vocabularies such as the oracle's
    d.setdefault("bos_token_id", None)
    d.update(overrides)
    return PointCopyConfig(**d)


def config_from_qwen(d: dict, tokenizer_dir: str | os.PathLike | None = None, config_class=PointCopyConfig,
                     **overrides):
    """A base backbone config dict (Qwen2.5-VL by default; `config_class` is the adapter's config) + copy fields.
    Pointer ids start right after the tokenizer's vocabulary."""
    d = {k: v for k, v in d.items() if k not in _BOOKKEEPING}
    if "torch_dtype" in d:
        d["dtype"] = d.pop("torch_dtype")
    vocab = d.get("vocab_size") or (d.get("text_config") or {}).get("vocab_size")
    if "copy_token_start" not in overrides or "region_token_id" not in overrides:
        tok = _try_tokenizer(tokenizer_dir)
        if tok is not None:
            overrides.setdefault("copy_token_start", len(tok))
            overrides.setdefault("region_token_id", tok.convert_tokens_to_ids("<|fim_pad|>"))
        elif vocab == 152064 and config_class is PointCopyConfig:  # the released Qwen2.5-VL vocabulary: official ids
            overrides.setdefault("copy_token_start", 151665)
            overrides.setdefault("region_token_id", 151662)
        else:
            raise ValueError("cannot infer copy_token_start/region_token_id: no tokenizer next to the checkpoint "
                             "and an unknown vocabulary size; pass them as keyword arguments")
    d.update(overrides)
    return config_class(**d)


def _try_tokenizer(path):
    if path is None:
        return None
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        return None


def load_pretrained(cls, path, *args, **kwargs):
    """`from_pretrained` for every format, by config.json's model_type (see the table above): the registered
    adapter loads it (`cls` itself when it is that adapter or a subclass of it). Copy fields (see COPY_FIELDS) may
    be given as keywords to override the checkpoint's values, e.g. `pointing_enabled=False` or
    `copy_position="source_patch"`."""
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    if kwargs.get("config") is not None:
        return cls._from_pretrained_native(path, *args, **kwargs)
    if not hub_kwargs:
        check_model_source(path)  # one clear line for a mistyped path or a damaged checkpoint
    d = read_config_dict(path, **hub_kwargs)
    model_type = d.get("model_type")
    adapter = adapter_for(model_type, where=f"{path}: ")
    target = cls if isinstance(cls, type) and issubclass(cls, adapter) else adapter
    if "copy_deepstack" in kwargs and not hasattr(adapter.config_class, "copy_deepstack"):
        if kwargs.pop("copy_deepstack") != "none":
            raise ValueError(f"{path}: copy_deepstack='source' needs a backbone with per-layer visual inputs "
                             f"(deepstack); {model_type!r} ({adapter.__name__}) has none")
    if model_type == adapter.config_class.model_type:
        return target._from_pretrained_native(path, *args, **kwargs)
    overrides = {k: kwargs.pop(k) for k in COPY_FIELDS if k in kwargs}
    if model_type == adapter.official_model_type:
        config = config_from_official(d, **overrides)
        config.converted_from = f"official v1 checkpoint {path}"  # the model card says where it came from
        return _native_layout(target._from_pretrained_native(path, *args, config=config,
                                                             key_mapping=adapter.official_key_mapping, **kwargs))
    config = config_from_qwen(d, tokenizer_dir=path if Path(path).is_dir() else None,
                              config_class=adapter.config_class, **overrides)
    config.base_model_name_or_path = str(path)  # the model card's base_model
    model = target._from_pretrained_native(path, *args, config=config, key_mapping=adapter.base_key_mapping, **kwargs)
    model.pointer.init_identity()  # the official training start: heads barely change the output
    return _native_layout(model)


def _native_layout(model):
    """transformers reverts the load-time key mapping when saving; a converted model must save in *our* layout
    (its config says model_type "pointcopy"), so forget the foreign mapping."""
    model._weight_conversions = None
    return model
