"""Prometheus text exposition of TF Serving's metric names (`/tensorflow/serving/...` -> `:tensorflow:serving:...`)."""

from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass


def exported_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", ":", name)


def _exp_buckets(scale: float, growth: float, count: int) -> list[float]:
    return [scale * growth**i for i in range(count)]


# TF Serving's request latency sampler: exponential buckets 10us * 1.8^i, 33 of them.
LATENCY_BUCKETS_US = _exp_buckets(10, 1.8, 33)
# |canary - stable probability| of mirrored rows (the traffic-split extension): fine where limits sit.
ABS_DIFF_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                    0.75, 1.0]
_SHADOW_COUNTERS = ("compared_rows", "class_disagreements", "stable_positives", "canary_positives", "dropped",
                    "errors")


def _fmt(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    # An empty value is an absent label in Prometheus: leave it out (a request that resolved no version).
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True) if v]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class _Histogram:
    counts: list[int]
    total: float = 0.0
    n: int = 0


class Metrics:
    """Counters and histograms keyed by label values; cheap to update from any thread.

    Request metrics carry a `version` label beyond TF Serving's (the version that answered; absent when
    the request failed before one was chosen), so a canary can be judged against stable.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_count: dict[tuple[str, ...], int] = {}
        self.request_latency: dict[tuple[str, ...], _Histogram] = {}
        self.warmup_latency: dict[tuple[str, ...], _Histogram] = {}
        self.example_counts: dict[tuple[str, ...], _Histogram] = {}
        self.shadow_counts: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in _SHADOW_COUNTERS}
        self.shadow_abs_diff: dict[tuple[str, ...], _Histogram] = {}

    def record_request(self, model: str, api: str, entrypoint: str, status: str, latency_us: float,
                       version: int | None = None) -> None:
        v = "" if version is None else str(version)
        with self._lock:
            key = (model, v, status)
            self.request_count[key] = self.request_count.get(key, 0) + 1
            self._observe(self.request_latency, (model, v, api, entrypoint), latency_us, LATENCY_BUCKETS_US)

    def record_shadow(self, model: str, canary: int, rows: int, disagreements: int, abs_diffs: list[float],
                      stable_positives: int, canary_positives: int) -> None:
        """One mirrored request compared: stable's and the canary's answers on the same rows."""
        key = (model, str(canary))
        with self._lock:
            for name, n in (("compared_rows", rows), ("class_disagreements", disagreements),
                            ("stable_positives", stable_positives), ("canary_positives", canary_positives)):
                table = self.shadow_counts[name]
                table[key] = table.get(key, 0) + n
            for diff in abs_diffs:
                self._observe(self.shadow_abs_diff, key, diff, ABS_DIFF_BUCKETS)

    def record_shadow_event(self, model: str, canary: int, kind: str) -> None:
        """A mirrored request `dropped` (queue full) or in `errors` (the canary failed it, or no comparable output)."""
        key = (model, str(canary))
        with self._lock:
            table = self.shadow_counts[kind]
            table[key] = table.get(key, 0) + 1

    def record_warmup(self, model: str, version: int, seconds: float) -> None:
        with self._lock:
            self._observe(self.warmup_latency, (model,), seconds * 1e6, LATENCY_BUCKETS_US)

    @staticmethod
    def _observe(table: dict[tuple[str, ...], _Histogram], key: tuple[str, ...], value: float,
                 buckets: list[float]) -> None:
        hist = table.get(key)
        if hist is None:
            hist = table[key] = _Histogram([0] * (len(buckets) + 1))
        hist.counts[bisect.bisect_left(buckets, value)] += 1
        hist.total += value
        hist.n += 1

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            name = exported_name("/tensorflow/serving/request_count")
            out.append(f"# TYPE {name} counter")
            for key, count in sorted(self.request_count.items()):
                out.append(f"{name}{_labels(('model_name', 'version', 'status'), key)} {count}")
            self._render_hist(out, "/tensorflow/serving/request_latency",
                              ("model_name", "version", "API", "entrypoint"), self.request_latency, LATENCY_BUCKETS_US)
            self._render_hist(out, "/tensorflow/serving/model_warmup_latency", ("model_path",),
                              self.warmup_latency, LATENCY_BUCKETS_US)
            for counter in _SHADOW_COUNTERS:
                if not self.shadow_counts[counter]:
                    continue
                name = exported_name(f"/tensorflow/serving/shadow_{counter}")
                out.append(f"# TYPE {name} counter")
                for key, count in sorted(self.shadow_counts[counter].items()):
                    out.append(f"{name}{_labels(('model_name', 'version'), key)} {count}")
            if self.shadow_abs_diff:
                self._render_hist(out, "/tensorflow/serving/shadow_abs_probability_diff", ("model_name", "version"),
                                  self.shadow_abs_diff, ABS_DIFF_BUCKETS)
        return "\n".join(out) + "\n"

    @staticmethod
    def _render_hist(out: list[str], metric: str, label_names: tuple[str, ...],
                     table: dict[tuple[str, ...], _Histogram], buckets: list[float]) -> None:
        name = exported_name(metric)
        out.append(f"# TYPE {name} histogram")
        for key, hist in sorted(table.items()):
            running = 0
            for bound, count in zip([*buckets, float("inf")], hist.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else _fmt(bound)
                extra = 'le="' + le + '"'
                out.append(f"{name}_bucket{_labels(label_names, key, extra)} {running}")
            out.append(f"{name}_sum{_labels(label_names, key)} {_fmt(hist.total)}")
            out.append(f"{name}_count{_labels(label_names, key)} {hist.n}")
