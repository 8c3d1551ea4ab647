"""Shadow mirroring: a share of unversioned predicts also runs on the canary, whose answers are compared
with stable's on the same inputs and published as metrics (`:aviary:serving:shadow:*`, see metrics.py).

The client never waits for it: the mirror is queued after stable's outputs exist and runs on a worker
thread; at most `max_in_flight` mirrors run at once, the rest are counted as DROPPED.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Executor

import numpy as np

from aviary.serving.metrics import DIFF_BUCKETS, Metrics
from aviary.serving.servable import Servable
from aviary.serving.status import ServingError

log = logging.getLogger("serving")


class Shadow:
    def __init__(self, executor: Executor, metrics: Metrics, max_in_flight: int = 2) -> None:
        self.executor = executor
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._in_flight = 0

    def mirror(self, model: str, stable_version: int, canary: Servable, signature_name: str,
               feeds: Mapping[str, np.ndarray], stable_outputs: Mapping[str, np.ndarray]) -> None:
        """Queues the canary run of `feeds` and its comparison with `stable_outputs`; never blocks."""
        pair = (model, str(stable_version), str(canary.version))
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                self.metrics.record_shadow_request(pair, "DROPPED")
                return
            self._in_flight += 1
        try:
            self.executor.submit(self._run, pair, canary, signature_name, feeds, stable_outputs)
        except RuntimeError:  # executor shut down
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _run(self, pair: tuple[str, str, str], canary: Servable, signature_name: str,
             feeds: Mapping[str, np.ndarray], stable_outputs: Mapping[str, np.ndarray]) -> None:
        try:
            outputs = canary.runner_for_predict(signature_name).run(feeds)
            for name in sorted(set(stable_outputs) & set(outputs)):
                self._compare(pair, name, stable_outputs[name], outputs[name])
            self.metrics.record_shadow_request(pair, "OK")
        except ServingError as exc:
            self.metrics.record_shadow_request(pair, exc.code)
        except Exception:  # noqa: BLE001 - a mirror must never hurt the server
            log.exception("shadow request failed")
            self.metrics.record_shadow_request(pair, "INTERNAL")
        finally:
            self._done()

    def _compare(self, pair: tuple[str, str, str], name: str, stable: np.ndarray, canary: np.ndarray) -> None:
        compared = int(stable.size)
        if stable.shape != canary.shape:
            self.metrics.record_shadow_output(pair, name, compared, compared, (0, 0), None, 0.0)
            return
        if stable.dtype.kind == "f" and canary.dtype.kind == "f":
            a, b = stable.astype(np.float64), canary.astype(np.float64)
            diff = np.abs(a - b)
            diff = np.where(np.isnan(diff), np.inf, diff).ravel()
            counts = np.bincount(np.searchsorted(DIFF_BUCKETS, diff, side="left"),
                                 minlength=len(DIFF_BUCKETS) + 1).tolist()
            finite = diff[np.isfinite(diff)]
            positives = (int(np.count_nonzero(a > 0.5)), int(np.count_nonzero(b > 0.5)))
            disagreements = int(np.count_nonzero((a > 0.5) != (b > 0.5)))
            self.metrics.record_shadow_output(pair, name, compared, disagreements, positives, counts,
                                              float(finite.sum()))
            return
        disagreements = int(np.count_nonzero(stable != canary))
        positives = (0, 0)
        if stable.dtype.kind in "iub" and canary.dtype.kind in "iub":
            positives = (int(np.count_nonzero(stable)), int(np.count_nonzero(canary)))
        self.metrics.record_shadow_output(pair, name, compared, disagreements, positives, None, 0.0)
