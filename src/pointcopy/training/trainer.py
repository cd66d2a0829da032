"""`PointCopyTrainer`: the Hugging Face Trainer plus point-and-copy metrics and a separate vision learning rate.

Logged every `logging_steps` (averaged over the micro-batches since the last log): `gen_loss`, `copy_loss`
(they add up to the cross-entropy), `z_loss`, `copy_acc` (argmax == target over pointer targets).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

VISION_PREFIXES = ("model.visual.", "base_model.model.model.visual.")


class PointCopyTrainer(Trainer):
    def __init__(self, *args, vision_lr_scale: float = 1.0, adam_beta2: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.vision_lr_scale = vision_lr_scale
        self.adam_beta2 = adam_beta2
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            for name in ("gen_loss", "copy_loss", "z_loss", "copy_accuracy"):
                value = getattr(outputs, name, None)
                if value is not None and torch.isfinite(value):
                    key = "copy_acc" if name == "copy_accuracy" else name
                    self._sums[key] += float(value)
                    self._counts[key] += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

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
