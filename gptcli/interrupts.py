"""SIGTERM in inference commands: stop like Ctrl-C (exit 130, output so far kept).

Python's default for SIGTERM kills the process at once (exit 143), with buffered output
lost and no chance to save a chat's partial reply. Inside `sigterm_as_interrupt()` a
SIGTERM raises Terminated instead, a KeyboardInterrupt, so every place that already
keeps partial work on Ctrl-C does the same for it. Code that *continues* after Ctrl-C
(chat's prompt, which only clears the line) must let Terminated through. Training has
its own handling (gptcli.training.signals: finish the step, save a checkpoint).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM): finish like Ctrl-C, but never carry on."""


def _raise_terminated(signum, frame) -> None:
    # A second SIGTERM while we wind down ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


@contextmanager
def sigterm_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
