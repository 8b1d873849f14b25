"""Help output: Typer's Rich help, tidied, and printed through gptcli.console.

Typer's Rich help is printed straight to sys.stdout, so `gptcli --help | head -n 2`
hit a closed pipe inside Typer, which turns EPIPE into exit 1. It also pads the usage
line with a full-width line of spaces above and below, and shows a `<bool>` type
column for flags, which take no value. The command classes here render the same help
into a string, trim it, and print it with console.write, whose closed-pipe handling
the rest of the CLI already uses (exit 0, quietly).
"""

from __future__ import annotations

import io
import re
import sys
from contextlib import redirect_stdout

from typer.core import TyperCommand, TyperGroup

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Capture(io.StringIO):
    """A string buffer that reports the real stdout's terminal state, so Rich keeps colours
    (and NO_COLOR, TERM=dumb) exactly as if it printed to the terminal itself."""

    def __init__(self, like) -> None:
        super().__init__()
        self._like = like

    def isatty(self) -> bool:
        try:
            return bool(self._like.isatty())
        except (AttributeError, ValueError):
            return False


def tidy(text: str) -> str:
    """Drop trailing spaces on each line and blank lines at both ends."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not _ANSI.sub("", lines[0]).strip():
        lines.pop(0)
    while lines and not _ANSI.sub("", lines[-1]).strip():
        lines.pop()
    return "\n".join(lines)


def _show_help(ctx, param, value) -> None:
    """The --help callback: print through console.write (StdoutClosed on a closed pipe)."""
    if not value or ctx.resilient_parsing:
        return
    from gptcli import console

    console.write(ctx.get_help() + "\n")
    ctx.exit()


class _HelpMixin:
    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            # A flag takes no value: an empty metavar leaves Rich's type column blank.
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.callback = _show_help
        return option

    def format_help(self, ctx, formatter) -> None:
        buffer = _Capture(sys.stdout)
        with redirect_stdout(buffer):
            super().format_help(ctx, formatter)  # type: ignore[misc]  # a mixin: TyperCommand/TyperGroup have it
        formatter.write(tidy(buffer.getvalue()))


class Command(_HelpMixin, TyperCommand):
    pass


class Group(_HelpMixin, TyperGroup):
    pass
