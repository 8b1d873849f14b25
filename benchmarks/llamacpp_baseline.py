"""llama.cpp side by side: the same weights in llama.cpp (llama-cpp-python) and in gptcli.

    python benchmarks/llamacpp_baseline.py [--new-tokens 128] [--threads 2] [--rounds 3]

Importable: `tokens_per_s(hf_dir, precision, prompt, new_tokens, threads)` gives llama.cpp's
greedy batch-1 tokens/s for a Hugging Face folder at "f16", "q8_0" or "q4_0" (None when
llama-cpp-python is not installed). The GGUF files come from `gptcli export --to gguf` (Q4_0
through llama.cpp's own `llama_model_quantize`) and are cached in a temporary folder for the
run. Timing: prompt evaluation plus `new_tokens` greedy decode steps, after one warm-up run,
the median of `rounds`; as gptcli's own tokens/s (completion tokens / elapsed).

As a script it builds two random-weight models locally (no download): the GPT-2-124M shape and
a ~91 M Llama shape (12 layers, 768 wide, 12 heads, SwiGLU 2048, the bundled 4,096-token
tokenizer, untied head), and prints llama.cpp at each precision beside gptcli's bfloat16 and
float32 decode (the `gptcli generate` path, in-process, same prompt and token count), all
measured in the same run, rounds interleaved. llama-cpp-python is not a gptcli dependency:
`pip install llama-cpp-python` (a source build: ~20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_gpt2_124m, build_llama  # noqa: E402

PRECISIONS = ("f16", "q8_0", "q4_0")
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."

_cache_dir: Path | None = None
_gguf_files: dict[tuple[str, str], Path] = {}
_models: dict[tuple[str, int], Any] = {}


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def gguf_file(hf_dir: Path, precision: str) -> Path:
    """`gptcli export --to gguf --outtype PRECISION` of `hf_dir`, once per run."""
    global _cache_dir
    from gptcli.export_gguf import export_gguf

    key = (str(Path(hf_dir).resolve()), precision)
    if key not in _gguf_files:
        if _cache_dir is None:
            _cache_dir = Path(tempfile.mkdtemp(prefix="gptcli-llamacpp-"))
            atexit.register(shutil.rmtree, _cache_dir, True)
        path = _cache_dir / f"{Path(hf_dir).name}-{len(_gguf_files)}-{precision}.gguf"
        export_gguf(str(hf_dir), path, precision)
        _gguf_files[key] = path
    return _gguf_files[key]


_extra_bufts_ok: dict[str, bool] = {}


def extra_buffer_types_work(path: Path) -> bool:
    """Whether llama.cpp's extra weight buffer types (AMX tiles, repacked Q4_0/Q8_0) decode `path`
    without crashing. A build with -march=native on a CPU that reports AMX compiles the AMX
    kernels, but a virtual machine may not let a process use the tiles: the first AMX
    instruction then kills the process (SIGILL). Probed once, in a child process."""
    import subprocess

    key = str(path)
    if key not in _extra_bufts_ok:
        probe = (
            "import llama_cpp, sys\n"
            "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)\n"
            "llm.eval(llm.tokenize(b'Once upon a time', add_bos=True))\n"
        )
        p = subprocess.run([sys.executable, "-c", probe, key], capture_output=True)
        _extra_bufts_ok[key] = p.returncode == 0
    return _extra_bufts_ok[key]


def _llama(path: Path, threads: int, n_ctx: int) -> Any:
    import llama_cpp
    import llama_cpp.llama_cpp as api

    key = (str(path), threads)
    if key not in _models:
        defaults = api.llama_model_default_params
        if not extra_buffer_types_work(path):
            # llama-cpp-python has no argument for it: Llama() reads these defaults
            def plain_buffers() -> Any:
                params = defaults()
                params.use_extra_bufts = False
                return params

            api.llama_model_default_params = plain_buffers
        try:
            _models[key] = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
            )
        finally:
            api.llama_model_default_params = defaults
    return _models[key]


def _timed_greedy(llm: Any, ids: list[int], new_tokens: int) -> float:
    """Seconds for the prompt plus `new_tokens` greedy tokens, from an empty cache (end-of-text
    does not stop it: random weights may pick it, and the count must be the same every run)."""
    llm.reset()
    start = time.perf_counter()
    produced = 0
    for _ in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
        produced += 1
        if produced == new_tokens:
            break
    return time.perf_counter() - start


def llama_cpp_runner(hf_dir: Path, precision: str, prompt: str, new_tokens: int, threads: int) -> Callable[[], float]:
    """A function that measures llama.cpp's tokens/s once (the model loaded and warmed up here)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (got {precision!r})")
    llm = _llama(gguf_file(Path(hf_dir), precision), threads, n_ctx=1024)
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    if len(ids) + new_tokens > llm.n_ctx():
        raise ValueError(f"prompt ({len(ids)} tokens) plus {new_tokens} new tokens exceed the context")
    _timed_greedy(llm, ids, min(8, new_tokens))  # warm-up: first touch of the weights, thread pool start
    return lambda: new_tokens / _timed_greedy(llm, ids, new_tokens)


def tokens_per_s(
    hf_dir: Path, precision: str, prompt: str, new_tokens: int, threads: int, rounds: int = 3
) -> float | None:
    """llama.cpp's greedy batch-1 tokens/s on `hf_dir` exported at `precision` (median of `rounds`);
    None without llama-cpp-python."""
    if not llama_cpp_available():
        return None
    run = llama_cpp_runner(hf_dir, precision, prompt, new_tokens, threads)
    return statistics.median(run() for _ in range(rounds))


# --------------------------------------------------------------------------- gptcli's side


def gptcli_runner(hf_dir: Path, dtype: str, prompt: str, new_tokens: int, threads: int) -> Callable[[], float]:
    """A function that measures gptcli's `generate --greedy` path (stream_generate, batch 1) once."""
    from gptcli.generation import Request, RunStats, stream_generate
    from gptcli.loading import open_model
    from gptcli.sampling import SamplingParams

    lm, _ = open_model(str(hf_dir), dtype=dtype, threads=threads)

    def run(n: int = new_tokens) -> float:
        stats = RunStats()
        request = Request(prompt, SamplingParams(max_new_tokens=n, greedy=True))
        list(stream_generate(lm, [request], batch_size=1, stats=stats))
        return stats.tokens_per_s

    run(8)  # warm-up
    return run


# --------------------------------------------------------------------------- models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models-dir", default=str(Path(tempfile.gettempdir()) / "gptcli-bench-models"))
    args = ap.parse_args()
    if not llama_cpp_available():
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python (a ~20-minute source build).")
    import llama_cpp

    root = Path(args.models_dir)
    shapes = {
        "GPT-2-124M shape": build_gpt2_124m(root / "gpt2-124m"),
        "Llama ~91M shape": build_llama(root / "llama-91m"),
    }
    n, t = args.new_tokens, args.threads
    print(
        f"\nllama.cpp (llama-cpp-python {llama_cpp.__version__}) beside gptcli: greedy, batch 1, {n} new tokens, "
        f"{t} threads, random weights, median of {args.rounds}"
    )
    for label, folder in shapes.items():
        for precision in PRECISIONS:
            gguf_file(folder, precision)  # exports first, outside the timed part
        runners = {f"gptcli, {d}": gptcli_runner(folder, d, PROMPT, n, t) for d in ("bfloat16", "float32")}
        for precision in PRECISIONS:
            runners[f"llama.cpp, {precision.upper()}"] = llama_cpp_runner(folder, precision, PROMPT, n, t)
        runs: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):  # interleaved: the machine's speed drifts between runs
            for name, run in runners.items():
                runs[name].append(run())
        speed = {name: statistics.median(values) for name, values in runs.items()}
        plain = [p.upper() for p in PRECISIONS if not extra_buffer_types_work(gguf_file(folder, p))]
        ours = speed["gptcli, bfloat16"]
        print(f"\n{label}")
        print(f"{'engine, precision':30} {'tokens/s':>9} {'gptcli bf16 / this':>19}")
        for name, value in speed.items():
            print(f"{name:30} {value:9.1f} {ours / value:18.2f}x")
        if plain:
            print(
                f"llama.cpp {', '.join(plain)}: without extra buffer types (AMX, repacked weights), "
                "which crash this build here (SIGILL)"
            )


def close_models() -> None:
    """Free llama.cpp's models before the interpreter tears down (freeing them during teardown,
    beside torch's, can crash the process after the table is printed)."""
    for llm in _models.values():
        llm.close()
    _models.clear()


if __name__ == "__main__":
    try:
        main()
    finally:
        close_models()
