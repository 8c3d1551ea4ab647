"""Named crash points, so tests can kill a run at an exact moment instead of a random one.

`AVIARY_CRASH_AT=<point>` makes the process kill itself with SIGKILL when it reaches that point, as
`kill -9` would: no `finally`, no `atexit`. With `AVIARY_CRASH_MODE=raise` it raises `Crash` instead,
for tests that stay in one process. Unset, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "AVIARY_CRASH_AT"
MODE_ENV = "AVIARY_CRASH_MODE"


class Crash(BaseException):
    """A simulated crash; a BaseException so that `except Exception` recovery code does not swallow it."""


def crash_point(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    if os.environ.get(MODE_ENV) == "raise":
        raise Crash(name)
    os.kill(os.getpid(), signal.SIGKILL)
