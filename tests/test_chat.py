"""`gptcli chat` scripted mode, history files, prompt formats, KV-cache reuse and context trimming."""

from __future__ import annotations

import json
import os

import pytest
from conftest import cli_env
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


def test_piped_message_continues_history_and_appends(cli, gpt2_long, tmp_path):
    # The example, a message piped in: only the reply on stdout, the exchange appended.
    hist = tmp_path / "story.jsonl"
    original = (
        '{"role": "system", "content": "You tell stories."}\n'
        '{"role":"user","content":"Tell me about Max.", "name": "sam"}\n'
        '{"role": "assistant", "content": "Max was a dog."}\n'
    )
    hist.write_text(original)
    r = cli("chat", "--history", hist, "--model", gpt2_long, "-t", "6", "--seed", "3", stdin="and then?\n")
    assert r.exit_code == 0, r.stderr
    reply = r.stdout
    assert reply.endswith("\n") and reply.count("\n") >= 1
    text = hist.read_text()
    assert text.startswith(original)  # existing lines kept byte for byte
    added = [json.loads(line) for line in text[len(original) :].splitlines()]
    assert added[0] == {"role": "user", "content": "and then?"}
    assert added[1]["role"] == "assistant"
    assert reply == added[1]["content"] + "\n"
    assert r.stderr.strip() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["story.jsonl"]  # no temporary file left


def test_ctrl_c_in_a_script_keeps_the_partial_reply(gpt2_long, tmp_path):
    import signal
    import subprocess
    import sys

    hist = tmp_path / "h.jsonl"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptcli",
            "chat",
            "Tell me a story",
            "--history",
            str(hist),
            "--model",
            str(gpt2_long),
            "--greedy",
            "-t",
            "480",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
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
    path.write_text(
        '{"content": "hi",   "role": "user"}\n{"role": "assistant", "content": "hello"}'
    )  # no final newline
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
    stdin = (
        "\n".join(
            [
                json.dumps({"role": "system", "content": "Talk about dogs."}),
                json.dumps({"content": "Who is Max?"}),
                json.dumps({"role": "assistant", "content": "A dog."}),  # added as is: no reply for it
                json.dumps({"role": "user", "content": "And Tom?"}),
            ]
        )
        + "\n"
    )
    r = cli("chat", "--jsonl", "--json", "--model", gpt2_long, "--greedy", "-t", "5", stdin=stdin)
    assert r.exit_code == 0, r.stderr
    first, second = r.json_lines()
    tok = tokenizer_of(gpt2_long)
    assert first["prompt_tokens"] == n_tokens(tok, "Talk about dogs.\n\nUser: Who is Max?\nAssistant:")
    expected = (
        "Talk about dogs.\n\nUser: Who is Max?\nAssistant: "
        + first["content"]
        + "\nAssistant: A dog.\nUser: And Tom?\nAssistant:"
    )
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
    from gptcli.loading import open_model

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
        fresh = ChatSession(
            lm, params, Conversation("Dogs.", [Message(m.role, m.content) for m in kept.conv.messages[:-2]])
        )
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


def test_interrupt_inside_a_forward_pass_does_not_spoil_the_cache(gpt2_long, monkeypatch):
    # Ctrl-C can land between two layers: the first has written this step's keys, the second not.
    import torch

    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.kvcache import PromptCache
    from gptcli.sampling import SamplingParams

    lm = _open(gpt2_long)
    params = SamplingParams(greedy=True, max_new_tokens=4)
    ids = lm.tokenizer("Once upon a time there was a dog")["input_ids"]
    cache = PromptCache()
    list(stream_generate(lm, [Request(prompt_ids=ids, params=params)], prompt_cache=cache))
    # GPT-2 norms twice per layer: the third LayerNorm of a forward opens the second layer, in the
    # model's own forward and in the lean one alike.
    real_layer_norm, calls = torch.nn.functional.layer_norm, []

    def interrupted_at_the_second_layer(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_layer_norm(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "layer_norm", interrupted_at_the_second_layer)
    with pytest.raises(KeyboardInterrupt):
        list(stream_generate(lm, [Request(prompt_ids=ids + [5, 6, 7], params=params)], prompt_cache=cache))
    monkeypatch.setattr(torch.nn.functional, "layer_norm", real_layer_norm)

    def reply(c):
        events = stream_generate(lm, [Request(prompt_ids=ids + [5, 6, 7, 8], params=params)], prompt_cache=c)
        return [e for e in events if isinstance(e, Completion)][0].token_ids

    assert reply(cache) == reply(None)


# --------------------------------------------------------------------------- history files: the user's lines


def _lines(path):
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_history_append_keeps_system_lines_anywhere_and_extra_keys(cli, gpt2_dir, tmp_path):
    hist = tmp_path / "h.jsonl"
    original = (
        '{"role": "user", "content": "Hi", "name": "sam", "ts": 1}\n'
        '{"role": "system", "content": "Be short.", "id": "s1"}\n'
        '{"role": "assistant", "content": "Hello."}\n'
        "\n"
        '{"role":"system","content":"Be kind."}\n'
    )
    hist.write_text(original, encoding="utf-8")
    r = cli("chat", "more", "--history", hist, "--model", gpt2_dir, "-t", "3", stdin="")
    assert r.exit_code == 0, r.stderr
    text = hist.read_text(encoding="utf-8")
    assert text.startswith(original)  # appended: not one byte of the user's lines changed
    added = [json.loads(line) for line in text[len(original) :].splitlines()]
    assert [m["role"] for m in added] == ["user", "assistant"] and added[0]["content"] == "more"


def test_history_rewrite_keeps_the_lines_that_still_belong(tmp_path):
    from gptcli.chat.history import HistoryFile

    hist = tmp_path / "h.jsonl"
    lines = [
        '{"role": "system", "content": "Old.", "id": "s0"}',
        '{"content": "Hi",   "role": "user", "name": "sam"}',
        '{"role": "system", "content": "Be short.", "id": "s1"}',
        '{"role": "assistant", "content": "Hello.", "score": 0.5}',
        '{"role": "user", "content": "Bye"}',
        '{"role": "assistant", "content": "Bye."}',
    ]
    hist.write_text("\n".join(lines) + "\n", encoding="utf-8")
    h = HistoryFile(hist)
    conv = h.load()
    assert conv.system == "Be short."
    del conv.messages[2:]  # /undo
    h.sync(conv)
    assert _lines(hist) == lines[:4]  # the dropped exchange goes; every other line stays as it was
    conv.system = "Be brief."  # --system or /system: the line that set it changes, its keys stay
    h.sync(conv)
    got = _lines(hist)
    assert got[:2] == lines[:2] and got[3] == lines[3]
    assert json.loads(got[2]) == {"role": "system", "content": "Be brief.", "id": "s1"}
    conv.messages.clear()  # /reset keeps the system prompt
    h.sync(conv)
    assert _lines(hist) == [lines[0], got[2]]
    conv.system = None  # /system -
    h.sync(conv)
    assert hist.read_text() == ""


def test_history_line_separators_survive_the_next_turn(cli, gpt2_dir, tmp_path):
    # U+2028/U+2029/U+0085 are valid in a JSON string; str.splitlines() splits at them.
    hist = tmp_path / "h.jsonl"
    hist.write_text(
        '{"role": "user", "content": "raw \u2028 kept"}\n{"role": "assistant", "content": "ok"}\n', encoding="utf-8"
    )
    for message in ["one\u2028two", "three\u2029four\u0085five"]:
        r = cli("chat", message, "--history", hist, "--model", gpt2_dir, "-t", "3", stdin="")
        assert r.exit_code == 0, r.stderr
    lines = _lines(hist)
    assert len(lines) == 6
    records = [json.loads(line) for line in lines]
    assert [m["content"] for m in records[::2]] == ["raw \u2028 kept", "one\u2028two", "three\u2029four\u0085five"]
    assert "\u2028" in lines[0]  # the user's own line is kept as it was
    written = "\n".join(lines[2:])  # gptcli writes them escaped, so splitlines-based readers cope too
    assert not any(c in written for c in "\u2028\u2029\u0085")
    assert len(hist.read_text(encoding="utf-8")[len(lines[0]) + 1 :].splitlines()) == 5


def test_json_line_is_strict_json_on_one_line():
    from gptcli.chat.history import json_line

    assert json_line({"content": "a\u2028b\u2029c\u0085d é"}) == '{"content": "a\\u2028b\\u2029c\\u0085d é"}'
    text = json_line({"big": float("inf"), "neg": [float("-inf")], "nan": float("nan"), "s": "inf"})
    assert text == '{"big": 1e999, "neg": [-1e999], "nan": null, "s": "inf"}'

    def strict(token):
        raise ValueError(token)

    assert json.loads(text, parse_constant=strict)["big"] == float("inf")


def test_history_rewrite_keeps_huge_numbers_as_json(tmp_path):
    from gptcli.chat.history import HistoryFile

    hist = tmp_path / "h.jsonl"
    big = '{"role": "user", "content": "hi", "score": 1e999}'
    hist.write_text(
        big + '\n{"role": "assistant", "content": "yo", "score": -1E400}\n{"role": "user", "content": "x"}\n'
    )
    h = HistoryFile(hist)
    conv = h.load()
    conv.system = "New."  # forces a rewrite
    h.sync(conv)
    text = hist.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert _lines(hist) == [
        '{"role": "system", "content": "New."}',
        big,
        '{"role": "assistant", "content": "yo", "score": -1E400}',
        '{"role": "user", "content": "x"}',
    ]


def test_symlinked_history_is_written_through(cli, gpt2_dir, tmp_path):
    target = tmp_path / "real" / "h.jsonl"
    target.parent.mkdir()
    target.write_text('{"role": "user", "content": "Hi"}\n{"role": "assistant", "content": "Yo"}\n')
    link = tmp_path / "h.jsonl"
    link.symlink_to(target)
    r = cli("chat", "more", "--history", link, "--model", gpt2_dir, "-t", "3", stdin="")  # an append
    assert r.exit_code == 0, r.stderr
    r = cli(
        "chat", "again", "--system", "New.", "--history", link, "--model", gpt2_dir, "-t", "3", stdin=""
    )  # a rewrite
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and link.resolve() == target
    assert [json.loads(x)["content"] for x in _lines(target)][:4] == ["New.", "Hi", "Yo", "more"]
    assert len(_lines(target)) == 7
    assert sorted(p.name for p in target.parent.iterdir()) == ["h.jsonl"]


def test_history_writers_keep_each_others_exchanges(tmp_path):
    # Two chats on one file, their turns interleaved: the second must not overwrite the first's
    # exchange (lost before: it rewrote the file from what it had read at start).
    from gptcli.chat.history import HistoryFile, Message

    path = tmp_path / "h.jsonl"
    a, b = HistoryFile(path), HistoryFile(path)
    conv_a, conv_b = a.load(), b.load()
    conv_b.system = "B's system."
    for conv, h, who in [(conv_a, a, "a"), (conv_b, b, "b")]:
        conv.messages += [Message("user", f"{who}1"), Message("assistant", f"reply {who}1")]
        h.sync(conv)
    conv_a.messages += [Message("user", "a2"), Message("assistant", "reply a2")]
    a.sync(conv_a)
    del conv_b.messages[:]  # b's /reset drops only b's own exchange
    b.sync(conv_b)
    assert [json.loads(x)["content"] for x in _lines(path)] == ["B's system.", "a1", "reply a1", "a2", "reply a2"]


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are POSIX flock")
def test_history_writes_wait_for_the_lock(tmp_path):
    import fcntl
    import threading
    import time

    from gptcli.chat.history import HistoryFile, Message

    path = tmp_path / "h.jsonl"
    path.write_text('{"role": "user", "content": "hi"}\n')
    h = HistoryFile(path)
    conv = h.load()
    conv.messages.append(Message("assistant", "yo"))
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer is busy with the file
        writer = threading.Thread(target=h.sync, args=(conv,))
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive() and len(_lines(path)) == 1
    writer.join(10)  # closing the file released the lock
    assert [json.loads(x)["content"] for x in _lines(path)] == ["hi", "yo"]


def test_concurrent_chat_processes_keep_every_exchange(gpt2_dir, tmp_path):
    import subprocess
    import sys

    for trial in range(1):  # lost 4 of 4 trials before; each trial costs two process starts
        hist = tmp_path / f"h{trial}.jsonl"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gptcli",
                    "chat",
                    f"message {i}",
                    "--history",
                    str(hist),
                    "--model",
                    str(gpt2_dir),
                    "-t",
                    "2",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=cli_env(),
            )
            for i in range(2)
        ]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        records = [json.loads(x) for x in _lines(hist)]
        assert sorted(m["content"] for m in records if m["role"] == "user") == ["message 0", "message 1"]
        assert [m["role"] for m in records].count("assistant") == 2


def test_history_in_a_missing_folder_fails_before_loading(cli, tmp_path):
    missing = tmp_path / "nonexistent" / "dir"
    r = cli("chat", "hi", "--history", missing / "h.jsonl", "--model", tmp_path / "no-model", stdin="")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1
    assert str(missing) in r.stderr and "does not exist" in r.stderr


# --------------------------------------------------------------------------- /set


@pytest.fixture
def repl(gpt2_dir):
    from gptcli.chat.session import ChatSession
    from gptcli.cli.chat_repl import Repl
    from gptcli.sampling import SamplingParams

    return Repl(ChatSession(_open(gpt2_dir), SamplingParams(temperature=0.3, top_k=5, greedy=True)))


def test_set_without_a_value_restores_the_default(repl, capsys):
    from gptcli.sampling import SamplingParams

    default = SamplingParams()
    repl.command("/set temperature")
    repl.command("/set top-k -")
    repl.command("/set greedy")
    p = repl.session.params
    assert (p.temperature, p.top_k, p.greedy) == (default.temperature, default.top_k, default.greedy)
    assert f"temperature = {default.temperature!r}" in capsys.readouterr().err


def test_set_rejects_bad_booleans_and_names_only_chat_options(repl):
    from gptcli.errors import UsageError

    with pytest.raises(UsageError, match="greedy needs true or false"):
        repl.command("/set greedy maybe")
    assert repl.session.params.greedy is True  # unchanged
    repl.command("/set greedy off")
    assert repl.session.params.greedy is False
    with pytest.raises(UsageError) as bad:
        repl.command("/set beams 2")
    assert "temperature" in bad.value.hint and "num_beams" not in bad.value.hint


# --------------------------------------------------------------------------- trimming a long history


def test_trimming_a_long_history_tokenizes_each_message_about_once(gpt2_long):
    from gptcli.chat.history import Conversation, Message
    from gptcli.chat.session import ChatSession
    from gptcli.sampling import SamplingParams

    lm = _open(gpt2_long)  # context 512
    msgs = []
    for i in range(300):
        msgs += [Message("user", f"p{i}"), Message("assistant", f"t{i}")]
    session = ChatSession(lm, SamplingParams(greedy=True, max_new_tokens=4), Conversation("Dogs.", msgs))
    msgs.append(Message("user", "sea"))
    tokenized = []
    ids_of = session.format.ids
    session.format.ids = lambda system, window: tokenized.append(len(window)) or ids_of(system, window)
    ids = session.prompt_ids()
    # Before: every dropped exchange re-tokenized the rest of the conversation (~90,000 messages here).
    assert sum(tokenized) < 3 * len(msgs)
    # Still the exact window: the earliest exchange whose prompt leaves half the context free.
    start, target = session.window_start, 512 - 4 - 256
    assert ids == ids_of("Dogs.", msgs[start:]) and len(ids) <= target
    assert start < len(msgs) - 3  # a few exchanges fit
    assert msgs[start].role == "user" and len(ids_of("Dogs.", msgs[start - 2 :])) > target


def test_stats_go_to_stderr_after_each_reply(cli, gpt2_dir):
    # The CLI hands its stats formatter to the scripted chat: one line per reply, on stderr.
    r = cli("chat", "Hi there", "--model", gpt2_dir, "--greedy", "-t", "4", "--stats", stdin="")
    assert r.exit_code == 0, r.stderr
    assert "tokens/s" not in r.stdout and r.stdout.endswith("\n")
    loaded, turn = r.stderr.splitlines()
    assert loaded.startswith("Loaded ") and " on cpu " in loaded
    assert turn.startswith("prompt ") and "tokens/s" in turn and "time to first token" in turn
