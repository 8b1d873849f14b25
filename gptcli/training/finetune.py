"""`gptcli finetune` (being built)."""

from __future__ import annotations

from typing import Any

from gptcli.training.settings import TrainSettings


def run(s: TrainSettings, progress: bool = True) -> dict[str, Any]:
    from gptcli.errors import UsageError

    raise UsageError("finetune is not available yet.")
