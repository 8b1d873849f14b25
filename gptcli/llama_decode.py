"""A lean forward pass for Llama-family decoder blocks (Llama, Mistral, Qwen2) on CPU.

Decoding one token streams every weight once; for a 91 M-parameter Llama shape in bfloat16
that is 182 MB, ~5.5 ms at the reference machine's ~31 GB/s. transformers' LlamaModel forward
spent about as long again around the matrix products, per step: building a 4-D causal mask,
rotary cos/sin recomputed from the positions, module calls and hooks, seven separate
projections per layer, the RMSNorm upcasts and repeat_kv copies (docs/performance.md,
"Llama-family decode"). This module keeps the model's own weights and does the same
arithmetic with fewer calls:

- q/k/v and gate/up are fused into one oneDNN-packed product each (`fuse_projections`, applied
  at load time). The model's own modules keep working on the fused weight: the q, k and v
  parts of a layer share one product of the same input (see `_FusedLinear`), so prefill,
  `eval` and `model.generate` read the weights once too;
- rotary cos/sin come from a table built once with the model's own rotary module;
- the attention mask is built once per step, not per layer; grouped-query attention folds the
  query heads of a group into the query axis instead of repeating keys and values;
- each step is a flat loop over per-layer tuples of tensors, with no module calls.

The ops, their order and their dtypes are those of transformers' implementation, attention
through PyTorch's fused SDPA kernel as transformers' default "sdpa" attention does (one query
against a cache: ~4x faster than matmul + softmax on CPU), so the logits are the model's own. Before it is
used on a model, `gptcli.lean_decode.decode_forward` checks it against the model's own forward on a padded
two-row batch (prefill and two cached steps); any difference beyond rounding, a model
outside the supported set (sliding windows, rope types that change with the position,
attention softcapping, biases where Llama has none) or GPTCLI_LLAMA_DECODE=0 leaves the
model's own forward in charge.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from gptcli.lean_decode import LeanDecoder, product

# Architectures whose decoder blocks are exactly: RMSNorm -> rotary attention (GQA) ->
# residual -> RMSNorm -> SwiGLU -> residual, final RMSNorm, linear head.
SUPPORTED = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
# Rope types whose cos/sin depend only on the position (not on the sequence length).
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}


def _enabled() -> bool:
    return os.environ.get("GPTCLI_LLAMA_DECODE", "1") != "0" and os.environ.get("GPTCLI_FASTPATH", "1") != "0"


def _fused_linear_class():
    import torch

    class FusedLinear(torch.nn.Module):
        """One product for several projections of the same input (q/k/v, gate/up): `product` is
        a oneDNN-packed float layer or a quantized layer (gptcli.quantize) over the stacked weights."""

        def __init__(self, product: Any, sizes: list[int]):
            super().__init__()
            self.product = product
            self.sizes = sizes
            self.in_features, self.out_features = product.in_features, product.out_features
            self._last: Any = None  # (input, its version, product, parts served) of the last call

        def forward(self, x):
            return self.product(x)

        def part(self, x, index: int):
            # The model's own forward calls q_proj(x), k_proj(x), v_proj(x) on the same tensor:
            # the first call computes all three, the others take their slice of that product.
            # A different input (or one changed in place since) computes afresh. The entry is one
            # tuple, read once: a caller only ever slices the product of its own input.
            version = None if x.is_inference() else x._version  # inference tensors keep no version
            entry = self._last
            if entry is None or entry[0] is not x or entry[1] != version or index in entry[3]:
                entry = (x, version, self.forward(x), set())
                self._last = entry
            served, out = entry[3], entry[2]
            served.add(index)
            if len(served) == len(self.sizes) and self._last is entry:
                self._last = None  # every part taken: hold no activations
            start = sum(self.sizes[:index])
            return out[..., start : start + self.sizes[index]]

    class Part(torch.nn.Module):
        """Stands in for one of the fused projections inside the model's own modules."""

        def __init__(self, fused: Any, index: int):
            super().__init__()
            self.fused = [fused]  # a list: not a submodule, so its buffers are counted once
            self.index = index
            self.out_features = fused.sizes[index]
            self.in_features = fused.in_features

        def forward(self, x):
            return self.fused[0].part(x, self.index)

    return FusedLinear, Part


def _config_supported(model: Any) -> bool:
    config = model.config
    if type(model).__name__ not in SUPPORTED:
        return False
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        return False
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return False
    # Sliding-window attention changes the mask and the cache; those models keep their own forward.
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return False
    if type(model).__name__ == "MistralForCausalLM" and getattr(config, "sliding_window", None) is not None:
        return False
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rope.get("rope_type", rope.get("type", "default")) in _STATIC_ROPE


def fuse_projections(model: Any, runtime: Any) -> int:
    """Fuse q/k/v and gate/up of each supported decoder block into one product each.

    Float layers become one oneDNN-packed product; quantized layers (gptcli.quantize, applied
    before this) one quantized product over their stacked rows. Runs before
    `cpu_tuning.optimize_for_inference` (which packs the remaining float linear layers).
    Returns how many layers were fused; 0 when the model, device or dtype is not supported.
    """
    import torch

    from gptcli.cpu_tuning import _op_works, _packed_linear_class
    from gptcli.memory import drop_file_pages
    from gptcli.quantize import concat_linears, stacked_bias

    if not _enabled() or runtime.device.type != "cpu" or runtime.dtype not in (torch.float32, torch.bfloat16):
        return 0
    if not _config_supported(model) or not _op_works(str(runtime.dtype).replace("torch.", "")):
        return 0
    FusedLinear, Part = _fused_linear_class()
    PackedLinear = _packed_linear_class()

    def product(modules: list[Any]) -> Any | None:
        if all(type(m) is torch.nn.Linear and m.weight.dtype == runtime.dtype for m in modules):
            return PackedLinear(torch.cat([m.weight.detach() for m in modules]), stacked_bias(modules))
        return concat_linears(modules)

    fused = 0
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = product([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up = product([mlp.gate_proj, mlp.up_proj])
            if qkv is None or gate_up is None:
                continue
            sources = [attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj]
            f = FusedLinear(qkv, [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features])
            attn.q_proj, attn.k_proj, attn.v_proj = (Part(f, i) for i in range(3))
            attn._gptcli_qkv = f
            g = FusedLinear(gate_up, [mlp.gate_proj.out_features, mlp.up_proj.out_features])
            mlp.gate_proj, mlp.up_proj = Part(g, 0), Part(g, 1)
            mlp._gptcli_gate_up = g
            for source in sources:  # float weights now copied into the fused product
                drop_file_pages(getattr(source, "weight", None), model)
            fused += 1
    return fused


class LlamaDecoder(LeanDecoder):
    """The lean forward: `decoder(input_ids=..., cache=..., attention_mask=..., position_ids=...)`.

    Takes the keywords our decode loop passes to the model and returns an object with `logits`
    (of the last `logits_to_keep` positions) and the cache, under the model's cache keyword.
    """

    def __init__(self, model: Any, cache_name: str):
        import torch

        config = model.config
        inner = model.model
        super().__init__(cache_name, inner.norm.weight.dtype, inner.embed_tokens)
        self.device = inner.norm.weight.device
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        first = inner.layers[0].self_attn
        self.head_dim = first.head_dim
        self.scaling = first.scaling
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    layer.input_layernorm.variance_epsilon,
                    attn._gptcli_qkv.product.forward,
                    product(attn.o_proj),
                    layer.post_attention_layernorm.weight,
                    layer.post_attention_layernorm.variance_epsilon,
                    mlp._gptcli_gate_up.product.forward,
                    product(mlp.down_proj),
                )
            )
        self.norm_weight, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.head = product(model.lm_head)
        self.intermediate = mlp._gptcli_gate_up.sizes[0]
        self.rotary = inner.rotary_emb
        self.cos = self.signed_sin = torch.empty(0)
        self._rope_table(256)

    def _rope_table(self, positions: int) -> None:
        """cos/sin of the first `positions` positions (rows), from the model's own rotary module:
        the values it would compute for them step by step. Grown by doubling as positions come."""
        torch = self.torch
        size = max(positions, 2 * self.cos.shape[0])
        with torch.inference_mode():
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = self.rotary(probe, position_ids=torch.arange(size, device=self.device).unsqueeze(0))
        self.cos, sin = cos[0], sin[0]
        half = sin.shape[-1] // 2
        self.signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def _rms(self, x, weight, eps):
        # LlamaRMSNorm in one op: rms_norm computes in float32 and rounds back to x's dtype, which is
        # bit-equal to LlamaRMSNorm's upcast, normalise, downcast (tests/test_fast_decode.py).
        h = self.torch.nn.functional.rms_norm(x, (x.shape[-1],), None, eps)
        return weight * h

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0, use_cache=True, **kwargs):
        torch = self.torch
        cache = kwargs[self.cache_name]
        b, t = input_ids.shape
        h, kvh, d = self.heads, self.kv_heads, self.head_dim
        g = h // kvh
        q_size, kv_size = h * d, kvh * d
        x = self.embed(input_ids)
        last = int(position_ids[:, -1].max())
        if last >= self.cos.shape[0]:
            self._rope_table(last + 1)
        cos = self.cos[position_ids].unsqueeze(2)  # (b, t, 1, d): broadcast over heads
        sin = self.signed_sin[position_ids].unsqueeze(2)
        half = d // 2
        for i, (n1, e1, qkv_proj, o_proj, n2, e2, gate_up_proj, down_proj) in enumerate(self.layers):
            y = self._rms(x, n1, e1)
            qkv = qkv_proj(y)
            # q and k rotate together: one set of elementwise ops over (b, t, h + kvh, d). The halves
            # swapped by one flip, times sin with its first half negated, is rotate_half(x) * sin.
            qk = qkv[..., : q_size + kv_size].view(b, t, h + kvh, d)
            rot = qk.view(b, t, h + kvh, 2, half).flip(3).view(b, t, h + kvh, d)
            qk = (qk * cos) + (rot * sin)
            q = qk[:, :, :h]
            k = qk[:, :, h:].transpose(1, 2)
            v = qkv[..., q_size + kv_size :].view(b, t, kvh, d).transpose(1, 2)
            keys, values = cache.layers[i].update(k, v)
            if i == 0:
                mask = self._mask(attention_mask, keys.shape[-2], t)
            # Grouped-query attention without repeat_kv: a group's query heads share one key/value
            # head, so they become query rows against it (the mask repeats for each head of a group).
            if t == 1:  # the common decode step: these are views
                q = q.view(b, kvh, g, d)
                rows_mask = None if mask is None else mask.view(b, 1, 1, -1)
            else:
                q = q.reshape(b, t, kvh, g, d).permute(0, 2, 3, 1, 4).reshape(b, kvh, g * t, d)
                rows_mask = mask.expand(b, 1, g, t, -1).reshape(b, 1, g * t, -1)
            out = self.attention(q, keys, values, attn_mask=rows_mask, scale=self.scaling)  # (b, kvh, g * t, d)
            if t == 1:
                out = out.view(b, 1, q_size)
            else:
                out = out.view(b, kvh, g, t, d).permute(0, 3, 1, 2, 4).reshape(b, t, q_size)
            x = x + o_proj(out)
            y = self._rms(x, n2, e2)
            gu = gate_up_proj(y)
            act = torch.nn.functional.silu(gu[..., : self.intermediate]) * gu[..., self.intermediate :]
            x = x + down_proj(act)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        x = self._rms(x, self.norm_weight, self.norm_eps)
        logits = self.head(x)
        return SimpleNamespace(logits=logits, **{self.cache_name: cache})


def build(model: Any, cache_name: str) -> LlamaDecoder | None:
    """The lean forward for a supported Llama-family model whose projections were fused at load
    (`fuse_projections`); None otherwise. `gptcli.lean_decode` checks it before use."""
    if not _enabled() or not _config_supported(model):
        return None
    if not hasattr(model.model.layers[0].self_attn, "_gptcli_qkv"):
        return None
    return LlamaDecoder(model, cache_name)
