"""Continuous batching in the decode engine: sequences that join a running batch, or leave it
early, get exactly the tokens they get alone."""

import pytest

from gptcli.generation import Completion, DecodeBatch, Request, TextTracker, _Seq, stream_generate
from gptcli.sampling import SamplingParams

PROMPTS = ["Once upon a time", "The sun was warm and the sky was blue. They found", "Max", "Mom said: that is"]


def _alone(lm, prompt, params):
    (done,) = [e for e in stream_generate(lm, [Request(prompt, params)]) if isinstance(e, Completion)]
    return done.token_ids


def _seq(lm, i, prompt, params, logprobs=None):
    from gptcli.generation import encode_prompt

    seq = _Seq(i, 0, encode_prompt(lm, prompt), params, params.seed, TextTracker(lm.tokenizer, params.stop))
    seq.logprobs = logprobs
    return seq


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sequences_joining_mid_decode_get_their_own_tokens(arch, gpt2_dir, llama_dir):
    from gptcli.loading import open_model

    lm, _ = open_model(str(gpt2_dir if arch == "gpt2" else llama_dir), dtype="float32")
    greedy = SamplingParams(max_new_tokens=12, greedy=True)
    sampled = SamplingParams(max_new_tokens=9, temperature=1.0, seed=7)
    params = [greedy, sampled, greedy, sampled]
    want = [_alone(lm, p, s) for p, s in zip(PROMPTS, params)]
    engine = DecodeBatch(lm)
    done: dict[int, list[int]] = {}

    def collect(events):
        for e in events:
            if isinstance(e, Completion):
                done[e.request] = e.token_ids

    # Two start together; the others join after 2 and 5 steps, with longer and shorter prompts.
    collect(engine.add([_seq(lm, 0, PROMPTS[0], greedy), _seq(lm, 2, PROMPTS[2], greedy)]))
    for step in range(40):
        if step == 2:
            assert engine.can_join()
            collect(engine.add([_seq(lm, 1, PROMPTS[1], sampled)]))
        if step == 5:
            collect(engine.add([_seq(lm, 3, PROMPTS[3], sampled)]))
        collect(engine.step())
    assert len(engine) == 0
    assert [done[i] for i in range(4)] == want


def test_cancelled_rows_leave_and_the_others_are_unchanged(gpt2_dir):
    from gptcli.loading import open_model

    lm, _ = open_model(str(gpt2_dir), dtype="float32")
    greedy = SamplingParams(max_new_tokens=10, greedy=True)
    want = _alone(lm, PROMPTS[0], greedy)
    engine = DecodeBatch(lm)
    keep, drop = _seq(lm, 0, PROMPTS[0], greedy), _seq(lm, 1, PROMPTS[1], greedy)
    events = engine.add([keep, drop])
    events += engine.step()
    engine.cancel([drop])
    assert engine.seqs == [keep]
    while len(engine):
        events += engine.step()
    finished = [e for e in events if isinstance(e, Completion)]
    assert [e.request for e in finished] == [0] and finished[0].token_ids == want


def test_logprobs_are_those_of_the_chosen_tokens(gpt2_dir):
    import torch

    from gptcli.loading import open_model

    lm, _ = open_model(str(gpt2_dir), dtype="float32")
    params = SamplingParams(max_new_tokens=4, greedy=True)
    engine = DecodeBatch(lm)
    seq = _seq(lm, 0, PROMPTS[0], params, logprobs=2)
    events = engine.add([seq])
    while len(engine):
        events += engine.step()
    (done,) = [e for e in events if isinstance(e, Completion)]
    ids = seq.prompt_ids + done.token_ids
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    for k, (token, logprob, top) in enumerate(done.token_logprobs):
        row = logits[len(seq.prompt_ids) - 1 + k]
        assert token == done.token_ids[k] and logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert top[0][0] == token and len(top) == 2  # greedy: the chosen token is the most likely
