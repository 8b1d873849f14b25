import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_model  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("GPTCLI_MODEL", None)
os.environ.pop("GPTCLI_DEVICE", None)
os.environ.pop("GPTCLI_DTYPE", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("GPTCLI_DEBUG", None)
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def run_cli(*args, input: bytes | str | None = None, env: dict | None = None, timeout: float = 120, **kw):
    """Run `python -m gptcli` in a real subprocess; returns CompletedProcess with bytes output."""
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *map(str, args)],
        input=input if input is not None else b"",
        capture_output=True,
        env=env or cli_env(),
        timeout=timeout,
        **kw,
    )
