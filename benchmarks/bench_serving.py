"""Predict latency and throughput of the local model server against the same signature in-process.

    python benchmarks/bench_serving.py [--seconds 2] [--max-requests 60000] [--pairs 3]

Prints one table: for 1, 8, 32 and 64 concurrent clients, p50/p99 latency and throughput of
  * in-process: the SavedModel's serving signature called directly (one instance per call),
  * in-process batched: the same calls merged by the server's batcher (no transport),
  * REST and gRPC against `python -m serving` started in a subprocess, batching off and on,
and, for the served rows, the CPU the client process and the server process spent per request: the
two share this machine's cores, so a costly client slows the server. Each cell is bounded by --seconds
and --max-requests. Clients send one instance per request and are asyncio tasks in this process, one
connection each: REST with a raw-socket client (pre-serialized requests, the cheapest possible: the
REST targets are measured with it) and with aiohttp (what an asyncio user calls); gRPC with a raw
HTTP/2 client of the same kind and with grpcio's grpc.aio stubs. Like is compared with like: raw with
raw, and grpc.aio with aiohttp, which cost alike per call. Since cells swing with the machine's load,
REST and gRPC are also measured in back-to-back pairs at each client count (--grpc-pairs), and each
front end's own event-loop cost per call is timed with the model run and the sockets taken out.
Reference rows run the raw REST client against a do-nothing asyncio HTTP server and the grpcio client
against the server's HTTP/2 layer answering without a model: what client and transport alone allow.
The in-process callers are threads.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
BATCHING = "max_batch_size {{ value: 64 }}\nbatch_timeout_micros {{ value: {timeout} }}\nnum_batch_threads {{ value: {threads} }}\n"


def build_model(path: Path) -> None:
    """A small MLP like the pipeline's: named inputs x, y -> probability and class."""
    import tensorflow as tf

    class Mlp(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1 = tf.Variable(tf.random.stateless_normal([2, 10], seed=[1, 2]))
            self.b1 = tf.Variable(tf.zeros([10]))
            self.w2 = tf.Variable(tf.random.stateless_normal([10, 1], seed=[3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.float32, name="y")])
        def serve(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
            h = tf.nn.relu(tf.stack([x, y], axis=1) @ self.w1 + self.b1)
            p = tf.sigmoid(h @ self.w2)[:, 0]
            return {"probability": p, "class": tf.cast(p > 0.5, tf.int64)}

    module = Mlp()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(call: Callable[[int], None], clients: int, seconds: float, max_requests: int) -> dict[str, float]:
    """Runs `clients` threads calling call(i) until the time or request budget is spent."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    per_client = max(1, max_requests // clients)
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(slot: int) -> None:
        for i in range(3):  # warm the connection / path
            call(i)
        start_gate.wait()
        own = latencies[slot]
        i = 0
        while i < per_client and time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            call(i)
            own.append(time.perf_counter() - t0)
            i += 1

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + 3600
    time.sleep(0.05)
    deadline[0] = time.perf_counter() + seconds
    begin = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    flat = sorted(v for own in latencies for v in own)
    if not flat:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "rps": 0.0, "n": 0}
    return {
        "p50_ms": statistics.median(flat) * 1e3,
        "p99_ms": flat[min(len(flat) - 1, int(len(flat) * 0.99))] * 1e3,
        "rps": len(flat) / elapsed,
        "n": len(flat),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_async(make_client: Callable[[], Any], clients: int, seconds: float,
                  max_requests: int, server_pid: int = 0) -> dict[str, float]:
    """Like measure(), with `clients` asyncio tasks on one loop; also the CPU the client process and the
    server process spent per request (two cores are shared, so a costly client slows the server)."""
    import asyncio

    async def run() -> tuple[list[float], float]:
        latencies: list[float] = []
        per_client = max(1, max_requests // clients)
        go = asyncio.Event()
        deadline = [0.0]

        async def worker() -> None:
            call, close = await make_client()
            try:
                for i in range(3):
                    await call(i)
                await go.wait()
                i = 0
                while i < per_client and time.perf_counter() < deadline[0]:
                    t0 = time.perf_counter()
                    await call(i)
                    latencies.append(time.perf_counter() - t0)
                    i += 1
            finally:
                await close()

        tasks = [asyncio.create_task(worker()) for _ in range(clients)]
        await asyncio.sleep(0.2)
        deadline[0] = time.perf_counter() + seconds
        begin = time.perf_counter()
        cpu[0] = _cpu_seconds(os.getpid()), _cpu_seconds(server_pid) if server_pid else 0.0
        go.set()
        await asyncio.gather(*tasks)
        cpu[1] = _cpu_seconds(os.getpid()), _cpu_seconds(server_pid) if server_pid else 0.0
        return latencies, time.perf_counter() - begin

    cpu: list[tuple[float, float]] = [(0.0, 0.0), (0.0, 0.0)]
    flat, elapsed = asyncio.run(run())
    flat.sort()
    if not flat:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "rps": 0.0, "n": 0}
    return {
        "p50_ms": statistics.median(flat) * 1e3,
        "p99_ms": flat[min(len(flat) - 1, int(len(flat) * 0.99))] * 1e3,
        "rps": len(flat) / elapsed,
        "n": len(flat),
        "client_us": (cpu[1][0] - cpu[0][0]) / len(flat) * 1e6,
        "server_us": (cpu[1][1] - cpu[0][1]) / len(flat) * 1e6 if server_pid else float("nan"),
    }


def inputs(i: int) -> tuple[float, float]:
    return ((i % 97) / 97.0 - 0.5, (i % 89) / 89.0 - 0.5)


def predict_requests() -> list[Any]:
    """The gRPC clients' PredictRequests, one instance each, the same inputs as the REST bodies."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    requests = []
    for i in range(97):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "bench"
        x, y = inputs(i)
        req.inputs["x"].CopyFrom(tf.make_tensor_proto([x], dtype=tf.float32))
        req.inputs["y"].CopyFrom(tf.make_tensor_proto([y], dtype=tf.float32))
        requests.append(req)
    return requests


def rest_requests() -> list[bytes]:
    """The REST clients' keep-alive Predict requests, pre-serialized, one instance each."""
    requests = []
    for i in range(97):
        body = json.dumps({"instances": [{"x": inputs(i)[0], "y": inputs(i)[1]}]}).encode()
        requests.append(b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return requests


def grpc_frames(authority: str) -> tuple[bytes, Callable[[int, int], bytes]]:
    """A raw gRPC client's opening (preface, SETTINGS with the largest stream window, the connection
    window widened) and, for stream `sid` and request `i`, a Predict call's HEADERS and DATA frames.
    Header fields are literals, so a block never depends on the calls before it."""
    import struct

    from aviary.serving import http2

    block = (b"\x83\x86"  # :method POST, :scheme http (static table)
             + http2.literal(b":path", b"/tensorflow.serving.PredictionService/Predict")
             + http2.literal(b":authority", authority.encode())
             + http2.literal(b"content-type", b"application/grpc") + http2.literal(b"te", b"trailers"))
    messages = [b"\x00" + struct.pack(">I", len(body)) + body
                for body in (req.SerializeToString() for req in predict_requests())]
    head = struct.Struct(">IBI")
    hello = (http2.PREFACE + http2.frame(http2.SETTINGS, 0, 0, struct.pack(">HI", http2.SETTINGS_INITIAL_WINDOW_SIZE,
                                                                        http2.MAX_WINDOW))
             + http2.frame(http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", http2.MAX_WINDOW - http2.DEFAULT_WINDOW)))

    def call(sid: int, i: int) -> bytes:
        message = messages[i % len(messages)]
        return (head.pack(len(block) << 8 | http2.HEADERS, http2.FLAG_END_HEADERS, sid) + block
                + head.pack(len(message) << 8 | http2.DATA, http2.FLAG_END_STREAM, sid) + message)

    return hello, call


def in_process_calls(model_dir: Path, batching: str) -> tuple[Callable[[int], None], Callable[[int], None], Any]:
    import numpy as np
    import tensorflow as tf

    from aviary.serving.batching import BatchingOptions, SignatureBatcher

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    def run(feeds: Any) -> dict[str, Any]:
        return {k: v.numpy() for k, v in fn(**feeds).items()}

    def direct(i: int) -> None:
        x, y = inputs(i)
        run({"x": np.array([x], np.float32), "y": np.array([y], np.float32)})

    batcher = SignatureBatcher(run, BatchingOptions.from_text(batching))

    def batched(i: int) -> None:
        x, y = inputs(i)
        batcher.submit({"x": np.array([x], np.float32), "y": np.array([y], np.float32)}).result()

    return direct, batched, batcher


class ServerProcess:
    def __init__(self, base: Path, batching_file: Path | None, extra: list[str] | None = None) -> None:
        self.rest_port, self.grpc_port = free_port(), free_port()
        args = [sys.executable, "-m", "aviary.serving", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
                "--model_name=bench", f"--model_base_path={base}"]
        if batching_file is not None:
            args += ["--enable_batching=true", f"--batching_parameters_file={batching_file}"]
        args += extra or []
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=2)
                conn.request("GET", "/v1/models/bench")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def rest_client(self) -> Callable[[], Any]:
        """Keep-alive HTTP/1.1 over a raw asyncio stream, requests pre-serialized."""
        import asyncio

        requests = rest_requests()
        port = self.rest_port

        async def make() -> Any:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)

            async def call(i: int) -> None:
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head)
                start = head.index(b"Content-Length: ") + 16
                length = int(head[start:head.index(b"\r\n", start)])
                await reader.readexactly(length)

            async def close() -> None:
                writer.close()

            return call, close

        return make

    def rest_library_client(self) -> Callable[[], Any]:
        """aiohttp, as an asyncio REST user would call: one session and keep-alive connection per client,
        the answer's JSON decoded. Its CPU per call is like grpc.aio's, so REST and gRPC compare like for like."""
        import aiohttp

        bodies = [json.dumps({"instances": [{"x": inputs(i)[0], "y": inputs(i)[1]}]}).encode() for i in range(97)]
        url = f"http://127.0.0.1:{self.rest_port}/v1/models/bench:predict"
        headers = {"Content-Type": "application/json"}

        async def make() -> Any:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))

            async def call(i: int) -> None:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as response:
                    if response.status != 200:
                        raise RuntimeError(await response.text())
                    await response.json()

            async def close() -> None:
                await session.close()

            return call, close

        return make

    def grpc_raw_client(self) -> Callable[[], Any]:
        """gRPC over a raw asyncio connection per client, the counterpart of `rest_client`: each call's HEADERS
        and DATA frames pre-serialized (header fields as literals, so the block never depends on earlier
        calls), the answer read as frames up to its trailers, which must say grpc-status 0."""
        import asyncio
        import struct

        from aviary.serving import http2

        hello, frames = grpc_frames(f"127.0.0.1:{self.grpc_port}")
        head = struct.Struct(">IBI")
        ok = http2.literal(b"grpc-status", b"0")

        class Connection(asyncio.Protocol):
            def __init__(self) -> None:
                self.buf = b""
                self.stream = -1
                self.waiting: dict[int, asyncio.Future[None]] = {}
                self.answered: set[int] = set()

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.transport = transport
                transport.write(hello)

            def send(self, i: int) -> asyncio.Future[None]:
                sid = self.stream = self.stream + 2
                self.transport.write(frames(sid, i))
                future = self.waiting[sid] = asyncio.get_running_loop().create_future()
                return future

            def data_received(self, data: bytes) -> None:
                buf, pos = self.buf + data, 0
                while len(buf) - pos >= 9:
                    length_type, flags, sid = head.unpack_from(buf, pos)
                    end = pos + 9 + (length_type >> 8)
                    if end > len(buf):
                        break
                    kind = length_type & 0xFF
                    if kind == http2.SETTINGS and not flags & http2.FLAG_ACK:
                        self.transport.write(http2.frame(http2.SETTINGS, http2.FLAG_ACK, 0))
                    elif kind == http2.DATA and end - pos > 9 + 5:
                        self.answered.add(sid)
                    elif kind == http2.HEADERS and flags & http2.FLAG_END_STREAM and sid in self.waiting:
                        future = self.waiting.pop(sid)
                        if sid in self.answered and buf[pos + 9:end] == ok:
                            self.answered.discard(sid)
                            future.set_result(None)
                        else:
                            future.set_exception(RuntimeError(f"call failed: {buf[pos + 9:end]!r}"))
                    pos = end
                self.buf = buf[pos:]

        port = self.grpc_port

        async def make() -> Any:
            _, conn = await asyncio.get_running_loop().create_connection(Connection, "127.0.0.1", port)

            async def call(i: int) -> None:
                await conn.send(i)

            async def close() -> None:
                conn.transport.close()

            return call, close

        return make

    def grpc_client(self) -> Callable[[], Any]:
        """grpc.aio stub calls, one channel per client (as separate client processes would have); the answer
        is decoded into a PredictResponse by the stub."""
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        requests = predict_requests()
        target = f"127.0.0.1:{self.grpc_port}"

        async def make() -> Any:
            channel = grpc.aio.insecure_channel(target)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            async def call(i: int) -> None:
                await stub.Predict(requests[i % len(requests)], timeout=30)

            async def close() -> None:
                await channel.close()

            return call, close

        return make


def front_end_cost(base: Path, calls: int = 20000, rounds: int = 3) -> dict[str, float]:
    """Event-loop microseconds per Predict call of each front end, from request bytes to answer bytes, with
    the model run replaced by fixed outputs and the sockets by a recording transport: what the server's
    own REST and gRPC code costs, apart from TensorFlow, the clients and this machine's other load."""
    import asyncio

    import numpy as np

    from aviary.serving import http2
    from aviary.serving.dispatch import Dispatcher
    from aviary.serving.grpc_service import GrpcService
    from aviary.serving.rest import RestOptions, RestServer, _Connection
    from aviary.serving.server import ModelServer, parse_flags

    outputs = {"class": np.array([1], np.int64), "probability": np.array([0.7], np.float32)}

    class Canned(Dispatcher):
        def run(self, runner: Any, feeds: Any, done: Callable[[Any], None], timeout_s: float | None) -> None:
            done(dict(outputs))

    class Recorder(asyncio.Transport):
        last = b""

        def write(self, data: Any) -> None:
            self.last = bytes(data)

        def resume_reading(self) -> None:
            pass

    async def run() -> dict[str, float]:
        server = ModelServer(parse_flags(["--port=1", "--rest_api_port=2", "--model_name=bench",
                                          f"--model_base_path={base}"]))
        await asyncio.get_running_loop().run_in_executor(None, server.load_initial)
        grpc_conn = http2.GrpcConnection(http2.Http2Server(
            GrpcService(server.api, server.metrics, Canned(asyncio.get_running_loop()), lambda _: None, False).handle,
            1 << 22))
        grpc_out = Recorder()
        grpc_conn.connection_made(grpc_out)
        hello, frames = grpc_frames("127.0.0.1:1")
        grpc_conn.data_received(hello)
        stream = [-1]

        def grpc_call(i: int) -> None:
            sid = stream[0] = stream[0] + 2
            grpc_conn.data_received(frames(sid, i))

        rest = RestServer(server.api, server.metrics, RestOptions())
        rest.loop, rest.dispatcher = asyncio.get_running_loop(), Canned(asyncio.get_running_loop())
        rest_conn = _Connection(rest)
        rest_out = Recorder()
        rest_conn.connection_made(rest_out)
        requests = rest_requests()

        def rest_call(i: int) -> None:
            rest_conn.data_received(requests[i % len(requests)])

        best = {"REST": float("inf"), "gRPC": float("inf")}
        try:
            for _ in range(rounds):
                for name, call in (("REST", rest_call), ("gRPC", grpc_call)):
                    for i in range(calls // 10):
                        call(i)
                    start = time.perf_counter()
                    for i in range(calls):
                        call(i)
                    best[name] = min(best[name], (time.perf_counter() - start) / calls * 1e6)
        finally:
            server.manager.close()
            server.executor.shutdown(wait=False)
        # Answers, not errors, were timed.
        if not rest_out.last.startswith(b"HTTP/1.1 200") or not grpc_out.last.endswith(http2.literal(b"grpc-status", b"0")):
            raise RuntimeError(f"a front end did not answer: {rest_out.last[:80]!r} {grpc_out.last[-80:]!r}")
        return best

    return asyncio.run(run())


_NOOP_SERVER = r"""
import asyncio, sys
RESP = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b''
    def data_received(self, d):
        self.buf += d
        while (i := self.buf.find(b'\r\n\r\n')) >= 0:
            j = self.buf.find(b'Content-Length: ', 0, i)
            n = int(self.buf[j + 16:self.buf.find(b'\r\n', j)]) if j >= 0 else 0
            if len(self.buf) < i + 4 + n: return
            self.buf = self.buf[i + 4 + n:]
            self.t.write(RESP)
async def main():
    await asyncio.get_running_loop().create_server(P, '127.0.0.1', int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


_NOOP_GRPC_SERVER = r"""
import asyncio, sys
from aviary.serving.http2 import Http2Server
async def main():
    server = Http2Server(lambda call: call.reply(b''), 1 << 20)
    await server.listen_tcp('127.0.0.1', int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


def ceiling(script: str, grpc: bool, clients: int, seconds: float, max_requests: int) -> dict[str, float]:
    """The same client against a server that answers without a model (`_NOOP_SERVER`, or the server's
    HTTP/2 layer answering an empty PredictResponse): what client and transport alone allow here."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", script, str(port)], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        fake = ServerProcess.__new__(ServerProcess)
        fake.rest_port, fake.grpc_port = (0, port) if grpc else (port, 0)
        client = fake.grpc_client() if grpc else fake.rest_client()
        return measure_async(client, clients, seconds, max_requests, proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per cell")
    parser.add_argument("--max-requests", type=int, default=60000, help="request budget per cell")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--pairs", type=int, default=3,
                        help="back-to-back in-process/REST batched measurements at the top client count")
    parser.add_argument("--grpc-pairs", type=int, default=3,
                        help="back-to-back REST/gRPC raw-client measurements at each client count")
    parser.add_argument("--batch-timeout-us", type=int, default=0,
                        help="batch_timeout_micros for the server and the in-process batcher alike")
    parser.add_argument("--batch-threads", type=int, default=os.cpu_count() or 1,
                        help="num_batch_threads for both (TF's CPU guidance: the number of cores)")
    parser.add_argument("--only", default="",
                        help="comma-separated subset: inproc,rest,restlib,grpc,grpcraw,frontend,off,on,ceiling")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for python -m serving")
    opts = parser.parse_args()
    sys.path.insert(0, str(REPO))
    clients = [int(c) for c in opts.clients.split(",")]

    rows: list[tuple[str, int, dict[str, float]]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "bench"
        build_model(base / "1")
        batching_file = Path(tmp) / "batching.pbtxt"
        batching_text = BATCHING.format(timeout=opts.batch_timeout_us, threads=opts.batch_threads)
        batching_file.write_text(batching_text)

        only = (set(filter(None, opts.only.split(",")))
                or {"inproc", "rest", "restlib", "grpc", "grpcraw", "frontend", "off", "on", "ceiling"})
        if "inproc" in only:
            direct, batched, batcher = in_process_calls(base / "1", batching_text)
            for n in clients:
                rows.append(("in-process", n, measure(direct, n, opts.seconds, opts.max_requests)))
            for n in clients:
                rows.append(("in-process batched", n, measure(batched, n, opts.seconds, opts.max_requests)))

        front_end: dict[str, float] = {}
        if "frontend" in only:
            front_end = front_end_cost(base)
        if "ceiling" in only:
            for n in sorted({min(clients), max(clients)}):
                rows.append(("no-op HTTP server", n, ceiling(_NOOP_SERVER, False, n, opts.seconds, opts.max_requests)))
                rows.append(("no-op gRPC server", n, ceiling(_NOOP_GRPC_SERVER, True, n, opts.seconds, opts.max_requests)))
        for label, batching in (("off", None), ("on", batching_file)):
            if label not in only:
                continue
            server = ServerProcess(base, batching, opts.server_arg)
            try:
                rest, grpc_client = server.rest_client(), server.grpc_client()
                for n in clients if "rest" in only else []:
                    rows.append((f"REST, batching {label}", n,
                                 measure_async(rest, n, opts.seconds, opts.max_requests, server.proc.pid)))
                for n in clients if "restlib" in only else []:
                    rows.append((f"REST aiohttp, batching {label}", n,
                                 measure_async(server.rest_library_client(), n, opts.seconds, opts.max_requests,
                                               server.proc.pid)))
                for n in clients if "grpcraw" in only else []:
                    rows.append((f"gRPC raw, batching {label}", n,
                                 measure_async(server.grpc_raw_client(), n, opts.seconds, opts.max_requests,
                                               server.proc.pid)))
                for n in clients if "grpc" in only else []:
                    rows.append((f"gRPC, batching {label}", n,
                                 measure_async(grpc_client, n, opts.seconds, opts.max_requests,
                                               server.proc.pid)))
            finally:
                server.stop()

        # This machine's cores are shared, so single cells swing with neighbours' load. Pair the two
        # numbers the batching target compares, measured back to back, and report the median ratio.
        paired: list[float] = []
        if opts.pairs and {"inproc", "rest", "on"} <= only:
            top = max(clients)
            server = ServerProcess(base, batching_file, opts.server_arg)
            try:
                rest = server.rest_client()
                for _ in range(opts.pairs):
                    inproc = measure(batched, top, opts.seconds, opts.max_requests)["rps"]
                    served = measure_async(rest, top, opts.seconds, opts.max_requests)["rps"]
                    paired.append(served / inproc)
                    print(f"pair: in-process batched {inproc:.0f} req/s, REST batching on {served:.0f} req/s, "
                          f"ratio {served / inproc:.2f}")
            finally:
                server.stop()
        # The same for gRPC against REST: raw clients of like cost, one connection per client, batching on,
        # alternating which goes first.
        grpc_pairs: dict[int, list[tuple[float, float]]] = {}
        if opts.grpc_pairs and {"rest", "grpcraw", "on"} <= only:
            server = ServerProcess(base, batching_file, opts.server_arg)
            try:
                rest, raw = server.rest_client(), server.grpc_raw_client()
                for n in clients:
                    for k in range(opts.grpc_pairs):
                        cells = {}
                        for name, client in ((("rest", rest), ("grpc", raw)) if k % 2 == 0 else
                                             (("grpc", raw), ("rest", rest))):
                            cells[name] = measure_async(client, n, opts.seconds, opts.max_requests)
                        grpc_pairs.setdefault(n, []).append(
                            (cells["grpc"]["rps"] / cells["rest"]["rps"], cells["grpc"]["p50_ms"] / cells["rest"]["p50_ms"]))
                        print(f"pair at {n} clients: REST {cells['rest']['rps']:.0f} req/s p50 "
                              f"{cells['rest']['p50_ms']:.3f} ms, gRPC {cells['grpc']['rps']:.0f} req/s p50 "
                              f"{cells['grpc']['p50_ms']:.3f} ms")
            finally:
                server.stop()
        if "inproc" in only:
            batcher.close()

    load_after = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
          f"after: {', '.join(f'{v:.2f}' for v in load_after)} on {os.cpu_count()} CPUs")
    print(f"\n{'path':<29} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'requests':>9} "
          f"{'client us/req':>13} {'server us/req':>13}")
    for name, n, r in rows:
        print(f"{name:<29} {n:>7} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['rps']:>9.0f} {int(r['n']):>9} "
              f"{r.get('client_us', float('nan')):>13.0f} {r.get('server_us', float('nan')):>13.0f}")
    table = {(name, n): r for name, n, r in rows}
    if ("REST, batching off", 1) in table and ("in-process", 1) in table:
        gap = table[("REST, batching off", 1)]["p50_ms"] - table[("in-process", 1)]["p50_ms"]
        print(f"\nREST p50 overhead at 1 client (batching off): {gap:.3f} ms (target <= 2 ms)")
    top = max(clients)
    if ("REST, batching on", top) in table and ("in-process batched", top) in table:
        ratio = table[("REST, batching on", top)]["rps"] / table[("in-process batched", top)]["rps"]
        print(f"REST throughput at {top} clients, batching on / in-process batched: {ratio:.2f} (target >= 0.7)")
    if paired:
        print(f"REST/in-process batched at {top} clients, median of {len(paired)} back-to-back pairs: "
              f"{statistics.median(paired):.2f} (each: {', '.join(f'{r:.2f}' for r in paired)})")
    for grpc_name, rest_name, kind in (("gRPC raw", "REST", "raw-socket clients, requests pre-serialized"),
                                       ("gRPC", "REST aiohttp", "library clients of like cost"),
                                       ("gRPC", "REST", "grpcio against REST's raw-socket client")):
        for n in clients:
            grpc_row = table.get((f"{grpc_name}, batching on", n))
            rest_row = table.get((f"{rest_name}, batching on", n))
            if grpc_row and rest_row:
                print(f"{grpc_name}/{rest_name} at {n} clients, batching on, {kind}: throughput "
                      f"{grpc_row['rps'] / rest_row['rps']:.2f}x, p50 {grpc_row['p50_ms']:.3f} vs "
                      f"{rest_row['p50_ms']:.3f} ms")
    if front_end:
        print(f"event-loop cost per Predict call, model run and sockets aside: REST {front_end['REST']:.1f} us, "
              f"gRPC {front_end['gRPC']:.1f} us ({front_end['gRPC'] / front_end['REST']:.2f}x)")
    for n, pairs in grpc_pairs.items():
        throughput, p50 = statistics.median(t for t, _ in pairs), statistics.median(q for _, q in pairs)
        print(f"gRPC/REST at {n} clients, raw clients, batching on, median of {len(pairs)} back-to-back pairs: "
              f"throughput {throughput:.2f}x (target >= 1), p50 {p50:.2f}x (each: "
              f"{', '.join(f'{t:.2f}/{q:.2f}' for t, q in pairs)})")
    if ("gRPC, batching on", top) in table and ("in-process batched", top) in table:
        ratio = table[("gRPC, batching on", top)]["rps"] / table[("in-process batched", top)]["rps"]
        print(f"gRPC throughput at {top} clients, batching on / in-process batched: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
