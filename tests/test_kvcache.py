"""The in-place key-value cache gives what transformers' own cache gives, through every operation
generation uses: padded prefill, decode steps, dropping finished rows, cutting back (chat)."""

import pytest
import torch


def _drive(model, cache, steps_before_drop=4, steps_after=3):
    """Feed a padded batch of 3, decode, drop row 1, decode more, cut back 2 positions, re-feed.

    Returns the logits of every step, so two caches can be compared step by step."""
    ids = torch.tensor([[0, 0, 5, 9, 11], [3, 4, 5, 6, 7], [0, 8, 2, 2, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    out, seen = [], []

    def step(x, mask):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -x.shape[1] :]
        logits = model(input_ids=x, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).logits[:, -1]
        out.append(logits.float())
        return logits.argmax(-1, keepdim=True)

    with torch.inference_mode():
        nxt = step(ids, mask)
        for _ in range(steps_before_drop):
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], 1)
            seen.append(nxt)
            nxt = step(nxt, mask)
        keep = torch.tensor([0, 2])
        cache.batch_select_indices(keep)
        mask, nxt = mask[keep], nxt[keep]
        for _ in range(steps_after):
            mask = torch.cat([mask, mask.new_ones((2, 1))], 1)
            nxt = step(nxt, mask)
        cache.crop(-2)  # remove the last two positions
        mask = mask[:, :-1]
        step(torch.tensor([[4], [6]]), mask)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_growing_cache_matches_dynamic_cache(arch, dtype, request):
    from transformers import DynamicCache

    from gptcli.kvcache import new_cache
    from gptcli.loading import load_model
    from gptcli.runtime import resolve_runtime

    lm = load_model(str(request.getfixturevalue(f"{arch}_dir")), resolve_runtime("cpu", dtype))
    lm.model.set_attn_implementation("eager")
    ours = new_cache(lm.model)
    assert {type(layer).__name__ for layer in ours.layers} == {"GrowingLayer"}
    # On CPU with eager attention, attention reads whole (contiguous) buffers.
    assert all(layer.whole_buffer for layer in ours.layers)
    want = _drive(lm.model, DynamicCache(config=lm.model.config))
    got = _drive(lm.model, ours)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        assert (a - b).abs().max().item() <= 1e-2 * max(1.0, b.abs().max().item())
    # Keys and values are still views of the cache's own buffers: nothing was copied per step.
    layer = ours.layers[0]
    assert layer.keys.shape[-2] == ours.get_seq_length()
    assert layer.values.data_ptr() == layer._vbuf.data_ptr()
    # Attention reads the spare room too (masked): it must hold finite numbers, never garbage.
    assert torch.isfinite(layer._kbuf).all() and torch.isfinite(layer._vbuf).all()
