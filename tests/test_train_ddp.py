"""`torchrun --nproc-per-node 2 -m gptcli train`: two CPU processes on gloo, one writer; DDP and FSDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from test_train_support import TINY, cli, corpus, metrics, weights


def _torchrun(*args, timeout: float = 180) -> tuple[int, str, str]:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.Popen(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "gptcli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(OMP_NUM_THREADS="1"),
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: a hang kills every worker
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, stdout.decode(), stderr.decode()


def _cut_back(run: Path, copy: Path, step: int) -> None:
    """`copy` becomes `run` as it was when killed right after saving checkpoint `step`."""
    shutil.copytree(run, copy)
    (copy / "model.safetensors").unlink()
    for ckpt in (copy / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "ddp"
    code, stdout, err = _torchrun(
        "train", data, *TINY, "--steps", "4", "--save-every", "2", "--device", "cpu", "--out", out, "--json"
    )
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 1  # only rank 0 prints the summary
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2 and summary["fsdp"] is False
    assert summary["tokens_seen"] == 4 * 2 * 4 * 32  # steps x processes x batch x block
    assert err.count("step 4/4 | loss") == 1  # and only rank 0 reports progress
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps == sorted(set(steps))  # one writer: no step logged twice
    assert (out / "model.safetensors").is_file()


# Dropout on, so each process's random number generators must be restored.
RESUME = [*TINY, "--dropout", "0.1", "--seed", "5", "--device", "cpu"]


@pytest.mark.slow
def test_two_process_resume_is_bit_identical_and_keeps_every_ranks_rng(tmp_path):
    data = corpus(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    code, _, err = _torchrun(
        "train", data, *RESUME, "--steps", "8", "--save-every", "4", "--eval-every", "4", "--out", straight
    )
    assert code == 0, err
    state = torch.load(straight / "checkpoints" / "step-00000004" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_by_rank"]) == 2

    _cut_back(straight, resumed, 4)  # 4 steps done, then resumed to 8
    code, _, err = _torchrun("train", "--out", resumed, "--resume", "auto")
    assert code == 0, err
    assert err.count("resumed from") == 1 and "not bit-exactly" not in err
    _assert_same_weights(straight, resumed)
    ma = [(r["step"], r["loss"]) for r in metrics(straight) if "loss" in r]
    mb = [(r["step"], r["loss"]) for r in metrics(resumed) if "loss" in r]
    assert ma == mb

    # one process continuing a two-process run works, and says once that it is not exact
    code, _, err = cli("train", "--out", straight, "--resume", "auto", "--steps", "10")
    assert code == 0, err
    assert err.count("not bit-exactly") == 1 and "written by 2 processes and this run has 1" in err


@pytest.mark.slow
def test_fsdp_two_processes_write_full_weights_and_resume_exactly(tmp_path):
    data = corpus(tmp_path)
    run, resumed = tmp_path / "fsdp", tmp_path / "resumed"
    flags = [*RESUME, "--fsdp", "--grad-accum", "2", "--grad-clip", "0.5"]
    code, stdout, err = _torchrun(
        "train", data, *flags, "--steps", "6", "--save-every", "3", "--eval-every", "3", "--out", run, "--json"
    )
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 1  # only rank 0 prints
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2 and summary["fsdp"] is True  # really sharded, not a silent DDP fallback
    assert err.count("step 6/6 | loss") == 1 and err.count("done: 6 steps") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]

    # the saved weights are the whole model, not one process's shard: same names and shapes as an unsharded save
    from transformers import AutoConfig, AutoModelForCausalLM

    full = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run))
    expected = {k: tuple(v.shape) for k, v in full.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    for folder in (run, run / "checkpoints" / "step-00000006"):
        assert {k: tuple(v.shape) for k, v in weights(folder).items()} == expected
    _assert_same_weights(run, run / "checkpoints" / "step-00000006")
    code, stdout, err = cli("generate", "Tom saw", "--model", run, "-t", "4", "--seed", "1")
    assert code == 0 and stdout.strip(), err

    _cut_back(run, resumed, 3)
    code, _, err = _torchrun("train", "--out", resumed, "--resume", "auto")
    assert code == 0, err
    _assert_same_weights(run, resumed)
