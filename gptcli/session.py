"""One call that every inference command uses to get a ready model: runtime, weights, fast path."""

from __future__ import annotations

import time
from typing import Any

from gptcli.loading import LoadedModel, load_model
from gptcli.runtime import resolve_runtime


def open_model(
    model: str | None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    fast: bool = True,
) -> tuple[LoadedModel, float]:
    """Load for inference. Returns the model and the seconds it took to load."""
    started = time.perf_counter()
    runtime = resolve_runtime(device, dtype, threads)
    lm = load_model(model, runtime, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if fast:
        from gptcli.fastpath import fuse_activations, optimize_for_inference, prefer_eager_attention

        optimize_for_inference(lm.model, lm.runtime)
        fuse_activations(lm.model)
        prefer_eager_attention(lm)
    return lm, time.perf_counter() - started


def describe_load(lm: LoadedModel, seconds: float) -> str:
    return f"Loaded {lm.name} on {lm.runtime.describe()} in {seconds:.2f} s"


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def stats_line(stats: Any) -> str:
    ttft = f"{stats.ttft_s * 1000:.0f} ms" if stats.ttft_s is not None else "n/a"
    return (
        f"prompt {stats.prompt_tokens} tokens, generated {stats.completion_tokens} tokens in "
        f"{stats.elapsed_s:.2f} s ({stats.tokens_per_s:.1f} tokens/s), time to first token {ttft}, "
        f"peak memory {format_bytes(stats.peak_memory_bytes)}"
    )
