"""`gptcli chat` scripted mode, history files, prompt formats, KV-cache reuse and context trimming."""

from __future__ import annotations

import json
import os

import pytest
from conftest import cli_env, run_cli
from tiny import build_model

# A template like many instruction models': optional system prompt, then strictly user/assistant turns.
TEMPLATE = (
    "{% if messages[0].role == 'system' %}{% set turns = messages[1:] %}<|system|>{{ messages[0].content }}\n"
    "{% else %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}{% endif %}"
    "<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def tpl_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny-llama-chat"), "llama", context=256, chat_template=TEMPLATE)


@pytest.fixture(scope="session")
def gpt2_long(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("tiny-gpt2-long"), "gpt2", context=512)


@pytest.fixture(scope="session")
def tokenizer_of():
    from transformers import AutoTokenizer

    cache = {}

    def get(folder):
        if folder not in cache:
            cache[folder] = AutoTokenizer.from_pretrained(folder)
        return cache[folder]

    return get


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- prompt formats


def test_plain_fallback_is_the_documented_format(cli, gpt2_dir, tokenizer_of):
    # A model without a chat template continues "User: ...\nAssistant:" and stops before "\nUser:".
    r = cli("chat", "Hi there", "--model", gpt2_dir, "--greedy", "-t", "8", "--json", stdin="")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["role"] == "assistant"
    assert {"content", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "seed"} <= set(rec)
    prompt = "User: Hi there\nAssistant:"
    assert rec["prompt_tokens"] == n_tokens(tokenizer_of(gpt2_dir), prompt)
    g = cli("generate", prompt, "--model", gpt2_dir, "--greedy", "-t", "8", "--stop", "\nUser:", "--json", stdin="")
    assert g.exit_code == 0, g.stderr
    assert rec["content"] == g.json_lines()[0]["text"].strip()


def test_chat_template_path(cli, tpl_dir, tokenizer_of):
    r = cli("chat", "Hi", "--system", "Be kind.", "--model", tpl_dir, "--greedy", "-t", "6", "--json", stdin="")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    prompt = "<|system|>Be kind.\n<|user|>Hi\n<|assistant|>"  # TEMPLATE rendered by hand
    assert rec["prompt_tokens"] == n_tokens(tokenizer_of(tpl_dir), prompt)
    g = cli("generate", prompt, "--model", tpl_dir, "--greedy", "-t", "6", "--json", stdin="")
    assert rec["content"] == g.json_lines()[0]["text"].strip()


def test_template_rejecting_the_roles_is_a_clear_error(cli, tpl_dir, tmp_path):
    hist = tmp_path / "h.jsonl"
    hist.write_text('{"role": "user", "content": "one"}\n{"role": "user", "content": "two"}\n')
    before = hist.read_bytes()
    r = cli("chat", "three", "--history", hist, "--model", tpl_dir, "-t", "4", stdin="")
    assert r.exit_code == 1
    assert r.stdout == ""
    assert "Error: the model's chat template rejected the conversation" in r.stderr
    assert "must alternate" in r.stderr
    assert hist.read_bytes() == before


# --------------------------------------------------------------------------- history files


def test_piped_message_continues_history_and_appends(gpt2_long, tmp_path):
    # The example, through a real pipe: only the reply on stdout, the exchange appended.
    hist = tmp_path / "story.jsonl"
    original = (
        '{"role": "system", "content": "You tell stories."}\n'
        '{"role":"user","content":"Tell me about Max.", "name": "sam"}\n'
        '{"role": "assistant", "content": "Max was a dog."}\n'
    )
    hist.write_text(original)
    r = run_cli("chat", "--history", hist, "--model", gpt2_long, "-t", "6", "--seed", "3", input="and then?\n")
    assert r.returncode == 0, r.stderr
    reply = r.stdout.decode()
    assert reply.endswith("\n") and reply.count("\n") >= 1
    text = hist.read_text()
    assert text.startswith(original)  # existing lines kept byte for byte
    added = [json.loads(line) for line in text[len(original):].splitlines()]
    assert added[0] == {"role": "user", "content": "and then?"}
    assert added[1]["role"] == "assistant"
    assert reply == added[1]["content"] + "\n"
    assert r.stderr.decode().strip() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["story.jsonl"]  # no temporary file left


def test_ctrl_c_in_a_script_keeps_the_partial_reply(gpt2_long, tmp_path):
    import signal
    import subprocess
    import sys

    hist = tmp_path / "h.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "gptcli", "chat", "Tell me a story", "--history", str(hist),
                          "--model", str(gpt2_long), "--greedy", "-t", "480"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        head = os.read(p.stdout.fileno(), 64)  # unbuffered: the reply is streaming
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    records = [json.loads(line) for line in hist.read_text().splitlines()]
    assert records[-1]["interrupted"] is True and records[-1]["role"] == "assistant"
    assert (head + out).decode() == records[-1]["content"] + "\n"  # what was printed is what was kept


def test_history_created_when_missing(cli, gpt2_dir, tmp_path):
    hist = tmp_path / "new.jsonl"
    r = cli("chat", "Hello", "--history", hist, "--system", "Be short.", "--model", gpt2_dir, "-t", "3", stdin="")
    assert r.exit_code == 0, r.stderr
    records = [json.loads(line) for line in hist.read_text().splitlines()]
    assert [m["role"] for m in records] == ["system", "user", "assistant"]
    assert records[2]["content"] + "\n" == r.stdout


@pytest.mark.parametrize(
    "lines, bad_line, words",
    [
        (['{"role": "user", "content": "hi"}', '{"role": "assistant", "content": "yo"', ""], 2, "not valid JSON"),
        (['{"role": "user", "content": "hi"}', "", '{"role": "bot", "content": "yo"}'], 3, '"bot"'),
        (['{"role": "user"}'], 1, "content"),
    ],
)
def test_malformed_history_names_the_line_and_is_not_touched(cli, tmp_path, lines, bad_line, words):
    hist = tmp_path / "h.jsonl"
    hist.write_text("\n".join(lines) + "\n")
    before = hist.read_bytes()
    # The history is read before any model loads: a missing model must not be what fails.
    r = cli("chat", "more", "--history", hist, "--model", tmp_path / "no-model", stdin="")
    assert r.exit_code == 1
    assert f"line {bad_line}" in r.stderr and words in r.stderr
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1
    assert hist.read_bytes() == before


def test_history_file_appends_and_rewrites_atomically(tmp_path):
    from gptcli.chat.history import HistoryFile, Message

    path = tmp_path / "h.jsonl"
    path.write_text('{"content": "hi",   "role": "user"}\n{"role": "assistant", "content": "hello"}')  # no final newline
    h = HistoryFile(path)
    conv = h.load()
    conv.messages += [Message("user", "again"), Message("assistant", "part", interrupted=True)]
    h.sync(conv)
    lines = path.read_text().splitlines()
    assert lines[0] == '{"content": "hi",   "role": "user"}'  # appended, not rewritten
    assert json.loads(lines[3]) == {"role": "assistant", "content": "part", "interrupted": True}
    del conv.messages[2:]  # /undo
    h.sync(conv)
    assert [json.loads(x)["content"] for x in path.read_text().splitlines()] == ["hi", "hello"]
    assert os.listdir(tmp_path) == ["h.jsonl"]


# --------------------------------------------------------------------------- scripted inputs


def test_jsonl_messages_get_one_reply_each(cli, gpt2_long, tokenizer_of):
    stdin = "\n".join([
        json.dumps({"role": "system", "content": "Talk about dogs."}),
        json.dumps({"content": "Who is Max?"}),
        json.dumps({"role": "assistant", "content": "A dog."}),  # added as is: no reply for it
        json.dumps({"role": "user", "content": "And Tom?"}),
    ]) + "\n"
    r = cli("chat", "--jsonl", "--json", "--model", gpt2_long, "--greedy", "-t", "5", stdin=stdin)
    assert r.exit_code == 0, r.stderr
    first, second = r.json_lines()
    tok = tokenizer_of(gpt2_long)
    assert first["prompt_tokens"] == n_tokens(tok, "Talk about dogs.\n\nUser: Who is Max?\nAssistant:")
    expected = ("Talk about dogs.\n\nUser: Who is Max?\nAssistant: " + first["content"]
                + "\nAssistant: A dog.\nUser: And Tom?\nAssistant:")
    assert second["prompt_tokens"] == n_tokens(tok, expected)
    assert second["cached_tokens"] > 0  # the second turn reused the first turn's cache


def test_text_mode_prints_one_reply_per_message(cli, gpt2_long):
    stdin = '{"content": "one"}\n{"content": "two"}\n'
    r = cli("chat", "--jsonl", "--model", gpt2_long, "--greedy", "-t", "4", stdin=stdin)
    j = cli("chat", "--jsonl", "--json", "--model", gpt2_long, "--greedy", "-t", "4", stdin=stdin)
    assert r.exit_code == 0 and j.exit_code == 0
    assert r.stdout == "".join(rec["content"] + "\n" for rec in j.json_lines())


@pytest.mark.parametrize(
    "args, stdin, words",
    [
        (["--temperature", "-1", "hi"], "", "--temperature"),
        (["--jsonl", "hi"], '{"content": "x"}\n', "not both"),
        (["--jsonl"], '{"role": "system", "content": "x"}\n', "no user message"),
        (["--json"], None, "scripted use"),  # stdin is a terminal
        ([], "   \n", "empty"),
    ],
)
def test_usage_errors_before_loading(cli, tmp_path, args, stdin, words):
    r = cli("chat", *args, "--model", tmp_path / "no-model", stdin=stdin)
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith("Error: ") and words in r.stderr
    assert r.stdout == ""


# --------------------------------------------------------------------------- the core: cache and context


def _open(folder):
    from gptcli.session import open_model

    return open_model(str(folder), device="cpu", dtype="float32")[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama-template"])
def test_kv_cache_reuse_gives_the_same_replies(arch, gpt2_long, tpl_dir):
    from gptcli.chat.history import Conversation, Message
    from gptcli.chat.session import ChatSession
    from gptcli.sampling import SamplingParams

    lm = _open(gpt2_long if arch == "gpt2" else tpl_dir)
    params = SamplingParams(greedy=True, max_new_tokens=5)
    kept = ChatSession(lm, params, Conversation(system="Dogs."))
    previous_prompt = 0
    for text in ["Who is Max?", "And Tom?", "Where is the sea?"]:
        turn = kept.send(text)
        # The same conversation from scratch, without any cache.
        fresh = ChatSession(lm, params, Conversation("Dogs.", [Message(m.role, m.content) for m in kept.conv.messages[:-2]]))
        again = fresh.send(text)
        assert turn.reply.content == again.reply.content
        assert turn.completion.prompt_tokens == again.completion.prompt_tokens
        assert again.completion.cached_tokens == 0
        # At least the whole previous prompt came from the cache (a random model's reply may
        # re-tokenize differently, so the reply itself may be fed again).
        assert turn.completion.cached_tokens >= previous_prompt
        previous_prompt = turn.completion.prompt_tokens


def test_long_conversation_drops_oldest_exchanges_keeps_system(gpt2_dir, tmp_path):
    from gptcli.chat.history import HistoryFile
    from gptcli.chat.session import ChatSession
    from gptcli.sampling import SamplingParams

    lm = _open(gpt2_dir)  # context 64
    notices = []
    hist = HistoryFile(tmp_path / "h.jsonl")
    session = ChatSession(lm, SamplingParams(greedy=True, max_new_tokens=4), hist.load(), hist, notice=notices.append)
    session.set_system("Dogs.")
    system_ids = lm.tokenizer("Dogs.\n\n")["input_ids"]
    for i in range(8):
        turn = session.send(f"Tell me about the park {i}.")
        assert turn.completion.prompt_tokens <= 64 - 4
    ids = session.prompt_ids()
    assert ids[: len(system_ids)] == system_ids
    assert notices and "context (64 tokens)" in notices[0]
    assert len(notices) < 8  # dropped exchanges stay dropped: no notice (and cache miss) every turn
    # The file keeps the whole conversation.
    assert len(hist.path.read_text().splitlines()) == 1 + 2 * 8
    with pytest.raises(Exception, match="too long"):
        session.send("park " * 80)
    assert len(session.conv.messages) == 16  # the rejected message was not kept


def test_cache_follows_interrupts_and_undo(gpt2_long):
    from gptcli.chat.history import Conversation, Message
    from gptcli.chat.session import ChatSession
    from gptcli.sampling import SamplingParams

    lm = _open(gpt2_long)
    params = SamplingParams(greedy=True, max_new_tokens=6)
    session = ChatSession(lm, params, Conversation())
    session.send("Who is Max?")

    def ctrl_c(text):
        raise KeyboardInterrupt

    cut = session.send("And Tom?", on_text=ctrl_c)
    assert cut.interrupted and cut.completion is None
    assert [m.interrupted for m in session.conv.messages] == [False, False, False, True]
    assert session.undo() and len(session.conv.messages) == 2
    turn = session.send("Where is the sea?")
    assert turn.completion.cached_tokens > 0  # the shared start still came from the cache
    fresh = ChatSession(lm, params, Conversation(None, [Message(m.role, m.content) for m in session.conv.messages[:2]]))
    assert fresh.send("Where is the sea?").reply.content == turn.reply.content


def test_interrupt_inside_a_forward_pass_does_not_spoil_the_cache(gpt2_long):
    # Ctrl-C can land between two layers: the first has written this step's keys, the second not.
    from gptcli.generation import Completion, PromptCache, Request, stream_generate
    from gptcli.sampling import SamplingParams

    lm = _open(gpt2_long)
    params = SamplingParams(greedy=True, max_new_tokens=4)
    ids = lm.tokenizer("Once upon a time there was a dog")["input_ids"]
    armed = []

    def hook(module, args):
        if armed:
            armed.clear()
            raise KeyboardInterrupt

    handle = lm.model.transformer.h[1].register_forward_pre_hook(hook)
    cache = PromptCache()
    try:
        list(stream_generate(lm, [Request(prompt_ids=ids, params=params)], prompt_cache=cache))
        armed.append(True)
        with pytest.raises(KeyboardInterrupt):
            list(stream_generate(lm, [Request(prompt_ids=ids + [5, 6, 7], params=params)], prompt_cache=cache))
    finally:
        handle.remove()

    def reply(c):
        events = stream_generate(lm, [Request(prompt_ids=ids + [5, 6, 7, 8], params=params)], prompt_cache=c)
        return [e for e in events if isinstance(e, Completion)][0].token_ids

    assert reply(cache) == reply(None)
