"""`python tests/slow_steps.py DELAY ARGS...`: gptcli with each training step slowed down by DELAY seconds.

For tests that must catch a real training process mid-run (SIGKILL, Ctrl-C): the pause goes in
through the engine's step hook (Job.after_step), so production code reads no test setting.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def install(delay: float) -> None:
    from gptcli.training import engine

    run = engine.run

    def slow_run(job, *args, **kwargs):
        job.after_step = lambda _step: time.sleep(delay)
        return run(job, *args, **kwargs)

    engine.run = slow_run


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's gptcli
    install(float(sys.argv[1]))
    from gptcli.__main__ import main

    sys.argv = ["gptcli", *sys.argv[2:]]
    sys.exit(main())
