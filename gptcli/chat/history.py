"""Conversations and the JSONL history files that keep them.

A history file holds one OpenAI-style message per line: `{"role": "system"|"user"|"assistant",
"content": "..."}`. A reply cut short by Ctrl-C carries `"interrupted": true`.

A file's lines are the user's data. New messages are appended as complete lines, in one
`O_APPEND` write. When the conversation changes in another way (/undo, /reset, /load, a new
system prompt) the file is rewritten in one piece (`write_atomic`, through a symlink), and
every line that still belongs to it is written back as it was: the line's text with all its
keys, earlier system messages, blank lines. Each change is made under an advisory lock on the
file, after reading it again, so that chats sharing a history keep each other's exchanges.

What gptcli writes itself is strict JSON on one line: U+2028, U+2029 and U+0085 are escaped
(line readers built on `str.splitlines()` split at them), and a number too large for a float
(`1e999`) is written as such, never as `Infinity`.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gptcli.errors import GptcliError, InputError, UsageError
from gptcli.fileio import json_line, resolve_target, split_lines, write_atomic
from gptcli.inputs import decode_utf8, parse_jsonl, read_text_file

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; appends are still whole lines
    fcntl = None  # type: ignore[assignment]

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    """One message. Messages are not changed once made (an edit makes a new one), so `line`, the
    text of the line a message was read from, is written back as it was."""

    role: str  # "system", "user" or "assistant"
    content: str
    interrupted: bool = False  # a reply cut short by Ctrl-C
    extra: dict[str, Any] = field(default_factory=dict)  # other keys from a file, written back as they were
    line: str | None = field(default=None, compare=False, repr=False)

    def record(self) -> dict[str, Any]:
        out = {"role": self.role, "content": self.content, **self.extra}
        if self.interrupted:
            out["interrupted"] = True
        return out

    def to_line(self) -> str:
        return self.line if self.line is not None else json_line(self.record())


@dataclass
class Conversation:
    system: str | None = None
    messages: list[Message] = field(default_factory=list)  # user and assistant turns, oldest first

    def records(self) -> list[dict[str, Any]]:
        head = [Message("system", self.system).record()] if self.system else []
        return head + [m.record() for m in self.messages]

    def lines(self) -> list[str]:
        head = [Message("system", self.system).to_line()] if self.system else []
        return head + [m.to_line() for m in self.messages]


# --------------------------------------------------------------------------- JSON lines


def to_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json_line(r) + "\n" for r in records)


# --------------------------------------------------------------------------- reading


def message_from_record(obj: dict[str, Any], where: str, line: str | None = None) -> Message:
    """One validated message from a parsed JSON object; `where` names its line in errors."""
    role, content = obj.get("role"), obj.get("content")
    if role not in ROLES:
        got = "no role" if role is None else f"role {json.dumps(role)}"
        raise InputError(f"{where} has {got}; expected one of {', '.join(ROLES)}.")
    if not isinstance(content, str):
        raise InputError(f'{where} has no "content" string.')
    extra = {k: v for k, v in obj.items() if k not in ("role", "content", "interrupted", "__line__")}
    return Message(role, content, bool(obj.get("interrupted", False)), extra, line)


def _numbered_messages(text: str, source: str, default_role: str | None = None) -> list[tuple[int, Message]]:
    """(line number, message) for each message of JSONL text; errors name the line."""
    lines = split_lines(text)
    out = []
    for obj in parse_jsonl(text, source):
        number = obj.pop("__line__")
        original = lines[number - 1]
        if default_role and "role" not in obj:
            obj["role"] = default_role
            original = None  # the line lacks the role: write the completed record instead
        out.append((number, message_from_record(obj, f"{source} line {number}", original)))
    return out


def parse_messages(text: str, source: str, default_role: str | None = None) -> list[Message]:
    """Messages from JSONL text; errors name the line. `default_role` fills a missing role."""
    return [m for _, m in _numbered_messages(text, source, default_role)]


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


def save_conversation(path: Path, conv: Conversation) -> None:
    write_atomic(path, "".join(line + "\n" for line in conv.lines()))


# --------------------------------------------------------------------------- --history files


@dataclass
class _Line:
    text: str  # as in the file, without its line break
    message: Message | None  # None for a blank or unreadable line
    ours: bool  # holds a message of this process's conversation (lines other processes added are not)


def _foreign(text: str) -> _Line:
    """A line another process (or the user) added since this one last looked: kept as it is."""
    message = None
    try:
        obj = json.loads(text) if text.strip() else None
        if isinstance(obj, dict):
            message = message_from_record(obj, "", text)
    except (ValueError, InputError):
        pass
    return _Line(text, message, False)


def _open_locked(path: Path, *, write: bool) -> int | None:
    """A descriptor of the history file holding an advisory lock: exclusive to write (the file is
    created if missing, and opened for appending), shared to read (None if the file is missing).

    A rewrite replaces the file, so a process that waited for the lock may hold the old one; it
    then opens the new file and waits again.
    """
    target = resolve_target(path)
    flags = (os.O_RDWR | os.O_APPEND | os.O_CREAT) if write else os.O_RDONLY
    while True:
        try:
            fd = os.open(target, flags, 0o666)
        except FileNotFoundError:
            if not write:
                return None
            raise UsageError(f"cannot write '{path}': folder '{target.parent}' does not exist.") from None
        except IsADirectoryError:
            raise UsageError(f"'{path}' is a folder, not a file.") from None
        except OSError as exc:
            raise GptcliError(f"cannot {'write' if write else 'read'} '{path}': {exc.strerror or exc}.") from exc
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            if os.path.samestat(os.fstat(fd), os.stat(target)):
                return fd
        except OSError:
            pass  # the file was renamed away or removed meanwhile: try again
        os.close(fd)


def _read_fd(fd: int, path: Path) -> str:
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return decode_utf8(b"".join(chunks), str(path))


def _append_fd(fd: int, text: str, path: Path) -> None:
    """Append complete lines, or nothing: a failed write (a full disk) is cut back off."""
    data = text.encode("utf-8")
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        raise GptcliError(f"cannot write '{path}': {exc.strerror or exc}.") from exc


class HistoryFile:
    """A `--history` file that follows the conversation (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lines: list[_Line] = []  # what the file held after this process last read or wrote it
        self.system: str | None = None  # the system prompt the file had then

    def check(self) -> None:
        """Fail now, before any reply is generated, if the file could never be written."""
        target = resolve_target(self.path)
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir():
            raise UsageError(f"cannot write '{self.path}': folder '{folder}' does not exist.")
        if target.is_dir():
            raise UsageError(f"'{self.path}' is a folder, not a file.")
        writable = os.access(target, os.W_OK) if target.exists() else os.access(folder, os.W_OK | os.X_OK)
        if not writable:
            raise UsageError(f"cannot write '{self.path}': permission denied.")

    def load(self) -> Conversation:
        self.check()
        fd = _open_locked(self.path, write=False)
        if fd is None:
            return Conversation()  # created with the first exchange
        try:
            text = _read_fd(fd, self.path)
        finally:
            os.close(fd)
        numbered = dict(_numbered_messages(text, str(self.path)))
        self.lines = [_Line(t, numbered.get(i), i in numbered) for i, t in enumerate(split_lines(text), start=1)]
        conv = conversation_from(list(numbered.values()))
        self.system = conv.system
        return conv

    def _unchanged(self, conv: Conversation) -> bool:
        ours = [id(x.message) for x in self.lines if x.ours and x.message and x.message.role != "system"]
        return conv.system == self.system and ours == [id(m) for m in conv.messages]

    def sync(self, conv: Conversation) -> None:
        """Make the file hold the conversation: append what is new, or rewrite it if needed."""
        if self._unchanged(conv):
            return
        fd = _open_locked(self.path, write=True)
        assert fd is not None  # opened for writing: created when missing
        try:
            text = _read_fd(fd, self.path)
            lines, rewrite = self._plan(self._merge(split_lines(text)), conv)
            if rewrite:
                write_atomic(self.path, "".join(x.text + "\n" for x in lines))
            else:
                known = len(split_lines(text))
                new = "".join(x.text + "\n" for x in lines[known:])
                if new:
                    _append_fd(fd, ("\n" if text and not text.endswith("\n") else "") + new, self.path)
        finally:
            os.close(fd)  # releases the lock
        self.lines, self.system = lines, conv.system

    def _merge(self, texts: list[str]) -> list[_Line]:
        """The file's lines now, with this process's lines recognized by their text (another
        process may have appended lines, or rewritten the file, since this one last looked)."""
        pool: dict[str, deque[_Line]] = {}
        for x in self.lines:
            pool.setdefault(x.text, deque()).append(x)
        return [pool[t].popleft() if pool.get(t) else _foreign(t) for t in texts]

    def _plan(self, current: list[_Line], conv: Conversation) -> tuple[list[_Line], bool]:
        """The lines the file should hold, and whether that needs a rewrite (else: an append)."""
        keep = {id(m) for m in conv.messages}
        lines = [
            x
            for x in current
            if not (x.ours and x.message and x.message.role != "system" and id(x.message) not in keep)
        ]
        rewrite = len(lines) < len(current)  # /undo, /reset, /load dropped some of ours
        if conv.system != self.system:  # this process changed the system prompt
            at = [i for i, x in enumerate(lines) if x.message and x.message.role == "system"]
            last = lines[at[-1]].message if at else None
            if conv.system != (last.content if last else None):
                rewrite = True
                if conv.system is None:
                    lines = [x for i, x in enumerate(lines) if i not in at]
                elif last is not None:  # the line that set it gets the new text and keeps its other keys
                    new = replace(last, content=conv.system, line=None)
                    lines[at[-1]] = _Line(new.to_line(), new, True)
                else:
                    new = Message("system", conv.system)
                    lines.insert(0, _Line(new.to_line(), new, True))
        present = {id(x.message) for x in lines if x.message is not None}
        lines += [_Line(m.to_line(), m, True) for m in conv.messages if id(m) not in present]
        return lines, rewrite
