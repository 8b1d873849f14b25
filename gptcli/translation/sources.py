"""Input lines for `translate`: an argument, a file, or stdin read line by line.

Each input becomes a `Line` (number, text, optional JSONL record). Stdin is read
by a background thread, so a slow producer (`tail -f | gptcli translate`) gets
each line translated as soon as it arrives, while a fast one fills whole batches.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptcli.errors import InputError
from gptcli.fileio import split_lines
from gptcli.inputs import decode_utf8, parse_json_line, read_text_file


@dataclass
class Line:
    number: int  # 1-based line number in the input
    text: str  # what to translate (no line ending)
    record: dict[str, Any] | None = None  # the JSONL object it came from, echoed back with "translation"


def _strip_eol(line: str) -> str:
    return line[:-1].removesuffix("\r") if line.endswith("\n") else line.removesuffix("\r")


class _Parser:
    """Plain lines, or JSON Lines `{"text": ..., "id": ...}` when asked or when the first non-empty line is an object."""

    def __init__(self, source: str, jsonl: bool | None):
        self.source, self.jsonl = source, jsonl

    def parse(self, number: int, text: str) -> Line | None:
        if self.jsonl is None and text.strip():
            self.jsonl = text.lstrip().startswith("{")
        if not self.jsonl:
            return Line(number, text)
        if not text.strip():
            return None  # blank lines between records carry nothing
        obj = parse_json_line(text, self.source, number)
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise InputError(f'{self.source} line {number} needs a "text" string, like {{"id": 1, "text": "Hello"}}.')
        return Line(number, obj["text"], obj)


def text_lines(text: str, source: str, jsonl: bool | None = None) -> list[Line]:
    parser = _Parser(source, jsonl)
    lines = [parser.parse(n, s) for n, s in enumerate(split_lines(text), start=1)]
    return [line for line in lines if line is not None]


def file_lines(path: Path | str) -> list[Line]:
    jsonl = True if str(path).endswith((".jsonl", ".ndjson")) else None
    return text_lines(read_text_file(path), "stdin" if str(path) == "-" else str(path), jsonl)


def stdin_lines() -> Iterator[Line]:
    """Lines of stdin as they arrive; each is checked as UTF-8 on its own (errors name the line)."""
    stream = getattr(sys.stdin, "buffer", None)
    parser = _Parser("stdin", None)
    number = 0
    while True:
        raw = stream.readline() if stream is not None else sys.stdin.readline().encode("utf-8")
        if not raw:
            return
        number += 1
        text = decode_utf8(raw, f"stdin line {number}")
        if number == 1:
            text = text.lstrip("\ufeff")
        line = parser.parse(number, _strip_eol(text))
        if line is not None:
            yield line


_END = object()


class LineFeed:
    """Lines waiting to be translated, filled by a background reader thread (or all at once)."""

    def __init__(self, lines: Iterator[Line] | list[Line]):
        self.ended = False
        # A reader thread stays at most 10,000 lines ahead; a list is already in memory.
        self._queue: queue.Queue = queue.Queue(maxsize=0 if isinstance(lines, list) else 10_000)
        if isinstance(lines, list):
            for line in lines:
                self._queue.put(line)
            self._queue.put(_END)
        else:
            threading.Thread(target=self._read, args=(lines,), daemon=True, name="translate-reader").start()

    def _read(self, lines: Iterator[Line]) -> None:
        try:
            for line in lines:
                self._queue.put(line)
            self._queue.put(_END)
        except BaseException as exc:  # handed to the main thread, which raises it in order
            self._queue.put(exc)

    def get(self, timeout: float | None) -> Line | None:
        """The next line; None when none is ready within `timeout` (0: don't wait) or the input ended."""
        if self.ended:
            return None
        try:
            item = self._queue.get(block=timeout != 0, timeout=timeout or None)
        except queue.Empty:
            return None
        if item is _END:
            self.ended = True
            return None
        if isinstance(item, BaseException):
            self.ended = True
            raise item
        return item
