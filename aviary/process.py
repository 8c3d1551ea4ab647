"""Background processes found again through pid files."""

from __future__ import annotations

import contextlib
import os


def alive(pid: int) -> bool:
    """Whether `pid` runs; a child of ours that exited is reaped, or it would linger as a zombie that looks alive."""
    with contextlib.suppress(ChildProcessError):  # not our child: nothing to reap
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
