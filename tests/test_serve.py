"""`gptcli serve`: the official openai client (and plain HTTP) against the server on 127.0.0.1.

One tiny model with a 1,024-token context serves every test: long generations take seconds,
so a disconnect or a SIGTERM reliably lands while tokens are still being generated.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import cli_env

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

PROMPTS = [
    "Once upon a time",
    "Max liked to run",
    "The sun was warm and the sky was blue.",
    "One day",
    "They found a big red shell",
    "Mom said",
    "Tom and Sue went",
    "Café",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny import build_model

    return build_model(tmp_path_factory.mktemp("serve-gpt2"), "gpt2", context=1024)


@pytest.fixture(scope="module")
def lm(model_dir):
    from gptcli.loading import open_model

    return open_model(str(model_dir))[0]


class Running:
    """A server in a thread of this process, on a free port of 127.0.0.1."""

    def __init__(self, lm, **config):
        from gptcli.server import ServeConfig, Server, listen

        sock = listen("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.model = lm.name
        self.server = Server(lm, ServeConfig(model_id=lm.name, **config), sock=sock)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started():
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "unused"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def close(self):
        self.server.stop()
        self.thread.join(15)


@pytest.fixture(scope="module")
def server(lm):
    running = Running(lm, max_concurrency=8, max_queue=64)
    yield running
    running.close()


def _generate_json(cli, model_dir, *args, prompts):
    """`gptcli generate --json` over a file of prompts, in-process: the reference outputs."""
    stdin = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)
    r = cli("generate", "--model", model_dir, "--file", "-", "--json", *args, stdin=stdin)
    assert r.exit_code == 0, r.stderr
    return r.json_lines()


def test_greedy_completions_equal_generate_alone_and_eight_at_once(server, cli, model_dir):
    want = _generate_json(cli, model_dir, "--greedy", "-t", "12", prompts=PROMPTS)
    client = server.client()
    assert [m.id for m in client.models.list().data] == [server.model]
    one = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert one.choices[0].text == want[0]["text"]
    assert one.choices[0].finish_reason == ("length" if want[0]["finish_reason"] == "length" else "stop")
    assert one.usage.prompt_tokens == want[0]["prompt_tokens"]
    assert one.usage.completion_tokens == want[0]["completion_tokens"]

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as aclient:
            return await asyncio.gather(
                *(
                    aclient.completions.create(model=server.model, prompt=p, max_tokens=12, temperature=0)
                    for p in PROMPTS
                )
            )

    results = asyncio.run(all_at_once())
    assert [r.choices[0].text for r in results] == [w["text"] for w in want]
    # A list of prompts in one request: one choice per prompt, in order.
    many = client.completions.create(model=server.model, prompt=PROMPTS[:3], max_tokens=12, temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.text for c in many.choices] == [w["text"] for w in want[:3]]


def test_n_seeds_and_streaming_match_generate(server, cli, model_dir):
    want = _generate_json(cli, model_dir, "-n", "3", "--seed", "5", "-t", "10", prompts=PROMPTS[:1])
    client = server.client()
    got = client.completions.create(model=server.model, prompt=PROMPTS[0], max_tokens=10, n=3, seed=5)
    assert [c.text for c in got.choices] == [w["text"] for w in want]
    assert got.usage.completion_tokens == sum(w["completion_tokens"] for w in want)
    texts, reasons, usage = ["", "", ""], [None, None, None], None
    for chunk in client.completions.create(
        model=server.model,
        prompt=PROMPTS[0],
        max_tokens=10,
        n=3,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.text
            reasons[c.index] = c.finish_reason or reasons[c.index]
    assert usage is not None and usage.completion_tokens == got.usage.completion_tokens
    assert texts == [w["text"] for w in want]
    assert all(r in ("stop", "length") for r in reasons)


def test_stop_string_ends_the_completion(server):
    client = server.client()
    full = client.completions.create(model=server.model, prompt=PROMPTS[2], max_tokens=20, temperature=0).choices[0]
    stop = full.text[6:9]
    assert stop and stop not in full.text[:6]
    cut = client.completions.create(model=server.model, prompt=PROMPTS[2], max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == full.text[: full.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_matches_gptcli_chat_and_streams_the_same_reply(server, cli, model_dir):
    r = cli("chat", "--model", model_dir, "--greedy", "-t", "16", "--json", "Hello there", stdin="")
    assert r.exit_code == 0, r.stderr
    want = r.json_lines()[0]
    client = server.client()
    messages = [{"role": "user", "content": "Hello there"}]
    reply = client.chat.completions.create(model=server.model, messages=messages, max_tokens=16, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == want["content"]
    assert reply.usage.prompt_tokens == want["prompt_tokens"]
    assert reply.usage.completion_tokens == want["completion_tokens"]
    stream = client.chat.completions.create(
        model=server.model,
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == want["completion_tokens"]
    assert len({c.id for c in chunks}) == 1


def test_echo_logprobs_score_the_prompt(server, lm):
    import torch

    client = server.client()
    prompt = PROMPTS[2]
    got = client.completions.create(model=server.model, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    lp = got.choices[0].logprobs
    ids = lm.tokenizer(prompt)["input_ids"]
    assert got.choices[0].text == prompt and "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
    assert lp.text_offset == [len(lm.tokenizer.decode(ids[:k])) for k in range(len(ids))]
    with torch.inference_mode():
        want = lm.model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
    for k, value in enumerate(lp.token_logprobs[1:]):
        assert value == pytest.approx(float(want[k, ids[k + 1]]), abs=1e-3)
    assert got.usage.prompt_tokens == len(ids) and got.usage.completion_tokens == 0
    # With new tokens too: the prompt's entries, then one per generated token.
    more = client.completions.create(
        model=server.model, prompt=prompt, max_tokens=4, echo=True, logprobs=0, temperature=0
    )
    lp2 = more.choices[0].logprobs
    assert lp2.token_logprobs[0] is None
    assert lp2.token_logprobs[1 : len(ids)] == pytest.approx(lp.token_logprobs[1:], abs=1e-3)
    assert len(lp2.tokens) == len(ids) + more.usage.completion_tokens
    assert more.choices[0].text.startswith(prompt)


def test_errors_have_openai_bodies_and_the_server_keeps_serving(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e404:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert e404.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=server.model, prompt="Once upon a time " * 400, max_tokens=2)
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as bad_value:
        client.completions.create(model=server.model, prompt="x", max_tokens=2, temperature=-1)
    assert "temperature" in bad_value.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad_ids:
        client.completions.create(model=server.model, prompt=[1, 10**6], max_tokens=2)
    assert bad_ids.value.body["code"] == "invalid_prompt"
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/completions", content=b"x" * (2 << 20))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(server.url + "/nowhere").status_code == 404
    # max_tokens beyond the context is capped at what the context leaves, not an error.
    capped = client.completions.create(
        model=server.model, prompt=PROMPTS[0], max_tokens=5000, temperature=0, stop=["e"]
    )
    assert capped.choices[0].finish_reason in ("stop", "length")
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_api_key_and_a_full_queue(lm):
    running = Running(lm, api_key="s3cret", max_concurrency=1, max_queue=0)
    try:
        with pytest.raises(openai.AuthenticationError):
            running.client("wrong").models.list()
        r = httpx.get(running.url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(running.url + "/health").status_code == 200  # for load balancers: no key needed
        client = running.client("s3cret")
        assert client.models.list().data[0].id == running.model
        # One slot and no queue: a second request while one decodes is refused with 503.
        stream = client.completions.create(
            model=running.model, prompt=PROMPTS[0], max_tokens=900, temperature=0, stream=True
        )
        next(iter(stream))
        with pytest.raises(openai.InternalServerError) as busy:
            client.completions.create(model=running.model, prompt="x", max_tokens=2)
        assert busy.value.status_code == 503 and busy.value.body["code"] == "server_busy"
        stream.close()
        deadline = time.monotonic() + 5
        while running.server.engine.load()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.completions.create(model=running.model, prompt="x", max_tokens=2).choices
    finally:
        running.close()


def test_a_client_leaving_mid_stream_stops_only_its_generation(server, cli, model_dir):
    want = _generate_json(cli, model_dir, "--greedy", "-t", "40", prompts=PROMPTS[1:2])[0]
    client = server.client()
    leaving = client.completions.create(
        model=server.model, prompt=PROMPTS[0], max_tokens=1000, temperature=0, stream=True
    )
    chunks = iter(leaving)
    next(chunks)
    result = {}

    def other():
        got = client.completions.create(model=server.model, prompt=PROMPTS[1], max_tokens=40, temperature=0)
        result["text"] = got.choices[0].text

    worker = threading.Thread(target=other)
    worker.start()
    started = time.monotonic()
    leaving.close()  # drops the connection with ~1,000 tokens still to go (several seconds)
    worker.join(60)
    assert result["text"] == want["text"]
    while server.server.engine.load()["running"]:
        assert time.monotonic() - started < 2.0, "the abandoned generation kept running"
        time.sleep(0.02)


def test_burst_of_64_with_max_concurrency_4_answers_everyone(lm):
    running = Running(lm, max_concurrency=4, max_queue=8)

    async def burst():
        async with httpx.AsyncClient(base_url=running.url, timeout=60) as ac:
            body = {"model": running.model, "prompt": "Once upon", "max_tokens": 8, "temperature": 0}
            return await asyncio.gather(*(ac.post("/v1/completions", json=body) for _ in range(64)))

    try:
        replies = asyncio.run(burst())
        codes = [r.status_code for r in replies]
        assert len(codes) == 64 and set(codes) <= {200, 503}
        ok = [r.json()["choices"][0]["text"] for r in replies if r.status_code == 200]
        assert len(ok) >= 12 and len(set(ok)) == 1  # every slot and queue place was used; greedy: one text
        assert all(r.json()["error"]["code"] == "server_busy" for r in replies if r.status_code == 503)
        assert httpx.get(running.url + "/health").json() == {
            "status": "ok",
            "model": running.model,
            "running": 0,
            "waiting": 0,
        }
    finally:
        running.close()


def test_sigterm_finishes_in_flight_requests_and_exits_0(model_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "serve", "--model", str(model_dir), "--host", "0.0.0.0", "--port", "0"],
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert proc.stderr is not None
        lines = []
        while True:
            line = proc.stderr.readline().decode()
            assert line, "".join(lines)
            lines.append(line)
            found = re.search(r"http://\S+:(\d+)/v1", line)
            if found:
                break
        assert any("without --api-key" in line for line in lines)  # 0.0.0.0 with no key: warned
        url = f"http://127.0.0.1:{found.group(1)}/v1"
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        stream = client.completions.create(
            model=str(model_dir), prompt=PROMPTS[0], max_tokens=60, temperature=0, stream=True
        )
        chunks = iter(stream)
        first = next(chunks)
        proc.send_signal(signal.SIGTERM)
        rest = list(chunks)  # the in-flight request is finished, not cut
        assert (rest or [first])[-1].choices[0].finish_reason in ("stop", "length")
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and "Stopped." in err
        with pytest.raises(openai.APIConnectionError):
            client.models.list()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_rejects_bad_options_before_loading(cli):
    r = cli("serve", "--port", "70000")
    assert r.exit_code == 2 and "--port must be from 0 to 65535" in r.stderr
    r = cli("serve", "--max-concurrency", "0")
    assert r.exit_code == 2 and "--max-concurrency" in r.stderr


def test_quantize_serves_the_quantized_model_with_generate_s_greedy_text(cli, model_dir, monkeypatch):
    """`serve --quantize int8` loads int8 weights (said on stderr) and its greedy completions equal
    `gptcli generate --quantize int8 --greedy`; a bad value is a usage error before loading."""
    import logging.config

    from gptcli.server import Server, log_config

    r = cli("serve", "--model", model_dir, "--quantize", "int3")
    assert r.exit_code == 2 and "unknown --quantize value 'int3'" in r.stderr

    served = []

    def run(self):  # the server the command built: serve two greedy requests, then stop
        served.append(self.engine.lm.quantization)
        thread = threading.Thread(target=self.run_for_test, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not self.started():
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        port = self.sock.getsockname()[1]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)
        for p in PROMPTS[:2]:
            done = client.completions.create(model=self.api.config.model_id, prompt=p, max_tokens=12, temperature=0)
            served.append(done.choices[0].text)
        self.stop()
        thread.join(15)  # uvicorn logs its shutdown to this command's stderr: let it finish first

    monkeypatch.setattr(Server, "run_for_test", Server.run, raising=False)
    monkeypatch.setattr(Server, "run", run)
    try:
        r = cli("serve", "--model", model_dir, "--port", "0", "--quantize", "int8")
    finally:  # uvicorn's handlers still point at that command's closed stderr
        logging.config.dictConfig(log_config())
    assert r.exit_code == 0, r.stderr
    assert served[0] is not None and served[0].scheme == "int8"
    assert "int8 weights" in r.stderr
    want = _generate_json(
        cli, model_dir, "--greedy", "--max-new-tokens", "12", "--quantize", "int8", prompts=PROMPTS[:2]
    )
    assert served[1:] == [w["text"] for w in want]


def test_a_port_in_use_is_one_error_line(cli, model_dir):
    from gptcli.server import listen

    taken = listen("127.0.0.1", 0)
    try:
        r = cli("serve", "--model", model_dir, "--port", str(taken.getsockname()[1]))
    finally:
        taken.close()
    assert (
        r.exit_code == 1 and r.stderr.startswith("Error: cannot listen on 127.0.0.1:") and "Traceback" not in r.stderr
    )


def test_an_encoder_decoder_model_is_served_one_request_at_a_time(marian_dir):
    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.loading import open_model
    from gptcli.sampling import SamplingParams

    marian = open_model(str(marian_dir))[0]
    (want,) = [
        e
        for e in stream_generate(marian, [Request("Hello there.", SamplingParams(max_new_tokens=10, greedy=True))])
        if isinstance(e, Completion)
    ]
    running = Running(marian)
    try:
        assert not running.server.engine.fast
        client = running.client()
        got = client.completions.create(model=running.model, prompt="Hello there.", max_tokens=10, temperature=0)
        assert got.choices[0].text == want.text and got.usage.prompt_tokens == want.prompt_tokens
        streamed = client.completions.create(
            model=running.model, prompt="Hello there.", max_tokens=10, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in streamed if c.choices) == want.text
    finally:
        running.close()
