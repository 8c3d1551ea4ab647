"""Model config file, reloads (polled and gRPC), version policies, labels, warmup and broken versions."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import serving_models as sm
from conftest import Running, Store, start_server, wait_for, write_config
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from aviary.serving.server import FlagError, parse_flags
from aviary.serving.status import ServingError


def circle_config(base: Path, versions: list[int], labels: dict[str, int] | None = None,
                  policy: str | None = None) -> str:
    label_text = " ".join(f"version_labels {{ key: '{k}' value: {v} }}" for k, v in (labels or {}).items())
    policy_text = policy or "specific { " + " ".join(f"versions: {v}" for v in versions) + " }"
    return (f"model_config_list {{ config {{ name: 'circle' base_path: '{base}' model_platform: 'tensorflow' "
            f"model_version_policy {{ {policy_text} }} {label_text} }} }}\n")


def states(server: Running, model: str = "circle") -> dict[int, tuple[str, str]]:
    resp = requests.get(f"{server.rest}/v1/models/{model}", timeout=10)
    if resp.status_code != 200:
        return {}
    return {int(s["version"]): (s["state"], s["status"]["error_code"]) for s in resp.json()["model_version_status"]}


def predict_version(server: Running, path: str) -> Any:
    return requests.post(f"{server.rest}/v1/models/circle{path}:predict",
                         json={"instances": [{"x": 0.0, "y": 0.0}]}, timeout=10)


def reload_via_grpc(server: Running, text: str) -> Any:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    with grpc.insecure_channel(server.grpc_target) as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


@pytest.fixture()
def circle_dir(store: Store, tmp_path: Path) -> Path:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    store.add_version(base, 2, store.circle_v2)
    return base


def test_flags_accept_tf_serving_forms() -> None:
    flags = parse_flags(["--port=9000", "--rest_api_port", "9001", "--enable_batching",
                         "--allow_version_labels_for_unavailable_models=true", "--enable_model_warmup", "false",
                         "--model_name=m", "--model_base_path", "/m"])
    assert (flags.port, flags.rest_api_port, flags.model_name, flags.model_base_path) == (9000, 9001, "m", "/m")
    assert flags.enable_batching and flags.allow_version_labels_for_unavailable_models
    assert flags.enable_model_warmup is False
    assert flags.host == "127.0.0.1"
    with pytest.raises(FlagError):
        parse_flags(["--no_such_flag=1"])
    with pytest.raises(FlagError):
        parse_flags(["--port=abc"])


def test_reload_adds_version_moves_label_and_unloads(circle_dir: Path, tmp_path: Path, store: Store) -> None:
    config = write_config(tmp_path / "models.pbtxt", circle_config(circle_dir, [1], {"stable": 1}))
    server = start_server([f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models=true"])
    try:
        assert states(server) == {1: ("AVAILABLE", "OK")}
        # Load v2 beside v1: the call returns once v2 is loaded.
        reload_via_grpc(server, circle_config(circle_dir, [1, 2], {"stable": 1}))
        assert states(server) == {2: ("AVAILABLE", "OK"), 1: ("AVAILABLE", "OK")}
        assert predict_version(server, "/labels/stable").json()["predictions"][0]["probability"] == pytest.approx(0.5)
        # Moving an existing label onto an available version is allowed.
        reload_via_grpc(server, circle_config(circle_dir, [1, 2], {"stable": 2, "canary": 1}))
        assert predict_version(server, "/labels/stable").json()["predictions"][0]["probability"] == pytest.approx(
            0.7310586, abs=1e-6)
        # Moving an existing label onto a version that is not loaded is refused, even with the flag.
        store.add_version(circle_dir, 3, store.circle_v1)
        with pytest.raises(grpc.RpcError) as info:
            reload_via_grpc(server, circle_config(circle_dir, [1, 2, 3], {"stable": 2, "canary": 3}))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == ("Request to assign label to version 3 of model circle, which is not "
                                        "currently available for inference")
        assert 3 not in states(server)  # the rejected config changed nothing
        # Dropping v1 unloads it; it stays in status as END.
        reload_via_grpc(server, circle_config(circle_dir, [2], {"stable": 2}))
        assert states(server) == {2: ("AVAILABLE", "OK"), 1: ("END", "OK")}
        resp = predict_version(server, "/versions/1")
        assert resp.status_code == 404
        assert resp.json() == {"error": "Servable not found for request: Specific(circle, 1)"}
        assert predict_version(server, "/labels/canary").json() == {"error": "Unrecognized servable version label: canary"}
    finally:
        server.stop()


def test_labels_at_startup_need_the_flag(circle_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "models.pbtxt", circle_config(circle_dir, [1], {"stable": 1}))
    with pytest.raises(ServingError) as info:
        start_server([f"--model_config_file={config}"])
    assert info.value.code == "FAILED_PRECONDITION"
    assert info.value.message == ("Request to assign label to version 1 of model circle, which is not currently "
                                  "available for inference")


def test_without_flag_label_must_follow_load(circle_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "models.pbtxt", circle_config(circle_dir, [1]))
    server = start_server([f"--model_config_file={config}"])
    try:
        with pytest.raises(grpc.RpcError) as info:
            reload_via_grpc(server, circle_config(circle_dir, [1, 2], {"canary": 2}))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert states(server) == {1: ("AVAILABLE", "OK")}
        reload_via_grpc(server, circle_config(circle_dir, [1, 2]))
        reload_via_grpc(server, circle_config(circle_dir, [1, 2], {"canary": 2}))
        assert predict_version(server, "/labels/canary").status_code == 200
    finally:
        server.stop()


def test_flag_lets_new_label_point_at_unloaded_version(circle_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "models.pbtxt", circle_config(circle_dir, [1], {"stable": 1, "next": 7}))
    server = start_server([f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models=true"])
    try:
        resp = predict_version(server, "/labels/next")
        assert resp.status_code == 404
        assert resp.json() == {"error": "Servable not found for request: Specific(circle, 7)"}
    finally:
        server.stop()


def test_config_file_is_polled(circle_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "models.pbtxt", circle_config(circle_dir, [1], {"stable": 1}))
    server = start_server([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                           "--allow_version_labels_for_unavailable_models=true"])
    try:
        write_config(config, circle_config(circle_dir, [1, 2], {"stable": 1, "canary": 2}))
        wait_for(lambda: states(server) == {2: ("AVAILABLE", "OK"), 1: ("AVAILABLE", "OK")})
        wait_for(lambda: predict_version(server, "/labels/canary").status_code == 200)
        write_config(config, "this is { not a config")  # a bad file is logged and ignored
        write_config(config, circle_config(circle_dir, [2], {"stable": 2}))
        wait_for(lambda: states(server).get(1) == ("END", "OK"))
        assert predict_version(server, "/labels/stable").status_code == 200
    finally:
        server.stop()


def test_latest_policy_follows_new_version_dirs(circle_dir: Path, store: Store) -> None:
    server = start_server([f"--model_base_path={circle_dir}", "--model_name=circle",
                           "--file_system_poll_wait_seconds=1"])
    try:
        assert states(server) == {2: ("AVAILABLE", "OK")}
        store.add_version(circle_dir, 10, store.circle_v1)
        wait_for(lambda: states(server) == {10: ("AVAILABLE", "OK"), 2: ("END", "OK")})
        body = predict_version(server, "").json()
        assert body["predictions"][0]["probability"] == pytest.approx(0.5)
    finally:
        server.stop()


def test_all_policy_and_leading_zero_dirs(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    shutil.copytree(store.circle_v2, base / "00000002")
    (base / "not-a-version").mkdir()
    config = write_config(tmp_path / "m.pbtxt", circle_config(base, [], policy="all {}"))
    server = start_server([f"--model_config_file={config}"])
    try:
        assert states(server) == {2: ("AVAILABLE", "OK"), 1: ("AVAILABLE", "OK")}
    finally:
        server.stop()


def test_warmup_runs_before_available(tmp_path: Path) -> None:
    base = tmp_path / "counter"
    sm.save_counter_model(base / "1")
    sm.write_tfrecords(base / "1" / "assets.extra" / "tf_serving_warmup_requests",
                       [sm.predict_log_x("counter", 1.0)] * 3)
    server = start_server([f"--model_base_path={base}", "--model_name=counter"])
    try:
        resp = requests.post(f"{server.rest}/v1/models/counter:predict", json={"instances": [1.0]}, timeout=10)
        assert resp.json() == {"predictions": [4]}  # three warmup calls came first
    finally:
        server.stop()


def test_bad_warmup_record_fails_the_version(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    store.add_version(base, 2, store.circle_v2)
    sm.write_tfrecords(base / "2" / "assets.extra" / "tf_serving_warmup_requests",
                       [sm.predict_log("circle", 1.0, 1.0), b"\xff\xff\xff garbage"])
    config = write_config(tmp_path / "m.pbtxt", circle_config(base, [1, 2]))
    server = start_server([f"--model_config_file={config}"])
    try:
        resp = requests.get(f"{server.rest}/v1/models/circle/versions/2", timeout=10).json()
        status = resp["model_version_status"][0]
        assert status["state"] == "END"
        assert status["status"]["error_code"] == "INVALID_ARGUMENT"
        assert status["status"]["error_message"].startswith("Failed to parse warmup record")
        assert predict_version(server, "/versions/2").status_code == 404
        assert predict_version(server, "").json()["predictions"][0]["probability"] == pytest.approx(0.5)
    finally:
        server.stop()


def test_corrupt_model_never_serves_and_server_stays_up(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    sm.corrupt_model(base / "2")
    config = write_config(tmp_path / "m.pbtxt", circle_config(base, [1, 2]))
    server = start_server([f"--model_config_file={config}"])
    try:
        got = states(server)
        assert got[1] == ("AVAILABLE", "OK")
        assert got[2] == ("END", "DATA_LOSS")
        message = requests.get(f"{server.rest}/v1/models/circle/versions/2", timeout=10).json()[
            "model_version_status"][0]["status"]["error_message"]
        assert message.startswith("Can't parse") and "saved_model.pb" in message
        assert predict_version(server, "").json()["predictions"][0]["probability"] == pytest.approx(0.5)
        # Reloading a config whose only version is corrupt reports it, as ServerCore does.
        only_bad = circle_config(base, [2]).replace("'circle'", "'broken'")
        with pytest.raises(grpc.RpcError) as info:
            reload_via_grpc(server, only_bad)
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        assert "broken" in info.value.details()
        assert requests.get(f"{server.rest}/v1/models/broken", timeout=10).status_code == 200
    finally:
        server.stop()


def test_unload_does_not_cut_in_flight_requests(circle_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    config = write_config(tmp_path / "m.pbtxt", circle_config(circle_dir, [1, 2]))
    server = start_server([f"--model_config_file={config}"])
    try:
        manager = server.server.manager
        held = manager.resolve("circle", 1)  # what a request in flight holds
        new = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(circle_config(circle_dir, [2]), new)
        manager.apply_config(new)
        assert states(server)[1] == ("END", "OK")
        out = held.runners["serving_default"].submit({"x": np.array([0.0], np.float32),
                                                      "y": np.array([0.0], np.float32)}).result(10)
        assert out["probability"].tolist() == [0.5]
    finally:
        server.stop()
