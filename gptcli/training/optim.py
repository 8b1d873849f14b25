"""AdamW and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gptcli.training.settings import TrainSettings


def lr_lambda(steps: int, warmup: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup, then cosine or linear decay to min_ratio * lr (nanoGPT's get_lr)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant" or steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        if schedule == "linear":
            return min_ratio + (1 - min_ratio) * (1 - progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_optimizer(model: Any, s: TrainSettings, lr: float) -> Any:
    """AdamW; weight decay on matrices only (not biases, norms); fused kernel when available."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(s.beta1, s.beta2), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=(s.beta1, s.beta2), foreach=True)


def make_scheduler(optimizer: Any, s: TrainSettings, steps: int, lr: float) -> Any:
    import torch

    min_ratio = (s.min_lr if s.min_lr is not None else lr / 10) / lr
    warmup = s.warmup if s.warmup is not None else min(1000, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, warmup, s.schedule, min_ratio))
