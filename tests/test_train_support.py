"""Helpers shared by the train/finetune tests (no tests here): a small corpus and an in-process CLI runner.

Running the CLI in-process (same `run()` the entry point uses) saves the
~3 s import cost per call; subprocesses are used only where a real process
is the point (SIGKILL, SIGINT, torchrun).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

NAMES = ["Tom", "Sue", "Max", "Lily", "Ben", "Anna"]
THINGS = ["ball", "cat", "tree", "boat", "cake", "hat"]
COLOURS = ["big", "small", "red", "blue"]

# Tiny model flags: one layer, 32 wide, blocks of 32 tokens: a step takes milliseconds.
TINY = [
    "--preset",
    "tiny",
    "--n-layer",
    "1",
    "--n-embd",
    "32",
    "--n-head",
    "2",
    "--block-size",
    "32",
    "--vocab-size",
    "300",
    "--batch-size",
    "4",
    "--threads",
    "1",
]


def corpus(folder: Path, lines: int = 400, name: str = "stories.txt", seed: int = 0) -> Path:
    rng = random.Random(seed)
    text = "\n".join(
        f"{rng.choice(NAMES)} saw a {rng.choice(COLOURS)} {rng.choice(THINGS)} and said hello to {rng.choice(NAMES)}."
        for _ in range(lines)
    )
    path = folder / name
    path.write_text(text + "\n", encoding="utf-8")
    return path


def cli(*args) -> tuple[int, str, str]:
    """Run gptcli in this process; returns (exit code, stdout, stderr)."""
    import sys

    from gptcli.cli.app import run

    out, err = io.StringIO(), io.StringIO()
    stdin, sys.stdin = sys.stdin, io.TextIOWrapper(io.BytesIO(b""))  # empty piped stdin, like `< /dev/null`
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run([str(a) for a in args])
    finally:
        sys.stdin = stdin
    return code, out.getvalue(), err.getvalue()


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    return state
