"""A quiet terminal for the command lines: what the user asked for, the outcome, and real errors only.

TensorFlow 2.21 writes start-up lines to file descriptor 2 from C++ before its own log settings apply
(`TF_CPP_MIN_LOG_LEVEL` does not reach them), some at error level although nothing is wrong: no CUDA
driver on a CPU machine, an op attribute newer than the runtime. `filter_stderr` drops exactly those
lines, by pattern, and passes every other byte on, so a real error still shows. The filter is a child
process, so what a crash writes last is not lost with the parent.

Prefect's console log is off on the command line (the run's log keeps everything, on the API): the
command prints its outcome itself, and `--verbose` brings the console log back.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any, TextIO

NOISE = re.compile(
    "|".join(
        [
            r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            r"[IW]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] .*",
            r"To enable the following instructions: .* in other operations, rebuild TensorFlow with the appropriate compiler flags\.",
            r"E\d{4} [\d:.]+ +\d+ cuda_(platform|executor|driver)\.cc:\d+\] failed call to cuInit: .*",
            r"E\d{4} [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition: .*",
        ]
    )
)
"""Whole lines TensorFlow writes at start-up that say nothing about this run."""

ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # C++ INFO and WARNING, once absl logging is initialised
    "GRPC_VERBOSITY": "ERROR",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # a temporary server offline logs telemetry failures
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}
"""Defaults only: a value the user set wins."""

BENIGN_WARNINGS = (
    # Keras 3 on a tf.data input: the reader shuffles itself, and a stream of unknown length ends each epoch.
    r"`shuffle=True` was passed, but will be ignored since the data `x` was provided as a tf\.data\.Dataset",
    r"Your input ran out of data; interrupting training",
)

_FILTER = r"""
import re, sys
noise = re.compile(sys.argv[1])
for line in sys.stdin.buffer:
    if not noise.fullmatch(line.decode("utf-8", "replace").rstrip("\r\n")):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""
_terminal: TextIO | None = None


def terminal() -> TextIO:
    """The real standard error, for what must not wait for a newline (a progress bar)."""
    return _terminal or sys.stderr


def filter_stderr() -> None:
    """Send file descriptor 2 through the noise filter for the rest of the process; idempotent."""
    global _terminal
    if _terminal is not None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    child = subprocess.Popen(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-I", "-S", "-c", _FILTER, NOISE.pattern], stdin=subprocess.PIPE, stdout=saved,
        close_fds=True,
    )
    assert child.stdin is not None
    os.dup2(child.stdin.fileno(), 2)
    child.stdin.close()
    # Python's own writes go through the filter too, so they keep their order with TensorFlow's; only the
    # progress bar, which redraws one line without ending it, writes to the terminal directly.
    _terminal = open(saved, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(saved, 2)  # our end of the pipe closes: the filter drains what is left, then ends
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=2)  # a background server this process started may hold the pipe: don't wait on it

    atexit.register(restore)


class ProgressBar(logging.Handler):
    """Draws records that carry `progress=(what, done, total)` as one updating line, on a terminal only."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        super().__init__()
        self.stream, self.width, self.open = stream, width, False

    def emit(self, record: logging.LogRecord) -> None:
        progress: Any = getattr(record, "progress", None)
        if progress is None:
            return
        what, done, total = progress
        filled = round(self.width * done / max(total, 1))
        self.stream.write(f"\r{what} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}")
        self.open = True
        self.stream.flush()

    def finish(self) -> None:
        if self.open:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.open = False


_bar: ProgressBar | None = None


def finish_progress() -> None:
    """Clear the progress line before the command prints its outcome."""
    if _bar is not None:
        _bar.finish()


def command_line(main: Callable[[], int]) -> int:
    """Run a flow module's `main` as a command: `if __name__ == "__main__": sys.exit(command_line(main))`."""
    quiet_terminal(verbose="--verbose" in sys.argv[1:])
    return main()


def quiet_terminal(verbose: bool = False) -> ProgressBar | None:
    """Set up a command line's terminal: filtered TensorFlow noise, Prefect's console off unless `verbose`.

    Returns the progress bar it installed (when standard error is a terminal), to be finished before printing.
    """
    global _bar
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    filter_stderr()
    for message in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)  # keras/tf Python-side warnings about saving and tracing
    except ImportError:
        pass
    if verbose:
        return None
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL + 1)
    if not terminal().isatty():
        return None
    _bar = ProgressBar(terminal())
    logging.getLogger("prefect.task_runs").addHandler(_bar)
    return _bar
