"""What `gptcli eval` prints: per-document JSONL, summary JSON, the comparison table, progress."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

from gptcli.evaluation.perplexity import DocScore, ModelScore


def _num(x: float | None) -> float | None:
    """JSON has no NaN/Infinity: an undefined or infinite value is null."""
    return None if x is None or not math.isfinite(x) else x


def doc_record(model: str, doc: DocScore) -> dict:
    rec = {
        "model": model,
        "id": doc.id,
        "source": doc.source,
        "tokens": doc.tokens,
        "bytes": doc.bytes,
        "nll": _num(doc.nll),
        "ppl": _num(doc.ppl),
        "bits_per_byte": _num(doc.bits_per_byte),
    }
    if doc.truncated:
        rec["truncated"] = True
    if doc.skipped:
        rec["skipped"] = doc.skipped
    return rec


def summary_record(score: ModelScore) -> dict:
    return {
        "model": score.model,
        "documents": len(score.scored),
        "skipped_documents": score.skipped,
        "tokens": score.tokens,
        "bytes": score.bytes,
        "nll": _num(score.nll),
        "ppl": _num(score.ppl),
        "bits_per_byte": _num(score.bits_per_byte),
        "tokens_per_s": round(score.tokens_per_s, 2),
        "elapsed_s": round(score.seconds, 4),
        "context": score.context,
        "stride": score.stride,
        "device": score.device,
        "dtype": score.dtype,
    }


def write_jsonl(records) -> None:
    from gptcli import console

    for rec in records:
        console.write(json.dumps(rec, ensure_ascii=False) + "\n", flush=False)
    console.flush_stdout()


COLUMNS = ("model", "docs", "tokens", "nll/token", "perplexity", "bits/byte", "tokens/s")


def table_rows(scores: list[ModelScore]) -> list[list[str]]:
    def f(x: float | None, digits: int) -> str:
        return "n/a" if x is None else ("inf" if math.isinf(x) else f"{x:.{digits}f}")

    return [
        [
            s.model,
            str(len(s.scored)),
            f"{s.tokens:,}",
            f(s.nll, 4),
            f(s.ppl, 3),
            f(s.bits_per_byte, 4),
            f"{s.tokens_per_s:,.0f}",
        ]
        for s in scores
    ]


def print_table(scores: list[ModelScore], *, stderr: bool = False) -> None:
    """A Rich table on a terminal; elsewhere plain space-aligned columns, never cut or styled."""
    from gptcli import console

    rows = table_rows(scores)
    out = console.err_console() if stderr else console.out_console()
    if not out.is_terminal:
        text = _plain_table([list(COLUMNS), *rows])
        console.info(text) if stderr else console.write(text + "\n")
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, header_style=None if out.no_color else "bold")
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


@contextmanager
def progress_display(label: str) -> Iterator[_Progress]:
    """A transient progress bar on a terminal stderr; elsewhere (a log file) a plain line at most
    every LOG_EVERY_S seconds, so short runs stay quiet and long ones show they are alive."""
    from gptcli import console

    err = console.err_console()
    if not err.is_terminal:
        yield _LogProgress(label)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        yield _Progress(bar, bar.add_task(label, total=None))


class _Progress:
    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def plan(self, total: int) -> None:
        self.bar.update(self.task, total=total)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


LOG_EVERY_S = 30.0


class _LogProgress:
    def __init__(self, label: str):
        import time

        self.label, self.total, self.done = label, 0, 0
        self.clock = time.monotonic
        self.last = self.clock()

    def plan(self, total: int) -> None:
        self.total = total

    def advance(self, n: int) -> None:
        from gptcli import console

        self.done += n
        if self.clock() - self.last >= LOG_EVERY_S and self.done < self.total:
            self.last = self.clock()
            console.info(
                f"{self.label}: {self.done:,}/{self.total:,} tokens ({100 * self.done / max(self.total, 1):.0f}%)"
            )
