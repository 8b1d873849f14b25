"""The metrics file: one JSON object per progress or evaluation record (OUT/metrics.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli.fileio import split_lines, write_atomic

NAME = "metrics.jsonl"


class MetricsFile:
    def __init__(self, out: Path, enabled: bool, resume_step: int | None = None):
        self.path = out / NAME
        self.enabled = enabled
        if enabled and resume_step is not None:
            self._truncate_after(resume_step)
        self._f = open(self.path, "a", encoding="utf-8") if enabled else None

    def _truncate_after(self, step: int) -> None:
        """A killed run may have logged past its last checkpoint; those records are redone."""
        if not self.path.is_file():
            return
        kept = []
        for line in split_lines(self.path.read_text(encoding="utf-8")):
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut by the kill
        write_atomic(self.path, "".join(k + "\n" for k in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
