"""Fully sharded data parallel (PyTorch's FSDP2 `fully_shard`) where accelerate's FSDP plugin does not apply.

accelerate turns its FSDP plugin on only for accelerator devices (CUDA, XPU, ...): on CPU processes the Trainer
silently runs plain DDP instead (accelerate 1.15 sets `DistributedType.MULTI_CPU` and ignores the plugin). So on
CPU ranks (our gloo launcher, `training/parallel.py`, or torchrun) `train` shards the model itself before the
Trainer sees it:

    shard_model(model)    fully_shard(every decoder layer and vision block), then fully_shard(model): the root
                          unit holds the embeddings, the merger and the pointer heads (and LoRA's modules_to_save)
    Trainer               accelerate leaves an already-prepared model alone (no DDP around it); each backward
                          reduce-scatters gradients, the optimizer steps on each rank's shard

Checkpoints under sharding hold *full* tensors (gathered to rank 0, `full_state_dict`), in the files a one-process
run writes (model.safetensors or the LoRA adapter, optimizer.pt keyed by parameter name, scheduler, RNG), so any
number of ranks, or one process, can resume them; `load_full_state_dict` / `load_full_optimizer_state` shard them
again on load. On GPUs the Trainer's own FSDP plugin (configs/accelerate/fsdp.yaml) is used instead.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["wants_own_fsdp", "ensure_process_group", "shard_model", "is_sharded", "full_state_dict",
           "load_full_state_dict", "full_optimizer_state", "load_full_optimizer_state"]


def wants_own_fsdp(fsdp: str | None) -> bool:
    """Sharding requested, several ranks, and no CUDA (where the Trainer's FSDP plugin would not apply)."""
    return bool(fsdp) and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def ensure_process_group() -> None:
    """The gloo process group from the launcher's environment (the Trainer's accelerator then reuses it)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo")


def _wrap_classes(model) -> set[str]:
    """Class names of the blocks to shard one by one: the model's `_no_split_modules` (decoder layers, vision
    blocks), as the Trainer's transformer auto-wrap policy would pick them."""
    inner = getattr(model, "get_base_model", lambda: model)()
    return set(getattr(inner, "_no_split_modules", None) or [])


def shard_model(model, classes: set[str] | None = None):
    """Shard `model` in place across the process group; returns it, marked prepared for accelerate."""
    from torch.distributed.fsdp import fully_shard

    ensure_process_group()
    classes = _wrap_classes(model) if classes is None else classes
    blocks = [m for m in model.modules() if type(m).__name__ in classes]
    if not blocks:
        raise ValueError(f"fsdp: no module of the classes {sorted(classes)} to shard in {type(model).__name__}")
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    model._is_accelerate_prepared = True  # accelerate: already distributed, do not wrap it in DDP
    model._pointcopy_sharded = True
    return model


def is_sharded(model) -> bool:
    return bool(getattr(model, "_pointcopy_sharded", False))


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state_dict(model) -> dict:
    """Full tensors of every parameter and buffer on rank 0 (on CPU), {} on the other ranks. Collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_full_state_dict(model, state: dict, strict: bool = True) -> None:
    """Load full tensors (given on every rank) into the sharded model. Collective."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=strict))


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer state with full tensors, keyed by parameter name, on rank 0 ({} elsewhere). Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a full, name-keyed optimizer state (given on every rank) into the sharded optimizer. Collective."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())
