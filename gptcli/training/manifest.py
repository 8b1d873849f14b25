"""The run manifest (OUT/run.json): what produced this folder, enough to reproduce it."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from gptcli.fileio import write_atomic


def hash_files(paths: list[str]) -> list[dict[str, Any]]:
    from gptcli.data import expand_paths

    out = []
    for path in expand_paths(paths):
        if str(path) == "-":
            out.append({"path": "-", "sha256": None})
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append({"path": str(path), "bytes": path.stat().st_size, "sha256": h.hexdigest()})
    return out


def write(out: Path, *, command: str, settings: dict[str, Any], device: str, world_size: int, extra: dict[str, Any]) -> None:
    import accelerate
    import torch
    import transformers

    from gptcli import __version__

    record = {
        "command": command,
        "argv": ["gptcli", *sys.argv[1:]],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"gptcli": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "python": platform.python_version()},
        "seed": settings.get("seed"),
        "device": device,
        "world_size": world_size,
        "data": hash_files(settings.get("data") or []),
        "val_data": hash_files(settings.get("val_data") or []),
        "config": settings,
        **extra,
    }
    write_atomic(out / "run.json", json.dumps(record, indent=2) + "\n")
