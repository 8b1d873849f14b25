"""`gptcli eval` numbers against independent computations with plain transformers (float32, no fast path),
under lm-evaluation-harness's `loglikelihood_rolling` rule (BOS/EOS prefix, every text token scored)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from tiny import CORPUS
from transformers import AutoModelForCausalLM, AutoTokenizer

CONTEXT = 64  # tests/tiny.py builds models with 64 positions
SHORT = "Once upon a time there was a little dog named Max. The sun was warm."
LONG = " ".join(CORPUS[:7] * 3)  # ~100 words: several windows of 64 tokens
MEDIUM = " ".join(CORPUS[2:6])


@pytest.fixture(scope="module")
def reference(gpt2_dir):
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir, dtype=torch.float32).eval()
    return tok, model


def prefixed(tok, text):
    """lm-evaluation-harness's rolling rule: the text's tokens (no special tokens) after BOS, else EOS."""
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return [prefix] + tok(text, add_special_tokens=False)["input_ids"]


def full_forward_nll(model, ids):
    """Mean NLL over shifted labels from one forward pass over the whole sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="mean").item()


def rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    """lm-evaluation-harness's `utils.get_rolling_token_windows`, as published."""
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            token_list[window_end - max_seq_len - 1 : window_end - 1],
            token_list[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def reference_loop(model, ids, context, stride):
    """One forward per harness window (`ids` = prefix + text tokens); stride S is `context_len` C - S + 1."""
    total, count = 0.0, 0
    for inputs, targets in rolling_token_windows(ids[1:], ids[0], context, context - stride + 1):
        assert len(inputs) <= context
        with torch.no_grad():
            logits = model(torch.tensor([inputs])).logits[0]
        total += F.cross_entropy(logits[-len(targets) :], torch.tensor(targets), reduction="sum").item()
        count += len(targets)
    return total, count


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-corpus")
    (folder / "a_short.txt").write_text(SHORT, encoding="utf-8")
    (folder / "b_long.txt").write_text(LONG, encoding="utf-8")
    (folder / "c_medium.txt").write_text(MEDIUM, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "n, context, stride",
    [(1, 8, 8), (2, 8, 8), (8, 8, 8), (9, 8, 8), (50, 8, 8), (50, 8, 3), (50, 8, 1), (17, 8, 100), (7, 2, 1)],
)
def test_window_plan_scores_every_token_once_within_the_context(n, context, stride):
    from gptcli.evaluation.windows import plan_windows

    windows = plan_windows(n, context, min(stride, context))
    predicted = [t for w in windows for t in range(w.end - w.targets + 1, w.end + 1)]
    assert predicted == list(range(1, n))  # every token after the prefix, once, in order
    for w in windows:
        assert 0 <= w.begin <= w.end - w.targets and w.length <= context
    # every window but the first has min(stride, context) new tokens (the last may have fewer)
    assert all(w.targets == min(stride, context) for w in windows[1:-1])


def per_doc(cli, *args):
    r = cli("eval", *args, "--per-doc", "--dtype", "float32")
    assert r.exit_code == 0, r.stderr
    return {rec["id"].rsplit("/", 1)[-1]: rec for rec in r.json_lines()}


def test_single_window_nll_equals_full_forward_cross_entropy(cli, gpt2_dir, reference, tmp_path):
    """The whole text is scored after the end-of-text token, as lm-evaluation-harness does: its first token too."""
    tok, model = reference
    ids = prefixed(tok, SHORT)
    assert ids[0] == tok.convert_tokens_to_ids("<|endoftext|>") and 2 < len(ids) <= CONTEXT
    (tmp_path / "short.txt").write_text(SHORT, encoding="utf-8")
    r = cli("eval", tmp_path / "short.txt", "-m", gpt2_dir, "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    want = full_forward_nll(model, ids)
    assert rec["tokens"] == len(ids) - 1 == len(tok(SHORT)["input_ids"])
    assert abs(rec["nll"] - want) < 1e-5
    assert abs(rec["ppl"] - math.exp(want)) < 1e-5 * math.exp(want)
    # bits per byte: total NLL in bits over all the text's UTF-8 bytes.
    assert rec["bytes"] == len(SHORT.encode())
    assert abs(rec["bits_per_byte"] - want * (len(ids) - 1) / math.log(2) / len(SHORT.encode())) < 1e-5


@pytest.mark.parametrize("stride, context", [(64, None), (16, None), (20, 32)])
def test_sliding_window_matches_reference_loop(cli, gpt2_dir, reference, corpus_dir, stride, context):
    tok, model = reference
    extra = ("--context", context) if context else ()
    got = per_doc(cli, corpus_dir, "-m", gpt2_dir, "--stride", stride, *extra)
    for name, text in (("b_long.txt", LONG), ("a_short.txt", SHORT), ("c_medium.txt", MEDIUM)):
        ids = prefixed(tok, text)
        total, count = reference_loop(model, ids, context or CONTEXT, stride)
        assert count == len(ids) - 1  # every token of the text, once
        assert got[name]["tokens"] == count
        assert abs(got[name]["nll"] - total / count) < 1e-5, name
    assert len(tok(LONG)["input_ids"]) > 2 * CONTEXT


def test_batching_does_not_change_results(cli, gpt2_dir, corpus_dir):
    one = per_doc(cli, corpus_dir, "-m", gpt2_dir, "--stride", 16, "--batch-size", 1)
    many = per_doc(cli, corpus_dir, "-m", gpt2_dir, "--stride", 16, "--batch-size", 8)
    assert one.keys() == many.keys()
    for key in one:
        assert abs(one[key]["nll"] - many[key]["nll"]) < 1e-5


def test_summary_is_token_weighted_over_documents(cli, gpt2_dir, corpus_dir):
    r = cli("eval", corpus_dir, "-m", gpt2_dir, "--dtype", "float32", "--per-doc", "--json")
    assert r.exit_code == 0, r.stderr
    *docs, summary = r.json_lines()
    assert len(docs) == 3 and "id" not in summary
    total = sum(d["nll"] * d["tokens"] for d in docs)
    assert summary["tokens"] == sum(d["tokens"] for d in docs)
    assert summary["bytes"] == sum(d["bytes"] for d in docs)
    assert abs(summary["nll"] - total / summary["tokens"]) < 1e-9
    assert abs(summary["bits_per_byte"] - total / math.log(2) / summary["bytes"]) < 1e-9


def test_concat_scores_one_joined_text(cli, gpt2_dir, reference, corpus_dir):
    tok, model = reference
    r = cli("eval", corpus_dir, "-m", gpt2_dir, "--dtype", "float32", "--concat", "--per-doc")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    joined = "\n\n".join([SHORT, LONG, MEDIUM])
    total, count = reference_loop(model, prefixed(tok, joined), CONTEXT, CONTEXT)
    assert rec["id"] == "concat" and rec["tokens"] == count
    assert abs(rec["nll"] - total / count) < 1e-5


def test_llama_single_window(cli, llama_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(llama_dir)
    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": SHORT, "id": "s1"}) + "\n", encoding="utf-8")
    r = cli("eval", tmp_path / "t.jsonl", "-m", llama_dir, "--dtype", "float32", "--per-doc")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["id"] == "s1"
    ids = prefixed(tok, SHORT)
    assert rec["tokens"] == len(ids) - 1
    assert abs(rec["nll"] - full_forward_nll(model, ids)) < 1e-5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_weight_fast_path_keeps_results_exact(arch, request, reference):
    """The CLI leaves tiny layers unpacked, so pack every layer here and compare in float32."""
    from gptcli.cpu_tuning import optimize_for_inference
    from gptcli.data import Document
    from gptcli.evaluation import evaluate_model
    from gptcli.loading import open_model

    model_dir = request.getfixturevalue(f"{arch}_dir")
    lm, _ = open_model(str(model_dir), device="cpu", dtype="float32", fast=False)
    if optimize_for_inference(lm.model, lm.runtime, min_weights=0) == 0:
        pytest.skip("the oneDNN packing op is not available here")
    score = evaluate_model(lm, [Document("long", LONG, "t")], stride=16, batch_size=4)
    tok = AutoTokenizer.from_pretrained(model_dir)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = reference_loop(plain, prefixed(tok, LONG), CONTEXT, 16)
    assert score.tokens == count
    assert abs(score.nll - total / count) < 1e-5
