"""`PointCopyEngine`: a vLLM engine set up for point-and-copy, and generation from token ids + images.

    engine = PointCopyEngine("path/to/checkpoint", max_num_seqs=32)
    ids = engine.generate_ids([(prompt_ids, [image])], max_new_tokens=256)     # pointer ids included

The settings the mechanism needs are fixed here, not left to the caller:

* `worker_cls`: the worker whose runner hands the model each step's request rows (`vllm_worker.py`);
* prefix caching off: a cache hit would skip the image tokens, so the copy memory would never be filled;
* no video inputs; one memory row per concurrent request (`max_num_seqs`).

Official v1 checkpoints (`model_type: "v1"`, a flat transformers-4.5x config) are served through a folder that
holds the converted config (`convert.config_from_official`, the same mapping `from_pretrained` uses) and links to
the original files; the weights keep their official names (the model maps them when loading).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..model.convert import config_from_official, read_config_dict
from .plugin import ARCHITECTURE

WORKER = "pointcopy.serving.vllm_worker.PointCopyCPUWorker"
GPU_WORKER = "pointcopy.serving.vllm_worker.PointCopyGPUWorker"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def served_model_dir(path: str | os.PathLike, pointer_tokens: bool = False,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder vLLM loads: `path` itself for a pointcopy checkpoint, else a view (a folder of links to the
    checkpoint's files under ~/.cache/pointcopy/vllm-views) holding what differs:

    * official v1 checkpoints: the converted config.json;
    * `pointer_tokens`: a tokenizer with `<|copy_k|>` added at ids copy_token_start + k (k < copy_token_num), so
      vLLM's detokenizer writes pointers into response text (the OpenAI server). Plain, not special, tokens:
      responses keep them with skip_special_tokens. The checkpoint's own tokenizer must end right before
      copy_token_start, as Qwen's does (151,665)."""
    path = Path(path)
    if not path.is_dir():  # a hub id: vLLM gets the downloaded folder (views link to its files)
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(path)))
    d = read_config_dict(path)
    if d.get("model_type") not in ("pointcopy", "v1"):
        raise ValueError(f"{path}: config.json model_type {d.get('model_type')!r}; vLLM serving takes pointcopy "
                         f"Qwen2.5-VL checkpoints ('pointcopy') and official v1 ones ('v1')")
    check_tokenizer(path)
    if d["model_type"] == "pointcopy" and not pointer_tokens:
        return path
    if d["model_type"] == "v1":
        d = config_from_official(d).to_dict()
        d["architectures"] = [ARCHITECTURE]
    text = json.dumps(d, indent=2, sort_keys=True)
    key = hashlib.sha256(f"{path.resolve()}\n{pointer_tokens}\n{text}".encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    view = root / "pointcopy" / "vllm-views" / key
    if (view / "config.json").is_file():
        return view
    tmp = view.with_name(f"{key}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():
        if f.name != "config.json" and not (tmp / f.name).exists():
            (tmp / f.name).symlink_to(f.resolve())
    if pointer_tokens:
        _write_pointer_tokenizer(path, tmp, int(d["copy_token_start"]), int(d.get("copy_token_num", 30000)))
    (tmp / "config.json").write_text(text)  # last: a view with a config.json is complete
    try:
        tmp.rename(view)
    except OSError:  # another process made the same view meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return view


def _write_pointer_tokenizer(src: Path, dst: Path, start: int, count: int) -> None:
    from transformers import AutoTokenizer

    from ..tokens import copy_token

    tok = AutoTokenizer.from_pretrained(src)
    if len(tok) != start:
        raise ValueError(f"{src}: the tokenizer has {len(tok)} tokens but pointer ids start at {start}; pointer "
                         f"tokens could not take their ids (serve with the checkpoint's own tokenizer)")
    for name in TOKENIZER_FILES + ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
        if (dst / name).is_symlink():
            (dst / name).unlink()
    tok.add_tokens([copy_token(k) for k in range(count)])
    tok.save_pretrained(dst)


def cpu_kv_cache_bytes(config: dict, max_num_seqs: int, max_model_len: int | None) -> int:
    """KV cache for `max_num_seqs` full-length sequences (float32 worst case), at least 256 MiB."""
    text = config.get("text_config") or config
    layers, heads = int(text["num_hidden_layers"]), int(text.get("num_key_value_heads") or text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"])
    length = max_model_len or int(text.get("max_position_embeddings", 4096))
    need = 2 * layers * heads * head_dim * 4 * length * max_num_seqs
    return max(need, 256 << 20)


def checkpoint_dtype(config: dict) -> str:
    """The dtype a config.json records (`dtype`, or the older `torch_dtype`), "auto" if none."""
    text = config.get("text_config") or {}
    for d in (config, text):
        for key in ("dtype", "torch_dtype"):
            if isinstance(d.get(key), str):
                return d[key]
    return "auto"


def check_tokenizer(model_dir: Path) -> None:
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); vLLM's Qwen2.5-VL "
                         f"processor needs the checkpoint's tokenizer next to it")


def engine_arguments(model: str | os.PathLike, *, max_num_seqs: int = 32, max_model_len: int | None = None,
                     max_images: int = 4, dtype: str = "auto", seed: int = 0, enforce_eager: bool | None = None,
                     pointer_tokens: bool = False, **extra) -> dict:
    """vLLM engine arguments (`vllm.LLM` / EngineArgs keywords) that serve `model` with point-and-copy; `extra`
    are further vLLM arguments. The one place both the engine and `pointcopy serve` take them from."""
    import torch

    for fixed in ("worker_cls", "enable_prefix_caching", "model"):
        if fixed in extra:
            raise ValueError(f"{fixed} is set by pointcopy (point-and-copy needs its own value)")
    model_dir = served_model_dir(model, pointer_tokens=pointer_tokens)
    config = read_config_dict(model_dir)
    cuda = torch.cuda.is_available()
    if not cuda and "kv_cache_memory_bytes" not in extra and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        # vLLM's CPU default reserves 92% of the machine's memory for the KV cache; size it from the work instead
        extra["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(config, max_num_seqs, max_model_len)
    if dtype == "auto":  # vLLM's own "auto" downcasts float32 checkpoints to bfloat16; ours means the file's
        dtype = checkpoint_dtype(config)
    return {"model": str(model_dir), "worker_cls": GPU_WORKER if cuda else WORKER, "enable_prefix_caching": False,
            "limit_mm_per_prompt": {"image": max_images, "video": 0}, "max_num_seqs": max_num_seqs,
            "max_model_len": max_model_len, "dtype": dtype, "seed": seed,
            "enforce_eager": (not cuda) if enforce_eager is None else enforce_eager, **extra}


def use_v1_runner() -> None:
    """The plugin's runner extends vLLM's V1 model runner; with Triton (CUDA machines) vLLM 0.32 picks its V2 runner
    unless told otherwise. Set for this process and the engine processes it starts; an explicit value is kept."""
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")


def serve_command(model: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
                  served_model_name: str | None = None, vllm_args: list[str] | None = None, **settings) -> list[str]:
    """The command line (argv, run with this Python) of vLLM's OpenAI-compatible server for `model`:
    `engine_arguments` (pointer tokens on, so responses carry `<|copy_k|>`) as flags, then `vllm_args`."""
    import sys

    args = engine_arguments(model, pointer_tokens=True, **settings)
    use_v1_runner()  # inherited by the server process
    # vLLM's OpenAI server module, not the `vllm serve` CLI: vllm-cpu's CLI asks for the version of a distribution
    # named "vllm" and fails before serving (vllm-cpu 0.32.0)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.pop("model"), "--host", host,
            "--port", str(port), "--served-model-name", served_model_name or Path(model).name]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif key == "enable_prefix_caching":  # on by default in vLLM
                argv.append("--no-enable-prefix-caching")
            continue
        argv += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv + list(vllm_args or [])


class PointCopyEngine:
    """A `vllm.LLM` serving one point-and-copy checkpoint; keyword arguments as `engine_arguments`."""

    def __init__(self, model: str | os.PathLike, **settings):
        from vllm import LLM

        self.source = str(model)
        args = engine_arguments(model, **settings)
        use_v1_runner()
        self.model_dir = Path(args["model"])
        config = read_config_dict(self.model_dir)
        self.copy_token_start = int(config["copy_token_start"])
        self.image_token_id = int(config["image_token_id"])
        self.eos_token_id = _eos_token_id(self.model_dir, config)
        self.llm = LLM(**args)

    def close(self) -> None:
        """Stop vLLM's engine processes now (otherwise they stop when the interpreter exits)."""
        self.llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> "PointCopyEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sampling_params(self, max_new_tokens: int, **kwargs):
        """vLLM SamplingParams; greedy unless `temperature` > 0 is given. Token ids come back undetokenized:
        pointer ids have no tokenizer entry (`tokens.decode_with_pointers` renders them)."""
        from vllm import SamplingParams

        kwargs.setdefault("temperature", 0.0)
        return SamplingParams(max_tokens=max_new_tokens, detokenize=False, **kwargs)

    def generate(self, processor, questions: list[str], images: list[list], max_new_tokens: int = 256,
                 suffix: str = "", seed: int | None = None, **generate_kwargs):
        """`inference.generate` on vLLM: the same prompts (our processor builds them), the same decoding keywords
        (`decoding.DecodingOptions.generate_kwargs()`), the same `Generation`s. Sampling draws from vLLM's
        generator (`seed` per request), so sampled ids differ from transformers' for the same seed; greedy ids
        are the same (tests/serving)."""
        from ..inference import end_of_turn_ids, prepare_batch, to_generations

        batch = prepare_batch(processor, questions, images, suffix)
        prompts = [(ids[mask.bool()].tolist(), [im.convert("RGB") for im in imgs])
                   for ids, mask, imgs in zip(batch["input_ids"], batch["attention_mask"], images)]
        eos = end_of_turn_ids(self.eos_token_id, processor)
        rows = self.generate_ids(prompts, max_new_tokens, stop_token_ids=sorted(eos),
                                 **sampling_from_generate_kwargs(generate_kwargs, seed))
        return to_generations(processor, batch.slot_maps, rows, eos)

    def generate_ids(self, prompts: list[tuple[list[int], list]], max_new_tokens: int = 256, *,
                     use_tqdm: bool = False, **sampling) -> list[list[int]]:
        """prompts: (token ids, PIL images in order) -> generated ids per prompt (eos included when generated), in
        prompt order. Sampling keywords go to vLLM's SamplingParams (greedy by default)."""
        outputs = self.generate_outputs(prompts, max_new_tokens, use_tqdm=use_tqdm, **sampling)
        return [list(o.outputs[0].token_ids) for o in outputs]

    def generate_outputs(self, prompts: list[tuple[list[int], list]], max_new_tokens: int = 256, *,
                         use_tqdm: bool = False, **sampling):
        """As `generate_ids`, returning vLLM's RequestOutputs (logprobs and the like included).

        An image's `<|image_pad|>` may be one token or already expanded to its run (as our processor gives it):
        vLLM's processor expands each image's single placeholder itself, so runs are collapsed first."""
        inputs = []
        for n, (ids, images) in enumerate(prompts):
            ids = collapse_image_runs([int(i) for i in ids], self.image_token_id)
            bad = next((i for i in ids if i >= self.copy_token_start), None)
            if bad is not None:
                raise ValueError(f"prompt {n}: pointer id {bad} in the prompt; vLLM serving starts traces without "
                                 f"pointers (the copy memory is built from the prompt's images)")
            item = {"prompt_token_ids": ids}
            if images:
                item["multi_modal_data"] = {"image": list(images) if len(images) > 1 else images[0]}
            inputs.append(item)
        return self.llm.generate(inputs, self.sampling_params(max_new_tokens, **sampling), use_tqdm=use_tqdm)


def sampling_from_generate_kwargs(kwargs: dict, seed: int | None = None) -> dict:
    """transformers `generate` decoding keywords -> vLLM SamplingParams keywords (greedy unless do_sample)."""
    kwargs = dict(kwargs)
    unknown = set(kwargs) - {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty"}
    if unknown:
        raise ValueError(f"decoding options {sorted(unknown)} have no vLLM counterpart here")
    out = {"repetition_penalty": float(kwargs.get("repetition_penalty") or 1.0)}
    if kwargs.get("do_sample"):
        out.update(temperature=float(kwargs.get("temperature", 1.0)), top_p=float(kwargs.get("top_p") or 1.0),
                   top_k=int(kwargs.get("top_k") or 0), seed=seed)
    else:
        out["temperature"] = 0.0
    return out


def _eos_token_id(model_dir: Path, config: dict):
    path = model_dir / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        if eos is not None:
            return eos
    return config.get("eos_token_id") or (config.get("text_config") or {}).get("eos_token_id")


def collapse_image_runs(ids: list[int], image_token_id: int) -> list[int]:
    """Each run of consecutive image tokens -> one image token (the placeholder vLLM expands per image)."""
    return [t for n, t in enumerate(ids) if t != image_token_id or n == 0 or ids[n - 1] != image_token_id]
