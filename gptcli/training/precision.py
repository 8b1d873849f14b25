"""Mixed precision per device, and the attention kernel that trains fastest under it."""

from __future__ import annotations

from typing import Any

from gptcli.errors import UsageError


def mixed_precision(precision: str, device_type: str) -> str:
    """accelerate's name for --precision on this device.

    auto: bf16 (else fp16) on CUDA; bf16 on CPUs that compute it natively (AVX512-BF16/AMX),
    where it is faster than fp32; fp32 elsewhere. Weights and optimizer state stay fp32 either way.
    """
    if precision == "auto":
        if device_type == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device_type == "cpu":
            from gptcli.runtime import cpu_has_native_bf16

            return "bf16" if cpu_has_native_bf16() else "no"
        return "no"
    if precision == "fp16" and device_type == "cpu":
        raise UsageError("--precision fp16 needs a GPU; on CPU use bf16 (or fp32).")
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def use_eager_attention(model: Any) -> None:
    """On CPU under bf16 autocast, PyTorch's fused SDPA backward is the slowest op of a step and
    plain matmul + softmax attention trains faster on short blocks. Only this training run
    changes: the saved config does not record the choice, so inference keeps SDPA."""
    from gptcli.cpu_tuning import use_eager_attention as switch

    switch(model)  # an architecture without an eager path keeps its default
