"""Where output goes: results on stdout, everything else on stderr.

Rich is imported lazily and only for stderr. Rich already drops colour when the
stream is not a terminal or when NO_COLOR is set; we additionally force plain
output in those cases so no ANSI escape ever reaches a pipe or a log file.
"""

from __future__ import annotations

import errno
import os
import sys
from functools import lru_cache

from gptcli.errors import GptcliError


class OutputError(GptcliError):
    """Writing results to stdout failed (disk full, I/O error)."""


class StdoutClosed(Exception):
    """The reader of stdout went away (`| head`). Not an error: we stop quietly."""


def color_enabled(stream=None) -> bool:
    stream = stream or sys.stderr
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@lru_cache(maxsize=1)
def err_console():
    """A Rich console on stderr for progress, tables of stats and warnings."""
    from rich.console import Console

    plain = not color_enabled(sys.stderr)
    return Console(
        stderr=True,
        highlight=False,
        no_color=plain,
        color_system=None if plain else "auto",
        force_terminal=None if not plain else False,
        soft_wrap=True,
    )


def out_console():
    """A Rich console on stdout, for tables that are the command's result."""
    from rich.console import Console

    plain = not color_enabled(sys.stdout)
    return Console(
        highlight=False,
        no_color=plain,
        color_system=None if plain else "auto",
        force_terminal=None if not plain else False,
        soft_wrap=True,
    )


def warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write(text: str, *, flush: bool = True) -> None:
    """Write a piece of the result to stdout, turning stream failures into our errors."""
    try:
        sys.stdout.write(text)
        if flush:
            sys.stdout.flush()
    except BrokenPipeError as exc:
        raise StdoutClosed() from exc
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise StdoutClosed() from exc
        raise OutputError(f"write error: {exc.strerror or exc}") from exc


def flush_stdout() -> None:
    write("", flush=True)


def silence_stdout() -> None:
    """After the reader has gone, point stdout at /dev/null so exit-time flushes are quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
