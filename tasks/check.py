"""The post-deploy check: the canary must answer the golden set as the export did, fast enough.

It speaks TF Serving's REST API only, so it is the same code for the local server and for
TF Serving in Kubernetes (reached through the API server's service proxy).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import requests
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from aviary.config import CheckConfig
from aviary.targets.base import Endpoint
from aviary.types import GoldenSet

MAX_EXAMPLES = 5


class CheckReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: tuple[str, ...]
    requests: int
    failed_requests: int
    instances: int
    mismatches: int
    mismatch_examples: tuple[dict[str, Any], ...]
    behaviour_failures: tuple[str, ...]
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def _predict(
    session: requests.Session, endpoint: Endpoint, instances: list[dict[str, float | str]], cfg: CheckConfig
) -> tuple[list[dict[str, Any]] | None, float, str]:
    start = time.perf_counter()
    try:
        response = session.post(
            f"{endpoint.url}:predict",
            json={"instances": instances},
            headers=dict(endpoint.headers),
            verify=endpoint.verify,
            cert=endpoint.cert,
            timeout=cfg.request_timeout_s,
        )
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            return None, elapsed, f"HTTP {response.status_code}: {response.text[:200]}"
        predictions = response.json()["predictions"]
        if len(predictions) != len(instances):
            return None, elapsed, f"{len(predictions)} predictions for {len(instances)} instances"
        return predictions, elapsed, ""
    except (requests.RequestException, ValueError, KeyError, TypeError) as error:
        return None, (time.perf_counter() - start) * 1000, f"{type(error).__name__}: {error}"


def check_predictions(endpoint: Endpoint, golden: GoldenSet, cfg: CheckConfig) -> CheckReport:
    instances = list(golden.instances)
    expected_p = np.asarray(golden.probability, dtype=float)
    expected_c = np.asarray(golden.classes, dtype=int)
    latencies: list[float] = []
    errors: list[str] = []
    examples: list[dict[str, Any]] = []
    mismatches = 0
    answered = 0
    with requests.Session() as session:
        for start in range(0, len(instances), cfg.batch_size):
            batch = instances[start : start + cfg.batch_size]
            predictions, elapsed, error = _predict(session, endpoint, batch, cfg)
            latencies.append(elapsed)
            if predictions is None:
                errors.append(error)
                continue
            answered += len(predictions)
            for offset, prediction in enumerate(predictions):
                i = start + offset
                got_p, got_c = float(prediction["probability"]), int(prediction["class"])
                if abs(got_p - expected_p[i]) > cfg.tolerance or got_c != expected_c[i]:
                    mismatches += 1
                    if len(examples) < MAX_EXAMPLES:
                        examples.append(
                            {"instance": batch[offset], "expected": [float(expected_p[i]), int(expected_c[i])],
                             "served": [got_p, got_c]}
                        )
        behaviour_failures: list[str] = []
        if golden.cases:  # the behavioural cases the version was exported with, keyed by input name
            predictions, elapsed, error = _predict(session, endpoint, [case.inputs for case in golden.cases], cfg)
            latencies.append(elapsed)
            if predictions is None:
                errors.append(error)
            else:
                for case, prediction in zip(golden.cases, predictions, strict=True):
                    if int(prediction["class"]) != case.expect:
                        behaviour_failures.append(
                            f"{case.inputs} served class {prediction['class']}, expected {case.expect}"
                        )

    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    reasons = [
        f"{answered}/{len(instances)} golden predictions within {cfg.tolerance:g}"
        if not mismatches else f"{mismatches}/{len(instances)} golden predictions differ from the export",
        f"{len(errors)}/{len(latencies)} requests failed" + (f" (first: {errors[0]})" if errors else ""),
        f"p95 latency {p95:.1f} ms {'<=' if p95 <= cfg.p95_budget_ms else '>'} budget {cfg.p95_budget_ms:g} ms",
    ]
    if behaviour_failures:
        reasons.append(f"behaviour: {'; '.join(behaviour_failures)}")
    passed = not mismatches and not errors and p95 <= cfg.p95_budget_ms and not behaviour_failures
    return CheckReport(
        passed=passed,
        reasons=tuple(reasons),
        requests=len(latencies),
        failed_requests=len(errors),
        instances=len(instances),
        mismatches=mismatches,
        mismatch_examples=tuple(examples),
        behaviour_failures=tuple(behaviour_failures),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
    )


def report_markdown(model: str, version: int, report: CheckReport) -> str:
    lines = [
        f"# Post-deploy check of {model} v{version}: {'passed' if report.passed else 'FAILED'}",
        "",
        *(f"- {reason}" for reason in report.reasons),
        "",
        "| requests | failed | instances | mismatches | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
        f"| {report.requests} | {report.failed_requests} | {report.instances} | {report.mismatches} "
        f"| {report.p50_ms:.1f} | {report.p95_ms:.1f} | {report.p99_ms:.1f} |",
    ]
    if report.mismatch_examples:
        lines += ["", "Mismatches (first few):", *(f"- `{example}`" for example in report.mismatch_examples)]
    return "\n".join(lines) + "\n"


@task(name="check-predictions", retries=0)
def check_predictions_task(
    endpoint: Endpoint, golden: GoldenSet, cfg: CheckConfig, model: str, version: int
) -> CheckReport:
    report = check_predictions(endpoint, golden, cfg)
    create_markdown_artifact(key=f"{model}-check", markdown=report_markdown(model, version, report))
    return report
