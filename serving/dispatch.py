"""Runs prepared model calls for the asyncio front ends (REST and gRPC) on one event loop.

* With batching on, calls gather on the loop and each batch runs on a worker thread: forming a
  batch costs no thread hand-off per call, the loop keeps parsing while TensorFlow runs, and REST
  and gRPC callers share batches, as they share TF Serving's batch scheduler.
* Without batching, a signature that is cheap (measured) and a request that is small run right on
  the loop; anything else runs on a worker thread so the loop stays responsive.
* Finished runs come back to the loop with one wake-up per burst, not one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from aviary.serving.batching import batchable, task_key
from aviary.serving.servable import Runner
from aviary.serving.status import ServingError, invalid

Done = Callable[[Any], None]  # receives the outputs dict or a ServingError, exactly once
# A call waiting for its batch: feeds, completion callback, rows, batch-compatibility key.
_Pending = tuple[dict[str, Any], Done, int, tuple[Any, ...]]

_INLINE_MAX_ROWS = 1024
_INLINE_MAX_BYTES = 1 << 20


def _small(feeds: dict[str, Any]) -> bool:
    """Requests small enough that running them on the loop cannot stall it for long."""
    total = 0
    for arr in feeds.values():
        if arr.ndim and arr.shape[0] > _INLINE_MAX_ROWS:
            return False
        total += arr.nbytes
    return total <= _INLINE_MAX_BYTES


def _as_error(exc: BaseException) -> ServingError:
    return exc if isinstance(exc, ServingError) else ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


class _Completions:
    """Hands finished runs back to the event loop with one wake-up per burst.

    A batch of 64 finishing at once would otherwise write 64 bytes to the loop's self-pipe and make the
    loop and the batch thread trade the GIL 64 times.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[Callable[[], None]] = deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def push(self, fn: Callable[[], None]) -> None:
        with self.lock:
            self.items.append(fn)
            if self.scheduled:
                return
            self.scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        with self.lock:
            items = list(self.items)
            self.items.clear()
            self.scheduled = False
        for fn in items:
            fn()


class Dispatcher:
    """Loop-side scheduler of model runs; every method must be called on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.completions = _Completions(loop)
        self._pending: dict[Runner, list[_Pending]] = {}
        self._pending_rows: dict[Runner, int] = {}
        self._inflight: dict[Runner, int] = {}

    def run(self, runner: Runner, feeds: dict[str, Any], done: Done, timeout_s: float | None) -> None:
        """Runs the signature on `feeds`; done() gets the outputs or a ServingError (DEADLINE_EXCEEDED
        once `timeout_s` passes; the run itself is not interrupted, its result is dropped)."""
        answered = [False]
        timer: asyncio.TimerHandle | None = None

        def once(result: Any) -> None:
            if answered[0]:
                return
            answered[0] = True
            if timer is not None:
                timer.cancel()
            done(result)

        if runner.batching is None and runner.inline_ok and _small(feeds):
            try:
                outputs: Any = runner.run(feeds)
            except ServingError as exc:
                outputs = exc
            once(outputs)
            return
        if timeout_s is not None:
            timer = self.loop.call_later(
                max(0.0, timeout_s), lambda: once(ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded")))
        if runner.batching is not None and batchable(feeds):
            self._enqueue(runner, feeds, once)
            return
        try:
            future = runner.submit(feeds)
        except ServingError as exc:
            once(exc)
            return
        future.add_done_callback(lambda fut: self.completions.push(lambda: once(_outcome(fut))))

    # ----------------------------------------------------------------- batching

    def _enqueue(self, runner: Runner, feeds: dict[str, Any], done: Done) -> None:
        assert runner.batching is not None
        n = next(iter(feeds.values())).shape[0]
        limit = runner.batching.max_batch_size
        if n > limit and not runner.batching.enable_large_batch_splitting:
            done(invalid(f"Task size {n} is larger than maximum input batch size {limit}"))
            return
        pending = self._pending.get(runner)
        if pending is None:
            pending = self._pending[runner] = []
        pending.append((feeds, done, n, task_key(feeds)))
        rows = self._pending_rows.get(runner, 0) + n
        self._pending_rows[runner] = rows
        if len(pending) == 1:
            timeout = runner.batching.batch_timeout_micros / 1e6
            if timeout > 0:
                self.loop.call_later(timeout, self._flush, runner)
            else:
                self.loop.call_soon(self._flush, runner)
        elif rows >= limit:
            self._flush(runner)

    def _flush(self, runner: Runner) -> None:
        """Starts as many batches of `runner` as it has free batch threads; the rest wait for one to end."""
        options = runner.batching
        assert options is not None
        threads = max(1, options.num_batch_threads)
        while self._inflight.get(runner, 0) < threads:
            pending = self._pending.get(runner)
            if not pending:
                self._pending.pop(runner, None)
                self._pending_rows.pop(runner, None)
                return
            key = pending[0][3]
            chunk: list[_Pending] = []
            rest: list[_Pending] = []
            rows = 0
            for item in pending:
                if item[3] == key and (not chunk or rows + item[2] <= options.max_batch_size):
                    chunk.append(item)
                    rows += item[2]
                else:
                    rest.append(item)
            self._pending[runner] = rest
            self._pending_rows[runner] -= rows
            self._inflight[runner] = self._inflight.get(runner, 0) + 1
            try:
                future = runner.submit_merged([item[0] for item in chunk])
            except Exception as exc:  # noqa: BLE001 - e.g. the executor shut down: fail these callers
                self._inflight[runner] -= 1
                for item in chunk:
                    item[1](_as_error(exc))
                continue
            future.add_done_callback(self._on_batch_done(runner, chunk))

    def _on_batch_done(self, runner: Runner, chunk: list[_Pending]) -> Callable[[Future[list[Any]]], None]:
        completions = self.completions
        return lambda fut: completions.push(lambda: self._deliver(runner, chunk, fut))

    def _deliver(self, runner: Runner, chunk: list[_Pending], future: Future[list[Any]]) -> None:
        self._inflight[runner] -= 1
        try:
            results = future.result()
        except BaseException as exc:  # noqa: BLE001 - every caller in the batch gets the failure
            results = [_as_error(exc)] * len(chunk)
        for item, result in zip(chunk, results, strict=True):
            item[1](result)
        if self._pending.get(runner):
            self._flush(runner)


def _outcome(future: Future[Any]) -> Any:
    try:
        return future.result()
    except BaseException as exc:  # noqa: BLE001 - becomes the caller's error status
        return _as_error(exc)
