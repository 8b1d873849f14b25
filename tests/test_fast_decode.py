"""The cached decode loop gives transformers' own greedy tokens for every decoder family, and
an architecture it cannot drive goes to `model.generate` instead of crashing."""

import shutil

import pytest

# Tiny random configs (vocabulary from tiny.py's tokenizer) of the decoder-only families on the Hub.
HIDDEN = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
FAMILIES = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2),
    "llama": dict(HIDDEN, intermediate_size=64, num_key_value_heads=1),
    "mistral": dict(HIDDEN, intermediate_size=64, num_key_value_heads=1, sliding_window=None),
    "qwen2": dict(HIDDEN, intermediate_size=64, num_key_value_heads=1),
    "gemma": dict(HIDDEN, intermediate_size=64, num_key_value_heads=1, head_dim=16),
    "phi": dict(HIDDEN, intermediate_size=64),
    "gpt_neox": dict(HIDDEN, intermediate_size=64),
    "gptj": dict(n_embd=32, n_layer=2, n_head=2, rotary_dim=8),
    "opt": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32),
    "falcon": dict(HIDDEN, new_decoder_architecture=False, multi_query=True),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=2),
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return folder


def _build(family, folder, tokenizer_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(tokenizer_dir, folder, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(folder)
    eot = tok.eos_token_id
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tok),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_position_embeddings=64,
        **FAMILIES[family],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # peaked logits, so greedy choices are far from ties
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    model.save_pretrained(folder)
    return folder


def _greedy(lm, prompts, n=10):
    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=n)
    out = {}
    for event in stream_generate(lm, [Request(prompt=p, params=params) for p in prompts], batch_size=len(prompts)):
        if isinstance(event, Completion):
            out[event.request] = event.token_ids
    return [out[i] for i in range(len(prompts))]


def _reference(lm, prompt, n=10):
    """transformers' own greedy decoding of one prompt, cut at the first end token as ours is."""
    import torch

    ids = torch.tensor([lm.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            pad_token_id=lm.pad_token_id,
        )[0, ids.shape[1] :].tolist()
    for i, t in enumerate(out):
        if t in lm.eos_token_ids:
            return out[:i]
    return out


PROMPTS = ["Once upon a time there was a little dog", "Max"]  # a batch of 2: the short one is left-padded


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fast_decode_matches_transformers_greedy(family, dtype, tokenizer_dir, tmp_path):
    from gptcli.generation import supports_fast_decode
    from gptcli.loading import open_model

    folder = _build(family, tmp_path / family, tokenizer_dir)
    lm, _ = open_model(str(folder), device="cpu", dtype=dtype)
    got = _greedy(lm, PROMPTS)
    # Every family here is served by our decode loop (none silently falls back).
    assert supports_fast_decode(lm)
    want = [_reference(lm, p) for p in PROMPTS]
    assert got == want


def test_bloom_alibi_reads_the_cache_not_the_whole_buffer(tokenizer_dir, tmp_path):
    """BLOOM's ALiBi bias is as long as the attention mask; a whole-buffer cache crashed it."""
    from gptcli.kvcache import decode_support
    from gptcli.loading import open_model

    lm, _ = open_model(str(_build("bloom", tmp_path / "bloom", tokenizer_dir)), device="cpu", dtype="float32")
    support = decode_support(lm.model)
    assert support.cached and not support.whole_buffer
    gpt2, _ = open_model(str(_build("gpt2", tmp_path / "gpt2", tokenizer_dir)), device="cpu", dtype="float32")
    assert decode_support(gpt2.model).whole_buffer  # the others keep the faster mode


def test_model_the_loop_cannot_drive_falls_back_to_generate(tokenizer_dir, tmp_path):
    import functools

    import torch

    from gptcli.generation import supports_fast_decode
    from gptcli.kvcache import cache_kwarg
    from gptcli.loading import open_model

    lm, _ = open_model(str(_build("llama", tmp_path / "llama", tokenizer_dir)), device="cpu", dtype="float32")
    want = _greedy(lm, PROMPTS)
    lm2, _ = open_model(str(tmp_path / "llama"), device="cpu", dtype="float32")
    forward = lm2.model.forward

    @functools.wraps(forward)  # same signature: only the probe can tell
    def no_position_ids(*args, position_ids=None, **kwargs):
        # An architecture that mis-reads explicit positions with padding: the probe must catch it.
        if position_ids is not None:
            position_ids = torch.zeros_like(position_ids)
        return forward(*args, position_ids=position_ids, **kwargs)

    lm2.model.forward = no_position_ids
    assert cache_kwarg(lm2.model) is not None
    assert not supports_fast_decode(lm2)
    lm2.model.forward = forward
    assert _greedy(lm2, PROMPTS) == want  # answered by model.generate, same tokens
