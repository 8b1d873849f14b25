"""The output folder rule: never train into a non-empty folder by accident."""

from __future__ import annotations

import shutil
from pathlib import Path

from gptcli.errors import UsageError

MANIFEST = "run.json"
EFFECTIVE_CONFIG = "gptcli-train.yaml"


def check(out: Path, *, resume: bool, overwrite: bool, main: bool) -> None:
    """Refuse a non-empty OUT unless --resume or --overwrite. No side effects: runs before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file, not a folder.")
    if resume or not main:
        return  # resume validates the checkpoint; only rank 0 inspects OUT (others would see its files)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"output folder '{out}' is not empty.",
                             hint="Pass --resume auto to continue its run, --overwrite to replace it, or another --out.")
        if not ((out / MANIFEST).is_file() or (out / "config.json").is_file() or (out / "checkpoints").is_dir()):
            raise UsageError(f"--overwrite: '{out}' does not look like a gptcli output folder; refusing to delete it.")


def prepare(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Create OUT just before the first file is written (so failed input checks leave nothing)."""
    if overwrite and not resume and out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
