"""Rank-balanced sampling: random global batches, dealt to data-parallel ranks so each rank gets similar work.

    RankBalancedSampler(lengths, per_rank, ranks, seed)   a flat index order for the Trainer's DataLoader

Why: under DDP every step waits for the slowest rank. With random assignment the two shapes-tiny ranks' batches
differ in total length by enough that a step costs ~1.09x the mean rank's time (the expected maximum of two
random batch times, measured on shapes batches). Dealing each global batch by length evens that out. Unlike
length-grouped sampling (`TrainOptions.group_by_length`), which trained much worse on shapes, the global batch --
which rows are averaged into one optimizer step -- is still a uniform random draw; only which rank computes
which rows changes, and every rank still gets `per_rank` rows, so the per-rank loss means keep equal weight.

Order contract: accelerate shards a DataLoader's batches round-robin (batch `i` goes to rank `i % ranks`), so
each global batch is yielded as rank 0's `per_rank` rows, then rank 1's, and so on. Every rank builds the same
order from `seed + epoch` (no communication).
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class RankBalancedSampler(Sampler[int]):
    def __init__(self, lengths: list[int], per_rank: int, ranks: int, seed: int = 0):
        if per_rank < 1 or ranks < 1:
            raise ValueError(f"per_rank and ranks must be >= 1, got {per_rank} and {ranks}")
        self.lengths = list(lengths)
        self.per_rank = per_rank
        self.ranks = ranks
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.per_rank * self.ranks
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            if len(batch) < size:  # the last, partial batch: nothing to balance that the loader will keep
                yield from batch
                return
            for rows in self.deal(batch):
                yield from rows

    def deal(self, batch: list[int]) -> list[list[int]]:
        """Longest row first, each to the least-loaded rank that still has room: `ranks` lists of `per_rank`."""
        shares: list[list[int]] = [[] for _ in range(self.ranks)]
        loads = [0] * self.ranks
        for index in sorted(batch, key=lambda i: -self.lengths[i]):
            rank = min((r for r in range(self.ranks) if len(shares[r]) < self.per_rank), key=lambda r: loads[r])
            shares[rank].append(index)
            loads[rank] += self.lengths[index]
        return shares
