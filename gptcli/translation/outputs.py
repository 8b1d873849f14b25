"""Where translations go: stdout (streamed, line by line) or a file written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gptcli import console
from gptcli.errors import UsageError


class LineSink:
    """Writes result lines; a file appears only complete (temp file + os.replace), never half-written."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file = None
        self._tmp: str | None = None
        if path is not None:
            folder = path.expanduser().resolve().parent
            if not folder.is_dir():
                raise UsageError(f"cannot write '{path}': folder '{folder}' does not exist.")
            if path.is_dir():
                raise UsageError(f"'{path}' is a folder, not a file.")
            fd, self._tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
            self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, line: str) -> None:
        if self._file is None:
            console.write(line + "\n")
            return
        try:
            self._file.write(line + "\n")
        except OSError as exc:
            raise console.OutputError(f"cannot write '{self.path}': {exc.strerror or exc}.") from exc

    def commit(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.discard()
            raise console.OutputError(f"cannot write '{self.path}': {exc.strerror or exc}.") from exc
        self._file = self._tmp = None

    def discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
        self._file = self._tmp = None
