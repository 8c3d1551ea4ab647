"""Metrics, batching, hostile requests and process lifecycle."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Running, Store, free_port, start_server, wait_for

from aviary.serving.batching import BatchingOptions, SignatureBatcher


def test_metrics_count_requests_by_model_and_status(server: Running, http: Any) -> None:
    ok = http.post(server.rest + "/v1/models/hpt:predict", json={"instances": [1.0]})
    assert ok.status_code == 200
    http.post(server.rest + "/v1/models/nope:predict", json={"instances": [1.0]})
    resp = http.get(server.rest + "/monitoring/prometheus/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = resp.text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    count = re.search(r'^:tensorflow:serving:request_count\{model_name="hpt",version="123",status="OK"\} (\d+)$', text, re.MULTILINE)
    assert count is not None and int(count.group(1)) >= 1
    assert re.search(r'^:tensorflow:serving:request_count\{model_name="nope",version="",status="NOT_FOUND"\} \d+$', text, re.MULTILINE)
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    inf = re.search(r':tensorflow:serving:request_latency_bucket\{model_name="hpt",version="123",API="predict",'
                    r'entrypoint="REST",le="\+Inf"\} (\d+)', text)
    total = re.search(r':tensorflow:serving:request_latency_count\{model_name="hpt",version="123",API="predict",'
                      r'entrypoint="REST"\} (\d+)', text)
    assert inf and total and inf.group(1) == total.group(1)


def test_batcher_gives_each_caller_its_rows() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def run(feeds: Any) -> dict[str, np.ndarray]:
        gate.wait(5)
        calls.append(int(feeds["x"].shape[0]))
        return {"y": feeds["x"] * 2.0, "i": np.arange(feeds["x"].shape[0])}

    batcher = SignatureBatcher(run, BatchingOptions(max_batch_size=64, num_batch_threads=1,
                                                    batch_timeout_micros=0, allowed_batch_sizes=(8, 32, 64)))
    try:
        first = batcher.submit({"x": np.array([[100.0]], np.float32)})  # occupies the worker
        wait_for(lambda: len(batcher._queue) == 0)
        futures = [batcher.submit({"x": np.array([[float(i)]] * (1 + i % 3), np.float32)}) for i in range(20)]
        wait_for(lambda: len(batcher._queue) == 20)
        gate.set()
        assert first.result(5)["y"].tolist() == [[200.0]]
        for i, future in enumerate(futures):
            out = future.result(5)
            assert out["y"].tolist() == [[2.0 * i]] * (1 + i % 3)
        assert calls[0] == 8  # one row padded to the smallest allowed size
        assert calls[1] == 64 and sum(1 + i % 3 for i in range(20)) == 39  # 39 rows merged, padded to 64
    finally:
        batcher.close()


def test_batcher_rejects_oversized_task() -> None:
    batcher = SignatureBatcher(lambda feeds: dict(feeds), BatchingOptions(max_batch_size=4, num_batch_threads=1))
    try:
        with pytest.raises(Exception, match="Task size 5 is larger than maximum input batch size 4"):
            batcher.submit({"x": np.zeros((5, 1))})
    finally:
        batcher.close()


def test_server_side_batching_over_rest(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 64 }\nbatch_timeout_micros { value: 2000 }\n"
                      "num_batch_threads { value: 1 }\nmax_enqueued_batches { value: 100 }\n")
    server = start_server([f"--model_base_path={base}", "--model_name=circle", "--enable_batching=true",
                           f"--batching_parameters_file={params}"])
    try:
        results: dict[int, Any] = {}

        def client(i: int) -> None:
            with requests.Session() as session:
                xs = [float(i), float(i) + 0.5][: 1 + i % 2]
                body = {"instances": [{"x": x, "y": -x} for x in xs]}
                results[i] = (xs, session.post(f"{server.rest}/v1/models/circle:predict", json=body, timeout=20))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 24
        for xs, resp in results.values():
            assert resp.status_code == 200, resp.text
            preds = resp.json()["predictions"]
            assert len(preds) == len(xs)
            assert all(p["probability"] == pytest.approx(0.5) for p in preds)
        # gRPC-shaped and columnar callers share the batcher too: distinct inputs must come back distinct.
        resp = requests.post(f"{server.rest}/v1/models/circle:predict",
                             json={"inputs": {"x": [0.0, 10.0], "y": [0.0, 0.0]}}, timeout=10)
        assert resp.json()["outputs"]["class"] == [0, 1]
    finally:
        server.stop()


def _raw(server: Running, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.server.rest_port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                if len(body) >= length:
                    break
        return b"".join(chunks)


def assert_alive(server: Running) -> None:
    resp = requests.post(f"{server.rest}/v1/models/hpt:predict", json={"instances": [2.0]}, timeout=10)
    assert resp.json() == {"predictions": [3.0]}


def test_oversized_body_is_413_and_server_answers_after(server: Running) -> None:
    resp = requests.post(f"{server.rest}/v1/models/hpt:predict", data=b"x" * 1_000_001, timeout=10)
    assert resp.status_code == 413
    assert "exceeds the limit" in resp.json()["error"]
    assert_alive(server)


def test_gzip_bomb_is_refused(server: Running) -> None:
    import gzip

    bomb = gzip.compress(b"[" * 5_000_000)
    resp = requests.post(f"{server.rest}/v1/models/hpt:predict", data=bomb,
                         headers={"Content-Encoding": "gzip"}, timeout=10)
    assert resp.status_code == 413
    assert_alive(server)


@pytest.mark.parametrize("payload", [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/models/hpt:predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/models/hpt:predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/models/hpt:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /v1/models/hpt HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
])
def test_malformed_http_gets_4xx(server: Running, payload: bytes) -> None:
    reply = _raw(server, payload)
    assert re.match(rb"HTTP/1\.1 4\d\d ", reply), reply[:200]
    assert_alive(server)


def test_deeply_nested_and_hostile_json(server: Running, http: Any) -> None:
    deep = 950
    nested = b'{"signature_name": "matrix", "inputs": ' + b"[" * deep + b"1.0" + b"]" * deep + b"}"
    resp = http.post(server.rest + "/v1/models/circle:predict", data=nested, timeout=10)
    assert resp.status_code == 400, resp.text
    for body in (b"[" * 100_000, b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
                 b'{"instances": [1e999]}', b'{"instances": [NaN]}', b"\xff\xfe"):
        resp = http.post(server.rest + "/v1/models/hpt:predict", data=body, timeout=10)
        assert resp.status_code in (200, 400), (body[:20], resp.status_code)
    assert_alive(server)


def test_chunked_and_pipelined_requests(server: Running) -> None:
    body = b'{"instances": [1.0]}'
    chunked = (b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    plain = (b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
             + str(len(body)).encode() + b"\r\n\r\n" + body)
    reply = _raw(server, chunked + plain)
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    assert reply.count(b'"predictions": [2.5') == 2


def test_process_runs_until_sigterm_and_exits_zero(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    rest_port, grpc_port = free_port(), free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aviary.serving", f"--port={grpc_port}", "--rest_api_port", str(rest_port),
         "--model_name=circle", f"--model_base_path={base}"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{rest_port}/v1/models/circle"
        wait_for(lambda: requests.get(url, timeout=2).status_code == 200, timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Successfully loaded servable version {name: circle version: 1}" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def test_a_killed_server_leaves_no_helper_process(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    rest_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aviary.serving", f"--port={free_port()}", f"--rest_api_port={rest_port}",
         "--model_name=circle", f"--model_base_path={base}"],
        cwd=Path(__file__).resolve().parents[2], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{rest_port}/v1/models/circle", timeout=2).status_code == 200,
                 timeout=60)
        helpers = wait_for(lambda: _children(proc.pid) or None, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in helpers), timeout=15)


def test_bad_config_file_fails_startup(tmp_path: Path) -> None:
    config = tmp_path / "bad.pbtxt"
    config.write_text("model_config_list { nonsense }")
    proc = subprocess.run(
        [sys.executable, "-m", "aviary.serving", f"--model_config_file={config}", f"--port={free_port()}",
         f"--rest_api_port={free_port()}"],
        cwd=Path(__file__).resolve().parents[2], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in proc.stderr


def test_rest_deadline_is_504_and_server_answers_after(tmp_path: Path) -> None:
    import serving_models as sm

    sm.save_slow_model(tmp_path / "slow" / "1", matmuls=400)
    server = start_server([f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow", "--rest_api_timeout_in_ms=1",
                           "--enable_model_warmup=false"])
    try:
        resp = requests.post(f"{server.rest}/v1/models/slow:predict", json={"instances": [1.0]}, timeout=30)
        assert resp.status_code == 504
        assert resp.json() == {"error": "Deadline Exceeded"}
        assert requests.get(f"{server.rest}/v1/models/slow", timeout=10).status_code == 200
    finally:
        server.stop()


def test_cors_when_enabled(store: Store, tmp_path: Path) -> None:
    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    server = start_server([f"--model_base_path={base}", "--model_name=circle", "--rest_api_enable_cors_support"])
    try:
        pre = requests.options(f"{server.rest}/v1/models/circle:predict", headers={"Origin": "http://x"}, timeout=10)
        assert pre.status_code == 200
        assert pre.headers["Access-Control-Allow-Origin"] == "*"
        assert requests.options(f"{server.rest}/v1/models/circle:predict", timeout=10).status_code == 400
        resp = requests.get(f"{server.rest}/v1/models/circle", timeout=10)
        assert resp.headers["Access-Control-Allow-Methods"] == "POST, GET"
    finally:
        server.stop()


def test_grpc_unix_socket_and_health_check(store: Store, tmp_path: Path) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    base = tmp_path / "circle"
    store.add_version(base, 1, store.circle_v1)
    sock = tmp_path / "grpc.sock"
    server = start_server([f"--model_base_path={base}", "--model_name=circle", f"--grpc_socket_path={sock}",
                           "--enable_grpc_healthcheck_service=true"])
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "circle"
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
            assert status.model_version_status[0].version == 1
            check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=lambda b: b, response_deserializer=lambda b: b)
            assert check(b"", timeout=10) == b"\x08\x01"  # status: SERVING
    finally:
        server.stop()


def test_expect_100_continue(server: Running) -> None:
    body = b'{"instances": [1.0]}'
    payload = (b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.server.rest_port), timeout=10) as sock:
        sock.sendall(payload)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 OK") and b'"predictions": [2.5' in reply


def test_random_garbage_never_hurts_the_server(server: Running, http: Any) -> None:
    import random

    rng = random.Random(7)
    paths = ["/v1/models/hpt:predict", "/v1/models/circle:predict", "/v1/models/hpt:regress",
             "/v1/models/hpt:classify", "/v1/models/circle/labels/stable:predict"]
    pieces = [b"{", b"}", b"[", b"]", b'"instances"', b'"inputs"', b'"examples"', b":", b",", b"1", b"-2.5e3",
              b'"x"', b'"y"', b"null", b"true", b'{"b64": "AA=="}', b"NaN", b"\xff", b" "]
    for _ in range(150):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        resp = http.post(server.rest + rng.choice(paths), data=body, timeout=10)
        assert 200 <= resp.status_code < 500, (body, resp.status_code, resp.text)
        assert "error" in resp.json() or resp.status_code == 200
    assert_alive(server)


def test_malformed_grpc_tensors_are_invalid_argument(server: Running) -> None:
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hpt"
        request.inputs["x"].dtype = 1
        request.inputs["x"].tensor_shape.dim.add().size = 3
        request.inputs["x"].tensor_content = b"\x00" * 5  # 5 bytes cannot be 3 floats
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request.inputs["x"].dtype = 7
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "Expects arg[0] to be float but string is provided"
    assert_alive(server)
