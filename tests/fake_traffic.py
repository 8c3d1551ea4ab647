"""Prometheus text as the serving side writes it, and scripted live traffic for a fake target."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aviary import analysis

LATENCY_BOUNDS_US = [10 * 1.8**i for i in range(33)]
DIFF_BOUNDS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]


def _hist_lines(name: str, labels: str, values: Sequence[float], bounds: Sequence[float]) -> list[str]:
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    lines, running = [], 0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        running += count
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
    lines += [f"{name}_sum{{{labels}}} {sum(values)}", f"{name}_count{{{labels}}} {len(values)}"]
    return lines


def render_metrics(
    model: str,
    versions: Mapping[int, tuple[int, int, float]],
    shadow: Mapping[int, tuple[int, int, Sequence[float], int, int]] | None = None,
    stable: int = 1,
) -> str:
    """versions: {version: (requests, errors, latency in us of every request)};
    shadow: {canary version: (rows, class disagreements, |p diffs|, stable positives, canary positives)},
    as the local server's `:aviary:serving:shadow:*` series for the `class` and `probability` outputs."""
    out = [f"# TYPE {analysis.REQUEST_COUNT} counter"]
    for v, (requests, errors, _) in versions.items():
        out.append(f'{analysis.REQUEST_COUNT}{{model_name="{model}",version="{v}",status="OK"}} {requests - errors}')
        if errors:
            out.append(f'{analysis.REQUEST_COUNT}{{model_name="{model}",version="{v}",status="INTERNAL"}} {errors}')
    out.append(f"# TYPE {analysis.REQUEST_LATENCY} histogram")
    for v, (requests, _, latency_us) in versions.items():
        labels = f'model_name="{model}",version="{v}",API="predict",entrypoint="REST"'
        out += _hist_lines(analysis.REQUEST_LATENCY, labels, [latency_us] * requests, LATENCY_BOUNDS_US)
    for v, (rows, disagreements, diffs, stable_pos, canary_pos) in (shadow or {}).items():
        pair = f'model_name="{model}",stable_version="{stable}",canary_version="{v}"'
        cls = f'{pair},output="{analysis.CLASS_OUTPUT}"'
        out += [f"# TYPE {analysis.SHADOW_COMPARED} counter", f"{analysis.SHADOW_COMPARED}{{{cls}}} {rows}",
                f"# TYPE {analysis.SHADOW_DISAGREEMENTS} counter",
                f"{analysis.SHADOW_DISAGREEMENTS}{{{cls}}} {disagreements}",
                f"# TYPE {analysis.SHADOW_POSITIVES} counter",
                f'{analysis.SHADOW_POSITIVES}{{{cls},track="stable"}} {stable_pos}',
                f'{analysis.SHADOW_POSITIVES}{{{cls},track="canary"}} {canary_pos}',
                f"# TYPE {analysis.SHADOW_ABS_DIFF} histogram"]
        out += _hist_lines(analysis.SHADOW_ABS_DIFF, f'{pair},output="{analysis.PROBABILITY_OUTPUT}"', diffs,
                           DIFF_BOUNDS)
    return "\n".join(out) + "\n"


@dataclass
class Behaviour:
    """How the canary behaves at a given traffic share: error rate, latency, shadow |p diff| and disagreement."""

    error_rate: float = 0.0
    latency_us: float = 2000.0
    abs_diff: float = 0.001
    disagreement: float = 0.0


@dataclass
class FakeTraffic:
    """Every scrape first lets `per_scrape` unversioned requests through the split, as clients would."""

    model: str
    stable: int
    canary: int
    per_scrape: int = 100
    behaviour: Callable[[int], Behaviour] = field(default=lambda _share: Behaviour())
    counts: dict[int, list[float]] = field(default_factory=dict)
    shadow: list[float] = field(default_factory=lambda: [0, 0, 0, 0])
    diffs: list[float] = field(default_factory=list)

    def scrape(self, canary_percent: int, mirror_percent: int) -> str:
        b = self.behaviour(canary_percent)
        to_canary = self.per_scrape * canary_percent // 100
        for version, n, errors, latency in (
            (self.stable, self.per_scrape - to_canary, 0, 2000.0),
            (self.canary, to_canary, round(to_canary * b.error_rate), b.latency_us),
        ):
            c = self.counts.setdefault(version, [0, 0, latency])
            c[0] += n
            c[1] += errors
            c[2] = latency
        mirrored = self.per_scrape * mirror_percent // 100
        self.shadow[0] += mirrored
        self.shadow[1] += round(mirrored * b.disagreement)
        self.shadow[2] += mirrored // 2
        self.shadow[3] += mirrored // 2 + round(mirrored * b.disagreement)
        self.diffs += [b.abs_diff] * mirrored
        versions = {v: (int(c[0]), int(c[1]), c[2]) for v, c in self.counts.items()}
        rows, disagree, stable_pos, canary_pos = (int(x) for x in self.shadow)
        shadow = {self.canary: (rows, disagree, self.diffs, stable_pos, canary_pos)} if rows else None
        return render_metrics(self.model, versions, shadow, self.stable)
