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


def _build(family, folder, tokenizer_dir, **overrides):
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
        **{**FAMILIES[family], **overrides},
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
LEAN = {"llama", "mistral", "qwen2", "gpt2"}  # the families a lean forward serves (gptcli.lean_decode)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fast_decode_matches_transformers_greedy(family, dtype, tokenizer_dir, tmp_path):
    from gptcli.generation import supports_fast_decode
    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model

    folder = _build(family, tmp_path / family, tokenizer_dir)
    lm, _ = open_model(str(folder), device="cpu", dtype=dtype)
    got = _greedy(lm, PROMPTS)
    # Every family here is served by our decode loop (none silently falls back), and GPT-2 and
    # the Llama-family blocks by a lean forward.
    assert supports_fast_decode(lm)
    assert (decode_forward(lm.model) is not None) == (family in LEAN)
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


# --------------------------------------------------------------------------- the lean Llama-family forward

ROPE_VARIANTS = {
    "multi-head": dict(num_key_value_heads=2),
    "4 heads in 2 groups": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "linear": dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    "llama3": dict(
        rope_parameters={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 10000.0,
        }
    ),
    "yarn": dict(rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0}),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
def test_lean_llama_forward_matches_transformers_greedy(variant, dtype, tokenizer_dir, tmp_path, monkeypatch):
    """Head layouts and the rope types whose cos/sin depend only on the position take the lean
    forward, with transformers' greedy tokens (30 tokens: past the rotary table's first rows and
    the cache's first growth). A left-padded batch of 2 gives the model's own forward's tokens on
    the same batch; in float32 also transformers' unpadded ones (in bfloat16, SDPA attention over a
    padded row rounds differently from the unpadded row, with the model's own forward too)."""
    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model

    folder = str(_build("llama", tmp_path / "m", tokenizer_dir, **ROPE_VARIANTS[variant]))
    lm, _ = open_model(folder, device="cpu", dtype=dtype)
    assert decode_forward(lm.model) is not None
    want = [_reference(lm, p, n=30) for p in PROMPTS]
    assert [_greedy(lm, [p], n=30)[0] for p in PROMPTS] == want  # batch 1, no padding: the common case
    monkeypatch.setenv("GPTCLI_LLAMA_DECODE", "0")
    own, _ = open_model(folder, device="cpu", dtype=dtype)
    assert decode_forward(own.model) is None
    batched = _greedy(lm, PROMPTS, n=30)
    assert batched == _greedy(own, PROMPTS, n=30)
    if dtype == "float32":
        assert batched == want


def test_rope_that_changes_with_length_keeps_the_model_forward(tokenizer_dir, tmp_path):
    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model

    dynamic = dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    lm, _ = open_model(str(_build("llama", tmp_path / "m", tokenizer_dir, **dynamic)), device="cpu", dtype="float32")
    assert decode_forward(lm.model) is None
    assert _greedy(lm, PROMPTS) == [_reference(lm, p) for p in PROMPTS]


def test_mistral_sliding_window_keeps_the_model_forward(tokenizer_dir, tmp_path):
    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model

    folder = _build("mistral", tmp_path / "m", tokenizer_dir, sliding_window=4)
    lm, _ = open_model(str(folder), device="cpu", dtype="float32")
    assert decode_forward(lm.model) is None
    assert _greedy(lm, PROMPTS) == [_reference(lm, p) for p in PROMPTS]


def test_lean_forward_that_disagrees_is_not_used(tokenizer_dir, tmp_path, monkeypatch):
    """The check before first use catches a decoder that gets padding wrong; the model's own
    forward answers instead, with the same tokens."""
    import gptcli.llama_decode as ld
    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model

    folder = _build("llama", tmp_path / "m", tokenizer_dir)
    lm, _ = open_model(str(folder), device="cpu", dtype="float32")
    want = [_reference(lm, p) for p in PROMPTS]
    real_mask = ld.LlamaDecoder._mask

    def ignores_padding(self, attention_mask, kv_len, t):
        return real_mask(self, attention_mask.new_ones(attention_mask.shape), kv_len, t)

    monkeypatch.setattr(ld.LlamaDecoder, "_mask", ignores_padding)
    assert decode_forward(lm.model) is None
    assert _greedy(lm, PROMPTS) == want


def test_switch_off_and_fused_weights_give_the_same_logits(tokenizer_dir, tmp_path, monkeypatch):
    """GPTCLI_LLAMA_DECODE=0 loads the model as before (separate projections, no lean forward)
    with the same greedy tokens; with the fused projections, the model's own forward (prefill,
    `eval`, `model.generate`) gives the logits of the unfused model."""
    import torch

    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model

    folder = str(_build("qwen2", tmp_path / "m", tokenizer_dir))  # biases on q/k/v: fused too
    lm, _ = open_model(folder, device="cpu", dtype="bfloat16")
    got = _greedy(lm, PROMPTS, n=20)
    monkeypatch.setenv("GPTCLI_LLAMA_DECODE", "0")
    plain, _ = open_model(folder, device="cpu", dtype="bfloat16")
    assert type(plain.model.model.layers[0].self_attn.q_proj).__name__ != "Part"
    assert decode_forward(plain.model) is None
    assert _greedy(plain, PROMPTS, n=20) == got
    ids = torch.tensor([lm.tokenizer(PROMPTS[0])["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(lm.model(input_ids=ids).logits, plain.model(input_ids=ids).logits)
    assert lm.model.model.layers[0].self_attn.q_proj.fused[0]._last is None  # no activations held


def test_prompt_cache_reuse_through_the_lean_forward(tokenizer_dir, tmp_path):
    """Chat's KV-cache reuse: the second turn feeds only its new tokens to the lean forward and
    gives the tokens of a fresh run over the whole prompt."""
    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.kvcache import PromptCache
    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model
    from gptcli.sampling import SamplingParams

    lm, _ = open_model(str(_build("llama", tmp_path / "m", tokenizer_dir)), device="cpu", dtype="bfloat16")
    assert decode_forward(lm.model) is not None
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    first = lm.tokenizer(PROMPTS[0])["input_ids"]

    def run(ids, cache=None):
        events = stream_generate(lm, [Request(prompt_ids=ids, params=params)], prompt_cache=cache)
        return next(e for e in events if isinstance(e, Completion))

    kept = PromptCache()
    one = run(first, kept)
    second = first + one.token_ids + lm.tokenizer(" Max liked")["input_ids"]
    reused = run(second, kept)
    assert reused.cached_tokens == len(first) + len(one.token_ids) - 1  # all but the last reply token
    assert reused.token_ids == run(second).token_ids == _reference_ids(lm, second, 8)


def _reference_ids(lm, ids, n):
    import torch

    with torch.inference_mode():
        t = torch.tensor([ids])
        out = lm.model.generate(
            input_ids=t,
            attention_mask=torch.ones_like(t),
            do_sample=False,
            max_new_tokens=n,
            pad_token_id=lm.pad_token_id,
        )[0, len(ids) :].tolist()
    return out[: next((i for i, x in enumerate(out) if x in lm.eos_token_ids), len(out))]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lean_rms_norm_is_bit_equal_to_the_models_own(dtype):
    """The lean forward's RMSNorm (PyTorch's fused kernel) gives LlamaRMSNorm's values exactly."""
    from types import SimpleNamespace

    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from gptcli.llama_decode import LlamaDecoder

    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    norm = LlamaRMSNorm(768, eps=1e-5).to(dt)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(768))
        x = (torch.randn(3, 5, 768) * torch.tensor([0.01, 1.0, 30.0])[:, None, None]).to(dt)
        want = norm(x)
        got = LlamaDecoder._rms(SimpleNamespace(torch=torch, dtype=dt), x, norm.weight, norm.variance_epsilon)
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_one_unpadded_row_attends_without_a_mask_with_the_same_logits(family, tokenizer_dir, tmp_path, monkeypatch):
    """A decode step of one row that may see every key skips the attention mask (cheaper), and its
    logits are bit-equal to the step with a mask of zeros; padding, spare buffer room and a prompt
    of several tokens still get one."""
    import torch

    from gptcli.kvcache import new_cache
    from gptcli.lean_decode import LeanDecoder, decode_forward
    from gptcli.loading import open_model

    lm, _ = open_model(str(_build(family, tmp_path / "m", tokenizer_dir)), device="cpu", dtype="bfloat16")
    decoder = decode_forward(lm.model)
    assert decoder is not None
    ones = torch.ones(1, 6, dtype=torch.long)
    assert decoder._mask(ones, 6, 1) is None
    assert decoder._mask(torch.tensor([[0, 1, 1, 1, 1, 1]]), 6, 1) is not None  # a padded row
    assert decoder._mask(ones, 8, 1) is not None  # keys past the filled length: a whole buffer's spare room
    assert decoder._mask(ones, 6, 3) is not None  # several new tokens: the future is masked
    assert decoder._mask(torch.ones(2, 6, dtype=torch.long), 6, 1) is None

    def steps():
        ids = torch.tensor([lm.tokenizer(PROMPTS[0])["input_ids"]])
        cache, mask, out = new_cache(lm.model), torch.ones_like(ids), []
        step, positions = ids, torch.arange(ids.shape[1])[None]
        with torch.inference_mode():
            for _ in range(6):
                kwargs = {decoder.cache_name: cache, "attention_mask": mask, "position_ids": positions}
                logits = decoder(input_ids=step, logits_to_keep=1, **kwargs).logits
                out.append(logits)
                step = logits[:, -1:].argmax(-1)
                mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
                positions = positions[:, -1:] + 1
        return out

    own_mask = LeanDecoder._mask
    masks: list = []

    def recorded(self, attention_mask, kv_len, t):
        masks.append(own_mask(self, attention_mask, kv_len, t))
        return masks[-1]

    monkeypatch.setattr(LeanDecoder, "_mask", recorded)
    without = steps()
    assert masks[0] is not None and all(m is None for m in masks[1:])  # the prompt, then 5 steps unmasked

    def zeros_instead_of_none(self, attention_mask, kv_len, t):
        mask = own_mask(self, attention_mask, kv_len, t)
        if mask is None:
            b = attention_mask.shape[0]
            return torch.zeros(b, 1, 1, t, kv_len, dtype=self.dtype)
        return mask

    monkeypatch.setattr(LeanDecoder, "_mask", zeros_instead_of_none)
    with_zeros = steps()
    assert all(torch.equal(a, b) for a, b in zip(without, with_zeros))
