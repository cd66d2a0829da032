"""Serving point-and-copy models with vLLM (an out-of-tree model plugin; vLLM itself is not forked).

vLLM's engine knows nothing about copy memories, pointer logits or copied input embeddings. This package adds
them from the outside, in four pieces:

    plugin.py      `register()`: the `vllm.general_plugins` entry point, run in every vLLM process; registers the
                   configs with transformers and the model classes with vLLM's ModelRegistry
    vllm_model.py  `PointCopyVLLM`: vLLM's Qwen2.5-VL model + the pointer heads + per-request copy memory
                   (preallocated tensors indexed by a request's memory row)
    vllm_worker.py `PointCopyCPUWorker`: vLLM's CPU worker whose model runner tells the model, every step, which
                   memory row and slot each scheduled token belongs to, and frees rows of finished requests
    engine.py      `PointCopyEngine`: builds `vllm.LLM` with the settings the mechanism needs (the worker class,
                   no prefix caching, the pointer-aware tokenizer) and generates traces with `<|copy_k|>` text

Nothing here imports vLLM at package import time. vLLM pins its own torch/transformers, so it lives in its own
environment (`scripts/setup_vllm`); see docs/serving.md.
"""
