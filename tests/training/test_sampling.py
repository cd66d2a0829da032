"""Rank-balanced sampling: every row once per epoch, global batches unchanged in distribution, ranks balanced."""

from __future__ import annotations

import random

import pytest
import torch

from pointcopy.training.sampling import RankBalancedSampler


def _lengths(n: int = 400, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(150, 360) for _ in range(n)]


def test_each_epoch_yields_every_row_once_and_is_reproducible():
    lengths = _lengths(403)  # 403 = 25 global batches of 16 + a partial one
    sampler = RankBalancedSampler(lengths, per_rank=8, ranks=2, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(403)) and len(sampler) == 403
    assert list(RankBalancedSampler(lengths, per_rank=8, ranks=2, seed=3)) == first  # every rank builds this
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(403))


def test_global_batches_are_the_random_draw_and_ranks_get_equal_counts_and_similar_work():
    lengths = _lengths()
    sampler = RankBalancedSampler(lengths, per_rank=8, ranks=2, seed=0)
    order = list(sampler)
    permutation = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    gaps_balanced, gaps_random = [], []
    for start in range(0, 400, 16):
        # same rows per optimizer step as a plain seeded shuffle; only their split between ranks changes
        assert sorted(order[start:start + 16]) == sorted(permutation[start:start + 16])
        rank0, rank1 = order[start:start + 8], order[start + 8:start + 16]  # accelerate: batch i -> rank i % 2
        gaps_balanced.append(abs(sum(lengths[i] for i in rank0) - sum(lengths[i] for i in rank1)))
        plain0, plain1 = permutation[start:start + 8], permutation[start + 8:start + 16]
        gaps_random.append(abs(sum(lengths[i] for i in plain0) - sum(lengths[i] for i in plain1)))
    assert max(gaps_balanced) <= max(lengths) - min(lengths)  # greedy dealing: within one row's spread
    assert sum(gaps_balanced) < 0.25 * sum(gaps_random)


def test_refuses_empty_shares():
    with pytest.raises(ValueError, match="per_rank and ranks"):
        RankBalancedSampler([1, 2], per_rank=0, ranks=2)


def test_trainer_balances_ranks_only_when_data_parallel(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from pointcopy.training.trainer import PointCopyTrainer

    class Lengths(torch.utils.data.Dataset):
        lengths = _lengths(64)

        def __len__(self):
            return 64

        def __getitem__(self, i):
            return i

    model = torch.nn.Linear(2, 2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=8)
    one = PointCopyTrainer(model=model, args=args, train_dataset=Lengths())
    assert not isinstance(one._get_train_sampler(), RankBalancedSampler)  # one process: the plain shuffle
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    two = PointCopyTrainer(model=model, args=args, train_dataset=Lengths())
    sampler = two._get_train_sampler()
    assert isinstance(sampler, RankBalancedSampler) and (sampler.per_rank, sampler.ranks) == (8, 2)
    off = PointCopyTrainer(model=model, args=args, train_dataset=Lengths(), balance_ranks=False)
    assert not isinstance(off._get_train_sampler(), RankBalancedSampler)
