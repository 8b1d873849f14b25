"""`gptcli serve` speed: continuous batching and the HTTP path, against in-process generation, same run.

    python benchmarks/serve_speed.py [--new-tokens 128] [--rounds 3] [--model-dir DIR]

Builds a GPT-2-124M-shaped model locally (random weights, the tokenizer's 8,192-token vocabulary;
no download), starts `gptcli serve
--dtype bfloat16` in its own process, and drives it with streaming HTTP clients (httpx, one
thread per client, in this process). Every request samples (seeded) `--new-tokens` tokens.
Measured, median of `--rounds`:

- aggregate tokens/s with 8 concurrent streaming clients against one client alone (target ≥ 4×);
- time to first token of a request that arrives while 7 others decode, against an idle server
  (target ≤ 2×);
- one client over HTTP against `stream_generate` in this process (the same model and settings,
  measured in the same rounds while the server idles; target: overhead ≤ 10% of tokens/s).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's gptcli, not an installed one
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import build_gpt2_124m  # noqa: E402

PROMPTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "All:\nSpeak, speak.",
    "First Citizen:\nYou are all resolved rather to die than to famish?",
    "All:\nResolved. resolved.",
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.",
    "All:\nWe know't, we know't.",
    "First Citizen:\nLet us kill him, and we'll have corn at our own price.",
    "Second Citizen:\nOne word, good citizens.",
]


def in_process(model_dir: str, device: str):
    """One request through `stream_generate` in this process: what the HTTP path is compared with.
    Returns a function that runs one and gives (tokens/s, time to first token in s)."""
    from gptcli.generation import Request, RunStats, stream_generate
    from gptcli.loading import open_model
    from gptcli.sampling import SamplingParams

    lm = open_model(model_dir, device=device, dtype="bfloat16")[0]

    def run(tokens: int) -> tuple[float, float]:
        stats = RunStats()
        list(stream_generate(lm, [Request(PROMPTS[0], SamplingParams(max_new_tokens=tokens, seed=0))], stats=stats))
        return stats.completion_tokens / stats.elapsed_s, stats.ttft_s or 0.0

    return run


class Client:
    """One streaming completion request; records when it started, its first text and its end."""

    def __init__(self, url: str, model: str, prompt: str, tokens: int, seed: int):
        self.body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": tokens,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        self.url = url
        self.start = self.first = self.end = 0.0
        self.tokens = 0
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        import httpx

        self.start = time.perf_counter()
        with httpx.stream("POST", self.url + "/v1/completions", json=self.body, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    self.tokens = chunk["usage"]["completion_tokens"]
                elif not self.first and chunk["choices"] and chunk["choices"][0]["text"]:
                    self.first = time.perf_counter()
        self.end = time.perf_counter()


def run_clients(clients: list[Client]) -> float:
    """Start them together, wait for all; aggregate tokens/s."""
    for c in clients:
        c.thread.start()
    for c in clients:
        c.thread.join()
    return sum(c.tokens for c in clients) / (max(c.end for c in clients) - min(c.start for c in clients))


def start_server(model_dir: str, device: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptcli",
            "serve",
            "--model",
            model_dir,
            "--device",
            device,
            "--dtype",
            "bfloat16",
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,  # `python -m gptcli` runs this checkout's gptcli
    )
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("gptcli serve did not start")
        found = re.search(r"(http://\S+:\d+)/v1", line)
        if found:
            # Drain the access log so the server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, found.group(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--vocab-text", help="text to train the tokenizer on (default: shared/data/tinyshakespeare.txt)")
    args = ap.parse_args()
    # The tokenizer's own vocabulary (8,192), not GPT-2's 50,257: ids beyond the tokenizer decode to
    # no text, and a client only sees time to first token when the first token is text.
    model_dir = args.model_dir or str(Path(tempfile.gettempdir()) / "gptcli-bench-gpt2-124m-v8k")
    build_gpt2_124m(Path(model_dir), vocab_text=Path(args.vocab_text) if args.vocab_text else None, vocab_size=None)
    n, rounds = args.new_tokens, args.rounds
    proc, url = start_server(model_dir, args.device)
    model = model_dir
    try:
        local = in_process(model_dir, args.device)
        local(8)  # warm-up
        run_clients([Client(url, model, PROMPTS[0], 8, 0)])
        inproc, one, many, idle_ttft, busy_ttft = [], [], [], [], []
        # Each round measures every configuration once, one after the other (the server is idle
        # while this process generates): the machine's drift hits all of them alike.
        for _ in range(rounds):
            inproc.append(local(n)[0])
            alone = Client(url, model, PROMPTS[0], n, 0)
            one.append(run_clients([alone]))
            idle_ttft.append(alone.first - alone.start)
            many.append(run_clients([Client(url, model, PROMPTS[i], n, i) for i in range(8)]))
            # A request that arrives while 7 others decode: start it once they all stream.
            others = [Client(url, model, PROMPTS[i], n, i) for i in range(1, 8)]
            for c in others:
                c.thread.start()
            while not all(c.first or c.end for c in others):
                time.sleep(0.005)
            time.sleep(0.05)
            late = Client(url, model, PROMPTS[0], 8, 0)
            late.run()
            busy_ttft.append(late.first - late.start)
            for c in others:
                c.thread.join()
    finally:
        proc.terminate()
        proc.wait(60)
    base, b1, b8 = statistics.median(inproc), statistics.median(one), statistics.median(many)
    t_idle, t_busy = statistics.median(idle_ttft) * 1000, statistics.median(busy_ttft) * 1000
    print(
        f"\nGPT-2-124M shape (8,192-token vocabulary), random weights, bfloat16, device {args.device}, {n} new tokens per request "
        f"(sampled, seeded), median of {rounds} interleaved rounds"
    )
    print(f"{'configuration':46} {'tokens/s':>9} {'TTFT ms':>8} {'ratio':>8}  target")
    print(f"{'stream_generate in-process, 1 request':46} {base:9.1f} {'':8} {1.0:7.2f}x")
    print(f"{'gptcli serve, 1 streaming client':46} {b1:9.1f} {t_idle:8.1f} {b1 / base:7.2f}x  >= 0.90x in-process")
    print(f"{'gptcli serve, 8 concurrent streaming clients':46} {b8:9.1f} {'':8} {b8 / b1:7.2f}x  >= 4x one client")
    print(f"{'time to first token, 7 others decoding':46} {'':9} {t_busy:8.1f} {t_busy / t_idle:7.2f}x  <= 2x idle")
    print(f"\nruns: in-process {[round(x, 1) for x in inproc]}, one client {[round(x, 1) for x in one]}, ", end="")
    print(f"8 clients {[round(x, 1) for x in many]}")
    print(f"TTFT idle {[round(x * 1000, 1) for x in idle_ttft]} ms, busy {[round(x * 1000, 1) for x in busy_ttft]} ms")


if __name__ == "__main__":
    main()
