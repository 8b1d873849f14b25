"""The output folder rule: never train into a non-empty folder by accident, never delete what is not ours.

`--overwrite` empties a folder only when gptcli made it (its run.json carries
gptcli's signature, or the keys every gptcli manifest has had) and only when
everything in it is something gptcli writes; the names are listed below and
nowhere else. Anything else in the folder is the user's: the run is refused
before any work, and nothing is deleted.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

from gptcli.errors import UsageError
from gptcli.training import manifest
from gptcli.training.checkpoint import CHECKPOINTS, PREFIX
from gptcli.training.metrics import NAME as METRICS

MANIFEST = manifest.NAME
EFFECTIVE_CONFIG = "gptcli-train.yaml"

# What gptcli writes into OUT. The run's own records (and the hidden temporaries of their atomic writes):
RUN_FILES = (MANIFEST, EFFECTIVE_CONFIG, METRICS)
RUN_PATTERNS = (*(f".{name}.*.tmp" for name in RUN_FILES), ".tmp-final-*")  # fileio.AtomicFile; export.publish
# checkpoints/ holds only checkpoint folders and their temporaries (checkpoint.save).
CHECKPOINT_PATTERNS = (f"{PREFIX}*", f".tmp-{PREFIX}*", f".old-{PREFIX}*")
# The final model folder. Runs record what they published in run.json ("outputs"); runs made before
# that get this list: what save_pretrained writes for the models, adapters and tokenizers gptcli trains.
LEGACY_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "adapter_config.json",
    "adapter_model.safetensors",
)
LEGACY_ADAPTER_FILES = ("README.md",)  # peft's model card, beside adapter_config.json only


def check(out: Path, *, resume: bool, overwrite: bool, main: bool) -> None:
    """Refuse a non-empty OUT unless --resume or --overwrite. No side effects: runs before any work."""
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out '{out}' is a symbolic link to nothing.", hint="Remove the link or pick another --out.")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file, not a folder.")
    if resume or not main:
        return  # resume validates the checkpoint; only rank 0 inspects OUT (others would see its files)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(
                f"output folder '{out}' is not empty.",
                hint="Pass --resume auto to continue its run, --overwrite to replace it, or another --out.",
            )
        owned(out)


def prepare(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Create OUT just before the first file is written (so failed input checks leave nothing).

    With --overwrite, first delete the earlier run's files (checked again: the folder may have
    changed while the data loaded). OUT itself stays, so a symbolic link to a folder keeps working.
    """
    if overwrite and not resume and out.is_dir() and any(out.iterdir()):
        entries = owned(out)
        # run.json last: a deletion cut short still leaves a folder that --overwrite recognises
        for path in sorted(entries, key=lambda p: p.name == MANIFEST):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def owned(out: Path) -> list[Path]:
    """The entries of OUT that --overwrite deletes: all of them, or a UsageError if any is not gptcli's."""
    record = _manifest(out / MANIFEST)
    if record is None:
        raise UsageError(
            f"--overwrite: '{out}' does not look like a gptcli output folder (no gptcli {MANIFEST}); "
            "refusing to delete it.",
            hint="Pick another --out, or empty the folder yourself.",
        )
    entries = sorted(out.iterdir())
    allowed = _allowed_names(record, {p.name for p in entries})
    foreign = [p.name for p in entries if not _matches(p.name, allowed) or not _kind_ok(p)]
    checkpoints = out / CHECKPOINTS
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        foreign += [
            f"{CHECKPOINTS}/{p.name}"
            for p in sorted(checkpoints.iterdir())
            if not (_matches(p.name, CHECKPOINT_PATTERNS) and p.is_dir() and not p.is_symlink())
        ]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UsageError(
            f"--overwrite: '{out}' holds files gptcli did not write ({shown}); refusing to delete anything.",
            hint="Move them out of the folder, or pick another --out.",
        )
    return entries


def published(out: Path) -> list[str]:
    """The final model files an earlier run left in OUT (a run resumed in place keeps listing them)."""
    record = _manifest(out / MANIFEST)
    if record is None:
        return []
    present = sorted(p.name for p in out.iterdir() if p.is_file() or p.is_symlink())
    model = _model_names(record, set(present))
    return [name for name in present if _matches(name, model)]


def _allowed_names(record: dict, present: set[str]) -> tuple[str, ...]:
    return (*RUN_FILES, *RUN_PATTERNS, CHECKPOINTS, *_model_names(record, present))


def _model_names(record: dict, present: set[str]) -> tuple[str, ...]:
    outputs = record.get("outputs")
    if isinstance(outputs, list):
        return tuple(n for n in outputs if isinstance(n, str) and "/" not in n and n not in ("", ".", ".."))
    return LEGACY_MODEL_FILES + (LEGACY_ADAPTER_FILES if "adapter_config.json" in present else ())


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _kind_ok(path: Path) -> bool:
    """checkpoints/ is a real folder and everything else a file (a link there would lead outside OUT)."""
    if path.name == CHECKPOINTS:
        return path.is_dir() and not path.is_symlink()
    if path.name.startswith(".tmp-final-"):
        return path.is_dir() and not path.is_symlink()
    return path.is_file() or path.is_symlink()


def _manifest(path: Path) -> dict | None:
    """run.json when gptcli wrote it: its signature, or (runs made before the signature) the keys
    every gptcli manifest has had: command, argv starting with gptcli, versions naming gptcli."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("signature") == manifest.SIGNATURE:
        return record
    argv, versions = record.get("argv"), record.get("versions")
    legacy = (
        record.get("command") in ("train", "finetune")
        and isinstance(argv, list)
        and argv[:1] == ["gptcli"]
        and isinstance(versions, dict)
        and "gptcli" in versions
    )
    return record if legacy else None
