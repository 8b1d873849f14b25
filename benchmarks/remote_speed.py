"""Remote models: `gptcli generate --file … --model openai:NAME` against `gptcli serve`, next to the same
prompts generated in-process, all in one run.

Rows (same prompts, greedy, the same new tokens each):
- local batch 1 / batch 8: the core in-process, the model loaded here: the baselines;
- remote -b 1: through `gptcli serve` in another process, one request in flight at a time;
- remote -b 8: eight requests in flight, which the server batches.

What it shows: the cost of the HTTP path (remote -b N against local batch N) and what keeping
requests in flight gains (remote -b 8 against -b 1). Each remote row's texts are checked equal to
the local row with the same batch (in bfloat16 a batch's make-up can flip a near-tie). The rows take
turns, `--rounds` times, and each reports its median, so a change in the machine's load hits all rows.

    python benchmarks/remote_speed.py                 # GPT-2-124M shape, 8 prompts x 16 tokens, 3 rounds
    python benchmarks/remote_speed.py --prompts 32 --tokens 64 --threads 1
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_gpt2_124m  # noqa: E402

PROMPTS = [
    "Once upon a time",
    "The king said",
    "In the morning the sea was",
    "She opened the door and",
    "What is the meaning of",
    "Tom and Sue went to",
    "The old lighthouse",
    "It was a dark and stormy night",
]


def start_server(model_dir: str, dtype: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    more = ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "serve", "--model", model_dir, "--dtype", dtype, "--port", "0", *more],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("gptcli serve did not start")
        found = re.search(r"(http://\S+:\d+/v1)", line)
        if found:
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
            return proc, found.group(1)


def _drain(stream) -> None:
    """Read the server's log so it never blocks on a full pipe; keep the last lines, to show if it dies."""
    tail: list[str] = []
    for line in stream:
        tail = [*tail[-20:], line]
    print("gptcli serve ended; its last log lines:\n" + "".join(tail), file=sys.stderr, flush=True)


def run(lm, prompts: list[str], tokens: int, batch: int) -> tuple[float, list[str], int]:
    """Seconds, texts in input order, and generated tokens (from the completions' counts)."""
    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.sampling import SamplingParams

    params = SamplingParams(greedy=True, max_new_tokens=tokens)
    requests = [Request(prompt=p, params=params) for p in prompts]
    texts = [""] * len(prompts)
    generated = 0
    started = time.perf_counter()
    for event in stream_generate(lm, requests, batch_size=batch):
        if isinstance(event, Completion):
            texts[event.request] = event.text
            generated += event.completion_tokens
    return time.perf_counter() - started, texts, generated


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    # On a machine shared with other work, --threads 1 on both sides avoids threads waiting on each other.
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model-dir", default="/tmp/gptcli-bench-gpt2-124m")
    args = ap.parse_args()
    model_dir = str(build_gpt2_124m(Path(args.model_dir)))
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(args.prompts)]

    from gptcli.loading import open_model
    from gptcli.remote import open_remote

    proc, url = start_server(model_dir, args.dtype, args.threads)
    try:
        lm, _ = open_model(model_dir, dtype=args.dtype, threads=args.threads)
        remote = open_remote("openai:" + model_dir, api_base=url, timeout=600)
        run(remote, prompts[:2], 4, 2)  # warm up both sides (client import, server caches)
        run(lm, prompts[:2], 4, 2)
        rows = {
            "local batch 1 (in-process)": (lm, 1),
            "remote -b 1 (gptcli serve)": (remote, 1),
            "local batch 8 (in-process)": (lm, 8),
            "remote -b 8 (gptcli serve)": (remote, 8),
        }
        times: dict[str, list[float]] = {label: [] for label in rows}
        texts: dict[str, list[str]] = {}
        generated: dict[str, int] = {}
        for _ in range(args.rounds):
            for label, (model, batch) in rows.items():
                seconds, texts[label], generated[label] = run(model, prompts, args.tokens, batch)
                times[label].append(seconds)
    finally:
        proc.terminate()
        proc.wait(30)
    labels = list(rows)
    rate = {label: generated[label] / statistics.median(times[label]) for label in rows}
    print(
        f"{args.prompts} prompts x {args.tokens} new tokens, greedy, GPT-2-124M shape, dtype {args.dtype}, "
        f"threads {args.threads or 'default'}, median of {args.rounds} rounds"
    )
    print(f"{'':30} {'seconds':>8} {'tokens/s':>9} {'vs local, same batch':>21} {'same text':>10}")
    for i, label in enumerate(labels):
        local = labels[i - i % 2]  # each remote row follows its local one
        same = "yes" if texts[label] == texts[local] else "NO"
        seconds = statistics.median(times[label])
        print(f"{label:30} {seconds:8.2f} {rate[label]:9.1f} {rate[label] / rate[local]:20.2f}x {same:>10}")
    print(f"remote -b 8 / remote -b 1: {rate[labels[3]] / rate[labels[1]]:.2f}x tokens/s")


if __name__ == "__main__":
    main()
