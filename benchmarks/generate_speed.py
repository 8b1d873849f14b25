"""Generation speed: gptcli's generation path against plain `model.generate`, same weights, same run.

    python benchmarks/generate_speed.py [--new-tokens 200] [--model-dir DIR]

Builds a GPT-2-124M-shaped model locally (random weights; no download), then runs each
configuration in its own process (so peak RSS is per configuration) and prints a table:
tokens/s, time to first token, peak RSS, and the ratio to plain fp32 `generate` (its
default settings: fp32 weights, greedy). Also batch 8 vs batch 1 throughput (measured side by
side in one process, median of three interleaved rounds) and
`gptcli --help` start-up time against `python -c pass`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_gpt2_124m, emit, parse_result, peak_rss_mb  # noqa: E402

PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


def worker_plain(model_dir: str, new_tokens: int, batch: int, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    kwargs = {} if dtype == "default" else {"dtype": getattr(torch, dtype)}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).eval()
    ids = tok([PROMPT] * batch, return_tensors="pt")

    class FirstToken:
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:  # the first put is the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    model.generate(**ids, max_new_tokens=8, pad_token_id=0)  # warm-up
    streamer = FirstToken() if batch == 1 else None
    start = time.perf_counter()
    out = model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, streamer=streamer)
    elapsed = time.perf_counter() - start
    produced = (out.shape[1] - ids["input_ids"].shape[1]) * batch
    emit(
        {
            "tokens_per_s": produced / elapsed,
            "ttft_ms": ((streamer.first - start) * 1000) if streamer else None,
            "tokens": produced,
            "rss_mb": peak_rss_mb(),
        }
    )


def _open_gptcli(model_dir: str, dtype: str):
    from gptcli.loading import open_model

    return open_model(model_dir, dtype=None if dtype == "auto" else dtype)[0]


def _gptcli_run(lm, batch: int, new_tokens: int):
    """`batch` copies of the prompt through gptcli's streaming core; returns its RunStats.

    gptcli's defaults: sampling (temperature 0.8, top-k 50). Random weights rarely hit end-of-text."""
    from gptcli.generation import Request, RunStats, stream_generate
    from gptcli.sampling import SamplingParams

    stats = RunStats()
    reqs = [Request(PROMPT, SamplingParams(max_new_tokens=new_tokens, seed=0)) for _ in range(batch)]
    list(stream_generate(lm, reqs, batch_size=batch, stats=stats))
    return stats


def worker_gptcli(model_dir: str, new_tokens: int, batch: int, dtype: str) -> None:
    lm = _open_gptcli(model_dir, dtype)
    _gptcli_run(lm, 1, 8)  # warm-up
    stats = _gptcli_run(lm, batch, new_tokens)
    emit(
        {
            "tokens_per_s": stats.completion_tokens / stats.elapsed_s,
            "ttft_ms": stats.ttft_s * 1000 if batch == 1 else None,
            "tokens": stats.completion_tokens,
            "rss_mb": peak_rss_mb(),
            "dtype": str(lm.runtime.dtype).replace("torch.", ""),
        }
    )


def worker_batches(model_dir: str, new_tokens: int, batch: int, dtype: str, rounds: int = 3) -> None:
    """Batch 1 and batch `batch` through gptcli in one process, interleaved, `rounds` times.

    The machine is shared and its speed drifts by up to ~30% between runs; side-by-side runs in
    one process keep the ratio steady. Reports the median of each.
    """
    lm = _open_gptcli(model_dir, dtype)

    def run(b: int) -> float:
        stats = _gptcli_run(lm, b, new_tokens)
        return stats.completion_tokens / stats.elapsed_s

    run(1)  # warm-up
    ones, many = [], []
    for _ in range(rounds):
        ones.append(run(1))
        many.append(run(batch))
    emit({"batch1": statistics.median(ones), "batchN": statistics.median(many), "runs1": ones, "runsN": many})


def run_worker(kind: str, model_dir: str, new_tokens: int, batch: int, dtype: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--model-dir",
        model_dir,
        "--new-tokens",
        str(new_tokens),
        "--batch",
        str(batch),
        "--dtype",
        dtype,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    return parse_result(p.stdout)


def startup_time(cmd: list[str], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--model-dir")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    if args.worker:
        {"plain": worker_plain, "gptcli": worker_gptcli, "batches": worker_batches}[args.worker](
            args.model_dir, args.new_tokens, args.batch, args.dtype
        )
        return
    model_dir = args.model_dir or str(Path(tempfile.gettempdir()) / "gptcli-bench-gpt2-124m")
    build_gpt2_124m(Path(model_dir))
    n = args.new_tokens
    rows = [
        ("plain generate, fp32 (baseline)", run_worker("plain", model_dir, n, 1, "default")),
        ("plain generate, bf16 weights", run_worker("plain", model_dir, n, 1, "bfloat16")),
        ("gptcli, float32", run_worker("gptcli", model_dir, n, 1, "float32")),
        ("gptcli, default (auto dtype)", run_worker("gptcli", model_dir, n, 1, "auto")),
    ]
    base = rows[0][1]["tokens_per_s"]
    print(f"\nGPT-2-124M shape, random weights, {n} new tokens, batch 1, {Path('/proc/cpuinfo').exists() and 'CPU'}")
    print(f"{'path':34} {'tokens/s':>9} {'TTFT ms':>8} {'peak RSS MB':>12} {'vs baseline':>12}")
    for name, r in rows:
        print(
            f"{name:34} {r['tokens_per_s']:9.1f} {r['ttft_ms']:8.1f} {r['rss_mb']:12.0f} {r['tokens_per_s'] / base:11.2f}x"
        )
    bb = run_worker("batches", model_dir, n, 8, "auto")
    b1, b8 = bb["batch1"], bb["batchN"]
    p8 = run_worker("plain", model_dir, n, 8, "default")
    print(f"\nBatch throughput ({n} new tokens per sequence; gptcli rows: one process, batch 1 and 8")
    print("interleaved, median of 3 rounds each)")
    print(f"{'path':34} {'tokens/s':>9} {'vs gptcli batch 1':>18}")
    print(f"{'gptcli default, batch 1':34} {b1:9.1f} {1.0:17.2f}x")
    print(f"{'gptcli default, batch 8':34} {b8:9.1f} {b8 / b1:17.2f}x")
    print(f"{'plain generate fp32, batch 8':34} {p8['tokens_per_s']:9.1f} {p8['tokens_per_s'] / b1:17.2f}x")
    gptcli_help = startup_time([sys.executable, "-m", "gptcli", "--help"])
    bare = startup_time([sys.executable, "-c", "pass"])
    print("\nStart-up (median of 7)")
    print(f"python -c pass      {bare * 1000:7.0f} ms")
    print(f"gptcli --help       {gptcli_help * 1000:7.0f} ms   (+{(gptcli_help - bare) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
