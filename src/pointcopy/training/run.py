"""`train(options)`: train a point-and-copy model on v1g data with the Hugging Face Trainer.

Works on one CPU/GPU, with LoRA (peft; pointer heads fully trainable and saved), and data-parallel under
`accelerate launch` (the Trainer picks up the distributed environment; `ddp_backend="gloo"` on CPU).
Resumes from the newest *complete* checkpoint in `output_dir` (one whose trainer_state.json, written last,
exists), so a run killed mid-save resumes from the previous checkpoint instead of a half-written one. A checkpoint
whose files are damaged (a JSON file that does not parse, a safetensors file whose header is broken or whose data
is cut short, a torch file that is not a complete archive) is named in a warning and passed over for the previous
complete one (`checkpoint_problem`, `find_resume_checkpoint`).

Resume guard: a run writes the options that decide its result, and a fingerprint of its training data, to
`output_dir/run_options.json` when it starts. Resuming with any of them changed (other data, learning rate, seed,
batch size, ...) raises `ResumeMismatchError` naming each change (`name: old -> new`), unless
`allow_resume_mismatch` is set (then it warns, and the file takes the new values).

Bad data does not stop training: see `training/dataset.py` (bad records are logged to
`output_dir/bad_records.jsonl`, images are header-checked when loading with `check_images`, and a record that
fails later is skipped and logged, its place taken deterministically by the next usable record).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..collate import GroundedCollator
from ..files import write_atomic
from ..model.convert import safetensors_problem
from .options import TrainHyperparameters, TrainOptions  # noqa: F401 - the public names live here too

logger = logging.getLogger(__name__)
RUN_OPTIONS_FILE = "run_options.json"


def load_model_and_processor(spec: str, seed: int = 0, **overrides):
    """A preset name builds a fresh tiny model (initialised from `seed`) + tokenizer locally; anything else loads
    a checkpoint."""
    from ..presets import PRESETS, build_preset

    if spec in PRESETS:
        return build_preset(spec, seed=seed, **overrides)
    from ..model import PointCopyForConditionalGeneration
    from ..processing import PointCopyProcessor

    model = PointCopyForConditionalGeneration.from_pretrained(spec, **overrides)
    return model, PointCopyProcessor.from_pretrained(spec, copy_token_start=model.config.copy_token_start)


def _checkpoint_step(path: Path) -> int | None:
    tail = path.name[len("checkpoint-"):]
    return int(tail) if tail.isdigit() else None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a checkpoint directory cannot be resumed from, in one line (None if it looks complete).

    Cheap checks, no tensor is read: trainer_state.json exists (it is written last); every ``*.json`` parses;
    every ``*.safetensors`` has an intact header and exactly the bytes it declares; the shards a
    ``*.safetensors.index.json`` names exist; every torch file (``*.pt``, ``*.pth``, ``*.bin``) is a complete zip
    archive; some weights file exists.
    """
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        return "no trainer_state.json (the save did not finish)"
    weights = False
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        try:
            if f.suffix == ".json":
                data = json.loads(f.read_text(encoding="utf-8"))
                if f.name.endswith(".safetensors.index.json"):
                    missing = sorted({v for v in data.get("weight_map", {}).values() if not (path / v).is_file()})
                    if missing:
                        return f"{f.name} names missing shard(s) {', '.join(missing)}"
            elif f.suffix == ".safetensors":
                weights = True
                problem = safetensors_problem(f)
                if problem:
                    return f"{f.name}: {problem}"
            elif f.suffix in (".pt", ".pth", ".bin"):
                weights = weights or f.name in ("pytorch_model.bin", "adapter_model.bin")
                with zipfile.ZipFile(f) as archive:  # torch.save's format; a cut file has no central directory
                    archive.infolist()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return f"{f.name} is not valid JSON ({e})"
        except (zipfile.BadZipFile, OSError, ValueError, AttributeError) as e:
            return f"{f.name} is unreadable ({type(e).__name__}: {e})"
    if not weights:
        return "no weights file (*.safetensors)"
    return None


def find_resume_checkpoint(output_dir: str | Path) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest checkpoint in ``output_dir`` without a :func:`checkpoint_problem`, and the newer ones passed
    over as ``[(path, reason), ...]`` (each also logged as a warning)."""
    ckpts = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) is not None]
    ckpts.sort(key=_checkpoint_step, reverse=True)
    skipped = []
    for p in ckpts:
        problem = checkpoint_problem(p)
        if problem is None:
            return str(p), skipped
        if (p / "trainer_state.json").is_file():  # a save cut before trainer_state.json is routine: no warning
            logger.warning("not resuming from %s: %s; trying the previous checkpoint", p, problem)
        skipped.append((str(p), problem))
    return None, skipped


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint that can be resumed from (see :func:`find_resume_checkpoint`), or None."""
    return find_resume_checkpoint(output_dir)[0]


# ---------------------------------------------------------------- resume guard

# Options that decide what a run computes (changing one mid-run makes the resumed run a different run). Left out:
# where and how often things are written, progress, threads, and switches with the same math (length_chunks,
# gradient_checkpointing, ddp_find_unused_parameters).
RUN_DEFINING = ("model", "max_steps", "num_train_epochs", "batch_size", "grad_accum", "learning_rate",
                "vision_lr_scale", "freeze_vision", "freeze", "warmup_ratio", "lr_scheduler", "weight_decay",
                "adam_beta2", "max_grad_norm", "seed", "lora", "lora_r", "lora_alpha", "lora_dropout", "bf16",
                "label_policy", "region_key_mode", "region_occurrences", "box_text", "max_side", "max_length",
                "group_by_length", "balance_ranks", "require_object_regions", "check_images", "model_overrides")


class ResumeMismatchError(ValueError):
    """Resuming a run whose defining options or data changed; ``changes`` is ``[(name, old, new), ...]``."""

    def __init__(self, message: str, changes: list[tuple[str, Any, Any]]):
        super().__init__(message)
        self.changes = changes


def data_fingerprint(dataset) -> str:
    """sha256 (16 hex digits) over the records a data set serves, in order: id, turns, regions, image size
    (computed when each source was indexed, `data.index.RecordIndex.fingerprint`)."""
    return dataset.fingerprint


def run_identity(options: TrainOptions, dataset, world_size: int) -> dict:
    """What `run_options.json` holds: the run-defining options, the data and the number of processes."""
    values = asdict(options)
    ident = {name: values[name] for name in RUN_DEFINING}
    ident["train_data"] = [str(Path(p).resolve()) for p in options.train_data]
    ident["train_data_records"] = len(dataset)
    ident["train_data_fingerprint"] = data_fingerprint(dataset)
    ident["world_size"] = world_size
    return json.loads(json.dumps(ident, default=str))  # as it reads back from the file


def check_resume(saved: dict, current: dict, checkpoint: str, saved_path: Path, allow: bool) -> list:
    """Compare a saved run identity with the current one; raise `ResumeMismatchError` (or warn, if `allow`)."""
    changes = [(k, saved.get(k, "<unset>"), current.get(k, "<unset>")) for k in sorted(set(saved) | set(current))
               if saved.get(k, "<unset>") != current.get(k, "<unset>")]
    if not changes:
        return []
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)
    if allow:
        logger.warning("resuming from %s although the run changed (allow_resume_mismatch): %s", checkpoint, listed)
        return changes
    raise ResumeMismatchError(
        f"refusing to resume from {checkpoint}: the run's options differ from those saved in {saved_path}: {listed}; "
        f"pass --allow-resume-mismatch (TrainOptions.allow_resume_mismatch=True) to resume anyway, or --no-resume "
        f"to start over", changes)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def weights_digest(model, state: dict | None = None) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted((state if state is not None else model.state_dict()).items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


def loader_workers(requested: int | None) -> int:
    """DataLoader workers: the request, or (None) 0 without CUDA and min(8, cores per GPU process - 1) with it."""
    if requested is not None:
        return requested
    if not torch.cuda.is_available():
        return 0
    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_process - 1))


def _apply_lora(model, options: TrainOptions):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                        target_modules=r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
                        modules_to_save=["pointer"])
    return get_peft_model(model, config)


def train(options: TrainOptions) -> dict:
    from transformers import TrainingArguments

    from .dataset import V1GDataset
    from .trainer import PointCopyTrainer

    if options.threads:
        torch.set_num_threads(options.threads)
    import warnings

    # a deprecation inside transformers' own LoRA path, nothing a user of this command can change
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(options.seed)
    model, processor = load_model_and_processor(options.model, seed=options.seed, **options.model_overrides)
    if options.freeze_vision:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    if options.freeze:
        import re

        frozen = [n for n, p in model.named_parameters() if re.search(options.freeze, n)]
        if not frozen:
            raise ValueError(f"--freeze {options.freeze!r} matches no parameter")
        for n, p in model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
    if options.lora:
        model = _apply_lora(model, options)
    from .sharding import shard_model, wants_own_fsdp

    own_fsdp = wants_own_fsdp(options.fsdp)
    if own_fsdp:  # CPU ranks: accelerate's FSDP plugin would not engage (training/sharding.py)
        shard_model(model)
    collator = GroundedCollator(processor, label_policy=options.label_policy,
                                region_key_mode=options.region_key_mode, max_side=options.max_side,
                                region_occurrences=options.region_occurrences, box_text=options.box_text,
                                max_length=options.max_length)
    resume_from, skipped_checkpoints = find_resume_checkpoint(out) if options.resume else (None, [])
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    validation = {"require_object_regions": options.require_object_regions, "check_image": options.check_images}
    train_set = V1GDataset(options.train_data, bad_log=out / "bad_records.jsonl", prepare=collator.prepare,
                           write_log=rank_zero, keep_train_log=resume_from is not None, **validation)
    eval_set = (V1GDataset(options.eval_data, prepare=collator.prepare, **validation) if options.eval_data
                else None)
    identity = run_identity(options, train_set, int(os.environ.get("WORLD_SIZE", "1")))
    saved_path = out / RUN_OPTIONS_FILE
    resume_changes = []
    if resume_from is not None and saved_path.is_file():
        resume_changes = check_resume(json.loads(saved_path.read_text()), identity, resume_from, saved_path,
                                      options.allow_resume_mismatch)
    elif resume_from is not None:
        logger.warning("%s has no %s (written by older versions): cannot check that the resumed run is the same run",
                       out, RUN_OPTIONS_FILE)
    if rank_zero:
        _write_json_atomic(saved_path, identity)
    use_bf16 = options.bf16 == "yes" or (options.bf16 == "auto" and torch.cuda.is_available()
                                         and torch.cuda.is_bf16_supported())
    args = TrainingArguments(
        output_dir=str(out), max_steps=options.max_steps, num_train_epochs=options.num_train_epochs,
        per_device_train_batch_size=options.batch_size, per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum, learning_rate=options.learning_rate,
        warmup_steps=options.warmup_ratio, lr_scheduler_type=options.lr_scheduler,
        weight_decay=options.weight_decay, max_grad_norm=options.max_grad_norm, seed=options.seed,
        data_seed=options.seed, save_strategy="steps", save_steps=options.save_steps,
        save_total_limit=options.save_total_limit, logging_steps=options.logging_steps,
        eval_strategy="steps" if eval_set is not None and options.eval_steps else "no",
        eval_steps=options.eval_steps, bf16=use_bf16, activation_checkpointing=options.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if options.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if options.group_by_length else "random",
        remove_unused_columns=False, report_to=[], dataloader_num_workers=loader_workers(options.num_workers),
        disable_tqdm=not options.progress,
        # gloo only when actually distributed (accelerate launch sets WORLD_SIZE); CPU has no NCCL
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=options.ddp_find_unused_parameters,
        use_cpu=not torch.cuda.is_available(),
        **({"fsdp": options.fsdp, "fsdp_config": dict(options.fsdp_config)} if options.fsdp and not own_fsdp
           else {}),
    )
    trainer = PointCopyTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                               data_collator=collator, vision_lr_scale=options.vision_lr_scale,
                               adam_beta2=options.adam_beta2, length_chunks=options.length_chunks,
                               balance_ranks=options.balance_ranks)
    crash_after = int(os.environ.get("POINTCOPY_CRASH_AFTER_STEP", "0"))
    if crash_after:  # fault injection for resume tests: die like `kill -9` right after a checkpoint is written
        trainer.add_callback(_CrashAfterSave(crash_after))
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - t0
    rank = trainer.args.process_index
    final = trainer.model
    full = None
    if own_fsdp:  # gather the shards (every rank takes part); rank 0 writes
        from .sharding import full_state_dict

        full = full_state_dict(final)
    if options.weights_digest and (full is None or rank == 0):
        (out / f"weights_digest_rank{rank}.txt").write_text(weights_digest(final, full) + "\n")
    summary = {"global_step": trainer.state.global_step, "train_loss": result.training_loss,
               "train_seconds_this_session": round(seconds, 2), "resumed_from": resume_from,
               "skipped_checkpoints": [{"path": p, "reason": r} for p, r in skipped_checkpoints],
               "resume_changes": [{"option": k, "old": a, "new": b} for k, a, b in resume_changes],
               "bad_records": len(train_set.bad), "bad_records_in_training": len(train_set.train_bad),
               "clamped_boxes": train_set.clamped_boxes, "log_history": trainer.state.log_history,
               "fsdp": ("fully_shard (pointcopy, CPU ranks)" if own_fsdp else
                        "accelerate FSDP plugin" if trainer.is_fsdp_enabled else None),
               "options": asdict(options)}
    if trainer.is_world_process_zero():
        final_dir = out / "final"
        if full is not None and options.lora and options.merge_lora:  # merging needs the weights in one piece
            final = _apply_lora(load_model_and_processor(options.model, seed=options.seed,
                                                         **options.model_overrides)[0], options)
            final.load_state_dict(full)
            full = None
        to_save = final.merge_and_unload() if options.lora and options.merge_lora else final
        to_save.save_pretrained(final_dir, **({"state_dict": full} if full is not None else {}))
        processor.save_pretrained(final_dir)
        write_atomic(out / "train_summary.json", json.dumps(summary, indent=1, default=str))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # leave together: no rank tears gloo down mid-save
        dist.barrier()
    return summary


def close_process_group() -> None:
    """Destroy the process group the Trainer opened (no-op without one); entry points call it before exiting.

    Left to interpreter shutdown, gloo's worker threads can be torn down mid-flight: a rank that had finished
    training and saved aborted with "terminate called without an active exception" (SIGABRT), and the launcher
    then failed the whole run (seen once in CI, under `train_data_parallel`). Not called by `train` itself: a
    caller may train again in the same group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _CrashAfterSave(step: int):
    """A TrainerCallback that hard-exits (no cleanup, like SIGKILL) once a checkpoint at step >= `step` exists."""
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= step:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():  # every rank's part of the checkpoint is written
                    dist.barrier()
                os._exit(137)

    return CrashAfterSave()
