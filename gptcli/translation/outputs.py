"""Where translations go: stdout (streamed, line by line) or a file written atomically."""

from __future__ import annotations

from pathlib import Path

from gptcli import console
from gptcli.errors import GptcliError
from gptcli.fileio import AtomicFile


class LineSink:
    """Writes result lines; a file appears only complete (see `gptcli.fileio`), never half-written."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file = AtomicFile(path) if path is not None else None

    def write(self, line: str) -> None:
        if self._file is None:
            console.write(line + "\n")
            return
        try:
            self._file.write(line + "\n")
        except GptcliError as exc:
            raise console.OutputError(str(exc)) from exc

    def commit(self) -> None:
        if self._file is None:
            return
        try:
            self._file.commit()
        except GptcliError as exc:
            raise console.OutputError(str(exc)) from exc
        self._file = None

    def discard(self) -> None:
        if self._file is not None:
            self._file.discard()
        self._file = None
