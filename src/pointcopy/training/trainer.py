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

    def _run_epoch(self, *args, **kwargs):
        # Resuming from a checkpoint already at max_steps (mid-epoch) made the Trainer (transformers 5.24) run one
        # step past max_steps (it checks the limit only after a step) and save it: a finished run, resumed, changed.
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.length_chunks > 1 and model.training and not return_outputs:
            return self._chunked_loss(model, inputs)
        trim = self.supervised_logits_only and model.training and not return_outputs
        outputs = model(**inputs, **_supervised_logits(inputs, trim))
        if model.training:
            self._record({name: getattr(outputs, name, None) for name in _DIAGNOSTICS})
        return (outputs.loss, outputs) if return_outputs else outputs.loss

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
