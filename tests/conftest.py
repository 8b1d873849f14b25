import atexit
import os
import shutil
import subprocess
import sys
import tempfile
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
# train/eval keep token caches here, not in the user's ~/.cache (subprocesses inherit it)
os.environ["GPTCLI_CACHE_DIR"] = tempfile.mkdtemp(prefix="gptcli-test-cache-")
atexit.register(shutil.rmtree, os.environ["GPTCLI_CACHE_DIR"], True)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def marian_dir(tmp_path_factory) -> Path:
    """A tiny Marian en→fr model (sentencepiece trained here), built once: tests only read it."""
    from tiny_translate import build_marian

    return build_marian(tmp_path_factory.mktemp("marian-en-fr"))


def cli_env(**extra: str | None) -> dict:
    """The environment for a subprocess run; a variable given as None is removed."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("GPTCLI_DEBUG", None)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
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


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr

    def json_lines(self) -> list:
        import json

        # "\n" only: splitlines() would also cut at U+2028 and the like inside a JSON string.
        return [json.loads(line) for line in self.stdout.split("\n") if line.strip()]


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the CLI in-process through its real error boundary (gptcli.cli.app.run).

    stdin: None means a terminal (isatty True, nothing to read); bytes/str are piped.
    """
    import io

    from gptcli.cli.app import run

    def invoke(*args, stdin: bytes | str | None = None, env: dict | None = None) -> CliResult:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        if stdin is None:
            fake = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
            fake.isatty = lambda: True  # type: ignore[method-assign]
        else:
            data = stdin.encode() if isinstance(stdin, str) else stdin
            fake = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
            fake.isatty = lambda: False  # type: ignore[method-assign]
        monkeypatch.setattr("sys.stdin", fake)
        capsys.readouterr()
        code = run([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return invoke
