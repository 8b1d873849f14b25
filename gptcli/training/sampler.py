"""Which blocks each process trains on at each step: a pure function of (seed, step).

Epoch e visits the training blocks in the order of a permutation drawn from
seed + e. Sample number g (counting every sample of every process since step
0) is block perm_{g // N}[g % N]. Because nothing else is involved, the data
position of a checkpoint is just its step number, and resuming reproduces the
exact batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


class BlockSampler:
    def __init__(self, n_blocks: int, batch_size: int, grad_accum: int, world_size: int, rank: int, seed: int):
        self.n, self.B, self.A = n_blocks, batch_size, grad_accum
        self.world, self.rank, self.seed = world_size, rank, seed

    @property
    def samples_per_step(self) -> int:
        return self.B * self.A * self.world

    @lru_cache(maxsize=2)
    def _perm(self, epoch: int) -> Any:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def indices(self, step: int, micro: int) -> Any:
        """Block indices (B,) for this process's micro-batch `micro` of optimizer step `step`."""
        import torch

        start = step * self.samples_per_step + (micro * self.world + self.rank) * self.B
        g = torch.arange(start, start + self.B)
        epochs = g // self.n
        first, last = int(epochs[0]), int(epochs[-1])
        if first == last:
            return self._perm(first)[g % self.n]
        return torch.stack([self._perm(int(e))[int(i)] for e, i in zip(epochs, g % self.n)])

    def epoch_at(self, step: int) -> float:
        return step * self.samples_per_step / self.n
