"""Pipes, signals and exit codes on real subprocesses."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, cli_env, run_cli
from tiny import build_model


@pytest.fixture(scope="module")
def long_ctx_dir(tmp_path_factory):
    """A long context and no end-of-text token, so a generation surely runs until interrupted."""
    import json

    folder = build_model(tmp_path_factory.mktemp("long-ctx"), "llama", context=4096)
    for name, keys in (
        ("config.json", ("eos_token_id", "bos_token_id")),
        ("generation_config.json", ("eos_token_id",)),
    ):
        cfg = json.loads((folder / name).read_text())
        cfg.update({k: None for k in keys})
        (folder / name).write_text(json.dumps(cfg))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.pop("eos_token", None)
    tok.pop("bos_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


def test_head_closes_pipe_quietly(long_ctx_dir):
    cmd = f'"{sys.executable}" -m gptcli generate "Once upon a time" -m "{long_ctx_dir}" -t 3000 --seed 1 | head -c 20'
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, env=cli_env(), timeout=120)
    assert len(p.stdout) <= 20
    assert b"Traceback" not in p.stderr and b"Error" not in p.stderr
    assert p.returncode == 0


def test_disk_full_is_a_write_error(gpt2_dir):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "wb") as full:
        p = subprocess.run(
            [sys.executable, "-m", "gptcli", "generate", "hi", "-m", str(gpt2_dir), "-t", "5", "--seed", "1"],
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=cli_env(),
            timeout=120,
        )
    assert p.returncode == 1
    assert p.stderr.decode().strip() == "Error: write error: No space left on device"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_partial_output_and_exits_130(long_ctx_dir, sig):
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptcli",
            "generate",
            "Once upon a time",
            "-m",
            str(long_ctx_dir),
            "-t",
            "4000",
            "--seed",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    first = p.stdout.read(1)  # generation has started streaming
    assert first
    time.sleep(0.3)
    assert p.poll() is None, "generation ended before it could be interrupted"
    p.send_signal(sig)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert b"Traceback" not in err
    assert len(first + rest) > 1


def test_no_ansi_escapes_when_piped_or_no_color(gpt2_dir):
    for env in (cli_env(), cli_env(NO_COLOR=None, TERM="xterm-256color")):
        p = run_cli("generate", "hi", "-m", gpt2_dir, "-t", 5, "--stats", "--seed", 1, env=env)
        assert p.returncode == 0
        assert b"\x1b[" not in p.stdout and b"\x1b[" not in p.stderr
        p = run_cli("generate", "hi", "-m", gpt2_dir, "--top-p", "7", env=env)
        assert p.returncode == 2 and b"\x1b[" not in p.stderr
    p = run_cli("--help")
    assert p.returncode == 0 and b"\x1b[" not in p.stdout


def test_help_and_completion_do_not_import_torch():
    code = (
        "import sys\n"
        "from gptcli.cli.app import run\n"
        "for argv in (['--help'], ['generate', '--help'], ['completion', 'bash'], ['models']):\n"
        "    assert run(argv) == 0, argv\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules]\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, env=cli_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr.decode().endswith("HEAVY="), p.stderr


def test_python_dash_m_and_version():
    p = run_cli("--version")
    assert p.returncode == 0 and p.stdout.startswith(b"gptcli ")


def test_completions_are_current():
    p = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_completions.py"), "--check"],
        capture_output=True,
        env=cli_env(),
        timeout=60,
    )
    assert p.returncode == 0, p.stderr.decode()
    for name in ("gptcli.bash", "_gptcli", "gptcli.fish"):
        text = (ROOT / "completions" / name).read_text()
        for command in ("generate", "chat", "train", "finetune", "eval", "translate"):
            assert command in text
    assert subprocess.run(["bash", "-n", str(ROOT / "completions" / "gptcli.bash")]).returncode == 0
