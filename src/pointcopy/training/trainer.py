"""`PointCopyTrainer`: the Hugging Face Trainer plus point-and-copy metrics, a separate vision learning rate and
length chunks.

Logged every `logging_steps` (averaged over the micro-batches since the last log): `gen_loss`, `copy_loss`
(they add up to the cross-entropy), `z_loss`, `copy_acc` (argmax == target over pointer targets).

Under data parallelism each global batch is dealt to the ranks by length (`sampling.RankBalancedSampler`,
`balance_ranks=False` to turn off), so no rank waits long for the other.

`length_chunks=n` runs each training micro-batch as n length-sorted sub-batches (`chunks.split_by_length`) and
adds their losses weighted by supervised tokens: the same loss and gradient as one padded forward, with less
padding computed (0.74-0.79x the step time on shapes-tiny with 3 chunks, `benchmarks/shapes_step.py`).

Training forwards score only positions that predict a supervised token (`supervised_logits_only`): the prompt
needs no vocabulary or pointer logits.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from .chunks import IGNORE_INDEX, split_by_length, supervised_tokens
from .sampling import RankBalancedSampler

VISION_PREFIXES = ("model.visual.", "base_model.model.model.visual.")
_DIAGNOSTICS = ("gen_loss", "copy_loss", "z_loss", "copy_accuracy")


def _supervised_logits(inputs: dict, trim: bool) -> dict:
    """`logits_to_keep` so that only positions from the first one predicting a supervised token get logits: the
    prompt (system, image, question) needs no vocabulary or pointer scores, and the loss is unchanged (the model
    scores the labels its kept logits predict). 0.95-0.97x the step time on shapes-tiny
    (`benchmarks/shapes_step.py`)."""
    labels = inputs.get("labels")
    if not trim or labels is None or labels.shape[1] < 2:
        return {}
    supervised = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero()
    first = int(supervised[0]) if len(supervised) else labels.shape[1] - 2  # position predicting label first+1
    return {"logits_to_keep": labels.shape[1] - first}


class PointCopyTrainer(Trainer):
    def __init__(self, *args, vision_lr_scale: float = 1.0, adam_beta2: float | None = None,
                 length_chunks: int = 1, balance_ranks: bool = True, supervised_logits_only: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if length_chunks < 1:
            raise ValueError(f"length_chunks must be >= 1, got {length_chunks}")
        self.vision_lr_scale = vision_lr_scale
        self.adam_beta2 = adam_beta2
        self.length_chunks = length_chunks
        self.balance_ranks = balance_ranks
        self.supervised_logits_only = supervised_logits_only
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        # A step's loss is the mean over every supervised token of its global batch (all ranks, all accumulated
        # micro-batches), as one process computes it: each micro-batch's loss is weighted by its share of those
        # tokens (`compute_loss`), the Trainer counts them across ranks (`_get_num_items_in_batch`), skips its
        # division by the accumulation steps and multiplies by the number of ranks, which the gradient average
        # divides out again. Averaging per-rank means instead weights short rows more when ranks' token counts
        # differ (and accumulated micro-batches likewise), so N ranks would not train as one process does.
        self.model_accepts_loss_kwargs = True

    def _run_epoch(self, *args, **kwargs):
        # Resuming from a checkpoint already at max_steps (mid-epoch) made the Trainer (transformers 5.24) run one
        # step past max_steps (it checks the limit only after a step) and save it: a finished run, resumed, changed.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.length_chunks > 1 and model.training and not return_outputs:
            return self._chunked_loss(model, inputs) * self._token_share(inputs, num_items_in_batch)
        trim = self.supervised_logits_only and model.training and not return_outputs
        outputs = model(**inputs, **_supervised_logits(inputs, trim))
        if model.training:
            self._record({name: getattr(outputs, name, None) for name in _DIAGNOSTICS})
        loss = outputs.loss * self._token_share(inputs, num_items_in_batch) if model.training else outputs.loss
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _token_share(inputs: dict, num_items_in_batch) -> float:
        """This micro-batch's supervised tokens / the global batch's (1.0 for one process without accumulation)."""
        if num_items_in_batch is None or "labels" not in inputs:
            return 1.0
        total = int(num_items_in_batch)
        return supervised_tokens(inputs["labels"]) / total if total else 1.0

    def _get_num_items_in_batch(self, batch_samples: list, device):
        """Supervised tokens (the positions our loss averages over, `chunks.supervised_tokens`) of the global
        batch: these micro-batches on every rank."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        count = torch.tensor(sum(supervised_tokens(b["labels"]) for b in batch_samples), device=device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def _chunked_loss(self, model, inputs) -> torch.Tensor:
        """The batch's loss as the supervised-token-weighted sum of its length chunks' losses (equal to the
        padded batch's mean-over-tokens loss, so the gradient is the same). Diagnostics are combined the same
        way (copy accuracy weighted by pointer targets), so they match an unchunked run's."""
        config = self.model.config
        chunks = split_by_length(inputs, self.length_chunks, config.vision_start_token_id)
        total_tokens = max(supervised_tokens(inputs["labels"]), 1)
        loss, parts, pointer_hits, pointers = 0.0, defaultdict(float), 0.0, 0
        for chunk in chunks:
            outputs = model(**chunk, **_supervised_logits(chunk, self.supervised_logits_only))
            share = supervised_tokens(chunk["labels"]) / total_tokens
            loss = loss + outputs.loss * share
            for name in _DIAGNOSTICS[:-1]:  # the losses; copy accuracy is weighted by pointer targets below
                value = getattr(outputs, name, None)
                if value is not None:
                    parts[name] += float(value) * share
            targets = chunk["labels"][:, 1:]
            n_ptr = int(((targets != IGNORE_INDEX) & (targets >= config.copy_token_start)).sum())
            if n_ptr and outputs.copy_accuracy is not None:
                pointer_hits += float(outputs.copy_accuracy) * n_ptr
                pointers += n_ptr
        self._record({**parts, "copy_accuracy": pointer_hits / pointers if pointers else None})
        return loss

    def _record(self, values: dict) -> None:
        for name, value in values.items():
            if value is not None and math.isfinite(float(value)):
                key = "copy_acc" if name == "copy_accuracy" else name
                self._sums[key] += float(value)
                self._counts[key] += 1

    def log(self, logs, start_time=None):
        if "loss" in logs:  # training log: attach our averages
            for key, total in self._sums.items():
                logs[key] = round(total / max(self._counts[key], 1), 5)
            self._sums.clear()
            self._counts.clear()
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        # Length-grouped batches without tokenising every record up front: our datasets expose `lengths`.
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.lengths)
        if (self.balance_ranks and self.args.world_size > 1 and self.args.train_sampling_strategy == "random"
                and hasattr(dataset, "lengths")):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return RankBalancedSampler(dataset.lengths, self.args.per_device_train_batch_size,
                                       self.args.world_size, seed=seed)
        return super()._get_train_sampler(train_dataset)

    # ---- sharded (training/sharding.py): checkpoints hold full tensors, written by rank 0 -------------------------
    def save_model(self, output_dir=None, _internal_call=False):
        from .sharding import full_state_dict, is_sharded

        if not is_sharded(self.model):
            return super().save_model(output_dir, _internal_call)
        state = full_state_dict(self.model)  # a collective: every rank calls it, rank 0 gets the tensors
        if self.args.should_save:
            self._save(output_dir or self.args.output_dir, state_dict=state)

    def _save_optimizer_and_scheduler(self, output_dir):
        from .sharding import full_optimizer_state, is_sharded

        if not is_sharded(self.model):
            return super()._save_optimizer_and_scheduler(output_dir)
        state = full_optimizer_state(self.model, self.optimizer)
        if self.args.should_save:
            torch.save(state, os.path.join(output_dir, "optimizer.pt"))
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, "scheduler.pt"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from .sharding import is_sharded, load_full_state_dict

        if not is_sharded(self.model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        full = os.path.join(resume_from_checkpoint, "model.safetensors")
        if os.path.isfile(full):
            load_full_state_dict(self.model, load_file(full))
            return
        # a LoRA checkpoint: the adapter's tensors under peft's saved names (no adapter name in them)
        saved = load_file(os.path.join(resume_from_checkpoint, "adapter_model.safetensors"))
        names = {k.replace(".default", "").replace(".modules_to_save", ""): k for k in self.model.state_dict()}
        missing = sorted(k for k in saved if k not in names)
        if missing:
            raise ValueError(f"{resume_from_checkpoint}: adapter tensors with no parameter here: {missing[:3]}")
        load_full_state_dict(self.model, {names[k]: v for k, v in saved.items()}, strict=False)

    def _load_optimizer_and_scheduler(self, checkpoint):
        from .sharding import is_sharded, load_full_optimizer_state

        if checkpoint is None or not is_sharded(self.model):
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_full_optimizer_state(self.model, self.optimizer,
                                  torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True))

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = defaultdict(list)
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups[(name in decay, name.startswith(VISION_PREFIXES))].append(param)
        lr = self.args.learning_rate
        param_groups = [{"params": params, "weight_decay": self.args.weight_decay if is_decay else 0.0,
                         "lr": lr * (self.vision_lr_scale if is_vision else 1.0)}
                        for (is_decay, is_vision), params in sorted(groups.items()) if params]
        betas = (self.args.adam_beta1, self.adam_beta2 if self.adam_beta2 is not None else self.args.adam_beta2)
        self.optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=self.args.adam_epsilon)
        return self.optimizer
