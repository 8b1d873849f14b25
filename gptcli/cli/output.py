"""The one place commands present results: text, JSON Lines and tables on stdout; notes,
warnings, statistics and progress on stderr.

Each command makes one `Output` from its `--json`/`--stats` flags and renders everything
through it. Records come from the core's result types (`to_record()`); this module only
decides how they are written. Underneath, `gptcli.console` handles a closed or failing
stdout (`| head`, a full disk), so nothing here repeats that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptcli import console
from gptcli.errors import GptcliError, UsageError
from gptcli.fileio import AtomicFile, json_line

if TYPE_CHECKING:
    from gptcli.generation import RunStats
    from gptcli.loading import LoadedModel
    from gptcli.remote import RemoteModel


class Output:
    def __init__(self, *, as_json: bool = False, stats: bool = False):
        self.as_json = as_json  # results as JSON (Lines) rather than text
        self.show_stats = stats  # --stats: speed and memory on stderr

    # ------------------------------------------------------------------ stdout

    def text(self, text: str, *, flush: bool = True) -> None:
        console.write(text, flush=flush)

    def record(self, rec: dict[str, Any], *, flush: bool = True) -> None:
        """One JSON Lines record: strict JSON on one line (see `gptcli.fileio.json_line`)."""
        console.write(json_line(rec) + "\n", flush=flush)

    def records(self, recs: Iterable[dict[str, Any]]) -> None:
        for rec in recs:
            self.record(rec, flush=False)
        console.flush_stdout()

    def table(self, columns: Sequence[str], rows: list[list[str]], *, stderr: bool = False) -> None:
        """A Rich table on a terminal; elsewhere plain space-aligned columns, never cut or styled.
        The first column is left-aligned, the others right-aligned (numbers)."""
        out = console.err_console() if stderr else console.out_console()
        if not out.is_terminal:
            text = plain_table([list(columns), *rows])
            console.info(text) if stderr else console.write(text + "\n")
            return
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, header_style=None if out.no_color else "bold")
        for i, name in enumerate(columns):
            table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)

    # ------------------------------------------------------------------ stderr

    def note(self, message: str) -> None:
        console.info(message)

    def warn(self, message: str) -> None:
        console.warn(message)

    def stats(self, line: str) -> None:
        """A statistics line, shown only with --stats."""
        if self.show_stats:
            console.info(line)

    def run_stats(self, stats: RunStats) -> None:
        if self.show_stats:
            console.info(stats_line(stats))

    def open_model(self, spec: str | None, **options: Any) -> LoadedModel:
        """`loading.open_model(spec, **options)`, then the runtime's advice (always) and the load
        line (--stats): every inference command opens its model here."""
        from gptcli.loading import open_model

        lm, seconds = open_model(spec, **options)
        if lm.runtime.warning:
            self.warn(lm.runtime.warning)
        self.stats(describe_load(lm, seconds))
        return lm

    def open_backend(
        self, spec: str | None, *, api_base: str | None = None, timeout: float | None = None, **options: Any
    ) -> LoadedModel | RemoteModel:
        """`open_model` for a local model; for `openai:NAME`, the remote model (nothing is sent yet).

        Options about loading and running weights here (--device, --dtype, --threads, --allow-pickle,
        --trust-remote-code: every option meant for open_model) are usage errors with a remote model
        when typed on the command line;
        from their GPTCLI_* variables they are defaults for local models and ignored. Likewise
        --api-base and --timeout with a local model."""
        from gptcli.remote import is_remote, open_remote

        if not is_remote(spec):
            _refuse({"--api-base": (api_base, "OPENAI_BASE_URL"), "--timeout": (timeout, "GPTCLI_TIMEOUT")}, spec)
            return self.open_model(spec, **options)
        assert spec is not None
        # Every loading option (whatever a command passes on to open_model) is a flag named after it.
        flags: dict[str, tuple[Any, str | None]] = {}
        for key, value in options.items():
            given = value is not None and value is not False
            flags[f"--{key.replace('_', '-')}"] = (value if given else None, _ENV.get(key))
        _refuse(flags, spec)
        remote = open_remote(spec, api_base=api_base, timeout=timeout)
        self.stats(f"Using {remote.model} at {remote.where} (timeout {remote.timeout:g} s)")
        return remote

    @contextmanager
    def progress(self, label: str, unit: str = "tokens") -> Iterator[Any]:
        """A transient progress bar on a terminal stderr; elsewhere (a log file) a plain line at most
        every LOG_EVERY_S seconds, so short runs stay quiet and long ones show they are alive.
        The object has `plan(total)` and `advance(n)`."""
        err = console.err_console()
        if not err.is_terminal:
            yield _LogProgress(label, unit)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as bar:
            yield _Progress(bar, bar.add_task(label, total=None))


_ENV = {"device": "GPTCLI_DEVICE", "dtype": "GPTCLI_DTYPE", "threads": "GPTCLI_THREADS", "quantize": "GPTCLI_QUANTIZE"}


def _refuse(given: dict[str, tuple[Any, str | None]], spec: str | None) -> None:
    """A usage error for the first option typed that does not apply to this kind of model."""

    from gptcli.remote import is_remote

    for flag, (value, env) in given.items():
        if value is None or _from_env(value, env):
            continue
        if is_remote(spec):
            raise UsageError(
                f"{flag} applies to local models; {spec} runs on its server, which decides that.",
                hint=f"Drop {flag}, or set it when starting the server.",
            )
        raise UsageError(f"{flag} applies to remote models (--model openai:NAME).", hint=f"Drop {flag}.")


def _from_env(value: Any, env: str | None) -> bool:
    """Whether `value` is what the variable `env` holds (so it was not typed, or typed the same)."""
    import os

    raw = os.environ.get(env) if env else None
    try:
        return raw is not None and type(value)(raw) == value
    except ValueError:
        return False


def plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


def number(x: float | None, digits: int) -> str:
    """A table cell for a metric that may be undefined (n/a) or infinite."""
    return "n/a" if x is None else ("inf" if math.isinf(x) else f"{x:.{digits}f}")


# ---------------------------------------------------------------------- statistics lines


def describe_load(lm: LoadedModel, seconds: float) -> str:
    quant = f", {lm.quantization.describe()}" if lm.quantization is not None else ""
    return f"Loaded {lm.name} on {lm.runtime.describe()}{quant} in {seconds:.2f} s"


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def stats_line(stats: RunStats) -> str:
    ttft = f"{stats.ttft_s * 1000:.0f} ms" if stats.ttft_s is not None else "n/a"
    if not stats.usage_known:
        # A remote server that sent no token counts: say so rather than count something else.
        return f"token counts unknown (the server sent none), {stats.elapsed_s:.2f} s, time to first token {ttft}"
    line = (
        f"prompt {stats.prompt_tokens} tokens, generated {stats.completion_tokens} tokens in "
        f"{stats.elapsed_s:.2f} s ({stats.tokens_per_s:.1f} tokens/s), time to first token {ttft}"
    )
    # A remote model's memory is the server's; this process's own says nothing about it.
    if stats.peak_memory_bytes:
        line += f", peak memory {format_bytes(stats.peak_memory_bytes)}"
    return line + (speculation_stats(stats) if stats.speculative else "")


def speculation_stats(stats: RunStats) -> str:
    """The speculative-decoding part of a statistics line: drafted, accepted, acceptance rate."""
    rate = stats.acceptance_rate
    return (
        f", drafted {stats.drafted_tokens} tokens, accepted {stats.accepted_tokens} "
        f"({'n/a' if rate is None else f'{rate:.0%}'})"
    )


# ---------------------------------------------------------------------- progress


class _Progress:
    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def plan(self, total: int) -> None:
        self.bar.update(self.task, total=total)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


LOG_EVERY_S = 30.0


class _LogProgress:
    def __init__(self, label: str, unit: str):
        import time

        self.label, self.unit, self.total, self.done = label, unit, 0, 0
        self.clock = time.monotonic
        self.last = self.clock()

    def plan(self, total: int) -> None:
        self.total = total

    def advance(self, n: int) -> None:
        self.done += n
        if self.clock() - self.last >= LOG_EVERY_S and (not self.total or self.done < self.total):
            self.last = self.clock()
            if not self.total:  # never planned: a stream of unknown length
                console.info(f"{self.label}: {self.done:,} {self.unit}")
                return
            console.info(
                f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%)"
            )


# ---------------------------------------------------------------------- line sink


class LineSink:
    """Result lines for stdout (streamed, line by line) or for a file that appears only complete
    (see `gptcli.fileio.AtomicFile`), never half-written."""

    def __init__(self, out: Output, path: Path | None):
        self.out, self.path = out, path
        self._file = AtomicFile(path) if path is not None else None

    def line(self, text: str) -> None:
        if self._file is None:
            self.out.text(text + "\n")
            return
        try:
            self._file.write(text + "\n")
        except GptcliError as exc:
            raise console.OutputError(str(exc)) from exc

    def record(self, rec: dict[str, Any]) -> None:
        self.line(json_line(rec))

    def commit(self) -> None:
        if self._file is None:
            return
        try:
            self._file.commit()
        except GptcliError as exc:
            raise console.OutputError(str(exc)) from exc
        self._file = None

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()
        self._file = None
