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
    def __init__(
        self,
        n_blocks: int,
        batch_size: int,
        grad_accum: int,
        world_size: int,
        rank: int,
        seed: int,
        block_size: int = 0,
        stream_len: int = 0,
    ):
        self.n, self.B, self.A = n_blocks, batch_size, grad_accum
        self.world, self.rank, self.seed = world_size, rank, seed
        self.T, self.L = block_size, stream_len  # for starts(): token positions instead of block indices

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

    def shift(self, epoch: int) -> int:
        """Where epoch e's block grid starts: 0 in the first epoch, then a seeded offset in [0, T).

        Repeated epochs thus see windows cut at new places instead of the same blocks again
        (nanoGPT gets the same effect from random offsets)."""
        if epoch == 0 or self.T <= 1:
            return 0
        return self._shift(epoch)

    @lru_cache(maxsize=4)
    def _shift(self, epoch: int) -> int:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7_919)
        return int(torch.randint(0, self.T, (1,), generator=g))

    def starts(self, step: int, micro: int) -> Any:
        """Stream positions (B,) of this process's windows for micro-batch `micro` of `step`."""
        import torch

        start = step * self.samples_per_step + (micro * self.world + self.rank) * self.B
        g = torch.arange(start, start + self.B)
        blocks = self.indices(step, micro)
        shifts = (
            torch.tensor([self.shift(int(e)) for e in g // self.n]) if self.n else torch.zeros(self.B, dtype=torch.long)
        )
        last = self.L - self.T - 1  # the last window that still has T+1 tokens
        return torch.clamp(blocks * self.T + shifts, max=last)
