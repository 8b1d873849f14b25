"""Atomic checkpoints: everything needed to continue a run exactly.

A checkpoint is OUT/checkpoints/step-NNNNNNNN/: the model (or LoRA adapter)
and tokenizer in Hugging Face format, so it also loads with `--model`, plus
trainer_state.pt (optimizer, scheduler, every process's RNG states, step = data position).
It is built in a hidden temporary folder and renamed into place only when
complete (fileio.publish_folder), so a crash, a second Ctrl-C or a full disk
never leaves a folder that `--resume` would pick up; a failed save removes its
temporary folder, and the next save removes those a killed run left.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptcli.errors import GptcliError, InputError, UsageError
from gptcli.fileio import publish_folder, remove_stale_folders

STATE_FILE = "trainer_state.pt"
MARKER = "checkpoint.json"
PREFIX = "step-"
CHECKPOINTS = "checkpoints"  # the folder of checkpoints inside OUT


def checkpoints_dir(out: Path) -> Path:
    return out / CHECKPOINTS


def rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_for_rank(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """The random states this rank saved; rank 0's when the checkpoint has none for it (a run with
    fewer processes, or a checkpoint written before every rank's states were kept)."""
    by_rank = state.get("rng_by_rank") or [state["rng"]]
    return by_rank[rank] if rank < len(by_rank) else by_rank[0]


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save(out: Path, step: int, write_model: Callable[[Path], None], state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` atomically (fileio.publish_folder), then keep only the `keep` newest."""
    import torch

    root = checkpoints_dir(out)
    root.mkdir(parents=True, exist_ok=True)

    def build(folder: Path) -> None:
        write_model(folder)
        torch.save(state, folder / STATE_FILE)
        (folder / MARKER).write_text(json.dumps({"step": step, "complete": True}) + "\n", encoding="utf-8")

    try:
        # re-saving the same step (resume then immediate stop) replaces the folder
        final = publish_folder(root / f"{PREFIX}{step:08d}", build)
    except BaseException as exc:
        if _disk_full(exc, root):
            raise GptcliError(
                f"disk full while saving the checkpoint of step {step}; it was not written.",
                hint="Earlier checkpoints are intact; free space and --resume auto.",
            ) from exc
        raise
    prune(root, keep)
    return final


def _disk_full(exc: BaseException, root: Path) -> bool:
    """ENOSPC, or a writer error (torch.save raises RuntimeError) while the disk is nearly full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    if "No space left" in str(exc):
        return True
    try:
        return shutil.disk_usage(root).free < (16 << 20)
    except OSError:
        return False


def prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    remove_stale_folders(root)  # left by a run that was killed mid-save


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_resume(out: Path, spec: str) -> Path:
    """`--resume auto` -> newest complete checkpoint in OUT; `--resume PATH` -> that checkpoint."""
    if spec == "auto":
        found = list_checkpoints(checkpoints_dir(out))
        if not found:
            raise UsageError(
                f"--resume auto: {out} has no complete checkpoint to resume from.",
                hint="Start a new run without --resume (or with --overwrite).",
            )
        return found[-1]
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "checkpoints").is_dir() and not (path / MARKER).exists():
        found = list_checkpoints(path / "checkpoints")
        if found:
            return found[-1]
    if not path.is_dir():
        raise UsageError(f"--resume '{spec}' does not exist (use 'auto' or a checkpoint folder).")
    if not (path / MARKER).is_file() or not (path / STATE_FILE).is_file():
        raise InputError(
            f"--resume '{spec}' is not a complete gptcli checkpoint (no {MARKER}/{STATE_FILE}).",
            hint="Pass OUT/checkpoints/step-N or --resume auto.",
        )
    return path


def load_state(path: Path) -> dict[str, Any]:
    """trainer_state.pt, with truncated or foreign files reported as one line."""
    import torch

    from gptcli.errors import ModelLoadError
    from gptcli.loading import check_safetensors_file

    for weights in path.glob("*.safetensors"):
        try:
            check_safetensors_file(weights)
        except ModelLoadError as exc:
            raise InputError(f"checkpoint {path} is damaged: {exc}") from exc
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong format: all mean "not usable"
        raise InputError(
            f"checkpoint {path} is damaged: {path / STATE_FILE} cannot be read "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})."
        ) from exc
    if not isinstance(state, dict) or "step" not in state:
        raise InputError(f"checkpoint {path} is damaged: {STATE_FILE} has no step.")
    return state


def load_weights(model: Any, folder: Path) -> None:
    """Load a checkpoint's weights into the freshly built model (full model or LoRA adapter)."""
    from safetensors.torch import load_file

    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    state: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k}
    if set(missing) - tied or unexpected:
        raise InputError(
            f"checkpoint {folder} does not match this model "
            f"({len(set(missing) - tied)} missing, {len(unexpected)} unexpected tensors)."
        )
