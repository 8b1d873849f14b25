"""Wall time of the quick start, `gptcli generate "Once upon a time" -t 50`, on the bundled model.

    python benchmarks/quickstart_time.py [--runs 5]

Prints the median end-to-end wall time of the real command (offline, fresh process each run)
and, from one in-process run, how it splits into importing, loading and generating.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

STAGES = r"""
import time, json
t0 = time.perf_counter()
import torch, transformers  # noqa: F401
from gptcli.generation import Request, RunStats, stream_generate
from gptcli.sampling import SamplingParams
from gptcli.loading import open_model
t1 = time.perf_counter()
lm, _ = open_model(None)
t2 = time.perf_counter()
stats = RunStats()
list(stream_generate(lm, [Request("Once upon a time", SamplingParams(max_new_tokens=50, seed=1))], stats=stats))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "generate_s": t3 - t2, "tokens": stats.completion_tokens}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("GPTCLI_MODEL", None)
    cmd = [sys.executable, "-m", "gptcli", "generate", "Once upon a time", "-t", "50", "--seed", "1"]
    walls = []
    for _ in range(args.runs):
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, env=env)
        walls.append(time.perf_counter() - t)
        assert p.returncode == 0, p.stderr.decode()
    stages = subprocess.run([sys.executable, "-c", STAGES], capture_output=True, env=env, text=True)
    import json

    s = json.loads(stages.stdout.strip().splitlines()[-1])
    print(f'gptcli generate "Once upon a time" -t 50 (bundled model, offline), {args.runs} runs')
    print(f"  wall time: median {statistics.median(walls):.2f} s, best {min(walls):.2f} s, worst {max(walls):.2f} s")
    print(
        f"  in one process: import {s['import_s']:.2f} s, load {s['load_s']:.2f} s, "
        f"generate {s['tokens']} tokens {s['generate_s']:.2f} s"
    )


if __name__ == "__main__":
    main()
