"""The options of a training run, as plain dataclasses (importing them costs no torch): `TrainHyperparameters`
(how to train) and `TrainOptions` (that plus what to train and where). `pointcopy train` has a flag per field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..options import check_minimums


@dataclass(kw_only=True)
class TrainHyperparameters:
    """How to train: every option of a run except what it trains and where it writes (`TrainOptions` adds those).
    A recipe (e.g. `embedded.recipe.ShapesRecipe.training`) holds one of these instead of re-declaring fields."""

    max_steps: int = 100
    num_train_epochs: float = 1.0  # used only when max_steps <= 0
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 3e-4
    vision_lr_scale: float = 1.0
    freeze_vision: bool = False
    freeze: str | None = None  # regex of parameter names to freeze, e.g. "model\.visual\.patch_embed"
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    adam_beta2: float = 0.95  # the paper's value (the official train.py leaves HF's 0.999)
    max_grad_norm: float = 0.5
    seed: int = 42
    save_steps: int = 50
    save_total_limit: int | None = 2
    logging_steps: int = 10
    eval_steps: int | None = None
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    merge_lora: bool = True
    gradient_checkpointing: bool = False
    bf16: str = "auto"  # auto | yes | no
    label_policy: str = "assistant"
    region_key_mode: str = "replace"
    region_occurrences: str = "all"
    box_text: bool = True
    max_side: int | None = 672
    max_length: int | None = None
    group_by_length: bool = False  # batches of similar length (less padding; ~1.5x faster on mixed lengths)
    # run each micro-batch as N length-sorted sub-batches: same gradient, less padding (training/chunks.py)
    length_chunks: int = 1
    # with several ranks, deal each random global batch to them by length (training/sampling.py)
    balance_ranks: bool = True
    # DDP's search for parameters a step did not use (None: the Trainer's choice, on unless gradient checkpointing).
    # False saves an autograd-graph traversal per step but fails if a trainable parameter goes unused in a step.
    ddp_find_unused_parameters: bool | None = None
    require_object_regions: bool = True  # v1g validation: every <objN> needs a region (off for text-only controls)
    # check each record's image when loading (header only: exists, readable format, size == image_size); bad ones
    # are skipped and listed in output_dir/bad_records.jsonl. Images failing later are skipped and logged anyway.
    check_images: bool = True
    # resume even if the options that decide the run (data, learning rate, seed, batch size, ...) differ from the
    # ones saved in output_dir/run_options.json when the run started (default: refuse, naming each change)
    allow_resume_mismatch: bool = False
    threads: int | None = 1
    resume: bool = True
    weights_digest: bool = False
    model_overrides: dict = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self):
        check_minimums(self, {"batch_size": 1, "grad_accum": 1, "learning_rate": 0, "vision_lr_scale": 0,
                              "warmup_ratio": 0, "weight_decay": 0, "max_grad_norm": 0, "save_steps": 1,
                              "save_total_limit": 1, "logging_steps": 1, "eval_steps": 1, "lora_r": 1,
                              "lora_alpha": 1, "lora_dropout": 0, "max_side": 28, "max_length": 1,
                              "length_chunks": 1, "threads": 1}, exclusive=("learning_rate",))
        if self.max_steps <= 0:  # an epoch-based run
            check_minimums(self, {"num_train_epochs": 0}, exclusive=("num_train_epochs",))


@dataclass(kw_only=True)
class TrainOptions(TrainHyperparameters):
    """One training run: the hyperparameters plus the model to start from, the data and the output directory."""

    model: str  # checkpoint dir / hub id, or a preset name (see presets.PRESETS)
    train_data: list[str]
    output_dir: str
    eval_data: list[str] = field(default_factory=list)
    # DataLoader worker processes that read, decode and resize images and tokenise (collate.prepare), ahead of the
    # step. None: 0 without CUDA (on a CPU the training's own threads use the cores), else min(8, CPU cores per
    # GPU process - 1). benchmarks/data_loader.py prints the loader's samples/s next to the trainer's.
    num_workers: int | None = None
    # Fully sharded data parallel through the Trainer's FSDP plugin (accelerate; PyTorch's `fully_shard` with
    # fsdp_config {"version": 2}): e.g. "full_shard auto_wrap"; None = plain data parallel. See docs/training.md.
    fsdp: str | None = None
    fsdp_config: dict = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers (--num-workers) must be >= 0, got {self.num_workers}")
        if not self.train_data:
            raise ValueError("train_data (--train-data) names no file")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ValueError(f"output_dir (--output-dir) {self.output_dir} is a file, not a directory")
