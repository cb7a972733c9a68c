"""Deterministic data order: which records form micro-batch ``m`` on rank ``r``, as a pure function.

Every epoch is a fresh permutation seeded by ``(seed, epoch)``; a global batch of ``batch_size * world_size``
records is split into per-rank slices in rank order; the last incomplete global batch of an epoch is
dropped (so no record meets itself as an in-batch negative). Because micro-batch ``m`` depends only on
``(seed, m, rank, world_size)``, resuming needs nothing but the micro-batch counter, and a run on W processes
sees exactly the global batches of a single-process run with ``W * batch_size`` records per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class BatchPlan:
    """Which ``(epoch, record index)`` pairs make up each micro-batch of one rank.

    Args:
        num_records: Records in the training set.
        batch_size: Records per rank per micro-batch.
        world_size: Number of processes.
        rank: This process's rank.
        seed: Seed of the per-epoch permutations.
    """

    num_records: int
    batch_size: int
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_records < self.global_batch:
            raise ValueError(
                f"the training data has {self.num_records} records, fewer than one global batch of "
                f"{self.global_batch} (batch_size={self.batch_size} x {self.world_size} process(es)); "
                "add data or lower batch_size"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_records // self.global_batch

    def permutation(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache.clear()
            self._cache[epoch] = torch.randperm(self.num_records, generator=gen).tolist()
        return self._cache[epoch]

    def epoch_of(self, micro_batch: int) -> int:
        return micro_batch // self.batches_per_epoch

    def keys(self, micro_batch: int) -> list[tuple[int, int]]:
        """``(epoch, record index)`` of every record of micro-batch ``micro_batch`` on this rank."""
        epoch, j = divmod(micro_batch, self.batches_per_epoch)
        start = j * self.global_batch + self.rank * self.batch_size
        perm = self.permutation(epoch)
        return [(epoch, perm[i]) for i in range(start, start + self.batch_size)]


class MicroBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``m`` is the collated micro-batch ``m`` (for a ``DataLoader`` with
    ``batch_size=None``, so tokenization can run in worker processes).

    Args:
        examples: A ``datasets.Dataset`` of canonical examples.
        plan: The batch plan of this rank.
        collate: ``collate(rows, keys) -> dict of tensors``; ``keys`` are ``(epoch, index)`` pairs that seed
            per-example randomness (masking, negative sampling).
    """

    def __init__(self, examples, plan: BatchPlan, collate: Callable):
        self.examples = examples
        self.plan = plan
        self.collate = collate

    def rows(self, micro_batch: int) -> tuple[list[dict], list[tuple[int, int]]]:
        keys = self.plan.keys(micro_batch)
        columns = self.examples[[index for _, index in keys]]
        names = list(columns)
        rows = [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]
        return rows, keys

    def __getitem__(self, micro_batch: int) -> dict:
        rows, keys = self.rows(micro_batch)
        return self.collate(rows, keys)

    def __len__(self) -> int:  # nominal: the sampler decides which micro-batches are drawn
        return 2**62
