"""Quantized weights: decode speed, peak memory and quality of int8/int4 against bfloat16.

    python benchmarks/quantize_speed.py [--new-tokens 128] [--threads 2] [--rounds 3]
                                        [--shakespeare-model DIR] [--only speed,rss,quality]
                                        [--models all|gpt2|llama|llama-1b]

Speed: the GPT-2-124M shape and a ~91 M Llama shape (12 layers, 768 wide, 12 heads, SwiGLU
2048, the bundled 4,096-token tokenizer, untied head), random weights, built locally
(`--models llama-1b`: TinyLlama's ~1.0 B shape instead, common.LLAMA_SHAPES). Batch 1,
`--new-tokens` greedy tokens through gptcli's generation core, `--threads` threads. bfloat16,
int8 and int4 are loaded into one process and run in interleaved rounds (the machine is shared
and its speed drifts; side by side keeps the ratios honest); each setting's best round is its
speed. Targets: int8 >= 1.7x bfloat16, int4 >= 2.5x. When `benchmarks/llamacpp_baseline.py`
and llama-cpp-python are there, llama.cpp at F16/Q8_0/Q4_0 runs in the same worker process, each
round right after gptcli's at the same precision (ratio gptcli / llama.cpp of the best rounds;
target >= 1.0x); otherwise the column says "not installed". A second table splits gptcli's token:
the forward and the decode loop around it; inside the forward, the projections alone (the same
kernels and weights, back to back) and the rest (the forward with its projections skipped); and
the bound llama.cpp's token / (projections + rest) that no faster glue could pass.

Memory: each setting in a fresh process (load, generate 16 tokens): peak RSS, against the
"runtime" (the same run on a 1-layer, 64-wide model of the same architecture and tokenizer: the
code, tokenizer and kernel buffers every model of the kind pays for; the imports alone are
printed too) and the model's bfloat16 weight bytes. int4 is
measured both quantized on the fly (`--quantize int4`: the bfloat16 weights load first) and from
a `gptcli quantize` folder (never holds float weights). Target: int4 <= 0.4x bf16 weights + runtime.

Quality: `gptcli eval --json` nll/token of each setting (all with --dtype bfloat16 activations)
on held-out text: the bundled tinystories model on the last 3% of the TinyStories sample
(recipes/tail_documents.py, as docs/bundled-models.md), and a GPT-2-architecture model trained
with `gptcli train` on tinyshakespeare (`--shakespeare-model DIR`, else trained here: preset
micro, 300 steps) on the last 5% of tinyshakespeare's lines (its held-out validation split).
Random weights have no meaningful nll. Targets: int8 <= +0.5%, int4 <= +3%.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's gptcli
from common import SHARED, build_gpt2_124m, build_llama, emit, parse_result, peak_rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
SETTINGS = ("bf16", "int8", "int4")
LLAMA_CPP_PRECISION = {"bf16": "f16", "int8": "q8_0", "int4": "q4_0"}


# ---------------------------------------------------------------------- workers (fresh processes)


def _open(model_dir: str, setting: str, threads: int):
    from gptcli.loading import open_model

    quantize = None if setting in ("bf16", "runtime") or setting.startswith("folder") else setting
    lm = open_model(model_dir, dtype="bfloat16", threads=threads, quantize=quantize)[0]
    lm.eos_token_ids = []  # random weights: never stop early, every run makes all its tokens
    return lm


def _decode(lm, new_tokens: int) -> float:
    from gptcli.generation import Request, RunStats, stream_generate
    from gptcli.sampling import SamplingParams

    stats = RunStats()
    req = Request(PROMPT, SamplingParams(greedy=True, max_new_tokens=new_tokens))
    list(stream_generate(lm, [req], batch_size=1, stats=stats))
    return stats.completion_tokens / stats.elapsed_s


def _projections(decoder, config) -> tuple[tuple[tuple[int, int], ...], int]:
    """Where the lean forward keeps its projections: (index in each layer's tuple, input width)
    for every layer's, and the head's input width."""
    from gptcli.gpt2_decode import GPT2Decoder
    from gptcli.llama_decode import LlamaDecoder

    if isinstance(decoder, LlamaDecoder):
        hidden, q_size = config.hidden_size, decoder.heads * decoder.head_dim
        return ((2, hidden), (3, q_size), (6, hidden), (7, decoder.intermediate)), hidden
    if isinstance(decoder, GPT2Decoder):
        n = config.n_embd
        return ((1, n), (3, n), (5, n), (7, config.n_inner or 4 * n)), n
    raise RuntimeError("no lean forward for this model: nothing to time")


def _products_pass(lm, passes: int = 16):
    """A function timing the projections of one decode step alone (ms per token): every layer's
    products and the head, called in the model's order on one-row inputs with the kernels and
    weights the lean forward uses. No code that calls these kernels can be faster than this."""
    import torch

    from gptcli.lean_decode import decode_forward

    decoder = decode_forward(lm.model)
    picks, head_width = _projections(decoder, lm.model.config)
    rows = {w: torch.randn(1, 1, w, dtype=decoder.dtype) for w in [head_width] + [w for _, w in picks]}
    calls = [(layer[i], rows[w]) for layer in decoder.layers for i, w in picks]
    calls.append((decoder.head, rows[head_width]))

    def run() -> float:
        with torch.inference_mode():
            for fn, x in calls:  # warm: the first pass brings the weights in as decoding does
                fn(x)
            started = time.perf_counter()
            for _ in range(passes):
                for fn, x in calls:
                    fn(x)
            return 1000 * (time.perf_counter() - started) / passes

    return run


class _TimedForward:
    """The lean forward, timed: `ms` per call so far."""

    def __init__(self, decoder):
        self.decoder, self.seconds, self.calls = decoder, 0.0, 0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        out = self.decoder(*args, **kwargs)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out

    @property
    def ms(self) -> float:
        return 1000 * self.seconds / max(1, self.calls)


def _without_projections(decoder, config):
    """A copy of the lean forward whose projections return the output they gave last time for
    that input shape: what is left is the rest of the forward (norms, rotary, cache, attention)."""
    import copy

    picks, _ = _projections(decoder, config)
    last: dict = {}

    def skipping(fn):
        def call(x):
            key = (id(fn), tuple(x.shape))
            if key not in last:
                last[key] = fn(x)
            return last[key]

        return call

    lean = copy.copy(decoder)
    slots = {i for i, _ in picks}
    lean.layers = [tuple(skipping(v) if k in slots else v for k, v in enumerate(layer)) for layer in decoder.layers]
    lean.head = skipping(decoder.head)
    return lean


def _decode_split(lm, new_tokens: int) -> tuple[float, float, float]:
    """tokens/s of a decode run, its forward's ms per step, and the forward's ms per step
    without its projections (a second run)."""
    from gptcli.lean_decode import decode_forward

    model = lm.model
    decoder = decode_forward(model)
    try:
        model._gptcli_lean_decoder = timed = _TimedForward(decoder)
        speed = _decode(lm, new_tokens)
        model._gptcli_lean_decoder = rest = _TimedForward(_without_projections(decoder, model.config))
        _decode(lm, new_tokens)
    finally:
        model._gptcli_lean_decoder = decoder
    return speed, timed.ms, rest.ms


def _llama_cpp_runners(model_dir: str, new_tokens: int, threads: int) -> dict:
    """llama.cpp at each setting's precision, loaded and warmed up; empty without llama-cpp-python."""
    try:
        from llamacpp_baseline import llama_cpp_available, llama_cpp_runner
    except ImportError:
        return {}
    if not llama_cpp_available():
        return {}
    return {
        s: llama_cpp_runner(Path(model_dir), p, PROMPT, new_tokens, threads) for s, p in LLAMA_CPP_PRECISION.items()
    }


def worker_speed(model_dir: str, new_tokens: int, threads: int, rounds: int) -> None:
    """Every setting and llama.cpp at the same precision in one process, in interleaved rounds:
    the machine's speed drifts by up to 1.5x within minutes, so only side-by-side rounds compare."""
    models = {s: _open(model_dir, s, threads) for s in SETTINGS}
    for lm in models.values():
        _decode(lm, 8)  # warm-up
    cpp = _llama_cpp_runners(model_dir, new_tokens, threads)
    products = {s: _products_pass(lm) for s, lm in models.items()}
    runs: dict[str, list[float]] = {s: [] for s in SETTINGS}
    product_runs: dict[str, list[float]] = {s: [] for s in SETTINGS}
    split: dict[str, list[tuple[float, float]]] = {s: [] for s in SETTINGS}
    cpp_runs: dict[str, list[float]] = {s: [] for s in cpp}
    for _ in range(rounds):
        for s in SETTINGS:
            speed, forward_ms, rest_ms = _decode_split(models[s], new_tokens)
            runs[s].append(speed)
            split[s].append((forward_ms, rest_ms))
            product_runs[s].append(products[s]())
            if s in cpp:
                cpp_runs[s].append(cpp[s]())
    emit(
        {
            "best": {s: max(v) for s, v in runs.items()},
            "runs": runs,
            "products_ms": {s: min(v) for s, v in product_runs.items()},
            "forward_ms": {s: split[s][v.index(max(v))][0] for s, v in runs.items()},  # of the best round
            "rest_ms": {s: min(rest for _, rest in split[s]) for s in SETTINGS},
            "product_runs": product_runs,
            "cpp_best": {s: max(v) for s, v in cpp_runs.items()},
            "cpp_runs": cpp_runs,
        }
    )


def worker_rss(model_dir: str, setting: str, threads: int) -> None:
    if setting == "runtime":  # the libraries and gptcli, no model: what every setting pays anyway
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from gptcli import generation, loading  # noqa: F401

        emit({"rss_mb": peak_rss_mb()})
        return
    lm = _open(model_dir, setting, threads)
    _decode(lm, 16)
    emit({"rss_mb": peak_rss_mb()})


def run_worker(*args: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    return parse_result(p.stdout)


# ---------------------------------------------------------------------- the report


def build_runtime_model(model_dir: Path, folder: Path) -> Path:
    """The model's architecture and tokenizer at 1 layer x 64 wide: loading and running it costs
    what every model of this kind costs besides its weights (the architecture's code, the
    tokenizer, the kernels' code and buffers)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (folder / "model.safetensors").exists():
        return folder
    config = AutoConfig.from_pretrained(model_dir)
    for key, value in (("n_layer", 1), ("num_hidden_layers", 1), ("n_embd", 64), ("hidden_size", 64)):
        if hasattr(config, key):
            setattr(config, key, value)
    for key in ("n_head", "num_attention_heads", "num_key_value_heads"):
        if hasattr(config, key):
            setattr(config, key, 2)
    if hasattr(config, "intermediate_size"):
        config.intermediate_size = 128
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, folder / name)
    return folder


def weight_bytes_bf16(model_dir: Path) -> int:
    from gptcli.loading import check_weights

    return 2 * check_weights(model_dir, allow_pickle=False)


def _per_round(label: str, runs: dict[str, list[float]], digits: int, names: dict[str, str] | None = None) -> None:
    """One line: each setting's figure of every round."""
    parts = [f"{(names or {}).get(s, s)} " + ", ".join(f"{v:.{digits}f}" for v in runs[s]) for s in SETTINGS]
    print(f"  {label}: " + "; ".join(parts))


SPLIT_NOTES = (
    "token = forward + loop (sampling, stop checks, detokenizing)",
    "products: every projection of one step alone, back to back, on one-row inputs, with the kernels and weights"
    " decoding uses",
    "the rest: the forward with its projections skipped (norms, rotary, cache, attention)",
    "bound: llama.cpp's whole token / (products + the rest), both from their fastest rounds: the most this forward"
    " could reach against llama.cpp if nothing else cost anything",
    "(in the forward the rest runs slower than alone: the products stream the weights through the caches the"
    " rest's code and data were in)",
)


def speed_table(name: str, model_dir: Path, args) -> None:
    r = run_worker("speed", str(model_dir), str(args.new_tokens), str(args.threads), str(args.rounds))
    best, cpp = r["best"], r["cpp_best"]
    print(f"\n{name}: batch 1, {args.new_tokens} greedy tokens, {args.threads} threads, best of {args.rounds} rounds")
    print(f"{'setting':8} {'tokens/s':>9} {'vs bf16':>8} {'llama.cpp':>10} {'tokens/s':>9} {'gptcli/llama.cpp':>17}")
    for s in SETTINGS:
        row = f"{s:8} {best[s]:9.1f} {best[s] / best['bf16']:7.2f}x {LLAMA_CPP_PRECISION[s].upper():>10}"
        row += f" {cpp[s]:9.1f} {best[s] / cpp[s]:16.2f}x" if s in cpp else " not installed"
        print(row)
    _per_round("rounds", r["runs"], 1)
    if r["cpp_runs"]:
        upper = {s: p.upper() for s, p in LLAMA_CPP_PRECISION.items()}
        _per_round("llama.cpp rounds (each right after gptcli's at the same precision)", r["cpp_runs"], 1, upper)
    print(f"\n  where a token's time goes, ms ({name}, gptcli's best round):")
    print(
        f"  {'setting':8} {'token':>7} {'forward':>8} {'loop':>6} {'products':>9} {'the rest':>9} {'sum':>6}"
        f" {'llama.cpp':>10} {'bound':>7}"
    )
    for s in SETTINGS:
        ms, forward, products, rest = 1000 / best[s], r["forward_ms"][s], r["products_ms"][s], r["rest_ms"][s]
        row = f"  {s:8} {ms:7.2f} {forward:8.2f} {ms - forward:6.2f} {products:9.2f} {rest:9.2f} {products + rest:6.2f}"
        if s in cpp:
            row += f" {1000 / cpp[s]:10.2f} {1000 / cpp[s] / (products + rest):6.2f}x"
        print(row)
    for line in SPLIT_NOTES:
        print(f"  {line}")
    _per_round("products rounds (ms)", r["product_runs"], 2)


def rss_table(name: str, model_dir: Path, work: Path, args) -> None:
    folders = {}
    for scheme in ("int8", "int4"):
        out = work / f"{model_dir.name}-{scheme}"
        if not out.exists():
            subprocess.run(
                [sys.executable, "-m", "gptcli", "quantize", str(model_dir), "--to", scheme, "--out", str(out)],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
        folders[scheme] = out
    imports = run_worker("rss", str(model_dir), "runtime", str(args.threads))["rss_mb"]
    tiny = build_runtime_model(model_dir, work / f"{model_dir.name}-runtime")
    runtime = run_worker("rss", str(tiny), "bf16", str(args.threads))["rss_mb"]
    weights = weight_bytes_bf16(model_dir) / 2**20
    rows = [
        ("bf16", model_dir, "bf16"),
        ("int8 (--quantize)", model_dir, "int8"),
        ("int4 (--quantize)", model_dir, "int4"),
        ("int8 (quantized folder)", folders["int8"], "folder"),
        ("int4 (quantized folder)", folders["int4"], "folder"),
    ]
    print(
        f"\n{name}: peak RSS in a fresh process (runtime {runtime:.0f} MB: the same run on a 1-layer, 64-wide "
        f"model of this architecture and tokenizer; the imports alone {imports:.0f} MB; bf16 weights {weights:.0f} MB)"
    )
    print(f"{'setting':24} {'peak RSS MB':>12} {'above runtime':>14} {'/ bf16 weights':>15}")
    for label, folder, setting in rows:
        rss = run_worker("rss", str(folder), setting, str(args.threads))["rss_mb"]
        print(f"{label:24} {rss:12.0f} {rss - runtime:14.0f} {(rss - runtime) / weights:14.2f}x")
    print(f"  target: int4 <= 0.4 x bf16 weights + runtime = {0.4 * weights + runtime:.0f} MB")


def _eval_nll(model: str, text: Path, setting: str) -> float:
    cmd = [sys.executable, "-m", "gptcli", "eval", str(text), "--model", model, "--dtype", "bfloat16", "--json"]
    if setting != "bf16":
        cmd += ["--quantize", setting]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    return float(json.loads(p.stdout.splitlines()[-1])["nll"])


def shakespeare_model(work: Path, given: str | None) -> tuple[str, Path]:
    """A GPT-2-architecture model trained on tinyshakespeare, and its held-out text (last 5% of lines:
    `gptcli train` validates on the last 5% of tokens)."""
    data = SHARED / "tinyshakespeare.txt"
    lines = data.read_text(encoding="utf-8").split("\n")
    held = work / "tinyshakespeare-heldout.txt"
    held.write_text("\n".join(lines[len(lines) - len(lines) // 20 :]), encoding="utf-8")
    if given:
        return given, held
    out = work / "shakespeare-micro"
    if not (out / "model.safetensors").exists() and not (out / "config.json").exists():
        subprocess.run(
            [sys.executable, "-m", "gptcli", "train", str(data), "--preset", "micro", "--arch", "gpt2"]
            + ["--steps", "300", "--vocab-size", "2048", "--seed", "0", "--out", str(out)],
            check=True,
            cwd=ROOT,
        )
    return str(out), held


def quality_table(work: Path, args) -> None:
    stories = work / "tinystories-heldout.txt"
    with open(stories, "w", encoding="utf-8") as f:
        subprocess.run(
            [sys.executable, "recipes/tail_documents.py", str(SHARED / "tinystories-sample.txt"), "0.03"],
            stdout=f,
            check=True,
            cwd=ROOT,
        )
    rows = [("tinystories (bundled)", "tinystories", stories)]
    if not args.skip_shakespeare:
        shk, shk_text = shakespeare_model(work, args.shakespeare_model)
        rows.append(("gpt2-arch micro, tinyshakespeare", shk, shk_text))
    print("\nQuality: nll/token on held-out text (gptcli eval --dtype bfloat16), change against bf16")
    print(f"{'model':34} {'bf16':>8} {'int8':>8} {'change':>8} {'int4':>8} {'change':>8}")
    for label, model, text in rows:
        nll = {s: _eval_nll(model, text, s) for s in SETTINGS}
        b = nll["bf16"]
        print(
            f"{label:34} {b:8.4f} {nll['int8']:8.4f} {100 * (nll['int8'] / b - 1):+7.3f}% "
            f"{nll['int4']:8.4f} {100 * (nll['int4'] / b - 1):+7.3f}%"
        )
    print("  targets: int8 <= +0.5%, int4 <= +3%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs="*")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "gptcli-bench-quantize"))
    ap.add_argument("--shakespeare-model")
    ap.add_argument("--only", default="speed,rss,quality", help="parts to run, in this order")
    ap.add_argument(
        "--models",
        default="all",
        choices=("all", "gpt2", "llama", "llama-1b"),
        help="for speed and rss; all: GPT-2-124M and Llama ~91M; llama-1b: TinyLlama's shape (~1.0 B, not in all)",
    )
    ap.add_argument("--skip-shakespeare", action="store_true", help="quality: the bundled model only")
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "speed":
            worker_speed(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            worker_rss(rest[0], rest[1], int(rest[2]))
        return
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    # The tokenizer only matters for the prompt's length; without the shared data, train it on the README.
    models = []
    if args.models in ("all", "gpt2"):
        vocab = None if (SHARED / "tinyshakespeare.txt").exists() else (ROOT / "README.md").read_text(encoding="utf-8")
        gpt2 = build_gpt2_124m(Path(tempfile.gettempdir()) / "gptcli-bench-gpt2-124m", vocab_text=vocab)
        models.append(("GPT-2-124M shape", gpt2))
    if args.models in ("all", "llama"):
        models.append(("Llama ~91M shape", build_llama(work / "llama-91m")))
    if args.models == "llama-1b":
        models.append(("Llama ~1B shape (TinyLlama's)", build_llama(work / "llama-1b", "llama-1b")))
    started = time.time()
    for part in args.only.split(","):  # in the order given
        if part == "speed":
            for name, folder in models:
                speed_table(name, folder, args)
        elif part == "rss":
            for name, folder in models:
                rss_table(name, folder, work, args)
        elif part == "quality":
            quality_table(work, args)
    print(f"\n(total {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
