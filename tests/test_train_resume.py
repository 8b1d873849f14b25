"""Checkpoints and resuming: exact continuation after SIGKILL, Ctrl-C, damaged checkpoints, full disks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from test_train_support import TINY, cli, corpus, metrics, weights

# Dropout on, so resuming must also restore the random number generators.
RUN = [*TINY, "--dropout", "0.1", "--steps", "12", "--save-every", "4", "--eval-every", "4", "--seed", "5"]


def _spawn(*args, delay: float = 0.3) -> subprocess.Popen:
    """A real gptcli process whose training steps each take `delay` seconds more (slow enough to signal)."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "slow_steps.py"), str(delay), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {path.name} appeared: {proc.stderr.read().decode()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    data = corpus(tmp_path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _spawn("train", data, *RUN, "--out", killed)
    code, _, err = cli("train", data, *RUN, "--out", straight)  # meanwhile, the uninterrupted run
    assert code == 0, err
    _wait_for(killed / "checkpoints" / "step-00000004", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # it really died mid-run

    code, stdout, err = cli("train", "--out", killed, "--resume", "auto", "--json")  # settings come from the run
    assert code == 0, err
    assert "resumed from" in err
    assert json.loads(stdout)["steps"] == 12
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the metrics file holds each step once, with the same losses as the straight run
    ma = [(r["step"], r["loss"]) for r in metrics(straight) if "loss" in r]
    mb = [(r["step"], r["loss"]) for r in metrics(killed) if "loss" in r]
    assert ma == mb


def test_ctrl_c_saves_and_exits_130(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "out"
    proc = _spawn("train", data, *RUN, "--save-every", "0", "--out", out)
    _wait_for(out / "metrics.jsonl", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    err = stderr.decode()
    assert "Resume with: gptcli train --out" in err and "--resume auto" in err
    assert "Error" not in err  # the user asked for the stop: a message, not an error
    assert any(line.startswith("training stopped at step ") for line in err.splitlines())
    assert stdout == b""
    saved = sorted((out / "checkpoints").iterdir())
    assert len(saved) == 1 and not saved[0].name.startswith(".")
    stopped_at = int(saved[0].name.split("-")[1])
    assert 0 < stopped_at < 12
    code, stdout, err = cli("train", "--out", out, "--resume", "auto", "--json")
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 12


def test_resume_without_checkpoint_is_one_line_error(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    code, stdout, err = cli("train", corpus(tmp_path), *TINY, "--out", out, "--resume", "auto")
    assert code == 2 and stdout == ""
    assert err.strip().count("\n") == 0 and err.startswith("Error: --resume auto:")


def test_truncated_checkpoint_is_reported(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "out"
    assert cli("train", data, *TINY, "--steps", "2", "--out", out)[0] == 0
    ckpt = out / "checkpoints" / "step-00000002"
    weights_file = ckpt / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    code, _, err = cli("train", "--out", out, "--resume", ckpt, "--steps", "4")
    assert code == 1
    assert "damaged" in err and "truncated" in err and len(err.strip().splitlines()) == 1

    state = ckpt / "trainer_state.pt"
    assert cli("train", data, *TINY, "--steps", "2", "--out", out, "--overwrite")[0] == 0
    state.write_bytes(state.read_bytes()[:100])
    code, _, err = cli("train", "--out", out, "--resume", "auto", "--steps", "4")
    assert code == 1 and "trainer_state.pt cannot be read" in err


def test_disk_full_while_saving_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    data = corpus(tmp_path)
    out = tmp_path / "out"
    real_save, calls = torch.save, []

    def failing_save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint hits a full disk halfway
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    code, _, err = cli("train", data, *TINY, "--steps", "6", "--save-every", "2", "--out", out)
    assert code == 1
    assert "disk full while saving the checkpoint of step 4" in err
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000002"]  # the old one is intact, no temporary folder is left
    monkeypatch.setattr(torch, "save", real_save)
    code, stdout, err = cli("train", "--out", out, "--resume", "auto", "--json")
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 6


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_resume_continues_past_the_end_with_more_steps(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "out"
    assert cli("train", data, *TINY, "--steps", "3", "--out", out)[0] == 0
    code, stdout, err = cli("train", "--out", out, "--resume", "auto", "--steps", "5", "--json")
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 5
    assert [r["step"] for r in metrics(out) if "loss" in r][-1] == 5


def test_second_signal_aborts_and_leaves_only_complete_checkpoints(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "out"
    proc = _spawn("train", data, *RUN, "--save-every", "1", "--out", out, delay=0.05)
    _wait_for(out / "checkpoints" / "step-00000002", proc)
    proc.send_signal(signal.SIGTERM)  # SIGTERM asks for the same clean stop as Ctrl-C...
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # ...and a Ctrl-C after it aborts at once
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert "Traceback" not in stderr.decode()
    entries = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert entries and all(name.startswith("step-") for name in entries)  # no half-written temporary folder
    code, stdout, err = cli("train", "--out", out, "--resume", "auto", "--json")
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 12


def test_resume_auto_from_another_directory(tmp_path, monkeypatch):
    corpus(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli("train", "stories.txt", *TINY, "--steps", "2", "--out", "run")[0] == 0  # relative paths
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stdout, err = cli("train", "--out", tmp_path / "run", "--resume", "auto", "--steps", "4", "--json")
    assert code == 0, err
    assert json.loads(stdout)["steps"] == 4
    assert "Warning" not in err  # the same file, named from another directory: not a change of data
    segments = json.loads((tmp_path / "run" / "run.json").read_text())["segments"]
    assert [s["data"][0]["path"] for s in segments] == [str(tmp_path / "stories.txt")] * 2


def test_resume_after_the_data_changed_warns_and_keeps_the_earlier_fingerprints(tmp_path):
    import hashlib

    data = corpus(tmp_path)
    out = tmp_path / "out"
    sha = lambda: hashlib.sha256(data.read_bytes()).hexdigest()  # noqa: E731
    first = sha()
    assert cli("train", data, *TINY, "--steps", "2", "--out", out)[0] == 0
    code, _, err = cli("train", "--out", out, "--resume", "auto", "--steps", "3")
    assert code == 0, err
    assert "Warning" not in err  # same data: nothing to say
    corpus(tmp_path, seed=1)  # the file is rewritten with other stories
    code, _, err = cli("train", "--out", out, "--resume", "auto", "--steps", "4")
    assert code == 0, err
    warning = next(line for line in err.splitlines() if line.startswith("Warning:"))
    assert "stories.txt changed" in warning and "steps 2-3 were trained on" in warning
    record = json.loads((out / "run.json").read_text())
    assert [(s["start_step"], s["data"][0]["sha256"]) for s in record["segments"]] == [
        (0, first),
        (2, first),
        (3, sha()),
    ]
    assert record["data"][0]["sha256"] == sha()  # the top level describes the latest segment
