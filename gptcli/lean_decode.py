"""The lean decode forwards: the model's arithmetic for one decode step with fewer calls.

Our decode loop calls a model once per step with the same few keywords. transformers' forward
spends about as long again around the matrix products: module calls and hooks, per-call mask
machinery, keyword plumbing (docs/performance.md, "Llama-family decode"). A lean forward keeps
the model's own weights and does the same arithmetic in one flat loop over per-layer tuples:
gptcli.llama_decode for Llama, Mistral and Qwen2, gptcli.gpt2_decode for GPT-2.

`decode_forward(model)` builds the one that applies and checks it once against the model's own
forward (a padded two-row batch: prefill and two cached steps); a model none applies to, or one
whose lean forward disagrees beyond rounding, keeps its own forward. GPTCLI_LEAN_DECODE=0 turns
them all off; GPTCLI_LLAMA_DECODE=0 the Llama-family one only.
"""

from __future__ import annotations

import functools
import os
from typing import Any


def enabled() -> bool:
    return os.environ.get("GPTCLI_LEAN_DECODE", "1") != "0" and os.environ.get("GPTCLI_FASTPATH", "1") != "0"


class LeanDecoder:
    """What the lean forwards share: `decoder(input_ids=..., <cache keyword>=..., attention_mask=...,
    position_ids=...)` returns an object with `logits` (of the last `logits_to_keep` positions) and
    the cache, under the model's cache keyword."""

    def __init__(self, cache_name: str, dtype: Any, embedding: Any):
        import torch

        self.torch = torch
        self.cache_name = cache_name
        self.dtype = dtype
        self.min_value = torch.finfo(dtype).min
        # A quantized head tied to the input embedding serves the lookups (gptcli.quantize).
        self.embed = (
            functools.partial(torch.nn.functional.embedding, weight=embedding.weight)
            if type(embedding) is torch.nn.Embedding
            else embedding.forward
        )
        self.attention = torch.nn.functional.scaled_dot_product_attention

    def _mask(self, attention_mask, kv_len: int, t: int):
        """Additive mask (b, 1, 1, t, kv_len): padding, the future, and a whole buffer's spare room.
        None for one new token that may see every key: attention without a mask is cheaper, and
        adding a mask of zeros changes no score."""
        torch = self.torch
        b, filled = attention_mask.shape
        if t == 1 and kv_len == filled and bool(attention_mask.all()):
            return None
        device = attention_mask.device
        past = filled - t
        keep = torch.zeros(b, kv_len, dtype=torch.bool, device=device)
        keep[:, :filled] = attention_mask.bool()
        keep = keep[:, None, :].expand(b, t, kv_len)
        if t > 1:
            causal = torch.arange(kv_len, device=device)[None, :] <= (past + torch.arange(t, device=device))[:, None]
            keep = keep & causal
        mask = torch.zeros(b, t, kv_len, dtype=self.dtype, device=device)
        mask.masked_fill_(~keep, self.min_value)
        return mask.view(b, 1, 1, t, kv_len)


def product(module: Any) -> Any:
    """The function computing a projection: the forward of a packed or quantized layer (called
    directly: no module-call machinery per step), F.linear over a small plain layer's weight, or
    a small GPT-2 Conv1D's own forward."""
    import torch

    if type(module) is torch.nn.Linear:
        return functools.partial(torch.nn.functional.linear, weight=module.weight, bias=module.bias)
    if type(module).__name__ in ("PackedLinear", "Int8Linear", "Int4Linear", "Int8Planes", "Conv1D"):
        return module.forward
    raise TypeError(f"unexpected projection {type(module).__name__}")


def decode_forward(model: Any) -> Any:
    """The lean forward for this model if one applies and agrees with the model's own; else None.

    Decided once per model (the check runs a few forward passes of at most 7 tokens).
    """
    verdict = getattr(model, "_gptcli_lean_decoder", None)
    if verdict is None:
        verdict = _build_checked(model) or False
        try:
            model._gptcli_lean_decoder = verdict
        except (AttributeError, TypeError):  # pragma: no cover - a model object that takes no attributes
            pass
    return verdict or None


def _build_checked(model: Any) -> LeanDecoder | None:
    from gptcli import gpt2_decode, llama_decode
    from gptcli.kvcache import cache_kwarg

    if not enabled():
        return None
    name = cache_kwarg(model)
    if name is None:
        return None
    try:
        for build in (llama_decode.build, gpt2_decode.build):
            decoder = build(model, name)
            if decoder is not None:
                return decoder if _agrees(model, decoder) else None
    except Exception:  # anything unexpected in a model's layout: its own forward stays in charge
        return None
    return None


def _agrees(model: Any, decoder: LeanDecoder) -> bool:
    """Prefill of a left-padded two-row batch and two cached steps: the decoder's logits against
    the model's own forward over the same cache calls."""
    import torch

    from gptcli.kvcache import new_cache

    vocab = int(model.config.vocab_size)
    name = decoder.cache_name
    ids = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, 14, 15]]) % vocab
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    fed = [torch.tensor([[17], [19]]) % vocab, torch.tensor([[23], [29]]) % vocab]
    device = next(model.parameters()).device
    ids, mask, positions, fed = ids.to(device), mask.to(device), positions.to(device), [f.to(device) for f in fed]
    tol = 1e-3 if decoder.dtype == torch.float32 else 5e-2
    with torch.inference_mode():
        caches = [new_cache(model), new_cache(model)]
        step = ids
        for k in range(3):
            outs = []
            for run, cache in zip((model, decoder), caches):
                kwargs = {name: cache, "attention_mask": mask, "position_ids": positions[:, -step.shape[1] :]}
                outs.append(run(input_ids=step, use_cache=True, logits_to_keep=step.shape[1], **kwargs).logits.float())
            want, got = outs
            real = mask[:, -step.shape[1] :].bool()  # padded positions' logits are never used
            scale = max(1.0, want[real].abs().max().item())
            if not bool(torch.isfinite(got[real]).all()) or (got - want)[real].abs().max().item() > tol * scale:
                return False
            if k == 2:
                break
            step = fed[k]
            mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    return True
