"""A key-value cache that grows in place instead of being copied every step.

transformers' DynamicLayer appends each new position with `torch.cat`, which copies the
whole cache: O(length^2) memory traffic over a generation. At batch 8 on the reference CPU
that was ~5% of every step at 200 tokens and grows with length. Our layer keeps keys and
values in buffers with spare room along the sequence axis and writes new positions into
them; `keys`/`values` are views of the filled part, so everything that reads them
(crop, batch selection, the sequence length) works unchanged.

On CPU, attention reads the whole buffer, spare room included ("whole-buffer" mode), the
way transformers' StaticCache does: the spare positions lie after the current one, so the
causal mask hides them (and they hold zeros or stale finite values, never garbage). A
slice of the buffer is not contiguous, and PyTorch's CPU batched matmul copies such an
operand before every bfloat16 product; the whole buffer is contiguous and is read in place.
Measured on the reference 2-core machine (GPT-2-124M shape, bfloat16, 200 new tokens):
those copies were about a third of the attention time at batch 8.

Also here: which keyword a model takes its cache by (`cache_kwarg`), whether our decode loop
can drive a model (`decode_support`), and `PromptCache`, the cache kept from one chat turn to
the next, cut back to the prefix the next prompt shares with it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

# Whole-buffer mode: capacity grows in steps of this many positions, plus a quarter of the
# length, so attention reads little spare room and regrowing (one copy) stays rare.
_STEP = 32


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        _kbuf = _vbuf = None
        whole_buffer = False

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._kbuf = self._vbuf = None
            old = self._filled()
            new = old + key_states.shape[-2]
            if not (self._reusable(old, new) and self._kbuf.shape[:2] == key_states.shape[:2]):
                self._grow(key_states, value_states, old, new)
            self._kbuf[..., old:new, :] = key_states
            self._vbuf[..., old:new, :] = value_states
            self.keys, self.values = self._kbuf[..., :new, :], self._vbuf[..., :new, :]
            if self.whole_buffer:
                return self._kbuf, self._vbuf
            return self.keys, self.values

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            if not self.whole_buffer:
                return super().get_mask_sizes(query_length)
            # Called before this step's update: the mask must span the buffer that update will return.
            old = self._filled()
            new = old + query_length
            return (self._kbuf.shape[-2] if self._reusable(old, new) else self._capacity(new)), 0

        def _filled(self) -> int:
            return self.keys.shape[-2] if self.keys is not None and self.keys.dim() == 4 else 0

        def _reusable(self, old: int, new: int) -> bool:
            # Someone else (crop, batch selection, reset) may have replaced `keys`: then it is
            # no longer a view of our buffer and we start a new one from it.
            buf, keys, values = self._kbuf, self.keys, self.values
            if buf is None or new > buf.shape[-2]:
                return False
            return old == 0 or (
                keys is not None
                and values is not None
                and keys.data_ptr() == buf.data_ptr()
                and values.data_ptr() == self._vbuf.data_ptr()
            )

        def _capacity(self, new: int) -> int:
            if not self.whole_buffer:
                return max(64, 2 * new)
            want = new + max(_STEP, new // 4)
            return -(-want // _STEP) * _STEP

        def _grow(self, key_states, value_states, old: int, new: int) -> None:
            capacity = self._capacity(new)
            b, h, _, d = key_states.shape
            kbuf = key_states.new_empty((b, h, capacity, d))
            vbuf = value_states.new_empty((b, h, capacity, value_states.shape[-1]))
            if old:
                kbuf[..., :old, :] = self.keys
                vbuf[..., :old, :] = self.values
            if self.whole_buffer:
                # Attention reads the spare room: masked, but uninitialised NaN bits would leak through.
                kbuf[..., new:, :] = 0
                vbuf[..., new:, :] = 0
            self._kbuf, self._vbuf = kbuf, vbuf

    return GrowingLayer, DynamicLayer


def cache_kwarg(model: Any) -> str | None:
    """The keyword `model.forward` takes its key-value cache by; None when it takes none."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def new_cache(model: Any, whole_buffer: bool | None = None) -> Any:
    """A cache of growing layers; `whole_buffer` None: whole-buffer mode where it pays and is safe."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers 4.x: no per-layer cache objects
        return DynamicCache()
    try:
        growing, plain = _growing_layer_class()
    except ImportError:
        return cache
    layers = getattr(cache, "layers", None)
    if layers and all(type(layer) is plain for layer in layers):
        cache.layers = [growing() for _ in layers]
        if whole_buffer is None:
            whole_buffer = _whole_buffer_pays(model) and decode_support(model).whole_buffer
        for layer in cache.layers:
            layer.whole_buffer = whole_buffer  # type: ignore[union-attr]  # the layers are ours (growing)
    return cache


@dataclass(frozen=True)
class DecodeSupport:
    cached: bool  # the cached decode loop (left padding, position ids, this cache) gives the model's own logits
    whole_buffer: bool  # ... and so it does when attention reads the whole buffer


def decode_support(model: Any) -> DecodeSupport:
    """Whether this model can be decoded with our cache and calling convention, probed once per model.

    Most architectures build their attention mask from the cache's `get_mask_sizes`, so a
    whole buffer with masked spare room is invisible to them. Some add a bias built from the
    attention mask instead (BLOOM's ALiBi is as long as the mask, not the buffer) and fail on
    it; others may not take left padding with explicit position ids. Rather than keep a list
    of architectures, a tiny padded batch is run through the decode loop and compared with
    plain uncached forwards of the same rows; whatever fails or disagrees falls back (plain
    growing cache, else transformers' own `generate`). The probe costs a few forward passes
    of at most 7 tokens, once per loaded model.
    """
    verdict = getattr(model, "_gptcli_decode_support", None)
    if verdict is None:
        whole = _probe(model, whole_buffer=True)
        verdict = DecodeSupport(cached=whole or _probe(model, whole_buffer=False), whole_buffer=whole)
        try:
            model._gptcli_decode_support = verdict
        except (AttributeError, TypeError):  # pragma: no cover - a model object that takes no attributes
            pass
    return verdict


def _probe(model: Any, *, whole_buffer: bool) -> bool:
    import torch

    name = cache_kwarg(model)
    if name is None:
        return False
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 2:
        return False
    device = next(model.parameters()).device
    # Row 0 is left-padded by two, as the decode loop pads a shorter prompt.
    rows = [[5, 6, 7, 8, 9], [11, 12, 13, 14, 15]]
    rows = [[t % vocab for t in row] for row in rows]
    lengths = [3, 5]
    fed = [[(17 + i) % vocab, (19 + i) % vocab] for i in range(2)]  # two decode steps per row
    try:
        with torch.inference_mode():
            ids = torch.tensor(rows, device=device)
            mask = torch.tensor([[0] * (5 - n) + [1] * n for n in lengths], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = new_cache(model, whole_buffer=whole_buffer)
            got, step = [], ids
            for k in range(3):
                kwargs = {name: cache, "attention_mask": mask, "use_cache": True}
                if takes_positions:
                    kwargs["position_ids"] = positions[:, -step.shape[1] :]
                out = model(input_ids=step, **kwargs)
                cache = getattr(out, name, None) or getattr(out, "past_key_values", None) or cache
                got.append(out.logits[:, -1, :].float())
                if k == 2:
                    break
                step = torch.tensor([[f[k]] for f in fed], device=device)
                mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
            for r, n in enumerate(lengths):
                full = torch.tensor([rows[r][5 - n :] + fed[r]], device=device)
                want = model(input_ids=full, attention_mask=torch.ones_like(full), use_cache=False).logits[0].float()
                for k in range(3):
                    a, b = got[k][r], want[n - 1 + k]
                    scale = max(1.0, b.abs().max().item())
                    tol = (1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2) * scale
                    if not bool(torch.isfinite(a).all()) or (a - b).abs().max().item() > tol:
                        return False
    except Exception:  # an architecture our loop cannot drive: fall back, never crash
        return False
    return True


def _whole_buffer_pays(model: Any) -> bool:
    """CPU with plain matmul attention: read the whole buffer (see the module docstring).

    Only for eager attention, whose cost over a few spare positions is a few percent; fused
    kernels (SDPA, flash) take strided operands without copying and would only do extra work.
    """
    try:
        param = next(model.parameters())
    except (StopIteration, AttributeError):
        return False
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return param.device.type == "cpu" and implementation == "eager"


class PromptCache:
    """A key-value cache kept from one `stream_generate` call to the next (chat turns).

    When the next prompt starts with tokens already cached, only the rest is fed; when it
    diverges (an edited reply, a dropped exchange), the cache is cut back to the longest shared
    prefix, or rebuilt when the cache type cannot be cut.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cache: Any = None
        self.ids: list[int] = []  # the tokens whose keys/values `cache` holds, in order
        self.consistent = True  # False while a forward pass is writing into the cache
        self._owner: int | None = None

    def prepare(self, model: Any, prompt_ids: list[int]) -> int:
        """Make the cache a prefix of `prompt_ids`; returns how many leading tokens it covers."""
        if self.cache is None or not self.consistent or self._owner != id(model):
            return self._fresh(model)
        limit = min(len(self.ids), len(prompt_ids) - 1)  # feed at least one token: we need its logits
        common = 0
        while common < limit and self.ids[common] == prompt_ids[common]:
            common += 1
        if common == 0 or not _crop_cache(self.cache, len(self.ids), common):
            return self._fresh(model)
        self.ids = self.ids[:common]
        return common

    def writing(self) -> None:
        """Called before a forward pass feeds the cache: an interrupt inside it leaves layers
        half-written, so until `wrote` the cache is not reused."""
        self.consistent = False

    def wrote(self, cache: Any, fed: list[int]) -> None:
        """Called after a forward pass: the cache (the model may return a new object) now also
        holds the keys/values of the tokens `fed`."""
        self.cache = cache
        self.ids.extend(fed)
        self.consistent = True

    def _fresh(self, model: Any) -> int:
        self.reset()
        self.cache, self._owner = new_cache(model), id(model)
        return 0


def _crop_cache(cache: Any, current: int, keep: int) -> bool:
    """Cut a DynamicCache back to its first `keep` positions; False when that is not possible."""
    layers = getattr(cache, "layers", None)
    if layers is None or not hasattr(cache, "crop") or cache.get_seq_length() != current:
        return False
    if keep < current:
        # Sliding-window and linear-attention layers drop old states: they cannot be cut back.
        if any(type(layer).__name__ not in ("DynamicLayer", "GrowingLayer") for layer in layers):
            return False
        cache.crop(keep - current)  # a negative count removes that many tokens from the end
    return cache.get_seq_length() == keep
