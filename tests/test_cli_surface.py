"""Help output, defaults shown in help, shell completion of values, SIGTERM, and the README install block."""

import subprocess
import sys

import pytest
from conftest import cli_env

COMMANDS = ("generate", "chat", "train", "finetune", "eval", "translate", "models", "completion")


def _help(cli, *args) -> str:
    r = cli(*args, "--help", env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    return r.stdout


@pytest.mark.parametrize("command", [(), *[(c,) for c in COMMANDS]], ids=lambda c: " ".join(c) or "gptcli")
def test_help_is_trimmed_and_flags_have_no_type(cli, command):
    text = _help(cli, *command)
    lines = text.split("\n")
    assert lines[0].lstrip().startswith("Usage: gptcli"), lines[:2]
    assert all(line == line.rstrip() for line in lines), "trailing spaces in help"
    assert "<bool>" not in text


def test_help_shows_defaults_env_vars_and_required(cli):
    generate = _help(cli, "generate")
    assert "Inputs processed together on the device. (default: 8)" in generate
    assert "Tokens to generate. (default: 256)" in generate
    assert "env var: GPTCLI_THREADS" in generate
    assert "(default: 16)" in _help(cli, "translate")
    assert "Inputs processed together on the device. (default: 8)" in _help(cli, "eval")
    for command in ("train", "finetune"):
        out_line = next(line for line in _help(cli, command).split("\n") if "--out" in line and "Output folder" in line)
        assert "Required" in out_line


def test_threads_env_var_reaches_the_option(cli):
    r = cli("generate", "hi", env={"GPTCLI_THREADS": "many"})
    assert r.exit_code == 2 and "GPTCLI_THREADS" in r.stderr


def test_help_piped_to_head_exits_0():
    for args in ("--help", "generate --help", "train --help"):
        cmd = f'"{sys.executable}" -m gptcli {args} | head -n 2'
        p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, env=cli_env(), timeout=60)
        assert p.returncode == 0, (args, p.stderr)
        assert p.stderr == b""
        assert p.stdout.decode().split("\n")[0].strip().startswith("Usage: gptcli"), p.stdout
