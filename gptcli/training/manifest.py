"""The run manifest (OUT/run.json): what produced this folder, enough to reproduce it.

"signature" is gptcli's mark (what lets `--overwrite` recognise the folder as
its own), "outputs" names the final model files the run published there, and
"segments" is the provenance of every invocation that trained the weights:
a fresh run has one; each `--resume` appends one, starting at the resumed
step, with the fingerprints (SHA-256) of the data it read, so changing the
data between resumes never erases what the earlier steps were trained on.
The top-level "data"/"val_data" are those of the latest segment.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from gptcli.fileio import write_atomic

NAME = "run.json"
SIGNATURE = "gptcli-run/1"  # not "format": finetune records its data format under that key


def hash_files(paths: list[str], known: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each file's size and SHA-256. `known`: hashes already established for this content
    ({resolved path: sha256}, from a token cache entry checked against the files in this run),
    so a cache hit does not read the whole corpus again."""
    from gptcli.data import expand_paths

    known = known or {}
    out: list[dict[str, Any]] = []
    for path in expand_paths(paths):
        if str(path) == "-":
            out.append({"path": "-", "sha256": None})
            continue
        digest = known.get(str(path.resolve()))
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
        # Absolute: a resumed run compares against it from wherever it is started.
        out.append({"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest})
    return out


def fingerprints(
    data: list[str], val_data: list[str], known: dict[str, str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    return {"data": hash_files(data or [], known), "val_data": hash_files(val_data or [], known)}


def read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def segments_before(previous: dict[str, Any] | None, step: int) -> list[dict[str, Any]]:
    """The segments of an earlier manifest that trained the weights of checkpoint `step` (those that
    started after it are redone by the resumed run). A manifest without segments was one segment."""
    if previous is None:
        return []
    segments = previous.get("segments")
    if not isinstance(segments, list):
        segments = [
            {"start_step": 0, **{k: previous.get(k) for k in ("created", "argv", "versions", "data", "val_data")}}
        ]
    return [seg for seg in segments if isinstance(seg, dict) and int(seg.get("start_step") or 0) < step]


def data_changes(before: dict[str, Any], now: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Files whose contents differ, and files added or gone, between two sets of fingerprints."""
    changes = []
    for key in ("data", "val_data"):
        old = {str(e["path"]): e.get("sha256") for e in before.get(key) or [] if isinstance(e, dict) and e.get("path")}
        new = {e["path"]: e["sha256"] for e in now[key]}
        # The same contents under another name (a relative path recorded by an older run, a moved
        # file) are the same data: pair them up first.
        for path, digest in list(new.items()):
            twin = next((p for p, d in old.items() if digest and d == digest and p not in new), None)
            if path not in old and twin is not None:
                del old[twin], new[path]
        for path in sorted(old.keys() | new.keys()):
            name = Path(str(path)).name
            if path not in new:
                changes.append(f"{name} is gone")
            elif path not in old:
                changes.append(f"{name} is new")
            elif old[path] and new[path] and old[path] != new[path]:  # stdin has no fingerprint
                changes.append(f"{name} changed")
    return changes


def write(
    out: Path,
    *,
    command: str,
    settings: dict[str, Any],
    device: str,
    world_size: int,
    extra: dict[str, Any],
    prints: dict[str, list[dict[str, Any]]],
    start_step: int = 0,
    earlier: list[dict[str, Any]] | None = None,
    outputs: list[str] | None = None,
) -> None:
    """outputs: final model files already in OUT (resuming in place), until the run publishes its own."""
    import accelerate
    import torch
    import transformers

    from gptcli import __version__

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    argv = ["gptcli", *sys.argv[1:]]
    versions = {
        "gptcli": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }
    record = {
        "signature": SIGNATURE,
        "command": command,
        "argv": argv,
        "created": created,
        "versions": versions,
        "seed": settings.get("seed"),
        "device": device,
        "world_size": world_size,
        "data": prints["data"],
        "val_data": prints["val_data"],
        "config": settings,
        **extra,
        "segments": [
            *(earlier or []),
            {"start_step": start_step, "created": created, "argv": argv, "versions": versions, **prints},
        ],
        "outputs": sorted(outputs or []),
    }
    write_atomic(out / NAME, json.dumps(record, indent=2) + "\n")


def add_outputs(out: Path, names: list[str]) -> None:
    """Record the final model files published into OUT (what a later --overwrite may delete)."""
    record = read(out / NAME)
    if record is None:
        return
    record["outputs"] = sorted(set(_names(record.get("outputs"))) | set(names))
    write_atomic(out / NAME, json.dumps(record, indent=2) + "\n")


def _names(value: Any) -> list[str]:
    return [n for n in value if isinstance(n, str)] if isinstance(value, list) else []
