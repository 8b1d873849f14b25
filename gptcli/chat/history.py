"""Conversations and the JSONL history files that keep them.

A history file holds one OpenAI-style message per line: `{"role": "system"|"user"|"assistant",
"content": "..."}`. A reply cut short by Ctrl-C carries `"interrupted": true`. Other keys on a
line are kept and written back unchanged. Every write goes through a temporary file and
`os.replace`, so a crash or a full disk never leaves a half-written history behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.errors import InputError
from gptcli.fileio import write_atomic
from gptcli.inputs import decode_utf8, parse_jsonl, read_text_file

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str  # "system", "user" or "assistant"
    content: str
    interrupted: bool = False  # a reply cut short by Ctrl-C
    extra: dict[str, Any] = field(default_factory=dict)  # other keys from a file, written back as they were

    def record(self) -> dict[str, Any]:
        out = {"role": self.role, "content": self.content, **self.extra}
        if self.interrupted:
            out["interrupted"] = True
        return out


@dataclass
class Conversation:
    system: str | None = None
    messages: list[Message] = field(default_factory=list)  # user and assistant turns, oldest first

    def records(self) -> list[dict[str, Any]]:
        head = [Message("system", self.system).record()] if self.system else []
        return head + [m.record() for m in self.messages]

    def exchanges(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")


def message_from_record(obj: dict[str, Any], where: str) -> Message:
    """One validated message from a parsed JSON object; `where` names its line in errors."""
    role, content = obj.get("role"), obj.get("content")
    if role not in ROLES:
        got = "no role" if role is None else f"role {json.dumps(role)}"
        raise InputError(f"{where} has {got}; expected one of {', '.join(ROLES)}.")
    if not isinstance(content, str):
        raise InputError(f"{where} has no \"content\" string.")
    extra = {k: v for k, v in obj.items() if k not in ("role", "content", "interrupted", "__line__")}
    return Message(role, content, bool(obj.get("interrupted", False)), extra)


def parse_messages(text: str, source: str, default_role: str | None = None) -> list[Message]:
    """Messages from JSONL text; errors name the line. `default_role` fills a missing role."""
    messages = []
    for obj in parse_jsonl(text, source):
        line = obj.pop("__line__")
        if default_role and "role" not in obj:
            obj["role"] = default_role
        messages.append(message_from_record(obj, f"{source} line {line}"))
    return messages


def conversation_from(messages: list[Message]) -> Conversation:
    """System messages set the system prompt (the last one wins); the rest is the conversation."""
    conv = Conversation()
    for m in messages:
        if m.role == "system":
            conv.system = m.content
        else:
            conv.messages.append(m)
    return conv


def read_conversation(path: Path) -> Conversation:
    return conversation_from(read_messages(path))


def read_messages(path: Path) -> list[Message]:
    return parse_messages(read_text_file(path), str(path))


def to_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def save_conversation(path: Path, conv: Conversation) -> None:
    write_atomic(path, to_jsonl(conv.records()))


class HistoryFile:
    """A `--history` file that follows the conversation.

    New messages are appended (the existing bytes are kept as they were); when the conversation
    changed in another way (/undo, /reset, a new system prompt) the whole file is rewritten.
    Both go through `write_atomic`.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.written: list[dict[str, Any]] = []  # the records the file holds now

    def load(self) -> Conversation:
        if not self.path.exists():
            return Conversation()  # created with the first exchange
        messages = read_messages(self.path)
        self.written = [m.record() for m in messages]
        return conversation_from(messages)

    def sync(self, conv: Conversation) -> None:
        records = conv.records()
        if records == self.written:
            return
        n = len(self.written)
        if n and records[:n] == self.written and self.path.exists():
            old = decode_utf8(self.path.read_bytes(), str(self.path))
            if old and not old.endswith("\n"):
                old += "\n"
            text = old + to_jsonl(records[n:])
        else:
            text = to_jsonl(records)
        write_atomic(self.path, text)
        self.written = records
