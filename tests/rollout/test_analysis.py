"""The live analysis over Prometheus text: windows, quantiles from buckets, the judgement."""

from __future__ import annotations

import math

import pytest

from aviary.analysis import (
    Histogram,
    Limits,
    ShadowStats,
    Snapshot,
    TrackStats,
    Verdict,
    analyse,
    analyse_window,
    increase,
    parse_metrics,
    parse_scrape,
    shadow_stats,
    track_stats,
)
from tests.fake_traffic import render_metrics

LIMITS = Limits(min_requests=20, max_error_rate_delta=0.02, max_latency_ratio=2.0, latency_slack_ms=5,
                min_shadow_rows=50, min_class_agreement=0.98, max_mean_abs_diff=0.05, max_p99_abs_diff=0.2,
                max_positive_rate_shift=0.05)


def track(version: int, requests: int, errors: int = 0, p95: float = 2.0) -> TrackStats:
    return TrackStats(version=version, requests=requests, errors=errors, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95)


def test_quantiles_interpolate_inside_the_bucket_as_prometheus_does() -> None:
    hist = Histogram(buckets=((10.0, 0.0), (20.0, 50.0), (40.0, 100.0), (math.inf, 100.0)), total=2000, count=100)
    assert hist.quantile(0.5) == pytest.approx(20.0)
    assert hist.quantile(0.25) == pytest.approx(15.0)
    assert hist.quantile(0.99) == pytest.approx(39.6)
    assert math.isnan(Histogram().quantile(0.5))
    overflow = Histogram(buckets=((10.0, 1.0), (math.inf, 10.0)), total=0, count=10)
    assert overflow.quantile(0.99) == 10.0


def test_a_window_is_the_difference_of_two_scrapes_summed_over_servers() -> None:
    before = parse_metrics([render_metrics("circle", {1: (100, 0, 1000.0), 2: (10, 1, 3000.0)})], "circle")
    after = parse_metrics([
        render_metrics("circle", {1: (150, 0, 1000.0), 2: (20, 3, 3000.0)}),
        render_metrics("circle", {1: (50, 2, 1000.0)}),  # a second pod
        render_metrics("other", {2: (999, 999, 1.0)}),
    ], "circle")
    stable, canary = track_stats(before, after, 1), track_stats(before, after, 2)
    assert (stable.requests, stable.errors) == (100, 2)
    assert (canary.requests, canary.errors) == (10, 2) and canary.error_rate == pytest.approx(0.2)
    assert 0.5 < stable.p50_ms <= 1.1 and 1.5 < canary.p95_ms <= 3.5


def test_a_restarted_server_counts_from_zero() -> None:
    before = parse_metrics([render_metrics("circle", {2: (500, 0, 1000.0)})], "circle")
    after = parse_metrics([render_metrics("circle", {2: (30, 3, 1000.0)})], "circle")
    assert (track_stats(before, after, 2).requests, track_stats(before, after, 2).errors) == (30, 3)


def pods(**pages: dict[int, tuple[int, int, float]]) -> dict[str, str]:
    return {name: render_metrics("circle", versions) for name, versions in pages.items()}


def test_each_pod_is_differenced_on_its_own_so_a_restart_beside_a_busy_pod_is_seen() -> None:
    """Summing first hides a reset: 1000 + 10 before, 1080 + 5 after looks like 75 more requests."""
    before = parse_scrape(pods(a={2: (1000, 0, 1000.0)}, b={2: (10, 0, 1000.0)}), "circle")
    after = parse_scrape(pods(a={2: (1080, 2, 1000.0)}, b={2: (5, 5, 1000.0)}), "circle")  # b restarted
    canary = track_stats(Snapshot(), increase(before, after), 2)
    assert (canary.requests, canary.errors) == (85, 7)


def test_a_pod_replaced_mid_window_keeps_what_it_served_and_its_successor_counts_all_it_shows() -> None:
    scrapes = [pods(old={2: (100, 0, 1000.0)}),
               pods(old={2: (140, 30, 1000.0)}),  # 40 requests, 30 failed, then it is gone
               pods(new={2: (12, 0, 1000.0)}),
               pods(new={2: (20, 0, 1000.0)})]
    parsed = [parse_scrape(page, "circle") for page in scrapes]
    counted = Snapshot()
    for before, after in zip(parsed, parsed[1:], strict=False):
        counted = counted + increase(before, after)
    canary = track_stats(Snapshot(), counted, 2)
    assert (canary.requests, canary.errors) == (60, 30)
    verdict = analyse_window(counted, canary=2, stable=None, shadow=False, limits=LIMITS)
    assert verdict.verdict is Verdict.FAILED and "30/60 failed" in verdict.summary


def test_shadow_figures_come_from_the_comparison_counters() -> None:
    before = parse_metrics([render_metrics("circle", {}, shadow={2: (100, 1, [0.01] * 100, 40, 41)})], "circle")
    diffs = [0.01] * 100 + [0.3] * 20 + [0.02] * 80
    after = parse_metrics([render_metrics("circle", {}, shadow={2: (300, 11, diffs, 120, 141)})], "circle")
    shadow = shadow_stats(before, after, 2)
    assert shadow.rows == 200 and shadow.agreement == pytest.approx(0.95)
    assert shadow.mean_abs_diff == pytest.approx((20 * 0.3 + 80 * 0.02) / 100)
    assert shadow.stable_positive_rate == pytest.approx(0.4) and shadow.canary_positive_rate == pytest.approx(0.5)
    assert shadow.p99_abs_diff > 0.2


def test_a_good_canary_passes_with_one_line_per_track() -> None:
    result = analyse(track(2, 40), track(1, 400, 2), None, LIMITS)
    assert result.verdict is Verdict.PASSED
    assert result.reasons[0].startswith("40 canary requests, error rate 0.0%")


def test_too_few_requests_is_inconclusive_not_failed() -> None:
    result = analyse(track(2, 5, errors=1), track(1, 50), None, LIMITS)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.reasons == ("5 canary requests, need 20",)


def test_errors_are_judged_relative_to_stable() -> None:
    assert analyse(track(2, 100, errors=3), track(1, 900, errors=20), None, LIMITS).verdict is Verdict.PASSED
    failed = analyse(track(2, 100, errors=30), track(1, 900, errors=9), None, LIMITS)
    assert failed.verdict is Verdict.FAILED
    assert failed.reasons == ("canary error rate 30.0% vs stable 1.0% (> +2.0%; 30/100 failed)",)


def test_a_canary_failing_most_requests_fails_before_min_requests() -> None:
    assert analyse(track(2, 12, errors=10), track(1, 100), None, LIMITS).verdict is Verdict.FAILED


def test_latency_is_judged_against_stable_with_a_slack() -> None:
    assert analyse(track(2, 40, p95=8.9), track(1, 400, p95=2.0), None, LIMITS).verdict is Verdict.PASSED
    slow = analyse(track(2, 40, p95=30.0), track(1, 400, p95=2.0), None, LIMITS)
    assert slow.reasons == ("canary p95 30.0 ms > 2 x stable 2.0 ms + 5 ms",)


def test_shadow_disagreement_fails_the_step_with_its_reason() -> None:
    drift = ShadowStats(rows=200, agreement=0.9, mean_abs_diff=0.12, p99_abs_diff=0.4,
                        stable_positive_rate=0.3, canary_positive_rate=0.42)
    result = analyse(track(2, 40), track(1, 400), drift, LIMITS)
    assert result.verdict is Verdict.FAILED
    assert result.reasons == (
        "shadow class agreement 90.0% < 98.0%",
        "shadow mean |p diff| 0.120 > 0.05",
        "shadow p99 |p diff| 0.400 > 0.2",
        "shadow positive rate 42.0% vs stable 30.0% (shift > 5.0%)",
    )
    few = ShadowStats(rows=10, agreement=0.5, mean_abs_diff=0.5, p99_abs_diff=0.9,
                      stable_positive_rate=0.5, canary_positive_rate=0.0)
    assert analyse(track(2, 40), track(1, 400), few, LIMITS).verdict is Verdict.INCONCLUSIVE


def test_analyse_window_reads_both_tracks_and_the_shadow() -> None:
    before = parse_metrics([render_metrics("circle", {1: (0, 0, 500.0), 2: (0, 0, 500.0)})], "circle")
    after = parse_metrics([render_metrics("circle", {1: (300, 0, 500.0), 2: (30, 0, 600.0)},
                                          shadow={2: (60, 0, [0.001] * 60, 30, 30)})], "circle")
    result = analyse_window(after - before, canary=2, stable=1, shadow=True, limits=LIMITS)
    assert result.verdict is Verdict.PASSED and result.shadow is not None and result.shadow.rows == 60
