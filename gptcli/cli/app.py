"""The `gptcli` Typer app and `main()`, the one place where failures become exit codes.

Command modules are imported here, but they import only typer and the option
declarations at module level; torch and transformers load inside a command's
body. That keeps `gptcli --help` and shell completion instant.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any, Optional

import typer

from gptcli import __version__
from gptcli.cli import chat as chat_cmd
from gptcli.cli import completion as completion_cmd
from gptcli.cli import evaluate as eval_cmd
from gptcli.cli import generate as generate_cmd
from gptcli.cli import help as help_cls
from gptcli.cli import models as models_cmd
from gptcli.cli import prepare as prepare_cmd
from gptcli.cli import serve as serve_cmd
from gptcli.cli import train as train_cmd
from gptcli.cli import translate as translate_cmd
from gptcli.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, GptcliError, Interrupted

app = typer.Typer(
    name="gptcli",
    help="Generate, chat, train, finetune, evaluate and translate with GPT-style language models.",
    no_args_is_help=True,
    add_completion=False,  # static scripts live in completions/ and `gptcli completion SHELL`
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=help_cls.Group,
)


def _version(value: bool) -> None:
    if value:
        print(f"gptcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True),
    ] = None,
) -> None:
    """Generate, chat, train, finetune, evaluate and translate with GPT-style language models.

    Results go to stdout, progress and diagnostics to stderr. Set GPTCLI_DEBUG=1 for tracebacks.
    """


app.command("generate", cls=help_cls.Command)(generate_cmd.generate)
app.command("chat", cls=help_cls.Command)(chat_cmd.chat)
app.command("train", cls=help_cls.Command)(train_cmd.train)
app.command("finetune", cls=help_cls.Command)(train_cmd.finetune)
app.command("prepare", cls=help_cls.Command)(prepare_cmd.prepare)
app.command("eval", cls=help_cls.Command)(eval_cmd.evaluate)
app.command("translate", cls=help_cls.Command)(translate_cmd.translate)
app.command("serve", cls=help_cls.Command)(serve_cmd.serve)
app.command("models", cls=help_cls.Command)(models_cmd.models)
app.command("completion", cls=help_cls.Command)(completion_cmd.command_for(app))


def _is_click_error(exc: BaseException) -> bool:
    # Typer vendors its own Click; we duck-type its exceptions instead of importing private modules.
    return hasattr(exc, "exit_code") and hasattr(exc, "show") and hasattr(exc, "format_message")


def _debug() -> bool:
    return os.environ.get("GPTCLI_DEBUG", "") not in ("", "0")


def _print_error(message: str) -> None:
    try:
        print(f"Error: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


def _quiet_unraisable(hook):
    """Ctrl-C or a closed pipe can land inside a finalizer; Python then prints a traceback
    ("Exception ignored in ...") that no `except` can catch. Those are not errors to show."""

    def handle(unraisable) -> None:
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, BrokenPipeError)) and not _debug():
            return
        hook(unraisable)

    return handle


# Commands where SIGTERM stops like Ctrl-C (exit 130, partial output kept). Training installs
# its own handlers (finish the step, save a checkpoint: gptcli.training.signals).
_SIGTERM_AS_INTERRUPT = {"generate", "chat", "eval", "translate"}


def _command(args: list[str]) -> str | None:
    """The subcommand's name: the root takes only flags, so it is the first non-option word."""
    return next((a for a in args if not a.startswith("-")), None)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; never raises."""
    from contextlib import nullcontext

    from gptcli import console
    from gptcli.interrupts import sigterm_as_interrupt

    sys.unraisablehook = _quiet_unraisable(sys.__unraisablehook__)
    args = sys.argv[1:] if argv is None else argv
    try:
        with sigterm_as_interrupt() if _command(args) in _SIGTERM_AS_INTERRUPT else nullcontext():
            rv = app(args=argv, prog_name="gptcli", standalone_mode=False)
        console.flush_stdout()
        return rv if isinstance(rv, int) else 0
    except console.StdoutClosed:
        console.silence_stdout()  # the reader left (`| head`): stop quietly
        return 0
    except Interrupted as exc:
        # A stop the user asked for (Ctrl-C in training: the checkpoint is saved) is news, not an error.
        _flush_quietly()
        try:
            print(str(exc), file=sys.stderr, flush=True)
        except OSError:
            pass
        return exc.exit_code
    except GptcliError as exc:
        if _debug():
            traceback.print_exc()
        _flush_quietly()
        _print_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _flush_quietly()
        return EXIT_INTERRUPTED
    except typer.Abort:
        _flush_quietly()
        return EXIT_INTERRUPTED
    except Exception as exc:
        if _is_click_error(exc):
            click_error: Any = exc  # Typer's vendored Click exception, duck-typed (see _is_click_error)
            click_error.show()
            return int(click_error.exit_code)
        if _debug():
            traceback.print_exc()
        _flush_quietly()
        _print_error(_out_of_memory(exc) or f"{type(exc).__name__}: {exc} (set GPTCLI_DEBUG=1 for the traceback)")
        return EXIT_RUNTIME


def _out_of_memory(exc: BaseException) -> str | None:
    """One line for a memory limit too low for gptcli's libraries (`ulimit -v`).

    Loading a shared library then fails with "failed to map segment", and numpy wraps that in
    a page of installation advice that does not apply.
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, MemoryError):
        return "out of memory. Free some memory, or raise the memory limit (ulimit -v) if one is set."
    for cause in reversed(chain):  # the root cause first: numpy's wrapper repeats it inside its page
        text = str(cause).strip()
        if isinstance(cause, MemoryError) or "failed to map segment" in text or "Cannot allocate memory" in text:
            detail = text.splitlines()[0] if text else type(cause).__name__
            return (
                f"not enough memory to load the libraries gptcli needs ({detail}). "
                "Is a memory limit (ulimit -v) set too low?"
            )
    return None


def _flush_quietly() -> None:
    """Keep what was already produced (a partial generation) when stopping on an error."""
    from gptcli import console

    try:
        console.flush_stdout()
    except (console.StdoutClosed, GptcliError):
        console.silence_stdout()


# Commands whose process may end without interpreter teardown (see main). Training is not
# among them: accelerate and torch.distributed clean up in exit handlers.
_FAST_EXIT_COMMANDS = {"generate", "chat", "eval", "translate", "serve", "models", "completion"}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    code = run(argv)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        from gptcli import console

        console.silence_stdout()
    if _command(args) in _FAST_EXIT_COMMANDS and "torch" in sys.modules:
        # Tearing down an interpreter that loaded torch and transformers takes most of a second,
        # a third of a quick generation. Everything these commands write is flushed or renamed
        # into place by now.
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)
    sys.exit(code)
