"""Help output, defaults shown in help, shell completion of values, SIGTERM, and the README install block."""

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, cli_env
from tiny import build_model

COMMANDS = ("generate", "chat", "train", "finetune", "eval", "translate", "serve", "models", "completion")


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


# --------------------------------------------------------------------------- SIGTERM (generate's test is in test_process.py)


def test_sigterm_in_chat_keeps_the_partial_reply_and_exits_130(tmp_path):
    model = build_model(tmp_path / "m", "gpt2", context=512)
    hist = tmp_path / "h.jsonl"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gptcli",
            "chat",
            "Tell me a story",
            "--history",
            str(hist),
            "--model",
            str(model),
            "--greedy",
            "-t",
            "480",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        head = os.read(p.stdout.fileno(), 64)  # the reply is streaming
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert b"Traceback" not in err
    records = [json.loads(line) for line in hist.read_text().splitlines()]
    assert records[-1]["interrupted"] is True and records[-1]["role"] == "assistant"
    assert (head + out).decode() == records[-1]["content"] + "\n"  # what was printed is what was kept


# --------------------------------------------------------------------------- completion of values

BASH_SCRIPT = ROOT / "completions" / "gptcli.bash"


def bash_complete(*words: str, cwd=None) -> list[str]:
    """What the committed bash script offers after `gptcli WORDS...` (the last word is being typed)."""
    line = ["gptcli", *words]
    script = (
        f'source "{BASH_SCRIPT}"; COMP_WORDS=({" ".join(shlex.quote(w) for w in line)}); '
        f'COMP_CWORD={len(line) - 1}; _gptcli; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    p = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, cwd=cwd, timeout=30
    )
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.split("\n") if w]


def test_bash_completes_models_and_folders_after_model(tmp_path):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    offered = bash_complete("generate", "--model", "", cwd=tmp_path)
    assert {"tinystories", "tiny-en-fr", "my-model"} <= set(offered)
    assert "notes.txt" not in offered
    assert bash_complete("generate", "-m", "tiny") == ["tiny-en-fr", "tinystories"]


def test_bash_completes_values_of_options_and_arguments():
    assert bash_complete("completion", "") == ["bash", "zsh", "fish"]
    assert "micro" in bash_complete("train", "--preset", "")
    assert bash_complete("finetune", "--format", "c") == ["completion", "chat"]
    assert "fr" in bash_complete("translate", "--to", "") and "de" in bash_complete("translate", "--from", "")
    assert "auto" in bash_complete("train", "--resume", "")


def test_completion_values_come_from_the_commands_tables():
    from gptcli import bundled
    from gptcli.completions import known_values
    from gptcli.training.presets import PRESETS
    from gptcli.translation.languages import LANGUAGES

    known = known_values()
    assert set(known["--model"]) == set(bundled.names())
    assert set(known["--preset"]) == set(PRESETS)
    assert set(known["--to"]) == set(LANGUAGES)


# --------------------------------------------------------------------------- README install block = CI


def _readme_block():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_block", ROOT / "tools" / "readme_block.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.block


def test_readme_install_block_is_a_checkout_install():
    block = _readme_block()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = block(readme, "install")
    assert install.startswith("python3 -m venv .venv\n. .venv/bin/activate\n")
    assert 'python -m pip install -e ".[dev]"' in install
    assert "download.pytorch.org" not in install  # CI reaches only the package registries
    assert block(readme, "test") == "python -m pytest -q\n"
    assert "pip install gptcli" not in readme  # not published


def test_readme_block_extractor_rejects_missing_or_doubled_blocks():
    block = _readme_block()
    one = "<!-- x:begin -->\n```bash\necho hi\n```\n<!-- x:end -->\n"
    assert block(one, "x") == "echo hi\n"
    for text in ("no block here", one + one, "<!-- x:begin -->\n```\necho hi\n```\n<!-- x:end -->\n"):
        with pytest.raises(ValueError):
            block(text, "x")


def test_ci_runs_the_readme_blocks_in_one_shell(tmp_path):
    """.ci/run on a copy whose README blocks only record that they ran: install, then tests, in one shell."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / ".ci" / "run").write_text((ROOT / ".ci" / "run").read_text())
    (tmp_path / "tools" / "readme_block.py").write_text((ROOT / "tools" / "readme_block.py").read_text())
    (tmp_path / "README.md").write_text(
        "# x\n<!-- install:begin (note) -->\n```bash\necho install >> ran.txt\nINSTALLED=yes\n```\n<!-- install:end -->\n"
        '<!-- checks:begin -->\n```bash\necho "checks $INSTALLED" >> ran.txt\n```\n<!-- checks:end -->\n'
        'text\n<!-- test:begin -->\n```bash\necho "tests $INSTALLED" >> ran.txt\n```\n<!-- test:end -->\n'
    )
    p = subprocess.run(
        ["bash", ".ci/run"], cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "ran.txt").read_text() == "install\nchecks yes\ntests yes\n"
    code = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    for command in ("pip install", "pytest", "ruff", "mypy"):  # everything it runs comes from README.md
        assert not any(command in line for line in code)


# --------------------------------------------------------------------------- dependency floors


def _requirements():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {
        r.name.lower(): r for r in map(Requirement, project["dependencies"]) if r.marker is None or r.marker.evaluate()
    }


def test_installed_versions_meet_the_declared_floors():
    from importlib.metadata import version

    for name, req in _requirements().items():
        assert req.specifier.contains(version(name), prereleases=True), (
            f"{name} {version(name)} is outside {req.specifier}"
        )


def test_transformers_floor_reads_the_bundled_tokenizers():
    """Bundled (and `train`-made) tokenizers name TokenizersBackend, which transformers 5 introduced."""
    import json

    from packaging.version import Version

    classes = {
        json.loads(p.read_text())["tokenizer_class"]
        for p in (ROOT / "gptcli" / "bundled").glob("*/tokenizer_config.json")
    }
    assert "TokenizersBackend" in classes
    floors = [Version(s.version) for s in _requirements()["transformers"].specifier if s.operator == ">="]
    assert floors and min(floors) >= Version("5.0")
