"""A bounded load generator: TF Serving clients calling the default URL at a steady rate, on 127.0.0.1.

Bounded by a request count and a time limit, whichever comes first, so a test or benchmark that
forgets to stop it still ends. Each answer is kept as (time, HTTP status).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import requests

Instances = Callable[[int], list[dict[str, float]]]


def circle_traffic(out_of_range: float = 0.0, seed: int = 0) -> Instances:
    """One instance per request inside the circle data's square, with a share far outside it (x >= 2)."""
    rng = np.random.default_rng(seed)
    lock = threading.Lock()

    def instances(_i: int) -> list[dict[str, float]]:
        with lock:
            x, y = rng.uniform(-1.5, 1.5, size=2)
            if rng.random() < out_of_range:
                x = rng.uniform(2.0, 3.0)
        return [{"x": float(x), "y": float(y)}]

    return instances


@dataclass
class Load:
    url: str
    rate: float
    max_requests: int
    max_seconds: float
    instances: Instances = field(default_factory=circle_traffic)
    workers: int = 4
    answers: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.max_requests:
                return None
            self._next += 1
            return self._next - 1

    def _work(self, start: float) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                i = self._take()
                if i is None:
                    return
                due = start + i / self.rate
                if due > start + self.max_seconds or self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                try:
                    code = session.post(self.url, json={"instances": self.instances(i)}, timeout=10).status_code
                except requests.RequestException:
                    code = 0
                self.answers.append((time.monotonic(), code))

    @contextmanager
    def running(self) -> Iterator[Load]:
        start = time.monotonic()
        threads = [threading.Thread(target=self._work, args=(start,), daemon=True) for _ in range(self.workers)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=15)

    def codes(self, since: float = 0.0) -> list[int]:
        return [code for at, code in list(self.answers) if at >= since]
