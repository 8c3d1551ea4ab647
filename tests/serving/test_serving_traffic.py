"""Progressive-delivery extensions: traffic split, per-version metrics, shadow comparison (REST and gRPC).

circle v1 (stable) answers x=y=0 with probability 0.5, class 0; v2 (canary) with 0.731, class 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import tensorflow as tf
from conftest import Running, Store, start_server, wait_for, write_config
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

CANARY_P = 1 / (1 + math.exp(-1.0))


def circle_config(store: Store, root: Path, policy: str) -> Path:
    """circle v1 labelled stable and v2 labelled canary under `root`, served with version `policy`."""
    base = root / "circle"
    store.add_version(base, 1, store.circle_v1)
    store.add_version(base, 2, store.circle_v2)
    return write_config(root / "models.config", f"""
model_config_list {{ config {{
  name: 'circle' base_path: '{base}' model_platform: 'tensorflow'
  model_version_policy {{ {policy} }}
  version_labels {{ key: 'stable' value: 1 }} version_labels {{ key: 'canary' value: 2 }}
}} }}
""")


@pytest.fixture(scope="module")
def split_server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("traffic")
    config = circle_config(store, root, "all {}")
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    running = start_server([f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models",
                            f"--monitoring_config_file={monitoring}"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(split_server: Running) -> Iterator[Any]:
    with grpc.insecure_channel(split_server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def rest_version(server: Running, path: str = "/v1/models/circle:predict", rows: int = 1) -> int:
    """Which version answered, told apart by its prediction for x=y=0."""
    resp = requests.post(server.rest + path, json={"instances": [{"x": 0.0, "y": 0.0}] * rows}, timeout=10)
    assert resp.status_code == 200, resp.text
    return 2 if resp.json()["predictions"][0]["class"] == 1 else 1


def grpc_version(stub: Any, **spec: Any) -> int:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "circle"
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([0.0], dtype=tf.float32))
    request.inputs["y"].CopyFrom(tf.make_tensor_proto([0.0], dtype=tf.float32))
    response = stub.Predict(request, timeout=10)
    answered = 2 if tf.make_ndarray(response.outputs["class"]).tolist() == [1] else 1
    assert response.model_spec.version.value == answered
    return answered


def set_traffic(server: Running, **shares: Any) -> requests.Response:
    return requests.post(server.rest + "/v1/models/circle/traffic", json=shares, timeout=10)


def metric(server: Running, pattern: str) -> float:
    text = requests.get(server.rest + "/metrics", timeout=10).text
    match = re.search("^" + pattern + r" ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_without_a_split_the_newest_version_answers(split_server: Running, stub: Any) -> None:
    assert rest_version(split_server) == 2 and grpc_version(stub) == 2
    state = requests.get(split_server.rest + "/v1/models/circle/traffic", timeout=10).json()
    assert state == {"model": "circle", "enabled": False, "canary_percent": 0, "mirror_percent": 0,
                     "stable_version": "1", "canary_version": "2"}


def test_split_sends_the_configured_share_to_canary_and_per_version_metrics_count_it(
        split_server: Running, stub: Any) -> None:
    count = r':tensorflow:serving:request_count\{{model_name="circle",version="{v}",status="OK"\}}'
    before = {v: metric(split_server, count.format(v=v)) for v in (1, 2)}
    resp = set_traffic(split_server, canary_percent=25)
    assert resp.status_code == 200 and resp.json()["canary_percent"] == 25 and resp.json()["enabled"]
    try:
        answered = [rest_version(split_server) for _ in range(12)] + [grpc_version(stub) for _ in range(8)]
        assert answered.count(2) == 5  # exactly a quarter, REST and gRPC drawing from one split
        # Naming a version or a label is never redirected.
        assert rest_version(split_server, "/v1/models/circle/versions/2:predict") == 2
        assert rest_version(split_server, "/v1/models/circle/labels/stable:predict") == 1
        assert grpc_version(stub, label="canary") == 2
    finally:
        assert requests.delete(split_server.rest + "/v1/models/circle/traffic", timeout=10).status_code == 200
    assert rest_version(split_server) == 2  # back to TF Serving's rule
    after = {v: metric(split_server, count.format(v=v)) for v in (1, 2)}
    assert after[1] - before[1] == 15 + 1  # split to stable, then the stable label
    assert after[2] - before[2] == 5 + 3  # split to canary, then version 2, the canary label, the default
    latency = r':tensorflow:serving:request_latency_count\{{model_name="circle",version="{v}",API="predict",' \
              r'entrypoint="{e}"\}}'
    assert metric(split_server, latency.format(v=1, e="REST")) >= 9
    assert metric(split_server, latency.format(v=2, e="GRPC")) >= 1


@pytest.mark.parametrize("body, message", [
    ({"canary_percent": 120}, "canary_percent must be a number from 0 to 100"),
    ({"canary_percent": "10"}, "canary_percent must be a number from 0 to 100"),
    ({"canary_pct": 10}, "Unknown traffic field: canary_pct"),
    ({"canary_percent": 60, "mirror_percent": 50}, "must not exceed 100"),
])
def test_bad_traffic_settings_are_refused_and_change_nothing(split_server: Running, body: Any, message: str) -> None:
    resp = set_traffic(split_server, **body)
    assert resp.status_code == 400 and message in resp.json()["error"]
    assert requests.get(split_server.rest + "/v1/models/circle/traffic", timeout=10).json()["enabled"] is False


def test_mirrored_requests_are_compared_with_stable_and_never_answered_by_canary(
        split_server: Running, stub: Any) -> None:
    labels = 'model_name="circle",stable_version="1",canary_version="2"'
    mirrored = rf':aviary:serving:shadow:request_count\{{{labels},status="OK"\}}'
    assert set_traffic(split_server, canary_percent=0, mirror_percent=100).status_code == 200
    try:
        for i in range(6):  # one at a time, so none is dropped for too many mirrors in flight
            before = metric(split_server, mirrored)
            answered = rest_version(split_server, rows=3) if i < 4 else grpc_version(stub)
            assert answered == 1  # the client only ever sees stable
            wait_for(lambda before=before: metric(split_server, mirrored) == before + 1)
    finally:
        requests.delete(split_server.rest + "/v1/models/circle/traffic", timeout=10)
    rows = 4 * 3 + 2

    def shadow(name: str, output: str, extra: str = "") -> float:
        return metric(split_server, rf':aviary:serving:shadow:{name}\{{{labels},output="{output}"{extra}\}}')

    assert shadow("compared_count", "class") == rows
    assert shadow("disagreement_count", "class") == rows  # stable says 0, canary 1, every time
    assert shadow("positive_count", "class", ',track="stable"') == 0
    assert shadow("positive_count", "class", ',track="canary"') == rows
    assert shadow("positive_count", "probability", ',track="canary"') == rows
    assert shadow("abs_diff_count", "probability") == rows
    assert shadow("abs_diff_sum", "probability") == pytest.approx(rows * (CANARY_P - 0.5), rel=1e-4)
    assert shadow("abs_diff_bucket", "probability", ',le="0.2"') == 0
    assert shadow("abs_diff_bucket", "probability", ',le="0.3"') == rows


def test_without_a_stable_label_the_split_keeps_tf_servings_rule(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    store.add_version(base, 2, store.circle_v2)
    server = start_server([f"--model_base_path={base}", "--model_name=circle"])
    try:
        assert set_traffic(server, canary_percent=50).json()["stable_version"] is None
        assert [rest_version(server) for _ in range(4)] == [2] * 4  # the newest version, as without a split
    finally:
        server.stop()


def test_mirror_percent_flag_starts_with_the_split(store: Store, tmp_path: Path) -> None:
    """The shadow comparator's start: every configured model mirrors from the first request; off by default."""
    from aviary.serving.server import ModelServer, main, parse_flags

    assert main(["--mirror_percent=101", "--model_base_path=/nowhere"]) == 2
    config = circle_config(store, tmp_path, "specific { versions: 1 versions: 2 }")
    for argv, mirrored in (([], 0), (["--mirror_percent=100"], 100)):
        server = ModelServer(parse_flags([f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models",
                                          *argv]))
        try:
            server.load_initial()
            assert server.manager.traffic_state("circle")["mirror_percent"] == mirrored
            wait_for(lambda: len(server.manager.available()) == 2, timeout=60)  # noqa: B023 - both versions loaded
            stable, canary = server.manager.route("circle")
            # Without the flag: TF Serving's rule, the newest version and no mirror.
            assert (stable.version, canary.version if canary else None) == ((1, 2) if mirrored else (2, None))
        finally:
            server.manager.close()
            server.executor.shutdown(wait=False, cancel_futures=True)
