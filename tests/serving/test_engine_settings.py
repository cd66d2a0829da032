"""The vLLM settings pointcopy fixes, checked without vLLM (serving/engine.py imports it lazily): what the engine
and `pointcopy serve` are started with, the views they load, and the decoding translation."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from testsupport import REPO, oracles_dir
from pointcopy.serving.engine import (collapse_image_runs, engine_arguments, sampling_from_generate_kwargs,
                                      serve_command, served_model_dir)

SHAPES = REPO / "src/pointcopy/embedded/assets/shapes-tiny"


def test_engine_arguments_fix_what_the_mechanism_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = engine_arguments(SHAPES, max_num_seqs=4)
    assert args["enable_prefix_caching"] is False  # a prefix-cache hit would skip the image tokens
    assert args["worker_cls"].endswith("PointCopyCPUWorker")
    assert args["limit_mm_per_prompt"] == {"image": 4, "video": 0}
    assert args["dtype"] == "float32"  # the checkpoint's, not vLLM's bfloat16 "auto"
    assert args["model"] == str(SHAPES)  # our own format, no pointer tokens: served in place
    assert 256 << 20 <= args["kv_cache_memory_bytes"] < 1 << 30  # sized from the work, not 92% of memory
    with pytest.raises(ValueError, match="enable_prefix_caching is set by pointcopy"):
        engine_arguments(SHAPES, enable_prefix_caching=True)


def test_serve_command_and_pointer_tokenizer_view(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    argv = serve_command(SHAPES, port=8123, max_num_seqs=4, vllm_args=["--max-logprobs", "5"])
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"  # the plugin's runner is vLLM's V1 runner
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--no-enable-prefix-caching" in argv and argv[-2:] == ["--max-logprobs", "5"]
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 4, "video": 0}
    view = argv[argv.index("--model") + 1]
    assert view.startswith(str(tmp_path)) and argv[argv.index("--served-model-name") + 1] == "shapes-tiny"

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(view)
    start = json.loads((SHAPES / "config.json").read_text())["copy_token_start"]
    assert len(tok) == start + 30000
    text = tok.decode([start + 3, tok.convert_tokens_to_ids("<|im_end|>"), start + 29999], skip_special_tokens=True)
    assert text == "<|copy_3|><|copy_29999|>"  # pointers survive skip_special_tokens; <|im_end|> does not
    assert str(served_model_dir(SHAPES, pointer_tokens=True)) == view  # made once, then reused


def test_official_checkpoint_view_has_the_converted_config(tmp_path):
    src = tmp_path / "official"
    shutil.copytree(oracles_dir() / "official-v1-tiny", src)
    with pytest.raises(ValueError, match="no tokenizer files"):
        served_model_dir(src, cache_dir=tmp_path / "cache")
    (src / "tokenizer.json").write_text("{}")  # only its presence is checked here
    view = served_model_dir(src, cache_dir=tmp_path / "cache")
    config = json.loads((view / "config.json").read_text())
    assert config["model_type"] == "pointcopy" and config["architectures"] == ["PointCopyForConditionalGeneration"]
    assert config["copy_token_start"] == 2000 and "copy_scaler" not in config
    assert (view / "model.safetensors").resolve() == (src / "model.safetensors").resolve()  # linked, not copied


def test_decoding_translation_and_placeholders():
    assert sampling_from_generate_kwargs({"do_sample": False, "repetition_penalty": 1.05}) == \
        {"repetition_penalty": 1.05, "temperature": 0.0}
    assert sampling_from_generate_kwargs({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}, seed=3) \
        == {"repetition_penalty": 1.0, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 3}
    with pytest.raises(ValueError, match="num_beams"):
        sampling_from_generate_kwargs({"num_beams": 4})
    assert collapse_image_runs([1, 9, 9, 9, 2, 9, 3, 9, 9], 9) == [1, 9, 2, 9, 3, 9]
