"""Packing token streams into fixed-size training blocks.

Documents are concatenated, each followed by the end-of-text token, into one
stream. Block i covers stream[i*T : i*T+T+1]: inputs are its first T tokens,
targets the T tokens after each (so no prediction is wasted at block edges).
An optional mask marks which target tokens count in the loss (finetuning on
completions only); masked targets become -100, which cross-entropy ignores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gptcli.errors import InputError, UsageError

IGNORE = -100


@dataclass
class Blocks:
    ids: Any  # (L,) token stream: an int64 tensor, or a numpy.memmap of the token cache
    mask: Any | None  # (L,) bool: True where the token is a loss target; None = all
    block_size: int

    def __len__(self) -> int:
        return max(0, (len(self.ids) - 1) // self.block_size)

    def batch(self, indices: Any) -> tuple[Any, Any]:
        """Inputs and targets (B, T) for block indices (B,)."""
        return self.batch_at(indices * self.block_size)

    def batch_at(self, starts: Any) -> tuple[Any, Any]:
        """Inputs and targets (B, T) for windows starting at these stream positions (B,)."""
        import torch

        T = self.block_size
        offsets = starts.unsqueeze(1) + torch.arange(T + 1)  # (B, T+1)
        if isinstance(self.ids, torch.Tensor):
            window = self.ids[offsets]
        else:  # a numpy.memmap of the token cache (uint16/uint32): read just these windows
            import mmap

            import numpy as np

            window = torch.from_numpy(self.ids[offsets.numpy()].astype(np.int64))
            # Pages read through a mapping stay mapped, and count in the process's resident memory,
            # until it ends: over a long run, the whole corpus (plus the kernel's readahead around
            # each random window). Drop them once copied (nanoGPT re-creates its memmap per batch for
            # the same reason); they stay in the page cache, so a later read costs no disk access.
            mapped = getattr(self.ids, "_mmap", None)
            if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
                mapped.madvise(mmap.MADV_DONTNEED)
        x, y = window[:, :-1], window[:, 1:]
        if self.mask is not None:
            y = y.masked_fill(~self.mask[offsets][:, 1:], IGNORE)
        return x, y

    @property
    def tokens(self) -> int:
        return len(self) * self.block_size


def stream(token_lists: list[list[int]], eot: int, masks: list[list[bool]] | None = None) -> tuple[Any, Any | None]:
    """One int64 stream (and mask) with eot after each document."""
    import torch

    ids: list[int] = []
    flags: list[bool] = []
    for i, toks in enumerate(token_lists):
        ids.extend(toks)
        ids.append(eot)
        if masks is not None:
            flags.extend(masks[i])
            flags.append(True)  # learning to stop is part of the answer
    t = torch.tensor(ids, dtype=torch.long)
    return t, (torch.tensor(flags, dtype=torch.bool) if masks is not None else None)


def split(ids: Any, mask: Any | None, val_fraction: float, block_size: int) -> tuple[Blocks, Blocks | None]:
    """Hold out the last `val_fraction` of the stream for validation (nanoGPT's 90/10 split)."""
    if val_fraction <= 0:
        return _check_train(Blocks(ids, mask, block_size)), None
    cut = int(len(ids) * (1 - val_fraction))
    train = Blocks(ids[:cut], None if mask is None else mask[:cut], block_size)
    val = Blocks(ids[cut:], None if mask is None else mask[cut:], block_size)
    _check_train(train)
    if len(val) < 1:
        raise UsageError(
            f"the validation split ({len(ids) - cut:,} tokens) is smaller than one block of {block_size + 1} tokens.",
            hint="Raise --val-split, lower --block-size, add data, or pass --val-data.",
        )
    return train, val


def val_holds_a_block(n_tokens: int, val_fraction: float, block_size: int) -> bool:
    """Whether split() can hold out `val_fraction` of n_tokens as at least one validation block."""
    return n_tokens - int(n_tokens * (1 - val_fraction)) >= block_size + 1


def _check_train(train: Blocks) -> Blocks:
    if len(train) < 1:
        raise InputError(
            f"the training data ({len(train.ids):,} tokens) is smaller than one block of {train.block_size + 1} tokens.",
            hint="Add data or lower --block-size.",
        )
    if train.mask is not None and not bool(train.mask[1:].any()):
        raise InputError("no training tokens carry a loss (every completion/assistant part is empty).")
    return train


def max_token_id(ids: Any) -> int:
    return int(ids.max()) if len(ids) else -1
