"""Scripted chat: stdin is not a terminal, so each input message gets exactly one reply.

Text mode prints only the replies (one per line block) on stdout; `--json` prints one JSON
object per reply with token counts and the finish reason. With `--jsonl`, stdin holds
messages, one JSON object a line: user messages get replies, while system and assistant
messages are added to the conversation as they are (a system prompt, a few-shot example).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gptcli import console
from gptcli.chat.history import Message, json_line
from gptcli.chat.session import ChatSession, TrimmedStream, Turn

if TYPE_CHECKING:
    from gptcli.generation import RunStats


def reply_record(turn: Turn, model_name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": turn.reply.content}
    done = turn.completion
    if done is None:
        out.update(finish_reason="interrupted", interrupted=True, model=model_name)
        return out
    out.update(
        finish_reason=done.finish_reason,
        prompt_tokens=done.prompt_tokens,
        cached_tokens=done.cached_tokens,
        completion_tokens=done.completion_tokens,
        seed=done.seed,
        model=model_name,
        ttft_s=round(done.ttft_s, 4),
        tokens_per_s=round(done.tokens_per_s, 2),
        elapsed_s=round(done.elapsed_s, 4),
    )
    return out


def run_scripted(
    session: ChatSession, inputs: list[Message], *, as_json: bool, stats: Callable[[RunStats], str] | None = None
) -> None:
    """`stats`: how to render each turn's statistics (on stderr); None prints none."""
    for message in inputs:
        if message.role == "system":
            session.set_system(message.content)
            continue
        if message.role == "assistant":
            session.add(message)
            continue
        if as_json:
            turn = session.send(message.content)
            console.write(json_line(reply_record(turn, session.lm.name)) + "\n")
        else:
            turn = session.send(message.content, on_text=TrimmedStream(console.write))
            console.write("\n")
        if stats:
            console.info(stats(turn.stats))
        if turn.interrupted:
            # The partial reply is printed and saved; stop like any interrupted command (exit 130).
            raise KeyboardInterrupt
