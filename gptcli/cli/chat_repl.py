"""The interactive chat: a prompt_toolkit line editor, streamed replies and slash commands.

Replies stream to stdout; notices and errors go to stderr (styled with Rich on a terminal,
plain with NO_COLOR). A bad command or a message the model cannot take prints an error and
the chat goes on; only Ctrl-D or /exit leave.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.chat.history import read_conversation, save_conversation
from gptcli.chat.session import SETTABLE, ChatSession, TrimmedStream
from gptcli.cli.output import Output, stats_line
from gptcli.errors import GptcliError
from gptcli.interrupts import Terminated

BLOCK = '"""'

HELP = f"""Commands:
  /help              this help
  /system TEXT       set the system prompt (/system alone shows it, /system - removes it)
  /reset             start a new conversation (the system prompt is kept)
  /undo              drop the last exchange
  /save FILE         save the conversation as JSON Lines (role/content records)
  /load FILE         load a conversation saved with /save (or any --history file)
  /set NAME VALUE    change a sampling option: max_new_tokens, temperature, top_k, top_p,
                     min_p, repetition_penalty, greedy, stop, seed (/set alone shows them;
                     /set NAME alone or /set NAME - puts back its default)
  /exit              leave (Ctrl-D too)
Typing:
  Enter sends. Esc then Enter (or Alt+Enter) starts a new line; a line holding only {BLOCK}
  starts a multi-line block and another {BLOCK} line sends it. Up/Down recall earlier input.
  Start a message with // to send it with a single leading /.
  Ctrl-C stops a reply (the partial reply is kept, marked interrupted) or clears the line."""

# Control characters in a reply (other than newline and tab) are shown as U+FFFD: raw escape
# sequences from a model must not move the cursor or restyle the user's terminal.
_CONTROLS = {c: "\ufffd" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F]}


def _prompt_output() -> Any:
    """Where the line editor draws: the terminal. With stdout piped (`gptcli chat | tee log`) that
    is stderr, so stdout gets only the replies, never the editor's prompts and redraw codes."""
    try:
        if sys.stdout is not None and sys.stdout.isatty():
            return None  # prompt_toolkit's default: stdout
    except (AttributeError, ValueError):
        pass
    from prompt_toolkit.output import create_output

    return create_output(stdout=sys.stderr)


class Repl:
    def __init__(self, session: ChatSession, out: Output | None = None):
        self.session = session
        self.out = out or Output()
        self.color = console.color_enabled(sys.stdout) and console.color_enabled(sys.stderr)

    # ------------------------------------------------------------------ output

    def show(self, text: str) -> None:
        self.out.text(text.translate(_CONTROLS))

    def notice(self, text: str, style: str = "dim") -> None:
        console.err_console().print(text, style=style if self.color else None, markup=False, highlight=False)

    def error(self, exc: GptcliError) -> None:
        console.err_console().print(
            f"Error: {exc}", style="bold red" if self.color else None, markup=False, highlight=False
        )

    # ------------------------------------------------------------------ input

    def _prompt_session(self) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.styles import Style

        keys = KeyBindings()

        @keys.add("escape", "enter")
        def _newline(event: Any) -> None:  # Esc+Enter / Alt+Enter: a line break inside the message
            event.current_buffer.insert_text("\n")

        style = Style.from_dict({"you": "ansigreen bold", "more": "ansigreen"}) if self.color else None
        return PromptSession(
            history=InMemoryHistory(),
            key_bindings=keys,
            style=style,
            include_default_pygments_style=False,
            output=_prompt_output(),
        )

    def _read(self, prompts: Any) -> str:
        line = prompts.prompt([("class:you", "you> ")])
        if line.strip() != BLOCK:
            return line
        lines: list[str] = []
        while True:
            line = prompts.prompt([("class:more", "...  ")])
            if line.strip() == BLOCK:
                return "\n".join(lines)
            lines.append(line)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        prompts = self._prompt_session()
        lm = self.session.lm
        self.notice(f"Chatting with {lm.name} ({self.session.format.name}). /help for commands, Ctrl-D to leave.")
        while True:
            try:
                text = self._read(prompts)
            except Terminated:
                raise
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line
            except EOFError:
                break
            if not text.strip():
                continue
            if text.startswith("/") and not text.startswith("//"):
                try:
                    if self.command(text.strip()) == "exit":
                        break
                except GptcliError as exc:
                    self.error(exc)
                continue
            self.reply(text[1:] if text.startswith("//") else text)

    def reply(self, text: str) -> None:
        try:
            turn = self.session.send(text, on_text=TrimmedStream(self.show))
        except GptcliError as exc:
            self.error(exc)
            return
        except Terminated:
            raise
        except KeyboardInterrupt:  # before generation began: nothing to keep
            self.notice("[interrupted]", style="yellow")
            return
        self.out.text("\n")
        if turn.interrupted:
            self.notice("[interrupted: the partial reply is kept]", style="yellow")
        if turn.terminated:
            raise Terminated()
        if self.out.show_stats:  # dim like the other notices, not a plain stats line
            self.notice(stats_line(turn.stats))

    # ------------------------------------------------------------------ slash commands

    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        name, arg = name.lower(), arg.strip()
        session = self.session
        if name in ("/exit", "/quit"):
            return "exit"
        if name in ("/help", "/?"):
            self.notice(HELP, style="")
        elif name == "/system":
            if not arg:
                self.notice(f"System prompt: {session.conv.system}" if session.conv.system else "No system prompt.")
            else:
                session.set_system(None if arg == "-" else arg)
                self.notice("System prompt removed." if arg == "-" else "System prompt set.")
        elif name == "/reset":
            session.reset()
            self.notice("New conversation" + (" (system prompt kept)." if session.conv.system else "."))
        elif name == "/undo":
            self.notice("Dropped the last exchange." if session.undo() else "Nothing to undo.")
        elif name == "/save":
            path = self._path(arg, name)
            save_conversation(path, session.conv)
            self.notice(f"Saved {len(session.conv.records())} messages to {path}.")
        elif name == "/load":
            path = self._path(arg, name)
            session.replace(read_conversation(path))
            self.notice(f"Loaded {len(session.conv.records())} messages from {path}.")
        elif name == "/set":
            self._set(arg)
        else:
            self.notice(
                f"Unknown command {name}. Type /help for the list; start a message with // to send a leading /.",
                style="yellow",
            )
        return None

    def _path(self, arg: str, name: str) -> Path:
        from gptcli.errors import UsageError

        if not arg:
            raise UsageError(f"{name} needs a file name, e.g. {name} chat.jsonl")
        parts = shlex.split(arg) if arg[0] in "'\"" else [arg]
        return Path(parts[0]).expanduser()

    def _set(self, arg: str) -> None:
        params = self.session.params
        if not arg:
            shown = ", ".join(f"{k}={getattr(params, k)!r}" for k in SETTABLE)
            self.notice(f"Sampling: {shown}")
            return
        name, _, value = arg.partition(" ")
        key = self.session.set_option(name, value)
        self.notice(f"{key} = {getattr(self.session.params, key)!r}")
