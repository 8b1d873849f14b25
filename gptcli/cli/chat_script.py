"""Scripted chat: stdin is not a terminal, so each input message gets exactly one reply.

Text mode prints only the replies (one per line block) on stdout; `--json` prints one JSON
object per reply with token counts and the finish reason. With `--jsonl`, stdin holds
messages, one JSON object a line: user messages get replies, while system and assistant
messages are added to the conversation as they are (a system prompt, a few-shot example).
"""

from __future__ import annotations

from gptcli.chat.history import Message
from gptcli.chat.session import ChatSession, TrimmedStream
from gptcli.cli.output import Output


def run_scripted(session: ChatSession, inputs: list[Message], out: Output) -> None:
    """Replies as text, or as `Turn.to_record()` objects with --json; statistics with --stats."""
    for message in inputs:
        if message.role == "system":
            session.set_system(message.content)
            continue
        if message.role == "assistant":
            session.add(message)
            continue
        if out.as_json:
            turn = session.send(message.content)
            out.record(turn.to_record(session.lm.name))
        else:
            turn = session.send(message.content, on_text=TrimmedStream(out.text))
            out.text("\n")
        out.run_stats(turn.stats)
        if turn.interrupted:
            # The partial reply is printed and saved; stop like any interrupted command (exit 130).
            raise KeyboardInterrupt
