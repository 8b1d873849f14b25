"""Llama-family batch-1 decode against the bandwidth floor, side by side in one run.

    python benchmarks/llama_decode_speed.py [--new-tokens 128] [--threads 2] [--rounds 3]
                                            [--arch llama|mistral|qwen2] [--kv-heads 12]

Builds a 91 M-parameter Llama-shaped model locally (12 layers, 768 wide, 12 heads, SwiGLU 2048,
untied head, the bundled story model's 4,096-token tokenizer, random weights, saved in
bfloat16; no download) and measures greedy decoding of `--new-tokens` tokens, batch 1:

- plain `model.generate`, bfloat16 weights (its own process);
- gptcli with GPTCLI_LLAMA_DECODE=0: the model's own forward in gptcli's decode loop, as before
  the lean Llama-family forward;
- gptcli now (the lean forward);
- the floor: the weight bytes over the read bandwidth measured in the same process (packed
  matrix-vector products over 8x the weights, the way decoding reads them; best of the rounds).

The two gptcli rows load the same folder in one process and alternate, `--rounds` times (the
machine is shared and drifts; alternating keeps the ratio steady); medians are reported. The
greedy tokens of both gptcli rows must be equal, or the script fails.
llama.cpp is not measured here (see docs/performance.md for the figure it was compared with).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's gptcli, not an installed one
from common import emit, parse_result, peak_rss_mb  # noqa: E402

PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside"
BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "gptcli" / "bundled" / "tinystories"


def build_model(folder: Path, arch: str, kv_heads: int) -> Path:
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BUNDLED_TOKENIZER / name, folder / name)
    config = AutoConfig.for_model(
        arch,
        vocab_size=4096,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        **({"sliding_window": None} if arch == "mistral" else {}),
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def weight_bytes(folder: Path) -> int:
    from gptcli.loading import check_weights

    return 2 * check_weights(folder, allow_pickle=False)  # bfloat16


def worker_plain(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).eval()
    ids = tok([PROMPT], return_tensors="pt")
    greedy = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(**ids, max_new_tokens=8, **greedy)  # warm-up
    rates, out = [], None
    for _ in range(args.rounds):
        start = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=args.new_tokens, **greedy)
        rates.append((out.shape[1] - ids["input_ids"].shape[1]) / (time.perf_counter() - start))
    assert out is not None
    tokens = out[0, ids["input_ids"].shape[1] :].tolist()
    emit({"tokens_per_s": statistics.median(rates), "runs": rates, "tokens": tokens, "rss_mb": peak_rss_mb()})


def read_bandwidth(total_bytes: int, threads: int) -> float:
    """GB/s of packed bfloat16 matrix-vector products over `total_bytes` of distinct weights."""
    import torch

    from gptcli.cpu_tuning import PACK_BATCH_HINT, _op_works

    torch.set_num_threads(threads)
    rows = 4096
    count = max(8, total_bytes // (rows * 768 * 2))
    x = torch.randn(1, 768, dtype=torch.bfloat16)
    if _op_works("bfloat16"):
        weights = [
            torch.ops.mkldnn._reorder_linear_weight(torch.randn(rows, 768, dtype=torch.bfloat16), PACK_BATCH_HINT)
            for _ in range(count)
        ]

        def product(w):
            return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    else:
        weights = [torch.randn(rows, 768, dtype=torch.bfloat16) for _ in range(count)]

        def product(w):
            return torch.nn.functional.linear(x, w)

    best = 0.0
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            for w in weights:
                product(w)
            best = max(best, count * rows * 768 * 2 / (time.perf_counter() - start) / 1e9)
    return best


def worker_gptcli(args) -> None:
    """Before (GPTCLI_LLAMA_DECODE=0 at load) and now, alternating, plus the bandwidth, in one process."""
    from gptcli.generation import Completion, Request, RunStats, stream_generate
    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model
    from gptcli.sampling import SamplingParams

    os.environ["GPTCLI_LLAMA_DECODE"] = "0"
    before, _ = open_model(args.model_dir, device="cpu", dtype="bfloat16", threads=args.threads)
    os.environ["GPTCLI_LLAMA_DECODE"] = "1"
    now, _ = open_model(args.model_dir, device="cpu", dtype="bfloat16", threads=args.threads)
    assert decode_forward(before.model) is None
    before.eos_token_ids = now.eos_token_ids = []  # random weights: always the full count, as plain generate
    lean = decode_forward(now.model) is not None

    def run(lm, n):
        stats = RunStats()
        params = SamplingParams(temperature=0.0, max_new_tokens=n)
        done = [e for e in stream_generate(lm, [Request(PROMPT, params)], stats=stats) if isinstance(e, Completion)]
        return stats.completion_tokens / stats.elapsed_s, done[0].token_ids

    run(before, 8), run(now, 8)  # warm-up
    rates: dict[str, list[float]] = {"before": [], "now": []}
    tokens = {}
    bandwidth = 0.0
    size = weight_bytes(Path(args.model_dir))
    for _ in range(args.rounds):
        for name, lm in (("before", before), ("now", now)):
            rate, tokens[name] = run(lm, args.new_tokens)
            rates[name].append(rate)
        bandwidth = max(bandwidth, read_bandwidth(8 * size, args.threads))
    emit(
        {
            "before": statistics.median(rates["before"]),
            "now": statistics.median(rates["now"]),
            "runs": rates,
            "tokens_before": tokens["before"],
            "tokens_now": tokens["now"],
            "bandwidth_gbs": bandwidth,
            "weight_bytes": size,
            "lean": lean,
            "rss_mb": peak_rss_mb(),
        }
    )


def run_worker(kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model-dir", args.model_dir]
    cmd += ["--new-tokens", str(args.new_tokens), "--threads", str(args.threads), "--rounds", str(args.rounds)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    return parse_result(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--model-dir")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arch", default="llama", choices=["llama", "mistral", "qwen2"])
    ap.add_argument("--kv-heads", type=int, default=12)
    args = ap.parse_args()
    if args.worker:
        {"plain": worker_plain, "gptcli": worker_gptcli}[args.worker](args)
        return
    if not args.model_dir:
        name = f"gptcli-bench-{args.arch}-91m-kv{args.kv_heads}"
        args.model_dir = str(Path(tempfile.gettempdir()) / name)
    build_model(Path(args.model_dir), args.arch, args.kv_heads)
    plain = run_worker("plain", args)
    ours = run_worker("gptcli", args)
    if ours["tokens_before"] != ours["tokens_now"]:
        raise SystemExit("greedy tokens differ between gptcli before and gptcli now")
    # Plain generate runs SDPA attention, gptcli eager attention: bfloat16 rounding differs, and
    # random weights give near-tied logits, so its text may part ways after a while.
    same = next(
        (i for i, (a, b) in enumerate(zip(plain["tokens"], ours["tokens_now"])) if a != b), len(plain["tokens"])
    )
    size, bandwidth = ours["weight_bytes"], ours["bandwidth_gbs"]
    floor = bandwidth * 1e9 / size
    print(
        f"\n{args.arch}, 91 M parameters ({size / 1e6:.0f} MB bfloat16), {args.kv_heads} key/value heads, "
        f"batch 1, {args.new_tokens} greedy tokens, {args.threads} threads, median of {args.rounds}"
    )
    print(
        f"read bandwidth {bandwidth:.1f} GB/s -> floor {floor:.0f} tokens/s; gptcli before and now: identical "
        f"greedy tokens; plain generate: the first {same} of {len(plain['tokens'])} identical"
    )
    print(f"{'path':44} {'tokens/s':>9} {'% of floor':>11} {'vs plain':>9} {'vs before':>10}")
    rows = [
        ("plain model.generate, bfloat16", plain["tokens_per_s"]),
        ("gptcli, GPTCLI_LLAMA_DECODE=0 (before)", ours["before"]),
        ("gptcli" + ("" if ours["lean"] else " (lean forward NOT used)"), ours["now"]),
        ("floor (weight bytes / read bandwidth)", floor),
    ]
    for name, rate in rows:
        print(
            f"{name:44} {rate:9.1f} {100 * rate / floor:10.0f}% {rate / plain['tokens_per_s']:8.2f}x"
            f" {rate / ours['before']:9.2f}x"
        )
    print(f"runs: plain {[round(r, 1) for r in plain['runs']]}, gptcli {ours['runs']}")


if __name__ == "__main__":
    main()
