"""The traffic-split extension: stable/canary shares of unversioned requests, per-version metrics, the shadow."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import Running, start_server, wait_for, write_config
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from aviary.serving.metrics import Metrics
from aviary.serving.traffic import Traffic, _due, compare

# circle v1: p = sigmoid(x + y), v2: p = sigmoid(x + y + 1); class is p > 0.5.
ROWS = [{"x": 0.0, "y": 0.0}, {"x": -2.0, "y": 0.0}]  # v1 and v2 disagree on the first row only
P1 = [0.5, 1 / (1 + math.exp(2))]
P2 = [1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))]


@pytest.fixture(scope="module")
def split_server(main_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    cfg_dir = tmp_path_factory.mktemp("split")
    config = write_config(cfg_dir / "models.pbtxt", f"""
model_config_list {{
  config {{
    name: 'circle' base_path: '{main_store / "circle"}' model_platform: 'tensorflow'
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: 'stable' value: 1 }}
    version_labels {{ key: 'canary' value: 2 }}
  }}
  config {{ name: 'hpt' base_path: '{main_store / "hpt"}' model_platform: 'tensorflow' }}
}}
""")
    monitoring = cfg_dir / "monitoring.pbtxt"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    running = start_server([f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models=true",
                            f"--monitoring_config_file={monitoring}", "--enable_traffic_split"])
    yield running
    running.stop()


def set_split(http: Any, server: Running, **shares: int) -> dict[str, Any]:
    resp = http.post(server.rest + "/v1/models/circle/traffic", json=shares)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def samples(server: Running, http: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = http.get(server.rest + "/metrics").text
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


def count(server: Running, http: Any, version: int, status: str = "OK", model: str = "circle") -> float:
    key = (("model_name", model), ("status", status), ("version", str(version)))
    return samples(server, http, ":tensorflow:serving:request_count_total").get(key, 0.0)


def answered_by(response: Any) -> int:
    """Which circle version answered, from its probability on the first row."""
    p = response.json()["predictions"][0]["probability"]
    return 1 if p == pytest.approx(P1[0], abs=1e-6) else 2 if p == pytest.approx(P2[0], abs=1e-6) else -1


def test_without_the_flag_the_server_is_tf_serving(server: Running, http: Any) -> None:
    """Newest version answers unversioned requests; the extension's path is a malformed request."""
    resp = http.post(server.rest + "/v1/models/circle:predict", json={"instances": ROWS})
    assert answered_by(resp) == 2
    bad = http.post(server.rest + "/v1/models/circle/traffic", json={"canary_percent": 10})
    assert bad.status_code == 400
    assert bad.json() == {"error": "Malformed request: POST /v1/models/circle/traffic"}


def test_stable_answers_unversioned_requests_and_the_canary_gets_exactly_its_share(
    split_server: Running, http: Any
) -> None:
    url = split_server.rest + "/v1/models/circle:predict"
    assert http.get(split_server.rest + "/v1/models/circle/traffic").json() == {
        "canary_percent": 0, "mirror_percent": 0, "stable_version": 1, "canary_version": 2}
    assert {answered_by(http.post(url, json={"instances": ROWS})) for _ in range(5)} == {1}
    assert set_split(http, split_server, canary_percent=25) == {
        "canary_percent": 25, "mirror_percent": 0, "stable_version": 1, "canary_version": 2}
    before = {v: count(split_server, http, v) for v in (1, 2)}
    answers = [answered_by(http.post(url, json={"instances": ROWS})) for _ in range(40)]
    assert answers.count(2) == 10 and answers.count(1) == 30
    assert {v: count(split_server, http, v) - before[v] for v in (1, 2)} == {1: 30, 2: 10}
    # Named versions and labels are never split.
    assert {answered_by(http.post(split_server.rest + "/v1/models/circle/labels/stable:predict",
                                  json={"instances": ROWS})) for _ in range(8)} == {1}
    latency = samples(split_server, http, ":tensorflow:serving:request_latency_count")
    assert latency[(("API", "predict"), ("entrypoint", "REST"), ("model_name", "circle"), ("version", "2"))] >= 10
    set_split(http, split_server, canary_percent=0)


def test_mirrored_requests_are_compared_and_never_change_the_answer(split_server: Running, http: Any) -> None:
    set_split(http, split_server, canary_percent=0, mirror_percent=50)
    url = split_server.rest + "/v1/models/circle:predict"
    rows = ":tensorflow:serving:shadow_compared_rows_total"
    key = (("model_name", "circle"), ("version", "2"))
    before = samples(split_server, http, rows).get(key, 0.0)
    answers = [answered_by(http.post(url, json={"instances": ROWS})) for _ in range(20)]
    assert set(answers) == {1}
    wait_for(lambda: samples(split_server, http, rows).get(key, 0.0) - before == 20)
    disagreements = samples(split_server, http, ":tensorflow:serving:shadow_class_disagreements_total")[key]
    stable_pos = samples(split_server, http, ":tensorflow:serving:shadow_stable_positives_total")[key]
    canary_pos = samples(split_server, http, ":tensorflow:serving:shadow_canary_positives_total")[key]
    total_rows = samples(split_server, http, rows)[key]
    # Row (0, 0) flips from class 0 to 1; row (-2, 0) stays 0: half the rows disagree, all on canary positives.
    assert disagreements == total_rows / 2 and canary_pos == total_rows / 2 and stable_pos == 0
    diff_sum = samples(split_server, http, ":tensorflow:serving:shadow_abs_probability_diff_sum")[key]
    per_pair = abs(P2[0] - P1[0]) + abs(P2[1] - P1[1])
    assert diff_sum == pytest.approx(per_pair * total_rows / 2, rel=1e-5)
    # The mirrored runs are not client requests: only stable's 20 answers were counted for this window.
    set_split(http, split_server, mirror_percent=0)


def test_the_split_endpoint_refuses_bad_input(split_server: Running, http: Any) -> None:
    url = split_server.rest + "/v1/models/circle/traffic"
    for body, message in (
        ({"canary_percent": 101}, "traffic split: canary_percent must be an integer from 0 to 100, got 101"),
        ({"canary_percent": "10"}, 'traffic split: canary_percent must be an integer from 0 to 100, got "10"'),
        ({"canary": 10}, "traffic split: unknown field 'canary'; expected canary_percent, mirror_percent"),
        ([10], 'traffic split must be a JSON object like {"canary_percent": 10, "mirror_percent": 20}'),
    ):
        resp = http.post(url, json=body)
        assert resp.status_code == 400 and resp.json() == {"error": message}
    missing = http.post(split_server.rest + "/v1/models/nope/traffic", json={"canary_percent": 1})
    assert missing.status_code == 404 and missing.json() == {"error": "Could not find any versions of model nope"}
    assert http.get(url).json()["canary_percent"] == 0


def test_a_model_without_a_stable_label_keeps_tf_servings_default(split_server: Running, http: Any) -> None:
    resp = http.post(split_server.rest + "/v1/models/hpt:predict", json={"instances": [2.0]})
    assert resp.status_code == 200 and resp.json() == {"predictions": [3.0]}
    assert count(split_server, http, 123, model="hpt") >= 1


def test_grpc_unversioned_predict_follows_the_split(split_server: Running, http: Any) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "circle"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([0.0], np.float32)))
    request.inputs["y"].CopyFrom(tf.make_tensor_proto(np.array([0.0], np.float32)))
    with grpc.insecure_channel(split_server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        set_split(http, split_server, canary_percent=100)
        assert stub.Predict(request, timeout=10).model_spec.version.value == 2
        set_split(http, split_server, canary_percent=0)
        assert stub.Predict(request, timeout=10).model_spec.version.value == 1
    latency = samples(split_server, http, ":tensorflow:serving:request_latency_count")
    assert latency[(("API", "predict"), ("entrypoint", "GRPC"), ("model_name", "circle"), ("version", "2"))] >= 1


def test_shares_are_exact_over_every_hundred_requests() -> None:
    for percent in (0, 1, 10, 25, 33, 50, 99, 100):
        assert sum(_due(i, percent) for i in range(100)) == percent
        assert sum(_due(i, percent) for i in range(300, 400)) == percent
    assert [_due(i, 50) for i in range(4)] == [False, True, False, True]


def test_compare_uses_probability_and_class_outputs() -> None:
    stable = {"probability": np.array([[0.2], [0.6], [0.9]], np.float32), "class": np.array([0, 1, 1])}
    canary = {"probability": np.array([[0.25], [0.4], [0.9]], np.float32), "class": np.array([0, 0, 1])}
    result = compare(stable, canary)
    assert result is not None
    assert (result.rows, result.disagreements, result.stable_positives, result.canary_positives) == (3, 1, 2, 1)
    assert result.abs_diffs.tolist() == pytest.approx([0.05, 0.2, 0.0], abs=1e-6)
    assert compare({"y": np.array([1.0])}, {"y": np.array([1.0, 2.0])}) is None  # shapes differ


class _Blocking:
    """A canary whose shadow runs wait until released."""

    version = 2

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.runners = {"serving_default": self}

    def run(self, feeds: Any) -> dict[str, np.ndarray]:
        self.started.set()
        self.release.wait(10)
        return {"probability": np.array([0.5])}


def test_the_shadow_queue_is_bounded_and_drops_when_full() -> None:
    metrics = Metrics()
    traffic = Traffic(manager=Any, metrics=metrics, queue_size=1)  # type: ignore[arg-type]
    canary = _Blocking()
    mirror = traffic.mirror_to("m", canary, "serving_default", {"x": np.array([1.0])})  # type: ignore[arg-type]
    try:
        mirror({"probability": np.array([0.5])})
        wait_for(canary.started.is_set)  # the worker holds the first, blocked in the canary
        mirror({"probability": np.array([0.5])})  # queued
        mirror({"probability": np.array([0.5])})  # dropped
        assert metrics.shadow_counts["dropped"] == {("m", "2"): 1}
        canary.release.set()
        assert traffic.drain()
        assert metrics.shadow_counts["compared_rows"] == {("m", "2"): 2}
    finally:
        canary.release.set()
        traffic.close()
