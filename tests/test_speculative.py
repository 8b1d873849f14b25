"""Speculative decoding (prompt lookup, draft model): greedy text equal to ordinary decoding,
wherever a stop string, an end token or the token limit falls; sampled tokens distributed as
the model's own; the options on generate, chat and translate."""

from __future__ import annotations

import dataclasses
import json

import pytest

PROMPTS = ["Once upon a time there was a little dog named Max.", "Max liked", "The sun was warm"]
MULTIBYTE = "Café, naïve, jalapeño, and 日本語 are words too. 🙂 Café, naïve, jalapeño, and 日本語"


def _open(folder):
    from gptcli.loading import open_model

    return open_model(str(folder), device="cpu", dtype="float32")[0]


@pytest.fixture(scope="module")
def looper_dir(tmp_path_factory):
    """A tiny GPT-2 whose greedy output soon repeats itself: most lookup drafts are kept."""
    from tiny import build_model

    return build_model(tmp_path_factory.mktemp("looper"), "gpt2", seed=2, context=256)


@pytest.fixture(scope="module")
def looper(looper_dir):
    return _open(looper_dir)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from tiny import build_model

    return _open(build_model(tmp_path_factory.mktemp("llama256"), "llama", seed=0, context=256))


@pytest.fixture(scope="module")
def other_llama(tmp_path_factory):
    """A different tiny Llama with the same tokenizer: a draft model that is often wrong."""
    from tiny import build_model

    return _open(build_model(tmp_path_factory.mktemp("draft-llama"), "llama", seed=1, context=256))


def _run(lm, prompt, spec=None, **params):
    """(pieces, completion, stats) of one greedy (unless told otherwise) generation."""
    from gptcli.generation import Completion, Request, RunStats, stream_generate
    from gptcli.sampling import SamplingParams

    settings = dict(temperature=0.0, max_new_tokens=60)
    settings.update(params)
    stats = RunStats()
    pieces, done = [], None
    for event in stream_generate(
        lm, [Request(prompt=prompt, params=SamplingParams(**settings))], stats=stats, speculation=spec
    ):
        if isinstance(event, Completion):
            done = event
        else:
            pieces.append(event.text)
    return pieces, done, stats


def _lookup(n=4):
    from gptcli.speculative import Speculation

    return Speculation(prompt_lookup=n)


def _draft(lm, k=4):
    from gptcli.speculative import Speculation

    return Speculation(draft=lm, draft_tokens=k)


def _same(a, b):
    """Same streamed pieces, text, tokens and finish reason."""
    pa, da, _ = a
    pb, db, _ = b
    assert (db.text, db.token_ids, db.finish_reason) == (da.text, da.token_ids, da.finish_reason)
    assert pb == pa
    assert "".join(pb) == db.text


# --------------------------------------------------------------------------- greedy equality


@pytest.mark.parametrize("model", ["llama", "looper"])
def test_prompt_lookup_greedy_text_equals_ordinary(model, request):
    lm = request.getfixturevalue(model)
    accepted = 0
    for prompt in PROMPTS:
        plain = _run(lm, prompt, max_new_tokens=40)
        spec = _run(lm, prompt, _lookup(), max_new_tokens=40)
        _same(plain, spec)
        assert spec[2].speculative and spec[2].drafted_tokens >= spec[2].accepted_tokens
        assert spec[1].completion_tokens == plain[1].completion_tokens
        accepted += spec[2].accepted_tokens
    assert accepted > 0  # drafts were kept, so the multi-token path was exercised


def test_draft_model_greedy_text_equals_ordinary(llama, other_llama):
    for prompt in PROMPTS[:2]:
        plain = _run(llama, prompt, max_new_tokens=25)
        # The model as its own draft: every draft is kept (the bonus-token path) ...
        same = _run(llama, prompt, _draft(llama, 3), max_new_tokens=25)
        _same(plain, same)
        assert same[2].accepted_tokens == same[2].drafted_tokens > 0
        # ... and a different model: some drafts are rejected and cut from both caches.
        other = _run(llama, prompt, _draft(other_llama, 4), max_new_tokens=25)
        _same(plain, other)
        assert other[2].accepted_tokens < other[2].drafted_tokens


def _kept_runs(lm, prompt, spec):
    """Indices of generated tokens that came from kept drafts (not the model's own token)."""
    import gptcli.speculative as speculative

    kept_at: list[int] = []
    verify = speculative._verify

    def spy(logits, drafts, dists, params, generator):
        kept, own = verify(logits, drafts, dists, params, generator)
        kept_at.append(kept)
        return kept, own

    speculative._verify = spy
    try:
        _, done, _ = _run(lm, prompt, spec)
    finally:
        speculative._verify = verify
    inside, at = [], 0
    for kept in kept_at:
        inside += list(range(at, at + kept))
        at += kept + 1
    return done, [i for i in inside if i < done.completion_tokens]


@pytest.mark.parametrize("how", ["lookup", "draft"])
def test_stop_string_eos_and_limit_inside_a_drafted_run(how, looper):
    """Cut the ordinary output at tokens that came from a kept draft: by a stop string starting
    there, by that token being the end token, and by max_new_tokens ending there."""
    prompt = PROMPTS[1]
    make = (lambda: _lookup(5)) if how == "lookup" else (lambda: _draft(looper, 5))
    done, inside = _kept_runs(looper, prompt, make())
    assert len(inside) > 10, "too few drafts kept to cut inside runs"
    ids = done.token_ids
    tok = looper.tokenizer
    for i in inside[1:12:2]:
        # A stop string: the text from token i on (held back while it could still be a stop).
        before = tok.decode(ids[:i], skip_special_tokens=True)
        after = tok.decode(ids[: i + 1], skip_special_tokens=True)
        stop = after[len(before) :] or after[-1:]
        if stop.strip():
            plain = _run(looper, prompt, stop=(stop,))
            spec = _run(looper, prompt, make(), stop=(stop,))
            _same(plain, spec)
            assert plain[1].finish_reason == "stop" and stop not in "".join(spec[0])
        # The end token: token i ends the sequence (its first occurrence does).
        eos = dataclasses.replace(looper, eos_token_ids=[ids[i]])
        plain, spec = _run(eos, prompt), _run(eos, prompt, make())
        _same(plain, spec)
        assert spec[1].finish_reason == "eos" and spec[1].completion_tokens == ids.index(ids[i])
        # The token limit.
        plain, spec = _run(looper, prompt, max_new_tokens=i + 1), _run(looper, prompt, make(), max_new_tokens=i + 1)
        _same(plain, spec)
        assert spec[1].completion_tokens == i + 1 and spec[1].finish_reason == "length"


def _copier(folder, text):
    """The tiny GPT-2 made to repeat `text`'s tokens forever: its logits at position j pick the
    token at j + 1 of the repeated text, whatever it was fed. Greedy output is a known copy."""
    import functools

    import torch

    lm = _open(folder)
    ids = lm.tokenizer(text)["input_ids"]
    forward = lm.model.forward

    @functools.wraps(forward)  # the same signature: our decode loop drives it as the real model
    def copy(*args, input_ids=None, position_ids=None, logits_to_keep=0, **kwargs):
        out = forward(*args, input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1])[None].expand(input_ids.shape[0], -1)
        kept = position_ids[:, -out.logits.shape[1] :]
        nxt = torch.tensor([[ids[(int(j) + 1) % len(ids)] for j in row] for row in kept])
        out.logits = torch.full_like(out.logits, -10.0).scatter_(-1, nxt[..., None], 10.0)
        return out

    lm.model.forward = copy
    return lm


def test_pieces_never_split_a_character(looper_dir):
    """Drafted runs that end inside a multi-byte character: the pieces hold its bytes back."""
    lm = _copier(looper_dir, MULTIBYTE)
    plain = _run(lm, MULTIBYTE, max_new_tokens=80)
    spec = _run(lm, MULTIBYTE, _lookup(6), max_new_tokens=80)
    _same(plain, spec)
    assert spec[2].accepted_tokens > 40  # it copies, and lookup drafts the copy
    assert "日本語" in spec[1].text and "🙂" in spec[1].text
    # (The last piece is what was held back when the token limit cut a character, as ordinarily.)
    assert all("\ufffd" not in p for p in spec[0][:-1])
    # Some character's bytes came in more than one token, so holding back was needed.
    tok = lm.tokenizer
    assert any("\ufffd" in tok.decode(spec[1].token_ids[: i + 1]) for i in range(len(spec[1].token_ids)))


def test_context_end_reached_while_drafting(looper):
    """A prompt that leaves 7 tokens of context: drafts stop at the context's end, as decoding does."""
    ids = looper.tokenizer(PROMPTS[1] * 200)["input_ids"][: looper.context_length - 7]
    prompt = looper.tokenizer.decode(ids)
    plain, spec = _run(looper, prompt), _run(looper, prompt, _lookup(8))
    _same(plain, spec)
    assert spec[1].finish_reason == "length" and spec[1].completion_tokens == 7
    assert spec[2].accepted_tokens > 0


def test_repetition_penalty_sees_the_drafts(looper):
    """With a repetition penalty each verified position is scored with the drafts before it."""
    for prompt in PROMPTS[1:]:
        plain = _run(looper, prompt, repetition_penalty=1.1)
        spec = _run(looper, prompt, _lookup(), repetition_penalty=1.1)
        _same(plain, spec)


def test_prompt_cache_turns_match_ordinary(looper):
    """Chat keeps the cache between turns: rejected drafts must not be left in it."""
    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.kvcache import PromptCache
    from gptcli.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=12)

    def turns(spec):
        cache, prompt, out = PromptCache(), "", []
        for text in ["Max liked to run.", " Max liked to run in the park.", " Once upon a time"]:
            prompt += text
            ids = looper.tokenizer(prompt)["input_ids"]
            for ev in stream_generate(
                looper, [Request(prompt_ids=ids, params=params)], prompt_cache=cache, speculation=spec
            ):
                if isinstance(ev, Completion):
                    out.append((ev.token_ids, ev.cached_tokens))
                    prompt += ev.text
        return out

    spec = _lookup()
    got = turns(spec)
    assert got == turns(None)
    assert got[1][1] > 0  # the second turn reused the cache


# --------------------------------------------------------------------------- sampling


def _tv(counts, probs):
    n = sum(counts.values())
    return 0.5 * sum(abs(counts.get(k, 0) / n - p) for k, p in probs.items())


def test_sampling_probs_match_choose_tokens():
    """The distribution speculation accepts against is the one ordinary sampling draws from."""
    import torch

    from gptcli.sampling import SamplingParams, choose_tokens, row_generators
    from gptcli.speculative import sampling_probs

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, -3.0]])
    for params in (
        SamplingParams(temperature=0.7, top_k=4),
        SamplingParams(temperature=1.3, top_k=0, top_p=0.8),
        SamplingParams(temperature=1.0, top_k=0, min_p=0.2),
    ):
        probs = sampling_probs(logits, params)[0]
        n = 8000
        picks = choose_tokens(logits.expand(n, -1), params, row_generators(list(range(n)), "cpu")).tolist()
        counts = {t: picks.count(t) for t in set(picks)}
        assert _tv(counts, dict(enumerate(probs.tolist()))) < 0.03
        assert float(probs.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("drafter", ["lookup", "draft"])
def test_sampled_tokens_follow_the_model_distribution(drafter):
    """Two tokens after a context, on a 3-token vocabulary: the model is a Markov chain T, the
    draft model another chain Q (or a fixed lookup draft). Whatever is accepted or resampled,
    the two tokens must be distributed as T says: checked by total variation over 6,000 seeds
    (a wrong rejection rule is off by 0.2 or more; sampling noise here is about 0.01)."""
    import torch

    from gptcli.sampling import SamplingParams
    from gptcli.speculative import _draw, _verify

    T = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]])
    Q = torch.tensor([[0.2, 0.5, 0.3], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    params = SamplingParams(temperature=1.0, top_k=0)
    start, n = 0, 6000
    counts: dict[tuple[int, int], int] = {}
    g = torch.Generator()
    for seed in range(n):
        g.manual_seed(seed)
        if drafter == "lookup":
            drafts, dists = [1, 2], []
        else:
            d0 = _draw(Q[start], g)
            drafts, dists = [d0, _draw(Q[d0], g)], [Q[start], Q[d0]]
        logits = torch.stack([T[start].log(), T[drafts[0]].log(), T[drafts[1]].log()])
        kept, own = _verify(logits, drafts, dists, params, g)
        out = [*drafts[:kept], own]
        if len(out) < 2:  # the next token comes from an ordinary step
            out.append(_draw(T[out[0]], g))
        key = (out[0], out[1])
        counts[key] = counts.get(key, 0) + 1
    want = {(a, b): float(T[start, a] * T[a, b]) for a in range(3) for b in range(3)}
    assert _tv(counts, want) < 0.035


def test_prompt_lookup_rejection_never_repeats_the_rejected_token():
    """On rejection the token comes from p without the draft (the point-mass residual)."""
    import torch

    from gptcli.sampling import SamplingParams
    from gptcli.speculative import _verify

    logits = torch.tensor([[1.0, 1.0, 1.0]]).log()
    g = torch.Generator()
    outcomes = set()
    for seed in range(300):
        g.manual_seed(seed)
        kept, own = _verify(logits.expand(2, -1), [1], [], SamplingParams(temperature=1.0, top_k=0), g)
        outcomes.add((kept, own))
    assert outcomes == {(1, 0), (1, 1), (1, 2), (0, 0), (0, 2)}


@pytest.mark.parametrize("how", ["lookup", "draft"])
def test_a_seed_gives_the_same_sampled_text(how, llama, other_llama):
    make = (lambda: _lookup(4)) if how == "lookup" else (lambda: _draft(other_llama, 3))
    a = _run(llama, PROMPTS[0], make(), temperature=0.9, seed=7, max_new_tokens=25)
    b = _run(llama, PROMPTS[0], make(), temperature=0.9, seed=7, max_new_tokens=25)
    c = _run(llama, PROMPTS[0], make(), temperature=0.9, seed=8, max_new_tokens=25)
    assert a[1].token_ids == b[1].token_ids and a[0] == b[0]
    assert a[1].seed == 7 and a[1].completion_tokens == 25
    assert c[1].token_ids != a[1].token_ids


def test_lookup_proposes_what_followed_the_last_ngram():
    from gptcli.speculative import PromptLookup

    look = PromptLookup()
    ids = [1, 2, 3, 4, 5, 9, 2, 3]
    assert look.propose(ids, 3) == [4, 5, 9]  # after the earlier "2 3"
    assert look.propose([*ids, 7], 3) == []  # 7 never appeared before
    run = [5, 5, 5, 5, 5]
    # The latest "5 5 5" leaves one token after it; the first leaves two.
    assert PromptLookup().propose(run, 3) == [5, 5]


# --------------------------------------------------------------------------- the commands


def test_generate_prompt_lookup_same_text_and_stats(cli, looper_dir):
    args = ["generate", PROMPTS[1], "-m", looper_dir, "--greedy", "-t", "30"]
    plain = cli(*args)
    spec = cli(*args, "--prompt-lookup", "4", "--stats")
    assert plain.exit_code == spec.exit_code == 0
    assert spec.stdout == plain.stdout
    assert "drafted" in spec.stderr and "accepted" in spec.stderr and "%" in spec.stderr
    rec = cli(*args, "--prompt-lookup", "4", "--json").json_lines()[0]
    assert 0 < rec["accepted_tokens"] <= rec["drafted_tokens"]
    assert "drafted_tokens" not in cli(*args, "--json").json_lines()[0]


def test_generate_draft_model(cli, looper_dir, tmp_path):
    from tiny import build_model

    draft = build_model(tmp_path / "draft", "llama", seed=3)  # another architecture, the same tokenizer
    args = ["generate", PROMPTS[1], "-m", looper_dir, "--greedy", "-t", "20"]
    plain = cli(*args)
    spec = cli(*args, "--draft-model", draft, "--draft-tokens", "3", "--stats")
    assert spec.exit_code == 0, spec.stderr
    assert spec.stdout == plain.stdout
    assert "Draft model: Loaded" in spec.stderr and "accepted" in spec.stderr


def test_draft_model_with_another_tokenizer_is_a_usage_error(cli, llama_dir, tmp_path):
    import torch
    from tiny import build_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "other"
    tok = build_tokenizer(folder, vocab_size=280)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64)).save_pretrained(
        folder
    )
    r = cli("generate", "Max", "-m", llama_dir, "--draft-model", folder)
    assert r.exit_code == 2 and r.stdout == ""
    assert "Error:" in r.stderr and "different tokenizer" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt-lookup", "0"], "--prompt-lookup must be from 1"),
        (["--prompt-lookup", "2", "--draft-model", "x"], "either --prompt-lookup or --draft-model"),
        (["--draft-tokens", "3"], "--draft-tokens needs --draft-model"),
        (["--draft-model", "./no/such/folder"], "--draft-model folder './no/such/folder' does not exist"),
    ],
)
def test_bad_speculative_options(cli, llama_dir, args, message):
    r = cli("generate", "Max", "-m", llama_dir, *args)
    assert r.exit_code == 2 and r.stdout == ""
    assert message in r.stderr


def test_batches_of_several_decode_normally_with_a_note(cli, looper_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    base = ["generate", "-f", prompts, "-m", looper_dir, "--greedy", "-t", "12"]
    one = cli(*base, "--prompt-lookup", "3", "--stats")  # one sequence per batch by default
    assert one.stdout == cli(*base, "--batch-size", "1").stdout
    several = cli(*base, "--prompt-lookup", "3", "--batch-size", "3")
    assert several.stdout == cli(*base, "--batch-size", "3").stdout
    assert "one sequence at a time" in several.stderr and "one sequence at a time" not in one.stderr
    assert "accepted" in one.stderr


def test_chat_prompt_lookup_same_replies(cli, looper_dir):
    messages = "\n".join(
        json.dumps({"role": "user", "content": c}) for c in ["Max liked to run.", "Once upon a time there was"]
    )
    args = ["chat", "--jsonl", "--json", "-m", looper_dir, "--greedy", "-t", "12"]
    plain = cli(*args, stdin=messages).json_lines()
    spec = cli(*args, "--prompt-lookup", "4", stdin=messages).json_lines()
    assert [r["content"] for r in spec] == [r["content"] for r in plain]
    assert all("accepted_tokens" in r for r in spec) and spec[1]["cached_tokens"] > 0


def test_translate_prompt_lookup(cli):
    """The bundled en-fr model is decoder-only: lookup drafts copy names and numbers."""
    text = "Tom has 3 dogs.\nTom likes the sea."
    plain = cli("translate", "--to", "fr", stdin=text)
    spec = cli("translate", "--to", "fr", "--prompt-lookup", "3", "--stats", stdin=text)
    assert plain.exit_code == spec.exit_code == 0
    assert spec.stdout == plain.stdout and len(spec.stdout.splitlines()) == 2
    assert "accepted" in spec.stderr


def test_translate_encoder_decoder_and_beams_are_usage_errors(cli, marian_dir):
    r = cli("translate", "Hello", "--to", "fr", "-m", marian_dir, "--prompt-lookup", "3")
    assert r.exit_code == 2 and "decoder-only" in r.stderr and r.stdout == ""
    r = cli("translate", "Hello", "--to", "fr", "--num-beams", "2", "--prompt-lookup", "3")
    assert r.exit_code == 2 and "--num-beams" in r.stderr


def test_sliding_window_cache_decodes_normally_with_a_note(tmp_path):
    """Sliding-window layers cannot drop rejected drafts: the sequence is decoded the ordinary way."""
    import torch
    from tiny import build_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_tokenizer(tmp_path)
    eot = tok.eos_token_id
    config = AutoConfig.for_model(
        "mistral",
        vocab_size=len(tok),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_position_embeddings=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_key_value_heads=1,
        sliding_window=8,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    lm = _open(tmp_path)
    notes: list[str] = []
    spec = _lookup()
    spec.on_fallback = notes.append
    got = _run(lm, PROMPTS[1], spec)
    _same(_run(lm, PROMPTS[1]), got)
    assert not got[2].speculative and len(notes) == 1 and "sliding-window" in notes[0]
