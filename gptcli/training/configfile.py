"""`--config FILE`: any flag of train/finetune in YAML or TOML.

Keys are the long option names (`n-layer` or `n_layer`). A file may also hold
`train:` / `finetune:` sections; the section of the running command is used.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gptcli.errors import UsageError
from gptcli.fileio import write_atomic
from gptcli.inputs import read_text_file


def load(path: str | Path, command: str) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"config file '{path}' does not exist.")
    text = read_text_file(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        values = _toml(text, path)
    elif suffix in (".yaml", ".yml", ".json"):
        values = _yaml(text, path)
    else:
        raise UsageError(f"config file '{path}' must end in .yaml, .yml, .toml or .json.")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"config file '{path}' must hold a mapping of option names to values.")
    section = values.get(command)
    if isinstance(section, dict):  # a shared file with train:/finetune: sections
        values = {k: v for k, v in values.items() if k not in ("train", "finetune")} | section
    else:
        values = {k: v for k, v in values.items() if k not in ("train", "finetune")}
    return values


def _toml(text: str, path: Path) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file '{path}' is not valid TOML: {exc}.") from exc


def _yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"config file '{path}' is not valid YAML{where}.") from exc


def dump(values: dict[str, Any], path: Path) -> None:
    """Write the effective settings as YAML (loadable again with --config)."""
    import yaml

    clean = {k.replace("_", "-"): v for k, v in values.items()}
    write_atomic(path, yaml.safe_dump(clean, sort_keys=False, allow_unicode=True))
