"""Remote models (`--model openai:NAME`): generate, chat, translate and eval through an
OpenAI-compatible server. Against a test double (tests/openai_double.py) that records what it
is sent and answers in the official shapes."""

from __future__ import annotations

import json
import socket
import time

import pytest
from openai_double import Double, Reply

KEY = "sk-test-Zq8vW3remote5ecret"


@pytest.fixture(scope="module")
def double():
    server = Double().start()
    yield server
    server.stop()


@pytest.fixture
def api(double, monkeypatch):
    """The double, reset, as the server of `openai:tiny` (through OPENAI_BASE_URL), without a key."""
    double.reset()
    monkeypatch.setenv("OPENAI_BASE_URL", double.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("GPTCLI_TIMEOUT", raising=False)
    monkeypatch.setattr("gptcli.remote.RETRY_BASE_S", 0.01)  # backoff without a Retry-After header
    return double


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- generate


def test_generate_streams_the_server_text_and_sends_the_sampling_settings(cli, api):
    r = cli("generate", "Once upon", "-m", "openai:tiny", "-t", "12", "--temperature", "0.5", "--top-p", "0.9",
            "--seed", "7", "--stop", "\\n", "--stop", "END")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "re: Once upon!\n"
    assert r.stderr == ""
    (sent,) = api.requests
    assert sent.path == "/v1/completions"
    body = sent.body
    assert body["model"] == "tiny" and body["prompt"] == "Once upon" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (12, 0.5, 0.9, 7)
    assert body["stop"] == ["\n", "END"]
    # top_k is not an OpenAI parameter: sent only when asked for (the OpenAI API rejects it).
    assert "top_k" not in body and "n" not in body
    assert sent.headers["authorization"] == "Bearer no-key"  # no OPENAI_API_KEY: a local server needs none


def test_top_k_and_other_extras_go_in_the_body_when_asked(cli, api):
    r = cli("generate", "x", "-m", "openai:tiny", "--top-k", "5", "--min-p", "0.1", "--repetition-penalty", "1.2")
    assert r.exit_code == 0, r.stderr
    body = api.requests[0].body
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (5, 0.1, 1.2)


def test_greedy_is_temperature_zero_without_sampling_knobs(cli, api):
    r = cli("generate", "x", "-m", "openai:tiny", "--greedy", "--top-k", "5", "--top-p", "0.5")
    assert r.exit_code == 0, r.stderr
    body = api.requests[0].body
    assert body["temperature"] == 0.0
    assert not {"top_k", "top_p", "seed"} & set(body)


def test_each_sample_is_one_request_seeded_like_locally(cli, api):
    r = cli("generate", "Hi", "-m", "openai:tiny", "-n", "3", "--seed", "40", "--json")
    assert r.exit_code == 0, r.stderr
    assert sorted(req.body["seed"] for req in api.requests) == [40, 41, 42]
    records = r.json_lines()
    assert [(rec["sample"], rec["seed"]) for rec in records] == [(0, 40), (1, 41), (2, 42)]


def test_json_records_take_token_counts_from_usage(cli, api):
    api.respond = lambda body: Reply(["a", "b", "c"], prompt_tokens=11, completion_tokens=9)
    r = cli("generate", "Hi", "-m", "openai:tiny", "--json", "--stats")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["text"] == "abc" and rec["model"] == "openai:tiny"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (11, 9)
    assert rec["finish_reason"] == "length"
    assert "prompt 11 tokens, generated 9 tokens" in r.stderr
    assert f"Using tiny at {api.base_url} (timeout 60 s)" in r.stderr
    assert "peak memory" not in r.stderr  # the server's memory is not this process's


def test_missing_usage_is_unknown_never_estimated(cli, api):
    api.usage = False
    r = cli("generate", "Hi", "-m", "openai:tiny", "--json", "--stats")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["prompt_tokens"] is None and rec["completion_tokens"] is None and rec["tokens_per_s"] is None
    assert "token counts unknown" in r.stderr


@pytest.mark.parametrize(
    ("reason", "stop_reason", "stop", "ours"),
    [
        ("length", None, None, "length"),
        ("stop", None, None, "eos"),  # no stop strings: the model ended its text
        ("stop", "END", "END", "stop"),  # vLLM / gptcli serve name the stop string
        ("stop", 50256, "END", "eos"),  # ... or the end token's id
        ("stop", None, "END", "stop"),  # a server that does not say: the stop string is the likely end
    ],
)
def test_finish_reasons_map_to_ours(cli, api, reason, stop_reason, stop, ours):
    api.respond = lambda body: Reply(["x"], finish_reason=reason, stop_reason=stop_reason)
    args = ["--stop", stop] if stop else []
    r = cli("generate", "Hi", "-m", "openai:tiny", "--json", *args)
    assert r.exit_code == 0, r.stderr
    assert r.json_lines()[0]["finish_reason"] == ours


def test_a_file_of_prompts_runs_concurrently_and_prints_in_input_order(cli, api, tmp_path):
    import random

    def slow_then_answer(body):
        time.sleep(random.uniform(0, 0.05))  # replies finish out of order
        return Reply([f"<{body['prompt']}>"])

    api.respond = slow_then_answer
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt {i}"}) + "\n" for i in range(8)))
    r = cli("generate", "--file", prompts, "-m", "openai:tiny", "--batch-size", "4", "--json")
    assert r.exit_code == 0, r.stderr
    records = r.json_lines()
    assert [rec["id"] for rec in records] == [f"p{i}" for i in range(8)]
    assert [rec["text"] for rec in records] == [f"<prompt {i}>" for i in range(8)]
    text = cli("generate", "--file", prompts, "-m", "openai:tiny", "-b", "4")
    assert text.stdout == "".join(f"<prompt {i}>\n" for i in range(8))


def test_text_output_keeps_what_a_sequence_streamed_before_its_turn(cli, gpt2_dir, tmp_path):
    """Sequences generate side by side (a batch locally, requests in flight remotely): the text a later
    one streams while an earlier one is still printing must appear when its turn comes, not be lost."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p{i}", "max_new_tokens": 2 + 3 * i}) + "\n" for i in range(3)))
    args = ("generate", "--file", prompts, "-m", gpt2_dir, "--greedy")
    records = cli(*args, "--json").json_lines()
    text = cli(*args)
    assert text.exit_code == 0, text.stderr
    assert text.stdout == "".join(rec["text"] + "\n" for rec in records)


def test_api_base_option_and_default_model_variable(cli, api, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL")
    r = cli("generate", "Hi", "--api-base", api.base_url, env={"GPTCLI_MODEL": "openai:tiny"})
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "re: Hi!\n"


def test_closing_the_stream_keeps_what_was_shown_and_hangs_up(api):
    """Ctrl-C (or a consumer that stops) mid-reply: the sequences in flight are kept as "interrupted"
    with the text seen so far, and their connections are closed so the server can stop generating."""
    from gptcli.generation import Completion, Piece, Request, RunStats, stream_generate
    from gptcli.remote import open_remote
    from gptcli.sampling import SamplingParams

    api.respond = lambda body: Reply([f"{body['prompt']}-{i} " for i in range(50)])
    api.piece_delay_s = 0.05
    stats = RunStats()
    requests = [Request(prompt=p, params=SamplingParams(greedy=True)) for p in ("a", "b")]
    events = stream_generate(open_remote("openai:tiny"), requests, stats=stats)
    seen: dict[int, str] = {0: "", 1: ""}
    for event in events:
        assert isinstance(event, Piece) and not isinstance(event, Completion)
        seen[event.request] += event.text
        if seen[0].count(" ") >= 3 and seen[1]:
            break
    events.close()
    assert sorted(done.request for done in stats.unfinished) == [0, 1]
    for done in stats.unfinished:
        assert done.finish_reason == "interrupted" and done.text == seen[done.request]
        assert not done.usage_known
    deadline = time.monotonic() + 5
    while api.disconnects < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.disconnects == 2


# --------------------------------------------------------------------------- options that do not apply


@pytest.mark.parametrize(
    "args",
    [
        ["--device", "cpu"],
        ["--dtype", "float32"],
        ["--threads", "2"],
        ["--allow-pickle"],
        ["--trust-remote-code"],
        ["--truncate"],
    ],
)
def test_local_only_options_are_usage_errors_with_a_remote_model(cli, api, args):
    r = cli("generate", "Hi", "-m", "openai:tiny", *args)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: ") and args[0] in r.stderr
    assert r.stdout == "" and not api.requests


def test_local_settings_from_the_environment_do_not_stop_a_remote_model(cli, api):
    r = cli("generate", "Hi", "-m", "openai:tiny", env={"GPTCLI_DEVICE": "cpu", "GPTCLI_THREADS": "2"})
    assert r.exit_code == 0, r.stderr


def test_api_base_with_a_local_model_is_a_usage_error(cli, api, gpt2_dir):
    r = cli("generate", "Hi", "-m", gpt2_dir, "--api-base", "http://127.0.0.1:1/v1")
    assert r.exit_code == 2 and "--api-base applies to remote models" in r.stderr
    # From the environment (OPENAI_BASE_URL is set by the fixture) they are defaults, not errors.
    r = cli("generate", "Hi", "-m", gpt2_dir, "-t", "2", env={"GPTCLI_TIMEOUT": "30"})
    assert r.exit_code == 0, r.stderr


def test_commands_that_need_weights_say_a_remote_model_has_none(cli, tmp_path):
    (tmp_path / "data.txt").write_text("hello world\n")
    r = cli("finetune", tmp_path / "data.txt", "--model", "openai:tiny", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "--model openai:tiny is a model on a remote server" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "openai:"], "names no model"),
        (["-m", "openai:tiny", "--api-base", "ftp://host/v1"], "is not an http(s) URL"),
        (["-m", "openai:tiny", "--timeout", "0"], "--timeout must be more than 0"),
    ],
)
def test_bad_remote_settings_are_usage_errors(cli, api, args, message):
    r = cli("generate", "Hi", *args)
    assert r.exit_code == 2 and message in r.stderr


# --------------------------------------------------------------------------- errors


def _one_error(r) -> str:
    assert r.exit_code == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_unreachable_server(cli, api):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    line = _one_error(cli("generate", "Hi", "-m", "openai:tiny", "--api-base", url))
    assert f"cannot reach the server at {url}" in line and "--api-base" in line


def test_timeout(cli, api):
    api.delay_s = 2.0
    started = time.perf_counter()
    line = _one_error(cli("generate", "Hi", "-m", "openai:tiny", "--timeout", "0.3"))
    assert "did not answer within 0.3 s" in line and "--timeout" in line
    assert time.perf_counter() - started < 1.8  # one try, not a retry per timeout
    assert len(api.requests) == 1


def test_model_the_server_lacks(cli, api):
    line = _one_error(cli("generate", "Hi", "-m", "openai:gpt-9"))
    assert "has no model 'gpt-9'" in line and "404" in line and "/models" in line
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, "needs a valid API key"), (400, "rejected the request (HTTP 400"), (500, "failed (HTTP 500")],
)
def test_http_errors_are_one_line_without_retries(cli, api, status, expected):
    api.fail = [(status, {})]
    line = _one_error(cli("generate", "Hi", "-m", "openai:tiny"))
    assert expected in line
    assert len(api.requests) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_are_retried_then_succeed(cli, api, status):
    api.fail = [(status, {"retry-after": "0"}), (status, {})]
    r = cli("generate", "Hi", "-m", "openai:tiny")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "re: Hi!\n"
    assert len(api.requests) == 3


def test_retries_are_bounded(cli, api):
    from gptcli.remote import MAX_RETRIES

    api.fail = [(429, {"retry-after": "0"})] * 10
    line = _one_error(cli("generate", "Hi", "-m", "openai:tiny"))
    assert "rate-limiting" in line and "429" in line
    assert len(api.requests) == MAX_RETRIES + 1


def test_a_long_retry_after_is_not_waited_for(cli, api):
    api.fail = [(503, {"retry-after": "3600"})]
    started = time.perf_counter()
    line = _one_error(cli("generate", "Hi", "-m", "openai:tiny"))
    assert "overloaded" in line and time.perf_counter() - started < 5
    assert len(api.requests) == 1


# --------------------------------------------------------------------------- the key


def test_the_key_is_sent_to_the_server_and_nowhere_else(cli, api, tmp_path):
    env = {"OPENAI_API_KEY": KEY, "GPTCLI_DEBUG": ""}
    outputs = []
    r = cli("generate", "Hi", "-m", "openai:tiny", "--json", "--stats", env=env)
    assert r.exit_code == 0
    assert api.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    outputs.append(r)
    history = tmp_path / "chat.jsonl"
    outputs.append(cli("chat", "Hello", "-m", "openai:tiny", "--history", history, "--json", "--stats", env=env))
    assert outputs[-1].exit_code == 0
    # Servers that quote the key back in an error must not get it printed.
    api.error_message = f"Incorrect API key provided: {KEY}"
    for status in (401, 400, 500):
        api.fail = [(status, {})]
        outputs.append(cli("generate", "Hi", "-m", "openai:tiny", env=env))
        assert outputs[-1].exit_code == 1
    outputs.append(
        cli("generate", "Hi", "-m", "openai:tiny", "--api-base", f"http://127.0.0.1:{_free_port()}/v1", env=env)
    )
    for out in outputs:
        assert KEY not in out.stdout and KEY not in out.stderr
        assert KEY[3:12] not in out.stdout + out.stderr
    assert KEY not in history.read_text()


def test_credentials_in_the_url_are_not_printed(cli, api):
    url = f"http://user:pa55word@127.0.0.1:{_free_port()}/v1"
    r = cli("generate", "Hi", "-m", "openai:tiny", "--api-base", url)
    assert r.exit_code == 1 and "pa55word" not in r.stderr and "127.0.0.1" in r.stderr


# --------------------------------------------------------------------------- chat


def test_chat_sends_messages_and_keeps_history_as_messages_only(cli, api, tmp_path):
    history = tmp_path / "story.jsonl"
    first = cli("chat", "Hello", "-m", "openai:tiny", "--system", "Be brief.", "--history", history)
    assert first.exit_code == 0, first.stderr
    assert first.stdout == "re: Hello!\n"
    assert api.requests[-1].path == "/v1/chat/completions"
    assert api.requests[-1].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    second = cli("chat", "-m", "openai:tiny", "--history", history, stdin="And then?")
    assert second.exit_code == 0, second.stderr
    assert api.requests[-1].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "re: Hello!"},
        {"role": "user", "content": "And then?"},
    ]
    saved = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(m["role"], m["content"]) for m in saved] == [
        ("system", "Be brief."),
        ("user", "Hello"),
        ("assistant", "re: Hello!"),
        ("user", "And then?"),
        ("assistant", "re: And then?!"),
    ]
    assert all(set(m) <= {"role", "content", "interrupted"} for m in saved)


def test_scripted_chat_json_records(cli, api):
    api.respond = lambda body: Reply(["Fine", "."], finish_reason="stop", prompt_tokens=20, completion_tokens=3)
    r = cli("chat", "--jsonl", "--json", "-m", "openai:tiny",
            stdin='{"role": "user", "content": "How are you?"}\n{"role": "user", "content": "Sure?"}\n')  # fmt: skip
    assert r.exit_code == 0, r.stderr
    records = r.json_lines()
    assert [rec["content"] for rec in records] == ["Fine.", "Fine."]
    assert records[0]["finish_reason"] == "eos" and records[0]["model"] == "openai:tiny"
    assert (records[0]["prompt_tokens"], records[0]["completion_tokens"]) == (20, 3)
    assert len(api.requests[1].body["messages"]) == 3


def test_chat_session_keeps_the_conversation_when_the_server_refuses(api):
    from gptcli.chat.session import ChatSession
    from gptcli.errors import GptcliError
    from gptcli.remote import open_remote
    from gptcli.sampling import SamplingParams

    session = ChatSession(open_remote("openai:tiny"), SamplingParams(greedy=True))
    turn = session.send("Hi")
    assert turn.reply.content == "re: Hi!" and turn.completion is not None
    api.fail = [(400, {})]
    with pytest.raises(GptcliError, match="HTTP 400"):
        session.send("This one is too long")
    assert [m.content for m in session.conv.messages] == ["Hi", "re: Hi!"]
    assert session.send("Again").reply.content == "re: Again!"


def test_chat_repl_reply_and_error_go_on(api, capsys):
    from gptcli.chat.session import ChatSession
    from gptcli.cli.chat_repl import Repl
    from gptcli.remote import open_remote
    from gptcli.sampling import SamplingParams

    repl = Repl(ChatSession(open_remote("openai:tiny"), SamplingParams(greedy=True)))
    repl.reply("Hi")
    api.fail = [(500, {})]
    repl.reply("Boom")
    repl.reply("Again")
    out, err = capsys.readouterr()
    assert out == "re: Hi!\nre: Again!\n"
    assert "Error: the server at" in err and "HTTP 500" in err


# --------------------------------------------------------------------------- translate


def test_translate_asks_the_chat_endpoint_one_line_per_line(cli, api):
    api.respond = lambda body: Reply(["J'aime", " le thé.\n"], finish_reason="stop")
    r = cli("translate", "-m", "openai:tiny", "--to", "fr", "--from", "en", stdin="I like tea.\n\nGood night.\n")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "J'aime le thé.\n\nJ'aime le thé.\n"
    assert len(api.requests) == 2 and all(req.path == "/v1/chat/completions" for req in api.requests)
    sent = sorted(req.body["messages"][0]["content"] for req in api.requests)  # sent side by side
    assert [req.body["messages"][0]["role"] for req in api.requests] == ["user", "user"]
    assert all("English text into French" in content for content in sent)
    assert [content.split("\n")[-1] for content in sent] == ["Good night.", "I like tea."]
    assert api.requests[0].body["temperature"] == 0.0


def test_translate_stats_count_the_servers_tokens_or_say_unknown(cli, api):
    api.respond = lambda body: Reply(["Bonjour."], finish_reason="stop", prompt_tokens=30, completion_tokens=4)
    r = cli("translate", "Hello.", "-m", "openai:tiny", "--to", "fr", "--stats")
    assert r.exit_code == 0 and r.stdout == "Bonjour.\n"
    assert "30 prompt tokens, 4 generated" in r.stderr
    api.usage = False
    r = cli("translate", "Hello.", "-m", "openai:tiny", "--to", "fr", "--stats")
    assert r.exit_code == 0 and "token counts unknown" in r.stderr and "prompt tokens" not in r.stderr


def test_translate_refuses_beams_with_a_remote_model(cli, api):
    r = cli("translate", "Hi", "-m", "openai:tiny", "--to", "fr", "--num-beams", "2")
    assert r.exit_code == 2 and "--num-beams" in r.stderr and not api.requests


# --------------------------------------------------------------------------- eval


def _word_logprobs(bos: bool):
    """Scores like a server: words as tokens, each -1.0 nats after the first (which nothing predicts)."""
    import re

    def score(text: str) -> dict:
        words = [(m.group(), m.start()) for m in re.finditer(r"\s*\S+", text)]
        tokens = [w for w, _ in words]
        offsets = [o for _, o in words]
        values: list[float | None] = [None] + [-1.0] * (len(words) - 1)
        if bos:  # a BOS token in front: then every word is predicted
            tokens, offsets, values = ["<s>", *tokens], [0, *offsets], [None, *([-1.0] * len(words))]
        return {"tokens": tokens, "token_logprobs": values, "text_offset": offsets, "top_logprobs": None}

    return score


def test_eval_scores_with_the_servers_prompt_logprobs(cli, api, tmp_path):
    api.logprobs = _word_logprobs(bos=False)
    (tmp_path / "a.txt").write_text("one two three four")
    r = cli("eval", tmp_path / "a.txt", "-m", "openai:tiny", "--json")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["model"] == "openai:tiny" and rec["tokens"] == 3 and rec["nll"] == pytest.approx(1.0)
    assert rec["bytes"] == len(" two three four")  # the unscored first token's bytes are not counted
    body = api.requests[0].body
    assert (body["prompt"], body["echo"], body["logprobs"], body["max_tokens"]) == ("one two three four", True, 1, 0)


def test_eval_remote_documents_in_order_with_a_bos_server_and_max_tokens(cli, api, tmp_path):
    api.logprobs = _word_logprobs(bos=True)
    docs = tmp_path / "docs.jsonl"
    texts = ["alpha beta", "", "gamma delta epsilon", "zeta eta theta iota", "never sent"]
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    r = cli("eval", docs, "-m", "openai:tiny", "--per-doc", "--max-tokens", "7", "-b", "2")
    assert r.exit_code == 0, r.stderr
    records = r.json_lines()
    assert [(rec["id"], rec["tokens"]) for rec in records] == [("d0", 2), ("d1", 0), ("d2", 3), ("d3", 2)]
    assert records[0]["bytes"] == len("alpha beta")  # every word scored after the BOS token
    assert records[3]["truncated"] is True and records[3]["bytes"] == len("zeta eta")
    assert records[1]["skipped"] == "no token to score"


def test_eval_compares_a_local_and_a_remote_model_each_with_its_options(cli, api, tmp_path, gpt2_dir, monkeypatch):
    api.logprobs = _word_logprobs(bos=True)
    monkeypatch.delenv("OPENAI_BASE_URL")
    (tmp_path / "a.txt").write_text("one two three four")
    r = cli("eval", tmp_path / "a.txt", "-m", gpt2_dir, "-m", "openai:tiny", "--api-base", api.base_url,
            "--device", "cpu", "--stride", "2", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    local, remote = r.json_lines()
    assert local["device"] == "cpu" and local["stride"] == 2
    assert remote["device"] == "remote" and remote["tokens"] == 4


def test_eval_says_when_the_server_returns_no_prompt_logprobs(cli, api, tmp_path):
    (tmp_path / "a.txt").write_text("one two three")
    line = _one_error(cli("eval", tmp_path / "a.txt", "-m", "openai:tiny"))
    assert "does not return the log-probabilities of a prompt's tokens" in line


def test_eval_windows_need_a_local_model(cli, api, tmp_path):
    (tmp_path / "a.txt").write_text("one two three")
    r = cli("eval", tmp_path / "a.txt", "-m", "openai:tiny", "--context", "8")
    assert r.exit_code == 2 and "--context" in r.stderr and not api.requests
