"""Server-side batching: concurrent calls to one signature are merged along dim 0 and split back.

Mirrors TF Serving's BatchingParameters: a batch closes when it holds `max_batch_size` rows or
`batch_timeout_micros` after its first task; `allowed_batch_sizes` pads a batch up (with copies of
its first row) and the padding is dropped again before answering.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aviary.serving.status import ServingError, invalid

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 1000
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0

    @classmethod
    def from_text(cls, text: str, source: str = "<batching parameters>") -> BatchingOptions:
        """Parses a `BatchingParameters` text proto (the --batching_parameters_file); unknown fields are refused."""
        from aviary.serving import configpb

        params = configpb.parse_text(text, configpb.batching_parameters(), source)
        kwargs: dict[str, Any] = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                     "max_execution_batch_size", "enable_large_batch_splitting"):
            if params.HasField(name):
                kwargs[name] = getattr(params, name).value
        kwargs["allowed_batch_sizes"] = tuple(int(v) for v in params.allowed_batch_sizes)
        options = cls(**kwargs)
        sizes = options.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)):
                raise ValueError(f"{source}: allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != options.max_batch_size:
                raise ValueError(f"{source}: final entry in allowed_batch_sizes must equal max_batch_size")
        return options


class _Task:
    __slots__ = ("feeds", "future", "key", "rows")

    def __init__(self, feeds: Feeds, rows: int, key: tuple[Any, ...]) -> None:
        self.feeds = feeds
        self.rows = rows
        self.key = key
        self.future: Future[Outputs] = Future()


def _task_key(feeds: Feeds) -> tuple[Any, ...]:
    return tuple((name, arr.dtype.str, arr.shape[1:]) for name, arr in sorted(feeds.items()))


class SignatureBatcher:
    """A queue and `num_batch_threads` workers in front of one signature's run function."""

    def __init__(self, run: Callable[[Feeds], Outputs], options: BatchingOptions) -> None:
        self._run = run
        self.options = options
        self._queue: deque[_Task] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True)
            for i in range(max(1, options.num_batch_threads))
        ]
        for thread in self._threads:
            thread.start()

    def accepts(self, feeds: Feeds) -> bool:
        return batchable(feeds)

    def submit(self, feeds: Feeds) -> Future[Outputs]:
        rows = next(iter(feeds.values())).shape[0]
        limit = self.options.max_batch_size
        if rows > limit and not self.options.enable_large_batch_splitting:
            raise invalid(f"Task size {rows} is larger than maximum input batch size {limit}")
        task = _Task(feeds, rows, _task_key(feeds))
        with self._cond:
            if self._closed:
                raise ServingError("UNAVAILABLE", "Batch scheduler is shut down")
            if self._queued_rows + rows > limit * self.options.max_enqueued_batches:
                raise ServingError(
                    "UNAVAILABLE", "The batch scheduling queue to which this task was submitted is full"
                )
            self._queue.append(task)
            self._queued_rows += rows
            self._cond.notify()
        return task.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take_batch(self) -> list[_Task] | None:
        limit = self.options.max_batch_size
        timeout = self.options.batch_timeout_micros / 1e6
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue[0]
            deadline = time.monotonic() + timeout
            while True:
                batch: list[_Task] = []
                rows = 0
                for task in self._queue:
                    if task.key == first.key and (not batch or rows + task.rows <= limit):
                        batch.append(task)
                        rows += task.rows
                        if rows >= limit:
                            break
                remaining = deadline - time.monotonic()
                if rows >= limit or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            for task in batch:
                self._queue.remove(task)
                self._queued_rows -= task.rows
            return batch

    def _worker(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._process(batch)
            except BaseException as exc:  # noqa: BLE001 - never lose a worker; fail its callers instead
                for task in batch:
                    if not task.future.done():
                        task.future.set_exception(exc)

    def _process(self, batch: list[_Task]) -> None:
        results = run_merged(self._run, [task.feeds for task in batch], self.options)
        for task, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                task.future.set_exception(result)
            else:
                task.future.set_result(result)


def padded_size(rows: int, options: BatchingOptions) -> int:
    for size in options.allowed_batch_sizes:
        if size >= rows:
            return size
    return rows


def run_merged(run: Callable[[Feeds], Outputs], feeds_list: list[Feeds], options: BatchingOptions
               ) -> list[Outputs | ServingError]:
    """One run for several callers with matching inputs: concatenate, pad, run, split back by rows."""
    if len(feeds_list) == 1 and not options.allowed_batch_sizes:
        try:
            return [run(feeds_list[0])]
        except ServingError as exc:
            return [exc]
    rows = [next(iter(feeds.values())).shape[0] for feeds in feeds_list]
    total = sum(rows)
    padded = padded_size(total, options)
    merged: dict[str, np.ndarray] = {}
    for name in feeds_list[0]:
        parts = [feeds[name] for feeds in feeds_list]
        if padded > total:
            parts.append(np.repeat(parts[0][:1], padded - total, axis=0))
        merged[name] = np.concatenate(parts, axis=0)
    try:
        outputs = run(merged)
        for name, arr in outputs.items():
            if arr.ndim == 0:
                raise invalid(f"Batched output tensor has 0 dimensions: {name}")
            if arr.shape[0] != padded:
                raise invalid(
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
                    "sizes of the input tensors"
                )
    except ServingError as exc:
        return [exc] * len(feeds_list)
    results: list[Outputs | ServingError] = []
    offset = 0
    for n in rows:
        results.append({name: arr[offset:offset + n] for name, arr in outputs.items()})
        offset += n
    return results


def task_key(feeds: Feeds) -> tuple[Any, ...]:
    """Callers can share a batch only if their inputs agree on everything but dim 0."""
    return _task_key(feeds)


def batchable(feeds: Feeds) -> bool:
    if not feeds:
        return False
    rows = {arr.shape[0] if arr.ndim else -1 for arr in feeds.values()}
    return len(rows) == 1 and min(rows) > 0
