"""CPU inference tuning: pre-packed oneDNN weights and fused GELU.

`gptcli.loading.open_model` applies both to every model opened for inference.

Inference keeps transformers' default attention, PyTorch's fused SDPA kernel. With torch 2.13 on
the reference 2-core machine it beat plain matmul + softmax in every generation shape measured
(bfloat16, 12 heads of 64, per layer): one query over 150 cached positions 45 µs against 224 µs,
over 950 positions 132 µs against 553 µs, 69 new tokens over 950 (a chat turn) 1.1 ms against
6.0 ms; GPT-2-124M batch-8 decoding ran 270-285 tokens/s against 195-225. (With older PyTorch
it was the other way round for short queries against a long cache, and inference switched to
plain attention.) `use_eager_attention` is the switch to plain attention; training uses it.

Pre-packed weights for every linear layer:

Decoding one token is a chain of matrix-vector products, bound by how fast the
weights stream from memory. Measured on the reference 2-core Zen 4 machine, a
768x3072 bfloat16 product ran at ~20 GB/s through `F.linear` and ~57 GB/s with
the weight pre-packed into oneDNN's blocked layout; float32 went from ~18 to
~44 GB/s. The tied GPT-2 output projection (50257x768) dropped from 8.6 ms to
2.6 ms in float32. Results are bit-identical in bfloat16 and within float
rounding (1e-4 absolute on unit-scale logits) in float32.

The packing op is a private PyTorch op, so it is self-tested once and skipped
silently when missing or wrong; set GPTCLI_FASTPATH=0 to turn it off.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any


def _enabled() -> bool:
    return os.environ.get("GPTCLI_FASTPATH", "1") != "0"


@lru_cache(maxsize=4)
def _op_works(dtype_name: str) -> bool:
    import torch
    import torch.nn.functional as F

    try:
        if not torch.backends.mkldnn.is_available():
            return False
        dtype = getattr(torch, dtype_name)
        g = torch.Generator().manual_seed(0)
        w = torch.randn(24, 16, generator=g).to(dtype)
        b = torch.randn(24, generator=g).to(dtype)
        x = torch.randn(3, 16, generator=g).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        want = F.linear(x, w, b)
        return bool(torch.allclose(got.float(), want.float(), atol=1e-2, rtol=1e-2))
    except Exception:
        return False


# The batch size oneDNN lays the packed weight out for. It picks the kernel, not what the layer
# accepts: measured on the reference machine (2 threads, bfloat16), a layout for 8 rows ran one-row
# products 1.3-2x faster than the layout for 1 row (the GPT-2 head, 50304x768: 2.8 ms against
# 5.3 ms) and 4- and 16-row products faster too, with bit-identical results
# (docs/performance.md, "Packing for more than one row").
PACK_BATCH_HINT = 8


def _packed_linear_class():
    import torch

    class PackedLinear(torch.nn.Module):
        """A frozen linear layer whose weight is stored in oneDNN's packed layout."""

        def __init__(self, weight_out_in: Any, bias: Any | None):
            super().__init__()
            self.in_features = weight_out_in.shape[1]
            self.out_features = weight_out_in.shape[0]
            packed = torch.ops.mkldnn._reorder_linear_weight(weight_out_in.detach().contiguous(), PACK_BATCH_HINT)
            self.register_buffer("packed_weight", packed, persistent=False)
            self.register_buffer("bias", None if bias is None else bias.detach().contiguous(), persistent=False)

        def forward(self, x):
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed_weight, self.bias, "none", [], "")

    return PackedLinear


# Below this many weights a packed call's fixed cost (tens of microseconds) outweighs the
# bandwidth it saves: small layers stay on the plain path.
MIN_PACKED_WEIGHTS = 256 * 1024


def optimize_for_inference(model: Any, runtime: Any, min_weights: int = MIN_PACKED_WEIGHTS) -> int:
    """Swap linear layers for packed ones on CPU. Returns how many layers were packed."""
    import torch

    if not _enabled() or runtime.device.type != "cpu":
        return 0
    if runtime.dtype not in (torch.float32, torch.bfloat16):
        return 0
    if not _op_works(str(runtime.dtype).replace("torch.", "")):
        return 0
    PackedLinear = _packed_linear_class()
    from transformers.pytorch_utils import Conv1D

    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear:
                swaps.append((parent, name, child.weight, child.bias))
            elif type(child) is Conv1D:  # GPT-2 stores (in, out); packing wants (out, in)
                swaps.append((parent, name, child.weight.t(), child.bias))
    from gptcli.memory import drop_file_pages

    packed = 0
    with torch.no_grad():
        for parent, name, weight, bias in swaps:
            if weight.dtype != runtime.dtype or weight.dim() != 2 or weight.numel() < min_weights:
                continue
            setattr(parent, name, PackedLinear(weight, bias))
            drop_file_pages(weight, model)
            packed += 1
    return packed


def fuse_activations(model: Any) -> int:
    """Swap the composed tanh-GELU (GPT-2's `gelu_new`, `gelu_fast`) for PyTorch's fused kernel.

    `NewGELUActivation` is six elementwise ops, each a pass over the activations plus a
    dispatch; `F.gelu(approximate="tanh")` is one, and the same function up to rounding
    (tests/test_loading.py compares the logits). Measured on the reference machine (GPT-2-124M
    shape, bfloat16): the composed form took 0.85 ms of a ~16 ms decode step at batch 8, and
    batch 1 went from ~113 to ~127 tokens/s with the fused one. Returns how many were swapped.
    """
    if not _enabled():
        return 0
    try:
        from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation
    except ImportError:
        return 0
    swaps = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) in (NewGELUActivation, FastGELUActivation)
    ]
    for parent, name in swaps:
        setattr(parent, name, GELUTanh())
    return len(swaps)


def use_eager_attention(model: Any) -> bool:
    """Switch the model to plain matmul + softmax attention. Returns whether it switched; a
    model without an eager path (or without a setter) keeps its default."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        return False
    try:
        setter("eager")
    except (ValueError, ImportError, NotImplementedError, TypeError):
        return False
    return True
