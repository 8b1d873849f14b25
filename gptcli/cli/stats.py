"""How the CLI reports a model load and a run's statistics (`--stats`, on stderr)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptcli.generation import RunStats
    from gptcli.loading import LoadedModel


def describe_load(lm: LoadedModel, seconds: float) -> str:
    return f"Loaded {lm.name} on {lm.runtime.describe()} in {seconds:.2f} s"


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def stats_line(stats: RunStats) -> str:
    ttft = f"{stats.ttft_s * 1000:.0f} ms" if stats.ttft_s is not None else "n/a"
    return (
        f"prompt {stats.prompt_tokens} tokens, generated {stats.completion_tokens} tokens in "
        f"{stats.elapsed_s:.2f} s ({stats.tokens_per_s:.1f} tokens/s), time to first token {ttft}, "
        f"peak memory {format_bytes(stats.peak_memory_bytes)}"
    )
