"""Models shipped inside the package, so gptcli works on a fresh offline machine.

Each bundled model is a Hugging Face folder under this package with an extra
`gptcli-model.json` that says what it is (description, training data, licence).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The model used when neither --model nor GPTCLI_MODEL is given.
DEFAULT_MODEL = "tinystories"
# Default for `translate --to fr` from English.
DEFAULT_TRANSLATION_MODELS = {("en", "fr"): "tiny-en-fr"}
CARD = "gptcli-model.json"


def names() -> list[str]:
    return sorted(p.parent.name for p in HERE.glob(f"*/{CARD}"))


def path_of(name: str) -> Path | None:
    folder = HERE / name
    if "/" in name or name.startswith(".") or not (folder / CARD).is_file():
        return None
    return folder


def recorded_base(spec: str) -> str:
    """A base model recorded as a bundled model's folder (LoRA adapters do that, so peft alone can load
    them) names the same bundled model when that folder is gone: gptcli was reinstalled elsewhere."""
    path = Path(spec)
    if path.is_absolute() and not path.exists() and path.parent.name == "bundled" and path_of(path.name):
        return path.name
    return spec


def card(name: str) -> dict:
    folder = path_of(name)
    if folder is None:
        return {}
    info = json.loads((folder / CARD).read_text(encoding="utf-8"))
    info["name"] = name
    info["size_bytes"] = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    info["default"] = name == DEFAULT_MODEL
    return info
