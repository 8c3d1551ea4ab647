"""check_predictions against a stub model server on 127.0.0.1 that answers TF Serving's `:predict`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from aviary import behaviour
from aviary.config import CheckConfig
from aviary.targets.base import Endpoint
from aviary.tasks.check import check_predictions, check_predictions_task, report_markdown
from aviary.types import BehaviourCase, GoldenSet
from tests.helpers import json_server

Answer = Callable[[list[dict[str, float]]], tuple[int, Any]]
"""From a request's instances to (HTTP status, JSON body)."""


def model(instance: dict[str, float]) -> dict[str, float | int]:
    """The stub's model: a score from the features, class 1 at 0.5 and above."""
    score = min(1.0, max(0.0, 0.5 + instance.get("a", 0.0) - instance.get("b", 0.0)))
    return {"probability": score, "class": int(score >= 0.5)}


def circle(instance: dict[str, float]) -> dict[str, float | int]:
    inside = instance["x"] ** 2 + instance["y"] ** 2 < 1
    return {"probability": 0.9 if inside else 0.1, "class": int(inside)}


def served_as(predict: Callable[[dict[str, float]], dict[str, Any]]) -> Answer:
    return lambda instances: (200, {"predictions": [predict(i) for i in instances]})


@dataclass
class Stub:
    """A `:predict` endpoint whose answers a test sets; it keeps every request's body and headers."""

    answer: Answer = field(default_factory=lambda: served_as(model))
    requests: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Stub:
        def answer(body: Any, headers: dict[str, str]) -> tuple[int, Any]:
            self.requests.append((body, headers))
            return self.answer(body["instances"])

        self.server = json_server(answer)
        return self

    @property
    def endpoint(self) -> Endpoint:
        assert self.server is not None
        return Endpoint(url=f"http://127.0.0.1:{self.server.server_address[1]}/v1/models/m/labels/canary",
                        headers={"Authorization": "Bearer t"})


@pytest.fixture
def stub() -> Iterator[Stub]:
    running = Stub().start()
    yield running
    assert running.server is not None
    running.server.shutdown()
    running.server.server_close()


def golden_of(instances: list[dict[str, float]], predict: Callable[[dict[str, float]], dict[str, Any]]) -> GoldenSet:
    answers = [predict(i) for i in instances]
    return GoldenSet(
        features=tuple(instances[0]),
        label="label",
        instances=tuple(instances),
        labels=tuple(int(a["class"]) for a in answers),
        probability=tuple(float(a["probability"]) for a in answers),
        classes=tuple(int(a["class"]) for a in answers),
    )


ROWS = [{"a": 0.1 * i, "b": 0.05 * i} for i in range(-3, 4)]
"""Seven rows, so batches of three make three requests."""
GOLDEN = golden_of(ROWS, model)
CFG = CheckConfig(batch_size=3, p95_budget_ms=5000, request_timeout_s=5)


def test_a_canary_that_answers_as_exported_passes(stub: Stub) -> None:
    report = check_predictions(stub.endpoint, GOLDEN, CFG)
    assert report.passed, report.reasons
    assert (report.requests, report.failed_requests, report.instances, report.mismatches) == (3, 0, 7, 0)
    assert report.reasons[:2] == ("7/7 golden predictions within 0.0001", "0/3 requests failed")
    assert [len(body["instances"]) for body, _ in stub.requests] == [3, 3, 1]
    assert [body["instances"] for body, _ in stub.requests] == [ROWS[0:3], ROWS[3:6], ROWS[6:]]
    assert all(headers["Authorization"] == "Bearer t" for _, headers in stub.requests)


def test_a_score_beyond_the_tolerance_is_a_mismatch_with_an_example(stub: Stub) -> None:
    def drifted(instance: dict[str, float]) -> dict[str, Any]:
        answer = model(instance)
        return {**answer, "probability": answer["probability"] + 0.01} if instance == ROWS[4] else answer

    stub.answer = served_as(drifted)
    report = check_predictions(stub.endpoint, GOLDEN, CFG)
    assert not report.passed
    assert report.mismatches == 1 and report.reasons[0] == "1/7 golden predictions differ from the export"
    (example,) = report.mismatch_examples
    assert example["instance"] == ROWS[4] and example["served"][0] == pytest.approx(example["expected"][0] + 0.01)


def test_a_difference_within_the_tolerance_passes(stub: Stub) -> None:
    stub.answer = served_as(lambda i: {**model(i), "probability": model(i)["probability"] + 5e-5})
    assert check_predictions(stub.endpoint, GOLDEN, CFG).passed


def test_a_failed_request_fails_the_check_and_says_why(stub: Stub) -> None:
    def second_fails(instances: list[dict[str, float]]) -> tuple[int, Any]:
        if instances == ROWS[3:6]:
            return 503, {"error": "Servable not found"}
        return served_as(model)(instances)

    stub.answer = second_fails
    report = check_predictions(stub.endpoint, GOLDEN, CFG)
    assert not report.passed and report.failed_requests == 1 and report.mismatches == 0
    assert report.reasons[0] == "4/7 golden predictions within 0.0001"
    assert report.reasons[1].startswith('1/3 requests failed (first: HTTP 503: {"error": "Servable not found"}')


def test_an_answer_with_too_few_predictions_is_a_failed_request(stub: Stub) -> None:
    stub.answer = lambda instances: (200, {"predictions": [model(i) for i in instances[:1]]})
    report = check_predictions(stub.endpoint, GOLDEN, CFG)
    assert not report.passed and report.failed_requests == 2  # the batches of three; the last has one row
    assert "1 predictions for 3 instances" in report.reasons[1]


def test_an_unreachable_canary_fails_every_request(stub: Stub) -> None:
    endpoint = Endpoint(url="http://127.0.0.1:9/v1/models/m")  # the discard port: nothing listens
    report = check_predictions(endpoint, GOLDEN, CFG)
    assert not report.passed and report.failed_requests == report.requests == 3
    assert "ConnectionError" in report.reasons[1]


def test_latency_over_the_budget_fails(stub: Stub) -> None:
    report = check_predictions(stub.endpoint, GOLDEN, CFG.model_copy(update={"p95_budget_ms": 1e-6}))
    assert not report.passed and report.mismatches == 0 and report.failed_requests == 0
    assert report.reasons[2].startswith("p95 latency") and "> budget 1e-06 ms" in report.reasons[2]
    assert 0 < report.p50_ms <= report.p95_ms <= report.p99_ms


CIRCLE_CASES = tuple(BehaviourCase(inputs=dict(c.inputs), expect=c.expect) for c in behaviour.CIRCLE)


def test_the_behaviour_cases_of_the_golden_set_are_asked_too(stub: Stub) -> None:
    rows = [{"x": 0.1, "y": 0.2}, {"x": 1.2, "y": -1.1}]
    golden = golden_of(rows, circle).model_copy(update={"cases": CIRCLE_CASES})
    stub.answer = served_as(circle)
    report = check_predictions(stub.endpoint, golden, CFG)
    assert report.passed and report.requests == 2
    assert stub.requests[-1][0]["instances"] == [case.inputs for case in behaviour.CIRCLE]


def test_any_feature_set_has_behaviour_cases(stub: Stub) -> None:
    cases = (
        BehaviourCase(inputs={"a": 0.4, "b": 0.0}, expect=1),
        BehaviourCase(inputs={"a": -0.4, "b": 0.0}, expect=1),
    )
    stub.answer = served_as(model)
    report = check_predictions(stub.endpoint, GOLDEN.model_copy(update={"cases": cases}), CFG)
    assert not report.passed
    assert report.behaviour_failures == ("{'a': -0.4, 'b': 0.0} served class 0, expected 1",)


def test_a_wrong_behaviour_case_fails_even_when_the_golden_set_matches(stub: Stub) -> None:
    rows = [{"x": 0.1, "y": 0.2}, {"x": 1.2, "y": -1.1}]
    golden = golden_of(rows, circle).model_copy(update={"cases": CIRCLE_CASES})
    far = behaviour.CIRCLE[3].inputs
    stub.answer = served_as(lambda i: {"probability": 0.9, "class": 1} if i == far else circle(i))
    report = check_predictions(stub.endpoint, golden, CFG)
    assert not report.passed and report.mismatches == 0
    assert report.behaviour_failures == (f"{far} served class 1, expected 0",)
    assert report.reasons[-1] == f"behaviour: {far} served class 1, expected 0"


def test_report_markdown_shows_the_outcome_and_examples(stub: Stub) -> None:
    stub.answer = served_as(lambda i: {"probability": 0.0, "class": 0})
    report = check_predictions(stub.endpoint, GOLDEN, CFG)
    text = report_markdown("m", 4, report)
    assert text.startswith("# Post-deploy check of m v4: FAILED\n")
    assert "| 3 | 0 | 7 |" in text and "Mismatches (first few):" in text


def test_task_runs_the_step_under_its_name() -> None:
    assert check_predictions_task.name == "check-predictions"
    assert check_predictions_task.retries == 0
