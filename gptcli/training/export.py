"""Writing a model folder that `--model` loads: weights (safetensors), config, tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli.fileio import publish_files


def save_model_folder(model: Any, tokenizer: Any, folder: Path, state_dict: Any = None) -> None:
    """Hugging Face layout; bos/eos in the generation config are the tokenizer's real ids.

    state_dict: the full weights when the model's own parameters are FSDP shards."""
    gen = getattr(model, "generation_config", None)
    if gen is not None and tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
        gen.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # a copy: save_pretrained pops the tensors it writes, and the engine reuses the dict for the export
    extra = {"state_dict": dict(state_dict)} if state_dict is not None else {}
    model.save_pretrained(folder, safe_serialization=True, **extra)
    tokenizer.save_pretrained(folder)


def publish(out: Path, write: Any) -> list[str]:
    """Write the final model into OUT without ever leaving a half-written weight file there;
    returns the names written (fileio.publish_files: built in OUT/.tmp-final-PID, then each
    file renamed into place)."""
    return publish_files(out, write, "final")
