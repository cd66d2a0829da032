"""vLLM worker whose model runner tells `PointCopyVLLM` which request owns each token of a step.

Chosen through vLLM's `worker_cls` setting (`engine.py` sets it). The runner is vLLM's own (V1 CPU runner, or the
GPU runner it derives from) with three additions, all keyed by request id:

* a request's arrival allocates a memory row and records, for each prompt position, its image-token slot
  (-1 elsewhere): `slot_map[row, position]`, a preallocated (rows, max_model_len) array;
* before each step's embedding (`_preprocess`), it builds a `CopyBatch` from the batch order vLLM just fixed:
  memory row and slot of each scheduled token (vectorised: one numpy gather, no per-token Python), and the row of
  each logits row; it clears it after the step;
* a finished request frees its row. Preempted requests keep theirs (they recompute into the same row).

The logits are wider than the vocabulary (pointer columns), so the input batch's `vocab_size` (vLLM's padding id
for prompt tokens in penalties, its top-k bound) is set to the logits width: otherwise the penalty of padded prompt
positions would land on a pointer column.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from .vllm_model import CopyBatch, PointCopyVLLM


class PointCopyRunnerMixin:
    """Adds per-request copy memory bookkeeping to a vLLM V1 `GPUModelRunner` (or its CPU subclass)."""

    def _pc_setup(self) -> None:
        self._pc_rows: dict[str, int] = {}
        self._pc_free: list[int] | None = None
        self._pc_slot_map: np.ndarray | None = None
        self._pc_num_slots: np.ndarray | None = None  # host copy of memory.num_slots: no device read per step

    def _pc_model(self) -> PointCopyVLLM | None:
        model = self.get_model()
        return model if isinstance(model, PointCopyVLLM) else None

    def _pc_ready(self, model: PointCopyVLLM) -> None:
        if self._pc_free is not None:
            return
        rows = model.memory.num_slots.shape[0]
        self._pc_free = list(range(rows - 1, -1, -1))
        self._pc_slot_map = np.full((rows, self.max_model_len), -1, dtype=np.int64)
        self._pc_num_slots = np.zeros(rows, dtype=np.int64)

    # ---- request lifecycle ---------------------------------------------------------------------------------
    def _update_states(self, scheduler_output):
        model = self._pc_model()
        if model is not None:
            self._pc_ready(model)
            self.input_batch.vocab_size = model.copy_token_start + model.copy_width
            for req_id in scheduler_output.finished_req_ids:
                row = self._pc_rows.pop(req_id, None)
                if row is not None:
                    self._pc_free.append(row)
            for new in scheduler_output.scheduled_new_reqs:
                self._pc_add(model, new)
        return super()._update_states(scheduler_output)

    def _pc_add(self, model: PointCopyVLLM, new) -> None:
        params = new.sampling_params
        if params is not None and params.prompt_logprobs:
            raise ValueError(f"request {new.req_id}: prompt_logprobs is not supported by point-and-copy serving "
                             f"(pointer logits are computed for the sampled position only)")
        if new.req_id in self._pc_rows:  # re-sent after preemption: same row, recomputed in place
            return
        ids = np.asarray(new.prompt_token_ids or [], dtype=np.int64)
        is_image = ids == model.config.image_token_id
        n_slots = int(is_image.sum())
        mem = model.memory
        if n_slots > mem.slots:
            raise ValueError(f"request {new.req_id}: {n_slots} image tokens but the copy memory holds {mem.slots} "
                             f"per request (copy_token_num / max_model_len)")
        row = self._pc_free.pop()
        self._pc_rows[new.req_id] = row
        slot_map = self._pc_slot_map[row]
        slot_map[:] = -1
        slot_map[np.nonzero(is_image)[0]] = np.arange(n_slots)
        mem.num_slots[row] = self._pc_num_slots[row] = n_slots

    # ---- per step --------------------------------------------------------------------------------------------
    def _preprocess(self, scheduler_output, num_input_tokens, intermediate_tensors=None):
        model = self._pc_model()
        if model is not None:
            model.copy_batch = self._pc_batch(scheduler_output, model)
        return super()._preprocess(scheduler_output, num_input_tokens, intermediate_tensors)

    def _pc_batch(self, scheduler_output, model: PointCopyVLLM) -> CopyBatch:
        batch = self.input_batch
        req_ids = batch.req_ids[:batch.num_reqs]
        rows = np.array([self._pc_rows[r] for r in req_ids], dtype=np.int64)
        counts = np.array([scheduler_output.num_scheduled_tokens[r] for r in req_ids], dtype=np.int64)
        token_rows = np.repeat(rows, counts)
        first = np.cumsum(counts) - counts
        positions = np.arange(int(counts.sum())) + np.repeat(batch.num_computed_tokens_cpu[:len(rows)] - first, counts)
        in_map = positions < self._pc_slot_map.shape[1]
        token_slots = np.full_like(token_rows, -1)
        token_slots[in_map] = self._pc_slot_map[token_rows[in_map], positions[in_map]]
        device = model.memory.values.device
        max_slots = int(self._pc_num_slots[rows].max()) if len(rows) else 0
        return CopyBatch(token_rows=torch.from_numpy(token_rows).to(device),
                         token_slots=torch.from_numpy(token_slots).to(device),
                         image_tokens=torch.from_numpy(np.nonzero(token_slots >= 0)[0]).to(device),
                         logits_rows=torch.from_numpy(rows).to(device), max_slots=max_slots)

    def execute_model(self, *args, **kwargs):
        try:
            return super().execute_model(*args, **kwargs)
        finally:
            model = self._pc_model()
            if model is not None:
                model.copy_batch = None


class PointCopyCPUModelRunner(PointCopyRunnerMixin, CPUModelRunner):
    pass


class PointCopyGPUModelRunner(PointCopyRunnerMixin, GPUModelRunner):
    pass


class PointCopyCPUWorker(CPUWorker):
    """vLLM's CPU worker with the point-and-copy runner (V1 runner only)."""

    def init_device(self):
        super().init_device()
        _adopt_runner(self, CPUModelRunner, PointCopyCPUModelRunner)


def _adopt_runner(worker, base: type, adopted: type) -> None:
    # The worker builds its runner inside init_device; the point-and-copy runner adds methods only (its state is
    # created in _pc_setup), so the built runner takes the subclass instead of init_device being copied here.
    runner = worker.model_runner
    if type(runner) is not base:
        raise RuntimeError(f"point-and-copy serving needs vLLM's V1 model runner {base.__name__}, got "
                           f"{type(runner).__module__}.{type(runner).__name__} (set VLLM_USE_V2_MODEL_RUNNER=0)")
    runner.__class__ = adopted
    runner._pc_setup()


class PointCopyGPUWorker(Worker):
    """The GPU worker with the point-and-copy runner (`worker_cls` on CUDA machines; not run in CI: no GPU)."""

    def init_device(self):
        super().init_device()
        _adopt_runner(self, GPUModelRunner, PointCopyGPUModelRunner)
