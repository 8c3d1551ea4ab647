"""Traffic split and shadow comparison for requests that name no version or label (an extension, off by default).

TF Serving answers such a request with the newest loaded version, so a canary takes every default-URL
request the moment it loads. With `--enable_traffic_split` the server instead answers them with the
version labelled `stable`, except a share (`canary_percent`) answered by the version labelled `canary`;
a further share of stable's requests (`mirror_percent`) is also run on the canary in the background,
its answer compared with stable's and never returned. Both shares are set at run time:

    POST /v1/models/<name>/traffic  {"canary_percent": 10, "mirror_percent": 20}
    GET  /v1/models/<name>/traffic

A model with no `stable` label keeps TF Serving's default (newest). Shares are spread evenly by a
counter (exactly N of every 100 requests), so tests and benchmarks see the configured split.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aviary.serving.manager import ModelManager
from aviary.serving.metrics import Metrics
from aviary.serving.servable import Servable
from aviary.serving.status import ServingError, invalid, not_found

log = logging.getLogger("serving")

STABLE, CANARY = "stable", "canary"
SHADOW_QUEUE = 64
"""Mirrored requests waiting for the canary; more are dropped (and counted), never queued without bound."""

Outputs = Mapping[str, np.ndarray]


@dataclass
class _Split:
    canary_percent: int = 0
    mirror_percent: int = 0
    served: int = 0  # unversioned requests routed so far (the canary's share is spread over them)
    stable_served: int = 0  # of those, answered by stable (the mirrored share is spread over them)


def _due(count: int, percent: int) -> bool:
    """True for exactly `percent` of every 100 consecutive counts, evenly spread."""
    return (count + 1) * percent // 100 > count * percent // 100


class Answer:
    """A prepared call's finish(): shapes the client's answer, then hands stable's outputs to the shadow.

    `version` is the version that answers, for the metrics' `version` label.
    """

    __slots__ = ("finish", "mirror", "version")

    def __init__(self, finish: Callable[[Any], Any], version: int,
                 mirror: Callable[[Outputs], None] | None = None) -> None:
        self.finish = finish
        self.version = version
        self.mirror = mirror

    def __call__(self, outputs: Any) -> Any:
        answer = self.finish(outputs)
        if self.mirror is not None:
            self.mirror(outputs)  # only enqueues: the client's answer never waits for the canary
        return answer


def version_of(finish: Any) -> int | None:
    """The version a prepared call was answered by, if it got that far."""
    return getattr(finish, "version", None)


@dataclass(frozen=True)
class Comparison:
    rows: int
    disagreements: int
    abs_diffs: np.ndarray
    stable_positives: int
    canary_positives: int


def _probabilities(outputs: Outputs, rows: int) -> tuple[str, np.ndarray] | None:
    """`probability` if the signature has it, else its only floating output; as [rows, k]."""
    floats = {k: v for k, v in outputs.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}
    key = "probability" if "probability" in floats else (next(iter(floats)) if len(floats) == 1 else None)
    if key is None:
        return None
    arr = np.asarray(floats[key], dtype=np.float64)
    if arr.ndim == 0 or arr.shape[0] != rows:
        return None
    return key, arr.reshape(rows, -1)


def _classes(outputs: Outputs, probabilities: np.ndarray) -> np.ndarray:
    """`class`/`classes` if integer, else 1 where p >= 0.5 (one column) or the argmax (several)."""
    for key in ("class", "classes"):
        arr = outputs.get(key)
        if arr is not None and np.issubdtype(np.asarray(arr).dtype, np.integer):
            flat = np.asarray(arr).reshape(probabilities.shape[0], -1)
            return np.asarray(flat[:, 0], dtype=np.int64)
    if probabilities.shape[1] == 1:
        return (probabilities[:, 0] >= 0.5).astype(np.int64)
    return np.asarray(probabilities.argmax(axis=1), dtype=np.int64)


def compare(stable: Outputs, canary: Outputs) -> Comparison | None:
    """Row by row: |p difference| (the largest over a row's columns), class agreement, positives (class != 0).
    None when the two answers cannot be compared (no common probability output, different shapes)."""
    first = next(iter(stable.values()), None)
    if first is None or np.ndim(first) == 0:
        return None
    rows = int(np.shape(first)[0])
    found_stable, found_canary = _probabilities(stable, rows), _probabilities(canary, rows)
    if found_stable is None or found_canary is None or found_stable[1].shape != found_canary[1].shape:
        return None
    p_stable, p_canary = found_stable[1], found_canary[1]
    c_stable, c_canary = _classes(stable, p_stable), _classes(canary, p_canary)
    return Comparison(
        rows=rows,
        disagreements=int((c_stable != c_canary).sum()),
        abs_diffs=np.abs(p_canary - p_stable).max(axis=1),
        stable_positives=int((c_stable != 0).sum()),
        canary_positives=int((c_canary != 0).sum()),
    )


class Traffic:
    """The per-model split and the shadow worker; `route` is called for every unversioned request."""

    def __init__(self, manager: ModelManager, metrics: Metrics, queue_size: int = SHADOW_QUEUE) -> None:
        self.manager = manager
        self.metrics = metrics
        self._lock = threading.Lock()
        self._splits: dict[str, _Split] = {}
        self._queue: queue.Queue[tuple[str, Servable, str, dict[str, np.ndarray], Outputs] | None] = \
            queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._shadow_loop, name="shadow", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- settings

    def settings(self, name: str) -> dict[str, Any]:
        labels = self.manager.labels.get(name, {})
        with self._lock:
            split = self._splits.get(name, _Split())
            return {"canary_percent": split.canary_percent, "mirror_percent": split.mirror_percent,
                    "stable_version": labels.get(STABLE), "canary_version": labels.get(CANARY)}

    def configure(self, name: str, canary_percent: int | None = None, mirror_percent: int | None = None) -> None:
        with self._lock:
            split = self._splits.setdefault(name, _Split())
            if canary_percent is not None:
                split.canary_percent = canary_percent
            if mirror_percent is not None:
                split.mirror_percent = mirror_percent

    def rest(self, name: str, method: str, body: bytes) -> bytes:
        """GET or POST /v1/models/<name>/traffic; the answer is the split now in force."""
        if name not in self.manager.models or not self.manager.models[name].in_config:
            raise not_found(f"Could not find any versions of model {name}")
        if method == "POST":
            changes = _parse_split(body)
            self.configure(name, **changes)
            log.info("Traffic split of %s: %s", name, self.settings(name))
        elif method != "GET":
            raise invalid(f"Malformed request: {method} /v1/models/{name}/traffic")
        return (json.dumps(self.settings(name)) + "\n").encode()

    # ----------------------------------------------------------------- routing

    def route(self, name: str) -> tuple[Servable, Servable | None]:
        """The servable that answers an unversioned request, and the canary to mirror it to (or None)."""
        labels = self.manager.labels.get(name, {})
        stable_version = labels.get(STABLE)
        if stable_version is None:
            return self.manager.resolve(name), None
        try:
            stable = self.manager.resolve(name, stable_version)
        except ServingError:
            return self.manager.resolve(name), None  # stable not loaded (yet): TF Serving's default
        canary_version = labels.get(CANARY)
        canary: Servable | None = None
        if canary_version is not None and canary_version != stable_version:
            try:
                canary = self.manager.resolve(name, canary_version)
            except ServingError:
                canary = None  # still loading: stable answers everything meanwhile
        if canary is None:
            return stable, None
        with self._lock:
            split = self._splits.get(name)
            if split is None:
                return stable, None
            served = split.served
            split.served += 1
            if _due(served, split.canary_percent):
                return canary, None
            mirrored = _due(split.stable_served, split.mirror_percent)
            split.stable_served += 1
        return stable, canary if mirrored else None

    # ----------------------------------------------------------------- shadow

    def mirror_to(self, model: str, canary: Servable, signature: str,
                  feeds: dict[str, np.ndarray]) -> Callable[[Outputs], None]:
        """What Answer calls with stable's outputs: queue the same feeds for the canary, or drop them."""

        def enqueue(outputs: Outputs) -> None:
            try:
                self._queue.put_nowait((model, canary, signature, feeds, outputs))
            except queue.Full:
                self.metrics.record_shadow_event(model, canary.version, "dropped")

        return enqueue

    def _shadow_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            try:
                self._compare(*item)
            finally:
                self._queue.task_done()

    def _compare(self, model: str, canary: Servable, signature: str, feeds: dict[str, np.ndarray],
                 stable_outputs: Outputs) -> None:
        comparison: Comparison | None = None
        try:
            runner = canary.runners.get(signature)
            if runner is not None:
                comparison = compare(stable_outputs, runner.run(feeds))
        except ServingError:
            pass  # the canary failed this input: counted below
        except Exception:  # noqa: BLE001 - the shadow must never take the server down
            log.exception("shadow comparison failed")
        if comparison is None:
            self.metrics.record_shadow_event(model, canary.version, "errors")
        else:
            self.metrics.record_shadow(model, canary.version, comparison.rows, comparison.disagreements,
                                       comparison.abs_diffs.tolist(), comparison.stable_positives,
                                       comparison.canary_positives)

    def drain(self, timeout: float = 10.0) -> bool:
        """Waits until every queued comparison is recorded (tests); False at the deadline."""
        deadline = time.monotonic() + timeout
        idle = threading.Event()
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            idle.wait(0.01)
        return True

    def close(self) -> None:
        with contextlib.suppress(queue.Full):  # a full queue: the daemon worker ends with the process
            self._queue.put_nowait(None)


def _parse_split(body: bytes) -> dict[str, int]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError as exc:
        raise invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid('traffic split must be a JSON object like {"canary_percent": 10, "mirror_percent": 20}')
    unknown = sorted(set(doc) - {"canary_percent", "mirror_percent"})
    if unknown:
        raise invalid(f"traffic split: unknown field {unknown[0]!r}; expected canary_percent, mirror_percent")
    out: dict[str, int] = {}
    for key, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise invalid(f"traffic split: {key} must be an integer from 0 to 100, got {json.dumps(value)}")
        out[key] = value
    return out
