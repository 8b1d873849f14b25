"""The lean forward for GPT-2 (gptcli.lean_decode): transformers' GPT2LMHeadModel arithmetic for
a decode step, in one flat loop over per-layer tuples.

Per layer: LayerNorm, the fused q/k/v product (GPT-2's own c_attn), SDPA attention against the
cache, the output projection, the residual, LayerNorm, the MLP with the model's own activation
module, the residual. Positions come from the learned position table. The per-layer attention
scale is each layer's own (so `scale_attn_by_inverse_layer_idx` models work). Models with
cross-attention keep their own forward.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gptcli.lean_decode import LeanDecoder, product


class GPT2Decoder(LeanDecoder):
    def __init__(self, model: Any, cache_name: str):
        inner = model.transformer
        super().__init__(cache_name, inner.ln_f.weight.dtype, inner.wte)
        self.positions = inner.wpe.weight
        self.width = model.config.n_embd
        self.heads = model.config.n_head
        self.head_dim = self.width // self.heads
        self.layers = []
        for block in inner.h:
            attn, mlp = block.attn, block.mlp
            self.layers.append(
                (
                    (block.ln_1.weight, block.ln_1.bias, block.ln_1.eps),
                    product(attn.c_attn),
                    attn.scaling,
                    product(attn.c_proj),
                    (block.ln_2.weight, block.ln_2.bias, block.ln_2.eps),
                    product(mlp.c_fc),
                    mlp.act.forward,
                    product(mlp.c_proj),
                )
            )
        self.final_norm = (inner.ln_f.weight, inner.ln_f.bias, inner.ln_f.eps)
        self.head = product(model.lm_head)

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0, use_cache=True, **kwargs):
        torch = self.torch
        layer_norm = torch.nn.functional.layer_norm
        cache = kwargs[self.cache_name]
        b, t = input_ids.shape
        n, h, d = self.width, self.heads, self.head_dim
        shape = (n,)
        x = self.embed(input_ids) + torch.nn.functional.embedding(position_ids, self.positions)
        for i, (norm1, qkv_proj, scaling, out_proj, norm2, fc, act, fc_proj) in enumerate(self.layers):
            y = layer_norm(x, shape, *norm1)
            q, k, v = qkv_proj(y).split(n, dim=2)
            q = q.view(b, t, h, d).transpose(1, 2)
            keys, values = cache.layers[i].update(
                k.view(b, t, h, d).transpose(1, 2), v.view(b, t, h, d).transpose(1, 2)
            )
            if i == 0:
                mask = self._mask(attention_mask, keys.shape[-2], t)
                mask = None if mask is None else mask.view(b, 1, t, -1)
            out = self.attention(q, keys, values, attn_mask=mask, scale=scaling)
            x = out_proj(out.transpose(1, 2).reshape(b, t, n)) + x
            y = layer_norm(x, shape, *norm2)
            x = x + fc_proj(act(fc(y)))
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(layer_norm(x, shape, *self.final_norm))
        return SimpleNamespace(logits=logits, **{self.cache_name: cache})


def build(model: Any, cache_name: str) -> GPT2Decoder | None:
    """The lean forward for a GPT-2 language model with SDPA attention; None for anything else."""
    if type(model).__name__ != "GPT2LMHeadModel":
        return None
    config = model.config
    if getattr(config, "add_cross_attention", False) or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    return GPT2Decoder(model, cache_name)
