"""Ctrl-C and SIGTERM during training: finish the step, save, exit 130.

The first signal only sets a flag that the loop checks between steps. The
handlers are then restored to the defaults, so a second Ctrl-C interrupts at
once (KeyboardInterrupt); checkpoint writes are atomic, so the last good
checkpoint survives it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopRequest:
    def __init__(self, distributed: bool = False):
        self.distributed = distributed
        self._flag = False
        self._saved: dict[int, Any] = {}  # previous handlers, as signal.getsignal returns them

    def _handle(self, signum, frame) -> None:
        self._flag = True
        for sig, old in self._saved.items():  # a second signal acts immediately
            signal.signal(sig, old if sig != signal.SIGINT else signal.default_int_handler)
        try:
            from gptcli.console import info

            info("stopping after this step and saving a checkpoint (press Ctrl-C again to abort)...")
        except Exception:
            pass

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        self._saved.clear()

    def requested(self) -> bool:
        """True once any process got a signal (all processes agree, so they stop at the same step)."""
        if not self.distributed:
            return self._flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if self._flag else 0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
