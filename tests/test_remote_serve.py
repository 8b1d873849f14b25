"""Round trips: `gptcli generate/chat/translate/eval --model openai:NAME` against a `gptcli serve` of a
tiny model started here give what the same commands give with the model loaded locally."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

# A chat template, so chat and translate use the same messages-to-prompt path locally and on the server.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPTS = ["Once upon a time", "Max liked to run", "The sun was warm.", "Café", "One day", "Tom and Sue went"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import build_model

    return build_model(tmp_path_factory.mktemp("remote-serve"), "gpt2", context=512, chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def served(model_dir):
    """`gptcli serve` of the tiny model on 127.0.0.1, in a thread: yields (model name, base URL)."""
    from gptcli.loading import open_model
    from gptcli.server import ServeConfig, Server, listen

    lm = open_model(str(model_dir))[0]
    sock = listen("127.0.0.1", 0)
    server = Server(lm, ServeConfig(model_id="tiny-chat", max_concurrency=8, max_queue=64), sock=sock)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started():
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield "openai:tiny-chat", f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.stop()
    thread.join(15)


def _json(cli, *args, stdin=None):
    r = cli(*args, "--json", stdin=stdin)
    assert r.exit_code == 0, r.stderr
    return r.json_lines()


def test_generate_greedy_and_seeded_samples_equal_local(cli, model_dir, served, tmp_path):
    name, url = served
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    local = _json(cli, "generate", "--file", prompts, "-m", model_dir, "--greedy", "-t", "16")
    remote = _json(cli, "generate", "--file", prompts, "-m", name, "--api-base", url, "--greedy", "-t", "16")
    assert [r["text"] for r in remote] == [r["text"] for r in local]
    assert [r["prompt_tokens"] for r in remote] == [r["prompt_tokens"] for r in local]
    assert [r["completion_tokens"] for r in remote] == [r["completion_tokens"] for r in local]
    # Sampled: sample n uses seed + n on both sides, so -n 3 gives the same three texts.
    args = ("generate", PROMPTS[0], "-n", "3", "--seed", "11", "-t", "12", "--temperature", "0.9", "--top-k", "20")
    local = _json(cli, *args, "-m", model_dir)
    remote = _json(cli, *args, "-m", name, "--api-base", url)
    assert [r["text"] for r in remote] == [r["text"] for r in local]
    assert len({r["text"] for r in local}) > 1  # the samples differ: the seeds reached the server


def test_generate_text_and_stop_strings_equal_local(cli, model_dir, served):
    name, url = served
    args = ("generate", "Once upon a time", "--greedy", "-t", "40", "--stop", "e")
    local = cli(*args, "-m", model_dir)
    remote = cli(*args, "-m", name, "--api-base", url)
    assert remote.exit_code == local.exit_code == 0, remote.stderr
    assert remote.stdout == local.stdout
    assert "e" not in remote.stdout


def test_chat_equals_local(cli, model_dir, served, tmp_path):
    name, url = served
    replies = {}
    for where, args in (("local", ["-m", model_dir]), ("remote", ["-m", name, "--api-base", url])):
        history = tmp_path / f"{where}.jsonl"
        first = cli("chat", "Hello there", "--system", "Be kind.", "--greedy", "-t", "12", "--history", history, *args)
        second = cli("chat", "And then?", "--greedy", "-t", "12", "--history", history, *args)
        assert first.exit_code == second.exit_code == 0, first.stderr + second.stderr
        replies[where] = (first.stdout, second.stdout, history.read_text())
    assert replies["remote"] == replies["local"]


def test_translate_equals_local(cli, model_dir, served):
    name, url = served
    lines = "I like tea.\n\nThe cat sleeps.\n"
    args = ("translate", "--to", "fr", "--from", "en", "-t", "10")
    local = cli(*args, "-m", model_dir, stdin=lines)
    remote = cli(*args, "-m", name, "--api-base", url, stdin=lines)
    assert remote.exit_code == local.exit_code == 0, remote.stderr
    assert remote.stdout == local.stdout
    assert len(remote.stdout.split("\n")) == 4  # one line out per line in


def test_eval_through_the_server_equals_local(cli, model_dir, served, tmp_path):
    """The server scores what it is sent: with the end-of-text token in front (the token local eval puts
    before each document), it scores the same tokens with the same log-probabilities."""
    from tiny import EOT

    name, url = served
    text = "The sun was warm and the sky was blue. Tom and Sue went to the sea."
    (tmp_path / "local.txt").write_text(text)
    (tmp_path / "remote.jsonl").write_text(json.dumps({"text": EOT + text}) + "\n")
    (local,) = _json(cli, "eval", tmp_path / "local.txt", "-m", model_dir, "--dtype", "float32")
    (remote,) = _json(cli, "eval", tmp_path / "remote.jsonl", "-m", name, "--api-base", url)
    assert remote["tokens"] == local["tokens"]
    assert remote["nll"] == pytest.approx(local["nll"], rel=1e-4)
    assert remote["model"] == name and remote["device"] == "remote"
