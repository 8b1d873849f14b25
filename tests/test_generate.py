"""`gptcli generate` through its real error boundary, against the real loading code."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def reference_greedy(model_dir, prompt, n):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return new, tok.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_equals_model_generate(cli, arch, request):
    model_dir = request.getfixturevalue(f"{arch}_dir")
    ids, text = reference_greedy(model_dir, "Once upon a time", 30)
    r = cli("generate", "Once upon a time", "-m", model_dir, "--greedy", "-t", 30, "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["text"] == text
    assert rec["completion_tokens"] == len(ids)


def test_text_mode_prints_only_generated_text(cli, gpt2_dir):
    _, text = reference_greedy(gpt2_dir, "The sun", 12)
    r = cli("generate", "The sun", "-m", gpt2_dir, "--greedy", "-t", 12, "--dtype", "float32")
    assert r.exit_code == 0
    assert r.stdout == text + "\n"
    r = cli("generate", "The sun", "-m", gpt2_dir, "--greedy", "-t", 12, "--dtype", "float32", "--echo")
    assert r.stdout == "The sun" + text + "\n"


def test_seeded_sampling_is_reproducible_and_reported(cli, gpt2_dir):
    args = ("generate", "Max liked", "-m", gpt2_dir, "-t", 25, "--seed", 7, "--temperature", 1.5, "--json")
    a, b = cli(*args).json_lines()[0], cli(*args).json_lines()[0]
    assert a["text"] == b["text"] and a["seed"] == 7
    # Without --seed, a seed is drawn and reported; feeding it back reproduces the text.
    c = cli("generate", "Max liked", "-m", gpt2_dir, "-t", 25, "--temperature", 1.5, "--json").json_lines()[0]
    d = cli(
        "generate", "Max liked", "-m", gpt2_dir, "-t", 25, "--temperature", 1.5, "--json", "--seed", c["seed"]
    ).json_lines()[0]
    assert isinstance(c["seed"], int) and c["text"] == d["text"]


def test_json_record_keys_and_token_counts(cli, gpt2_dir):
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    r = cli("generate", "Tom and Sue", "-m", gpt2_dir, "-t", 5, "--json", "--seed", 1)
    (rec,) = r.json_lines()
    assert {
        "text",
        "prompt",
        "index",
        "sample",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "seed",
        "model",
        "ttft_s",
        "tokens_per_s",
        "elapsed_s",
    } <= set(rec)
    assert rec["prompt_tokens"] == len(tok("Tom and Sue")["input_ids"])
    assert 0 <= rec["completion_tokens"] <= 5
    assert rec["finish_reason"] in ("eos", "length", "stop")
    assert rec["finish_reason"] == "length" or rec["completion_tokens"] < 5


def test_batched_prompts_match_unbatched_greedy(cli, llama_dir, tmp_path):
    prompts = ["Once upon a time", "Mom", "They found a big red shell and"]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(prompts) + "\n\n", encoding="utf-8")
    batched = cli(
        "generate", "--file", f, "-m", llama_dir, "--greedy", "-t", 15, "--dtype", "float32", "--json", "-b", 3
    )
    assert batched.exit_code == 0, batched.stderr
    recs = batched.json_lines()
    assert [r["prompt"] for r in recs] == prompts  # input order; blank lines skipped
    for rec in recs:
        _, text = reference_greedy(llama_dir, rec["prompt"], 15)
        assert rec["text"] == text


def test_jsonl_input_keeps_order_ids_and_per_record_settings(cli, gpt2_dir, tmp_path):
    f = tmp_path / "req.jsonl"
    lines = [
        {"id": "a", "prompt": "Once upon a time", "max_new_tokens": 2, "seed": 3},
        {"id": "b", "prompt": "The sky", "temperature": 0, "max_new_tokens": 6},
        {"id": "c", "prompt": "Max", "num_return_sequences": 2, "seed": 5, "max_new_tokens": 4},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    r = cli("generate", "--file", f, "-m", gpt2_dir, "--json")
    assert r.exit_code == 0, r.stderr
    recs = r.json_lines()
    assert [(x["id"], x["sample"]) for x in recs] == [("a", 0), ("b", 0), ("c", 0), ("c", 1)]
    assert recs[0]["completion_tokens"] <= 2 and recs[0]["seed"] == 3
    assert recs[3]["seed"] == 6  # the n-th sample of a seeded request uses seed + n


def test_num_return_sequences(cli, gpt2_dir):
    recs = cli("generate", "Hi", "-m", gpt2_dir, "-n", 3, "-t", 4, "--json", "--seed", 2).json_lines()
    assert [r["sample"] for r in recs] == [0, 1, 2]
    assert [r["seed"] for r in recs] == [2, 3, 4]


def test_stop_string_ends_generation_and_is_not_printed(cli, gpt2_dir):
    base = cli("generate", "Once", "-m", gpt2_dir, "--greedy", "-t", 40, "--dtype", "float32", "--json").json_lines()[0]
    text = base["text"]
    assert len(text) > 6, "tiny model produced too little text to test --stop"
    stop = text[4:6]
    r = cli("generate", "Once", "-m", gpt2_dir, "--greedy", "-t", 40, "--dtype", "float32", "--stop", stop, "--json")
    rec = r.json_lines()[0]
    assert rec["text"] == text[: text.index(stop)]
    assert rec["finish_reason"] == "stop"
    plain = cli("generate", "Once", "-m", gpt2_dir, "--greedy", "-t", 40, "--dtype", "float32", "--stop", stop)
    assert plain.stdout == text[: text.index(stop)] + "\n"


def test_stdin_prompt_and_combination(cli, gpt2_dir):
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    # `echo "The sun was warm" | gptcli generate` continues the sentence: echo's newline is dropped...
    r = cli("generate", "-m", gpt2_dir, "-t", 3, "--json", "--seed", 1, stdin="The sun was warm\n")
    assert r.exit_code == 0
    (rec,) = r.json_lines()
    assert rec["prompt"] == "The sun was warm"
    assert rec["prompt_tokens"] == len(tok("The sun was warm")["input_ids"])
    # ... one of them only: a blank line at the end keeps a newline in the prompt.
    for stdin, prompt in [("Title\n\n", "Title\n"), ("Mom said\r\n", "Mom said"), ("no newline", "no newline")]:
        r = cli("generate", "-", "-m", gpt2_dir, "-t", 1, "--json", "--seed", 1, stdin=stdin)
        assert r.json_lines()[0]["prompt"] == prompt
    r = cli("generate", "In short:", "-m", gpt2_dir, "-t", 3, "--json", "--seed", 1, stdin="The sun was warm\n")
    assert r.json_lines()[0]["prompt_tokens"] == len(tok("The sun was warm\nIn short:")["input_ids"])
    r = cli("generate", "-", "-m", gpt2_dir, "-t", 3, "--json", "--seed", 1, stdin="Mom said")
    assert r.json_lines()[0]["prompt_tokens"] == len(tok("Mom said")["input_ids"])


def test_prompt_longer_than_context(cli, gpt2_dir):
    long_prompt = "The sun was warm and the sky was blue. " * 20  # far beyond the 64-token context
    r = cli("generate", long_prompt, "-m", gpt2_dir, "-t", 5)
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and "context" in r.stderr and "--truncate" in r.stderr
    assert r.stdout == ""
    r = cli("generate", long_prompt, "-m", gpt2_dir, "-t", 5, "--truncate", "--json")
    assert r.exit_code == 0
    assert "Warning:" in r.stderr
    rec = r.json_lines()[0]
    assert rec["prompt_tokens"] + 5 <= 64


def test_stats_go_to_stderr(cli, gpt2_dir):
    r = cli("generate", "Hi", "-m", gpt2_dir, "-t", 5, "--stats", "--seed", 1)
    assert r.exit_code == 0
    assert "tokens/s" in r.stderr and "time to first token" in r.stderr and "peak memory" in r.stderr
    assert "tokens/s" not in r.stdout


def test_stop_escapes_are_interpreted(cli, gpt2_dir):
    from gptcli.sampling import unescape

    assert unescape(r"\n") == "\n" and unescape(r"a\tb") == "a\tb" and unescape(r"\u2028") == "\u2028"
    assert unescape("\\\\n") == "\\n"  # an escaped backslash stays one backslash, followed by n
    assert unescape(r"C:\x") == r"C:\x" and unescape(r"\u12") == r"\u12"  # unknown sequences are kept
    assert unescape("\n") == "\n"  # $'\n' from the shell is a real newline already
    base = cli("generate", "Once", "-m", gpt2_dir, "--greedy", "-t", 40, "--dtype", "float32", "--json").json_lines()[0]
    text = base["text"]
    stop = text[4:6]
    typed = "".join(f"\\u{ord(c):04x}" for c in stop)  # what `--stop "\u0061\u0062"` passes
    r = cli("generate", "Once", "-m", gpt2_dir, "--greedy", "-t", 40, "--dtype", "float32", "--stop", typed, "--json")
    rec = r.json_lines()[0]
    assert rec["finish_reason"] == "stop" and rec["text"] == text[: text.index(stop)]


@pytest.mark.parametrize("where", ["core", "renderer"])
def test_ctrl_c_prints_partial_output_and_true_stats(cli, gpt2_dir, monkeypatch, where):
    """Ctrl-C during a forward pass (core) or while printing (renderer) keeps what was generated."""
    from gptcli import generation
    from gptcli.cli import generate as generate_cli

    def interrupt_at(patch, owner, name, n):
        real, calls = getattr(owner, name), []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        patch.setattr(owner, name, wrapper)

    args = [
        "generate",
        "Once upon a time",
        "-m",
        gpt2_dir,
        "-t",
        30,
        "-n",
        2,
        "--seed",
        3,
        "--stats",
        "--temperature",
        0.01,
        "--dtype",
        "float32",
    ]
    results = {}
    for as_json in (True, False):
        with monkeypatch.context() as patch:
            if where == "core":
                interrupt_at(patch, generation, "choose_tokens", 4)
            else:  # two sequences, one piece each per step: during the 3rd step
                interrupt_at(patch, generate_cli._JsonRenderer if as_json else generate_cli._TextRenderer, "piece", 6)
            r = results[as_json] = cli(*args, *(["--json"] if as_json else []))
        assert r.exit_code == 130
        stats = [line for line in r.stderr.splitlines() if "tokens/s" in line]
        assert len(stats) == 1
        r.generated = int(stats[0].split("generated ")[1].split()[0])
        assert r.generated >= 4  # not the zeros printed before
    recs = results[True].json_lines()
    assert [(x["sample"], x["finish_reason"]) for x in recs] == [(0, "interrupted"), (1, "interrupted")]
    assert sum(x["completion_tokens"] for x in recs) == results[True].generated
    assert all(x["seed"] in (3, 4) and x["prompt_tokens"] > 0 for x in recs)
    # Text mode prints the same partial texts, each ending its line, so the stats line starts on its own.
    assert results[False].stdout == "".join(x["text"] + "\n" for x in recs)
    assert results[False].generated == results[True].generated


def test_file_records_keep_their_input_line_numbers(cli, gpt2_dir, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("Once upon a time\n\n   \nMom said\n\nThe sky\n", encoding="utf-8")
    r = cli("generate", "--file", f, "-m", gpt2_dir, "-t", 2, "--json", "--seed", 1)
    assert r.exit_code == 0, r.stderr
    assert [(x["prompt"], x["line"], x["index"]) for x in r.json_lines()] == [
        ("Once upon a time", 1, 0),
        ("Mom said", 4, 1),
        ("The sky", 6, 2),
    ]
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"id": "a", "prompt": "Hi"}\n\n{"id": "b", "prompt": "Max"}\n', encoding="utf-8")
    recs = cli("generate", "--file", f, "-m", gpt2_dir, "-t", 2, "--json", "--seed", 1).json_lines()
    assert [(x["id"], x["line"]) for x in recs] == [("a", 1), ("b", 3)]
    # A prompt from the argument has no line.
    assert "line" not in cli("generate", "Hi", "-m", gpt2_dir, "-t", 1, "--json").json_lines()[0]


def test_max_new_tokens_beyond_the_context_is_said_once(cli, gpt2_dir, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("Once upon a time\nMom said\n", encoding="utf-8")
    r = cli("generate", "--file", f, "-m", gpt2_dir, "-t", 500, "--json", "--greedy", "--dtype", "float32")
    assert r.exit_code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "500" in warnings[0] and "context" in warnings[0] and "64" in warnings[0]
    for rec in r.json_lines():
        assert rec["prompt_tokens"] + rec["completion_tokens"] <= 64
    r = cli("generate", "Once upon a time", "-m", gpt2_dir, "-t", 5, "--json")
    assert r.exit_code == 0 and r.stderr == ""


def test_return_sequences_are_created_batch_by_batch(gpt2_dir):
    """-n 1024 on a thousand prompts starts at once with little memory, instead of building a
    million sequences first (the old way grew to gigabytes before printing anything)."""
    import tracemalloc

    from gptcli.generation import Request, stream_generate
    from gptcli.loading import open_model
    from gptcli.sampling import SamplingParams

    lm, _ = open_model(str(gpt2_dir), device="cpu", dtype="float32")
    params = SamplingParams(max_new_tokens=1, num_return_sequences=1024, seed=1)
    requests = [Request(prompt="Max", params=params)] * 1000
    tracemalloc.start()
    events = stream_generate(lm, requests, batch_size=4)
    first = next(events)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    events.close()
    assert (first.request, first.sample) == (0, 0)
    assert peak < 30 * 2**20


def test_batches_keep_input_order_across_sampling_groups(cli, gpt2_dir, tmp_path):
    f = tmp_path / "req.jsonl"
    lines = [
        {
            "id": i,
            "prompt": "Max",
            "max_new_tokens": 2,
            "seed": i,
            "temperature": 0.5 + (i % 2),
            "num_return_sequences": 3,
        }
        for i in range(5)
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    r = cli("generate", "--file", f, "-m", gpt2_dir, "--json", "-b", 2)
    assert r.exit_code == 0, r.stderr
    assert [(x["id"], x["sample"]) for x in r.json_lines()] == [(i, s) for i in range(5) for s in range(3)]


@pytest.mark.parametrize("beams", [1, 2], ids=["own-loop", "model-generate"])
def test_a_sequence_draws_from_its_own_seed_on_both_decode_paths(cli, gpt2_dir, tmp_path, beams):
    """The seeding rule (gptcli/generation.py): a sampled sequence's text depends on its seed
    only, not on what shares its batch, and the n-th sample of seed S is what seed S+n gives
    alone. Beam sampling goes through `model.generate`, which used to seed the whole batch
    once from its first sequence."""
    sampling = {"max_new_tokens": 12, "temperature": 1.5, "top_k": 0, "num_beams": beams}

    def run(*records):
        f = tmp_path / "req.jsonl"
        f.write_text("".join(json.dumps({**sampling, **r}) + "\n" for r in records), encoding="utf-8")
        r = cli("generate", "--file", f, "-m", gpt2_dir, "--dtype", "float32", "--json")
        assert r.exit_code == 0, r.stderr
        return {(rec["id"], rec["seed"]): rec["text"] for rec in r.json_lines()}

    batched = run(
        {"id": "b", "prompt": "The dog", "seed": 3},
        {"id": "a", "prompt": "Once upon a time", "seed": 7, "num_return_sequences": 2},
    )
    assert len(batched) == 3
    for seed in (7, 8):
        assert batched[("a", seed)] == run({"id": "a", "prompt": "Once upon a time", "seed": seed})[("a", seed)]
