"""Live analysis of a canary against stable, from the servers' own Prometheus metrics.

A step is judged on what the servers counted over its window: per-version request counts, error
rate and latency quantiles from TF Serving's metric names with a `version` label, and the shadow
comparison the server makes when it mirrors requests to the canary. As Prometheus's `increase()`,
each server's counters are differenced on their own, scrape by scrape, and then summed: a pod that
restarts or is replaced mid-window neither hides what it served nor counts its past again.
Pure functions over the metrics text; the target only fetches that text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"  # microseconds
# The local server's shadow comparison (an extension), per output tensor, labelled
# {model_name, stable_version, canary_version, output}; positives also by track=stable|canary.
SHADOW_PREFIX = ":aviary:serving:shadow:"
SHADOW_COMPARED = f"{SHADOW_PREFIX}compared_count"
SHADOW_DISAGREEMENTS = f"{SHADOW_PREFIX}disagreement_count"
SHADOW_POSITIVES = f"{SHADOW_PREFIX}positive_count"
SHADOW_ABS_DIFF = f"{SHADOW_PREFIX}abs_diff"
CLASS_OUTPUT = "class"
"""The exported signature's outputs: classes are compared on `class`, |p difference| on `probability`."""
PROBABILITY_OUTPUT = "probability"
OK = "OK"


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per upper bound (the last bound is +Inf), plus sum and count."""

    buckets: tuple[tuple[float, float], ...] = ()
    total: float = 0.0
    count: float = 0.0

    def __add__(self, other: Histogram) -> Histogram:
        merged: dict[float, float] = dict(self.buckets)
        for bound, n in other.buckets:
            merged[bound] = merged.get(bound, 0.0) + n
        return Histogram(tuple(sorted(merged.items())), self.total + other.total, self.count + other.count)

    def __sub__(self, before: Histogram) -> Histogram:
        """The increase since `before`; a reset counter (a restarted server) counts from zero."""
        if self.count < before.count:
            return self
        old = dict(before.buckets)
        return Histogram(tuple((b, max(0.0, n - old.get(b, 0.0))) for b, n in self.buckets),
                         self.total - before.total, self.count - before.count)

    def quantile(self, q: float) -> float:
        """As Prometheus's histogram_quantile: linear inside the bucket that holds the q-th observation."""
        if self.count <= 0 or not self.buckets:
            return math.nan
        rank = q * self.buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound  # the highest finite bound, as Prometheus does
                if cumulative == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
            lower_bound, lower_count = bound, cumulative
        return lower_bound


@dataclass(frozen=True)
class VersionCounters:
    requests: Mapping[str, float] = field(default_factory=dict)  # by status
    latency: Histogram = Histogram()

    def __add__(self, other: VersionCounters) -> VersionCounters:
        return VersionCounters(_merge(self.requests, other.requests), self.latency + other.latency)

    def __sub__(self, before: VersionCounters) -> VersionCounters:
        return VersionCounters({s: _increase(n, before.requests.get(s, 0.0)) for s, n in self.requests.items()},
                               self.latency - before.latency)


@dataclass(frozen=True)
class ShadowCounters:
    rows: float = 0.0
    disagreements: float = 0.0
    abs_diff: Histogram = Histogram()
    stable_positives: float = 0.0
    canary_positives: float = 0.0

    def __add__(self, other: ShadowCounters) -> ShadowCounters:
        return ShadowCounters(self.rows + other.rows, self.disagreements + other.disagreements,
                              self.abs_diff + other.abs_diff, self.stable_positives + other.stable_positives,
                              self.canary_positives + other.canary_positives)

    def __sub__(self, before: ShadowCounters) -> ShadowCounters:
        return ShadowCounters(_increase(self.rows, before.rows), _increase(self.disagreements, before.disagreements),
                              self.abs_diff - before.abs_diff,
                              _increase(self.stable_positives, before.stable_positives),
                              _increase(self.canary_positives, before.canary_positives))


@dataclass(frozen=True)
class Snapshot:
    """One model's counters, summed over every server scraped at one moment; or what they counted
    over a window (an increase)."""

    versions: Mapping[int, VersionCounters] = field(default_factory=dict)
    shadow: Mapping[int, ShadowCounters] = field(default_factory=dict)

    def __add__(self, other: Snapshot) -> Snapshot:
        return Snapshot(_merge(self.versions, other.versions), _merge(self.shadow, other.shadow))

    def __sub__(self, before: Snapshot) -> Snapshot:
        """The increase since `before`, each counter on its own: one that went down restarted from zero."""
        return Snapshot({v: c - before.versions.get(v, VersionCounters()) for v, c in self.versions.items()},
                        {v: c - before.shadow.get(v, ShadowCounters()) for v, c in self.shadow.items()})


K = TypeVar("K")
C = TypeVar("C", float, VersionCounters, ShadowCounters)


def _merge(a: Mapping[K, C], b: Mapping[K, C]) -> dict[K, C]:
    merged = dict(a)
    for key, value in b.items():
        merged[key] = merged[key] + value if key in merged else value
    return merged


Scrape = Mapping[str, Snapshot]
"""One scrape: each server's (instance's) counters, by a name that stays the same while it lives."""


def parse_scrape(pages: Mapping[str, str], model: str) -> dict[str, Snapshot]:
    return {instance: parse_metrics([page], model) for instance, page in pages.items()}


def increase(before: Scrape, after: Scrape) -> Snapshot:
    """What the servers counted between two scrapes, summed: a server new since `before` counted all
    it shows; one gone since adds nothing more (what it counted before `before` is already in)."""
    total = Snapshot()
    for instance, counters in after.items():
        total = total + (counters - before.get(instance, Snapshot()))
    return total


def _bound(text: str) -> float:
    return math.inf if text in ("+Inf", "Inf") else float(text)


def parse_metrics(texts: Iterable[str], model: str) -> Snapshot:
    """Sum the model's per-version counters over the metrics pages of several servers (pods)."""
    requests: dict[int, dict[str, float]] = {}
    latency: dict[int, dict[str, dict[float, float]]] = {}
    shadow: dict[int, dict[str, dict[str, float]]] = {}  # canary version -> output -> counter -> value
    abs_diff: dict[int, dict[str, dict[str, dict[float, float]]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("model_name") != model:
                    continue
                name, value = sample.name.removesuffix("_total"), sample.value
                if name.startswith(SHADOW_PREFIX):
                    if not labels.get("canary_version", "").isdigit():
                        continue
                    version, output = int(labels["canary_version"]), labels.get("output", "")
                    if name.startswith(SHADOW_ABS_DIFF):
                        parts = abs_diff.setdefault(version, {}).setdefault(output, {})
                        _add_hist(parts, name.removeprefix(SHADOW_ABS_DIFF), labels, value)
                        continue
                    key = {SHADOW_COMPARED: "rows", SHADOW_DISAGREEMENTS: "disagreements"}.get(name)
                    if name == SHADOW_POSITIVES:
                        key = f"{labels.get('track', '')}_positives"
                    if key is not None:
                        counters = shadow.setdefault(version, {}).setdefault(output, {})
                        counters[key] = counters.get(key, 0.0) + value
                    continue
                if not labels.get("version", "").isdigit():
                    continue
                version = int(labels["version"])
                if name == REQUEST_COUNT:
                    by_status = requests.setdefault(version, {})
                    by_status[labels.get("status", OK)] = by_status.get(labels.get("status", OK), 0.0) + value
                elif name.startswith(REQUEST_LATENCY):
                    _add_hist(latency.setdefault(version, {}), name.removeprefix(REQUEST_LATENCY), labels, value)
    versions = {
        v: VersionCounters(requests.get(v, {}), _hist(latency.get(v, {})))
        for v in sorted(set(requests) | set(latency))
    }
    shadows = {v: _shadow_counters(shadow.get(v, {}), abs_diff.get(v, {})) for v in sorted(set(shadow) | set(abs_diff))}
    return Snapshot(versions, shadows)


def _shadow_counters(outputs: Mapping[str, Mapping[str, float]],
                     diffs: Mapping[str, dict[str, dict[float, float]]]) -> ShadowCounters:
    """Rows, agreement and positives from the class output (else the probability's side of 0.5);
    |p difference| from the probability output (else the only float output compared)."""
    counted = outputs.get(CLASS_OUTPUT) or outputs.get(PROBABILITY_OUTPUT) or next(iter(outputs.values()), {})
    diff_parts = diffs.get(PROBABILITY_OUTPUT) or (next(iter(diffs.values())) if len(diffs) == 1 else {})
    return ShadowCounters(
        rows=counted.get("rows", 0.0),
        disagreements=counted.get("disagreements", 0.0),
        abs_diff=_hist(diff_parts),
        stable_positives=counted.get("stable_positives", 0.0),
        canary_positives=counted.get("canary_positives", 0.0),
    )


def _add_hist(parts: dict[str, dict[float, float]], suffix: str, labels: Mapping[str, str], value: float) -> None:
    if suffix == "_bucket":
        buckets = parts.setdefault("buckets", {})
        bound = _bound(labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    elif suffix in ("_sum", "_count"):
        totals = parts.setdefault("totals", {})
        key = 0.0 if suffix == "_sum" else 1.0
        totals[key] = totals.get(key, 0.0) + value


def _hist(parts: dict[str, dict[float, float]]) -> Histogram:
    totals = parts.get("totals", {})
    return Histogram(tuple(sorted(parts.get("buckets", {}).items())), totals.get(0.0, 0.0), totals.get(1.0, 0.0))


def _increase(after: float, before: float) -> float:
    return after if after < before else after - before


# -- one step's window ---------------------------------------------------------


@dataclass(frozen=True)
class TrackStats:
    """One version's traffic over a window; latencies in milliseconds (NaN without requests)."""

    version: int
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class ShadowStats:
    rows: int
    agreement: float
    mean_abs_diff: float
    p99_abs_diff: float
    stable_positive_rate: float
    canary_positive_rate: float

    @property
    def positive_rate_shift(self) -> float:
        return self.canary_positive_rate - self.stable_positive_rate


def track_stats(before: Snapshot, after: Snapshot, version: int) -> TrackStats:
    return _track_stats(after - before, version)


def _track_stats(counted: Snapshot, version: int) -> TrackStats:
    counters = counted.versions.get(version, VersionCounters())
    p50, p95, p99 = (counters.latency.quantile(q) / 1000 for q in (0.5, 0.95, 0.99))
    return TrackStats(version=version, requests=round(sum(counters.requests.values())),
                      errors=round(sum(n for s, n in counters.requests.items() if s != OK)),
                      p50_ms=p50, p95_ms=p95, p99_ms=p99)


def shadow_stats(before: Snapshot, after: Snapshot, canary: int) -> ShadowStats:
    return _shadow_stats(after - before, canary)


def _shadow_stats(counted: Snapshot, canary: int) -> ShadowStats:
    counters = counted.shadow.get(canary, ShadowCounters())
    rows, diff = counters.rows, counters.abs_diff

    def share(n: float) -> float:
        return n / rows if rows else math.nan

    return ShadowStats(
        rows=round(rows),
        agreement=1.0 - share(counters.disagreements),
        mean_abs_diff=diff.total / diff.count if diff.count else math.nan,
        p99_abs_diff=diff.quantile(0.99),
        stable_positive_rate=share(counters.stable_positives),
        canary_positive_rate=share(counters.canary_positives),
    )


# -- the judgement ------------------------------------------------------------


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Limits:
    """The thresholds a step is judged by; relative to stable where stable is the yardstick."""

    min_requests: int
    max_error_rate_delta: float
    max_latency_ratio: float
    latency_slack_ms: float
    min_shadow_rows: int = 0
    min_class_agreement: float = 0.0
    max_mean_abs_diff: float = 1.0
    max_p99_abs_diff: float = 1.0
    max_positive_rate_shift: float = 1.0


@dataclass(frozen=True)
class StepAnalysis:
    verdict: Verdict
    reasons: tuple[str, ...]
    canary: TrackStats
    stable: TrackStats | None
    shadow: ShadowStats | None

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def analyse(canary: TrackStats, stable: TrackStats | None, shadow: ShadowStats | None, limits: Limits) -> StepAnalysis:
    """Judge one window. A rule judges only once it has enough evidence; a failing rule wins over waiting."""
    failures: list[str] = []
    waiting: list[str] = []
    enough = canary.requests >= limits.min_requests
    if not enough:
        waiting.append(f"{canary.requests} canary requests, need {limits.min_requests}")
    base = stable.error_rate if stable is not None else 0.0
    # Many failures are evidence on their own: a canary failing most requests goes before min_requests.
    if (enough or canary.errors >= limits.min_requests / 2) and canary.error_rate - base > limits.max_error_rate_delta:
        failures.append(f"canary error rate {canary.error_rate:.1%} vs stable {base:.1%} "
                        f"(> +{limits.max_error_rate_delta:.1%}; {canary.errors}/{canary.requests} failed)")
    if enough and stable is not None and stable.requests:
        budget = stable.p95_ms * limits.max_latency_ratio + limits.latency_slack_ms
        if canary.p95_ms > budget:
            failures.append(f"canary p95 {canary.p95_ms:.1f} ms > {limits.max_latency_ratio:g} x stable "
                            f"{stable.p95_ms:.1f} ms + {limits.latency_slack_ms:g} ms")
    if shadow is not None:
        if shadow.rows < limits.min_shadow_rows or not shadow.rows:
            waiting.append(f"{shadow.rows} shadow rows compared, need {limits.min_shadow_rows}")
        else:
            if shadow.agreement < limits.min_class_agreement:
                failures.append(f"shadow class agreement {shadow.agreement:.1%} < {limits.min_class_agreement:.1%}")
            if shadow.mean_abs_diff > limits.max_mean_abs_diff:
                failures.append(f"shadow mean |p diff| {shadow.mean_abs_diff:.3f} > {limits.max_mean_abs_diff:g}")
            if shadow.p99_abs_diff > limits.max_p99_abs_diff:
                failures.append(f"shadow p99 |p diff| {shadow.p99_abs_diff:.3f} > {limits.max_p99_abs_diff:g}")
            if abs(shadow.positive_rate_shift) > limits.max_positive_rate_shift:
                failures.append(f"shadow positive rate {shadow.canary_positive_rate:.1%} vs stable "
                                f"{shadow.stable_positive_rate:.1%} (shift > {limits.max_positive_rate_shift:.1%})")
    if failures:
        return StepAnalysis(Verdict.FAILED, tuple(failures), canary, stable, shadow)
    if waiting:
        return StepAnalysis(Verdict.INCONCLUSIVE, tuple(waiting), canary, stable, shadow)
    passed = [f"{canary.requests} canary requests, error rate {canary.error_rate:.1%}, p95 {canary.p95_ms:.1f} ms"]
    if stable is not None:
        passed.append(f"stable {stable.requests} requests, error rate {stable.error_rate:.1%}, p95 {stable.p95_ms:.1f} ms")
    if shadow is not None:
        passed.append(f"shadow {shadow.rows} rows, agreement {shadow.agreement:.1%}, "
                      f"p99 |p diff| {shadow.p99_abs_diff:.3f}")
    return StepAnalysis(Verdict.PASSED, tuple(passed), canary, stable, shadow)


def analyse_window(counted: Snapshot, canary: int, stable: int | None, shadow: bool, limits: Limits) -> StepAnalysis:
    """Judge what the servers counted over a window (the sum of `increase`s)."""
    return analyse(
        _track_stats(counted, canary),
        _track_stats(counted, stable) if stable is not None else None,
        _shadow_stats(counted, canary) if shadow else None,
        limits,
    )
