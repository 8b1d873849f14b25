"""`torchrun --nproc-per-node 2 -m gptcli train`: two CPU processes on gloo, one writer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import cli_env
from test_train_support import TINY, corpus, metrics


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    torchrun = shutil.which("torchrun") or str(__import__("pathlib").Path(sys.executable).parent / "torchrun")
    data = corpus(tmp_path)
    out = tmp_path / "ddp"
    proc = subprocess.Popen(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "gptcli", "train", str(data), *TINY,
         "--steps", "4", "--save-every", "2", "--device", "cpu", "--out", str(out), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(OMP_NUM_THREADS="1"),
        stdin=subprocess.DEVNULL, start_new_session=True,  # its own process group: a hang kills every worker
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    err = stderr.decode()
    assert proc.returncode == 0, err
    lines = stdout.decode().strip().splitlines()
    assert len(lines) == 1  # only rank 0 prints the summary
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2
    assert summary["tokens_seen"] == 4 * 2 * 4 * 32  # steps x processes x batch x block
    assert err.count("step 4/4 | loss") == 1  # and only rank 0 reports progress
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps == sorted(set(steps))  # one writer: no step logged twice
    assert (out / "model.safetensors").is_file()
