"""Prometheus text exposition of TF Serving's metric names (`/tensorflow/serving/...` -> `:tensorflow:serving:...`).

Extensions (labels and names TF Serving does not have):
* `version` on `:tensorflow:serving:request_count{model_name,version,status}` and
  `:tensorflow:serving:request_latency{model_name,version,API,entrypoint}` (the version that answered;
  empty when the request failed before a version was chosen), so error rate, latency quantiles and
  request counts can be computed per version.
* `:aviary:serving:shadow:*`, the comparison of mirrored requests (see `shadow.py`), labelled
  `model_name`, `stable_version`, `canary_version` and, per output tensor, `output`:
  `request_count{status}` (OK, an error code, or DROPPED when too many mirrors were in flight),
  `compared_count` (values compared), `disagreement_count` (values whose class differs: for float
  outputs the side of 0.5, else inequality), `positive_count{track=stable|canary}` (float > 0.5, or
  non-zero), and the histogram `abs_diff` of |stable - canary| for float outputs.
"""

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
DIFF_BUCKETS = [1e-6, 1e-5, 1e-4, 1e-3, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
SHADOW = ("model_name", "stable_version", "canary_version")


def _fmt(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
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
    """Counters and histograms keyed by label values; cheap to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_count: dict[tuple[str, ...], int] = {}
        self.request_latency: dict[tuple[str, ...], _Histogram] = {}
        self.warmup_latency: dict[tuple[str, ...], _Histogram] = {}
        self.example_counts: dict[tuple[str, ...], _Histogram] = {}
        self.shadow_requests: dict[tuple[str, ...], int] = {}
        self.shadow_compared: dict[tuple[str, ...], int] = {}
        self.shadow_disagreements: dict[tuple[str, ...], int] = {}
        self.shadow_positives: dict[tuple[str, ...], int] = {}
        self.shadow_abs_diff: dict[tuple[str, ...], _Histogram] = {}

    def record_request(self, model: str, api: str, entrypoint: str, status: str, latency_us: float,
                       version: str = "") -> None:
        with self._lock:
            key = (model, version, status)
            self.request_count[key] = self.request_count.get(key, 0) + 1
            self._observe(self.request_latency, (model, version, api, entrypoint), latency_us, LATENCY_BUCKETS_US)

    def record_shadow_request(self, pair: tuple[str, str, str], status: str) -> None:
        with self._lock:
            key = (*pair, status)
            self.shadow_requests[key] = self.shadow_requests.get(key, 0) + 1

    def record_shadow_output(self, pair: tuple[str, str, str], output: str, compared: int, disagreements: int,
                             positives: tuple[int, int], diff_counts: list[int] | None, diff_sum: float) -> None:
        """One output tensor of one mirrored request; diff_counts are per DIFF_BUCKETS bucket (+Inf last)."""
        key = (*pair, output)
        with self._lock:
            self.shadow_compared[key] = self.shadow_compared.get(key, 0) + compared
            self.shadow_disagreements[key] = self.shadow_disagreements.get(key, 0) + disagreements
            for track, count in zip(("stable", "canary"), positives, strict=True):
                self.shadow_positives[(*key, track)] = self.shadow_positives.get((*key, track), 0) + count
            if diff_counts is not None:
                hist = self.shadow_abs_diff.get(key)
                if hist is None:
                    hist = self.shadow_abs_diff[key] = _Histogram([0] * (len(DIFF_BUCKETS) + 1))
                for i, count in enumerate(diff_counts):
                    hist.counts[i] += count
                hist.total += diff_sum
                hist.n += sum(diff_counts)

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
            if self.shadow_requests:
                self._render_counter(out, "/aviary/serving/shadow/request_count", (*SHADOW, "status"),
                                     self.shadow_requests)
                self._render_counter(out, "/aviary/serving/shadow/compared_count", (*SHADOW, "output"),
                                     self.shadow_compared)
                self._render_counter(out, "/aviary/serving/shadow/disagreement_count", (*SHADOW, "output"),
                                     self.shadow_disagreements)
                self._render_counter(out, "/aviary/serving/shadow/positive_count", (*SHADOW, "output", "track"),
                                     self.shadow_positives)
                self._render_hist(out, "/aviary/serving/shadow/abs_diff", (*SHADOW, "output"),
                                  self.shadow_abs_diff, DIFF_BUCKETS)
        return "\n".join(out) + "\n"

    @staticmethod
    def _render_counter(out: list[str], metric: str, label_names: tuple[str, ...],
                        table: dict[tuple[str, ...], int]) -> None:
        name = exported_name(metric)
        out.append(f"# TYPE {name} counter")
        for key, count in sorted(table.items()):
            out.append(f"{name}{_labels(label_names, key)} {count}")

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
