"""Progress on stderr: a Rich progress bar on a terminal, plain lines otherwise.

Only the main process reports. Plain lines carry the same fields as the bar,
so logs and CI output stay readable and free of escape codes.
"""

from __future__ import annotations

import sys
from typing import Any

from gptcli import console


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1000:.1f}k" if tokens_per_s >= 1000 else f"{tokens_per_s:.0f}"


class Reporter:
    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.val: float | None = None
        self._bar: Any = None
        if enabled and console.color_enabled(sys.stderr):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            # The ETA is the engine's (optimizer time per step so far), as on the plain lines. Rich's
            # TimeRemainingColumn estimates speed only from updates within its last 30 s, so when progress
            # updates are further apart (slow steps, --log-every) it never has two and stays at -:--:--.
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TextColumn("{task.fields[eta]}"),
                console=console.err_console(),
                transient=False,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, stats="", eta="")
            self._bar.start()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            console.info(text)

    def step(self, step: int, loss: float, lr: float, tokens_per_s: float, eta_s: float) -> None:
        if not self.enabled:
            return
        val = f" | val {self.val:.4f}" if self.val is not None else ""
        if self._bar is not None:
            stats = f"loss {loss:.4f}{val} | lr {lr:.2e} | {format_rate(tokens_per_s)} tok/s"
            self._bar.update(self._task, completed=step, stats=stats, eta=f"eta {format_duration(eta_s)}")
        else:
            console.info(
                f"step {step}/{self.total} | loss {loss:.4f}{val} | lr {lr:.2e} | "
                f"{format_rate(tokens_per_s)} tok/s | eta {format_duration(eta_s)}"
            )

    def evaluated(self, step: int, val_loss: float, best: bool) -> None:
        self.val = val_loss
        if self._bar is None:
            self.message(f"step {step}/{self.total} | val loss {val_loss:.4f}{' (best)' if best else ''}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
