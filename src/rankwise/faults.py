"""Named crash points for fault-injection tests of multi-step writes (index swap, registry version write).

A test runs a real ``rankwise`` process with ``RANKWISE_CRASH_AT=<point>``; when the process reaches that
point it dies at once with ``os._exit`` — no ``finally``, no ``atexit``, no buffered writes flushed, just
like ``kill -9`` or a power cut at that instant. The test then checks what is left on disk and that the
next open or write recovers. Unset (always, outside tests) a checkpoint is one dictionary lookup.
"""

from __future__ import annotations

import os

ENV = "RANKWISE_CRASH_AT"
#: with it, the crash happens once: the first process to reach the point creates this file and dies, later
#: ones (a retried worker) pass — how a test kills one Ray worker mid-batch
ONCE_ENV = "RANKWISE_CRASH_ONCE"
#: exit status of a simulated crash (128 + SIGKILL), so a test can tell it from an ordinary failure
CRASH_EXIT = 137


def checkpoint(point: str) -> None:
    """Die here, as if killed, when ``$RANKWISE_CRASH_AT`` names this point."""
    if os.environ.get(ENV) == point:
        once = os.environ.get(ONCE_ENV)
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os._exit(CRASH_EXIT)
