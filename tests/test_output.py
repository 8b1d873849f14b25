"""The CLI's one output layer (gptcli/cli/output.py) and the runtime options every command checks."""

import subprocess
import sys

import pytest
from conftest import ROOT


def test_resolving_a_slow_dtype_prints_nothing_and_returns_the_advice(capsys):
    # The core never prints: the advice travels on the Runtime for the CLI to show.
    from gptcli.runtime import resolve_runtime

    rt = resolve_runtime("cpu", "float16")
    assert capsys.readouterr().err == ""
    assert rt.warning == "float16 on CPU is slow; bfloat16 or float32 are faster here."
    assert resolve_runtime("cpu", "float32").warning is None


def test_slow_dtype_warning_is_shown_once_before_the_load_line(cli, gpt2_dir):
    r = cli("generate", "Hi", "-m", gpt2_dir, "--device", "cpu", "--dtype", "float16", "-t", 1, "--stats")
    assert r.exit_code == 0
    lines = r.stderr.splitlines()
    assert lines[0] == "Warning: float16 on CPU is slow; bfloat16 or float32 are faster here."
    assert lines[1].startswith("Loaded ") and "float16" in lines[1]
    assert r.stderr.count("float16 on CPU") == 1


# Each command with --threads 0 and an input that would fail later: the flag is checked first.
@pytest.mark.parametrize(
    "args",
    [
        ("generate", "--file", "no-such-file.txt"),
        ("chat", "--jsonl"),
        ("eval",),
        ("translate", "--to", "fr"),
    ],
)
def test_threads_is_checked_before_any_input_by_every_inference_command(cli, args):
    for given in (["--threads", "0"], []):
        env = {} if given else {"GPTCLI_THREADS": "0"}
        r = cli(*args, *given, stdin="" if args[0] == "chat" else None, env=env)
        assert (r.exit_code, r.stdout, r.stderr) == (2, "", "Error: --threads must be at least 1.\n")


def test_json_records_escape_line_separators_in_every_command(cli, gpt2_dir):
    # Strict JSON Lines everywhere: U+2028 inside a string would split the line for splitlines() readers.
    r = cli("generate", "a\u2028b", "-m", gpt2_dir, "-t", 1, "--json", "--echo")
    assert r.exit_code == 0
    assert "\u2028" not in r.stdout and "\\u2028" in r.stdout
    (rec,) = r.json_lines()
    assert rec["prompt"] == "a\u2028b" and rec["text"].startswith("a\u2028b")


def test_completion_renders_the_app_it_is_given_without_importing_the_cli_app():
    # completion.py used to import cli/app.py, which imports it: the app is now handed in.
    code = (
        "import sys, typer\n"
        "from gptcli.cli import completion\n"
        "app = typer.Typer()\n"
        "app.command('hello')(lambda: None)\n"
        "app.command('completion')(completion.command_for(app))\n"
        "app(['completion', 'bash'], standalone_mode=False)\n"
        "print('gptcli.cli.app' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    script, imported = out.stdout.rstrip("\n").rsplit("\n", 1)
    assert imported == "False"
    assert "hello" in script and "translate" not in script


def test_device_and_dtype_values_have_one_source(cli):
    # What the flags accept, what their errors suggest and what the shell completes are one table.
    from gptcli.completions import known_values
    from gptcli.runtime import DEVICE_CHOICES, DTYPE_CHOICES, parse_device, parse_dtype

    assert [parse_dtype(d) for d in DTYPE_CHOICES] == list(DTYPE_CHOICES)
    assert [parse_device(d.replace(":N", ":1")) for d in DEVICE_CHOICES] == [
        d.replace(":N", ":1") for d in DEVICE_CHOICES
    ]
    assert set(known_values()["--device"]) | {"cuda:N"} == set(DEVICE_CHOICES)
    assert known_values()["--dtype"] == DTYPE_CHOICES
    for flag, choices in (("--device", DEVICE_CHOICES), ("--dtype", DTYPE_CHOICES)):
        r = cli("generate", "Hi", flag, "bogus")
        assert r.exit_code == 2 and f"Use one of: {', '.join(choices)}." in r.stderr
