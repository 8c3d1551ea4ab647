"""TF Serving's REST API on a lean asyncio HTTP/1.1 server (keep-alive, gzip bodies, size limits).

Framing lives in `http1`; this module routes requests and writes answers.

The event loop parses, converts and encodes small requests; large bodies are parsed and their answers
encoded on worker threads (inside the request timeout), and model runs happen on worker threads (or
the batcher), so neither a slow model nor a huge request blocks status calls, metrics or other
connections. A header-read deadline and a connection cap keep slow or numerous clients from
exhausting the server: connections past the cap get an immediate 503 and are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from aviary.serving import jsontensor as jt
from aviary.serving.api import ServingApi, parse_version
from aviary.serving.dispatch import Dispatcher
from aviary.serving.http1 import MAX_HEADER_BYTES, HttpError, Request, RequestReader
from aviary.serving.largebody import HelperProcess
from aviary.serving.metrics import Metrics
from aviary.serving.status import ServingError, invalid

log = logging.getLogger("serving")

_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE
)
_V1_RE = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_TRAFFIC_RE = re.compile(r"/v1/models/([^/:]+)/traffic", re.IGNORECASE)
_IDLE_TIMEOUT_S = 120.0
_JSON = b"application/json"
# Bodies above this are parsed on a worker thread; below it parsing takes well under a millisecond.
LARGE_BODY_BYTES = 256 * 1024
_LARGE_GZIP_BYTES = 16 * 1024  # compressed: may inflate to many times that
# Answers with more output values than this are encoded on a worker thread.
_LARGE_OUTPUT_VALUES = 20_000
_OVER_CAPACITY_BODY = b'{ "error": "Too many connections to this server" }'
_OVER_CAPACITY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n%s" % (len(_OVER_CAPACITY_BODY), _OVER_CAPACITY_BODY))


def default_max_connections() -> int:
    """Well under the process's descriptor limit (models, gRPC and logs need descriptors too)."""
    soft = 1024
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 65536
    return max(16, min(4096, soft // 2 - 64))


@dataclass(frozen=True)
class RestOptions:
    timeout_s: float = 30.0
    max_request_bytes: int = 64 * 1024 * 1024
    metrics_path: str | None = None
    enable_cors: bool = False
    header_timeout_s: float = 10.0
    max_connections: int = 0  # 0: default_max_connections()
    instance_id: str = ""


class RestServer:
    def __init__(self, api: ServingApi, metrics: Metrics, options: RestOptions) -> None:
        self.api = api
        self.metrics = metrics
        self.options = options
        # Parses large bodies and encodes large answers, off the loop; two at a time bounds their memory.
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="rest-large", initializer=_lower_priority)
        self._helper = HelperProcess()
        self.max_connections = options.max_connections or default_max_connections()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dispatcher: Dispatcher | None = None

    async def start(self, host: str, port: int, dispatcher: Dispatcher) -> int:
        self.loop = asyncio.get_running_loop()
        self.dispatcher = dispatcher
        self._server = await self.loop.create_server(lambda: _Connection(self), host, port, backlog=1024)
        self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)
        self._helper.start()
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep_interval(self) -> float:
        return max(0.02, min(1.0, self.options.header_timeout_s / 4))

    def _sweep(self) -> None:
        """Closes connections that took too long to send a request head, or sat idle too long."""
        now = time.monotonic()
        header_timeout = self.options.header_timeout_s
        for conn in list(self._connections):
            if conn.busy:
                continue
            if conn.head_since is not None and conn.reader.reading_head and now - conn.head_since > header_timeout:
                conn.keep_alive = False
                conn.busy = True
                conn.respond(408, _JSON, jt.error_body("Timed out reading the request head"))
            elif now - conn.last_activity > _IDLE_TIMEOUT_S:
                conn.close()
        assert self.loop is not None
        self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._helper.close()

    # ----------------------------------------------------------------- routing

    def handle(self, conn: _Connection, request: Request) -> None:
        """Answers through conn.respond(), now or when the model run completes."""
        method, path, headers = request.method, request.path, request.headers
        if self.options.metrics_path is not None and path == self.options.metrics_path and method == "GET":
            conn.respond(200, b"text/plain; version=0.0.4", self.metrics.render().encode())
            return
        if not _V1_RE.fullmatch(path):
            conn.respond(404, b"text/plain", b"Not Found")
            return
        cors = self._cors_headers()
        if method == "OPTIONS" and self.options.enable_cors:
            origin = headers.get("origin", "")
            ok = "http://" in origin or "https://" in origin
            conn.respond(200 if ok else 400, _JSON, b"", cors)
            return
        start = time.perf_counter()
        model = api = ""
        try:
            if method == "POST" and (m := _PREDICT_RE.fullmatch(path)):
                model = unquote(m.group(1))
                api = m.group(4).lower()
                version = parse_version(m.group(2)) if m.group(2) else None
                label = unquote(m.group(3)) if m.group(3) else None
                prepare: Callable[..., Any] = {
                    "predict": self.api.rest_predict, "classify": self.api.rest_classify,
                    "regress": self.api.rest_regress,
                }[api]
                if request.size > LARGE_BODY_BYTES or (request.gzip and request.size > _LARGE_GZIP_BYTES):
                    self._prepare_off_loop(conn, prepare, model, version, label, request, api, start, cors)
                    return
                runner, feeds, finish = prepare(model, version, label, request.body())
                assert self.dispatcher is not None
                self.dispatcher.run(
                    runner, feeds,
                    lambda result: self._answer(conn, result, finish, model, api, start, cors,
                                                str(runner.version)),
                    self.options.timeout_s,
                )
                return
            if m := _TRAFFIC_RE.fullmatch(path):
                conn.respond(200, _JSON, self._traffic(method, unquote(m.group(1)), request), cors)
                return
            if method == "GET" and (m := _STATUS_RE.fullmatch(path)):
                if not m.group(1):
                    raise invalid("Missing model name in request.")
                model = unquote(m.group(1))
                version = parse_version(m.group(2)) if m.group(2) else None
                label = unquote(m.group(3)) if m.group(3) else None
                if m.group(4):
                    payload = self.api.rest_metadata(model, version, label)
                else:
                    payload = self.api.rest_status(model, version)
                conn.respond(200, _JSON, payload, cors)
                return
            raise invalid(f"Malformed request: {method} {path}")
        except Exception as exc:  # noqa: BLE001 - never let a request take the server down
            self._fail(conn, exc, model, api, start, cors)

    def _traffic(self, method: str, model: str, request: Request) -> bytes:
        """The traffic-split extension: GET reads it, POST {"canary_percent": p, "mirror_percent": q} sets it
        (both 0-100, default 0), DELETE returns the model to TF Serving's rule (newest version answers)."""
        manager = self.api.manager
        if method == "POST":
            doc = jt.parse_json_object(request.body())
            shares = {"canary_percent": 0.0, "mirror_percent": 0.0}
            for key, value in doc.items():
                if key not in shares:
                    raise invalid(f"Unknown traffic field: {key} (expected canary_percent, mirror_percent)")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    raise invalid(f"Traffic field {key} must be a number from 0 to 100, got: {json.dumps(value)}")
                shares[key] = float(value)
            if shares["canary_percent"] + shares["mirror_percent"] > 100:
                raise invalid("canary_percent + mirror_percent must not exceed 100")
            manager.set_traffic(model, shares["canary_percent"], shares["mirror_percent"])
            log.info("Traffic for %s: %s%% canary, %s%% mirrored", model, shares["canary_percent"],
                     shares["mirror_percent"])
        elif method == "DELETE":
            manager.clear_traffic(model)
            log.info("Traffic for %s: TF Serving's default (newest version)", model)
        elif method != "GET":
            raise invalid(f"Malformed request: {method} /v1/models/{model}/traffic")
        return (json.dumps(manager.traffic_state(model), indent=1) + "\n").encode()

    def _prepare_off_loop(self, conn: _Connection, prepare: Callable[..., Any], model: str, version: int | None,
                          label: str | None, request: Request, api: str, start: float,
                          cors: list[tuple[str, str]]) -> None:
        """Parses a large body on a worker thread; the request timeout runs from now, parsing included."""
        assert self.loop is not None and self.dispatcher is not None
        dispatcher = self.dispatcher
        deadline = time.monotonic() + self.options.timeout_s
        timed_out = [False]

        def expire() -> None:
            timed_out[0] = True
            self._fail(conn, ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded"), model, api, start, cors)

        timer = self.loop.call_later(self.options.timeout_s, expire)

        def parsed(future: Future[Any]) -> None:  # on the loop
            if timed_out[0]:
                return
            timer.cancel()
            try:
                runner, feeds, finish = future.result()
            except Exception as exc:  # noqa: BLE001 - parse errors are the request's answer
                self._fail(conn, exc, model, api, start, cors)
                return
            served = str(runner.version)
            dispatcher.run(runner, feeds,
                           lambda result: self._answer(conn, result, finish, model, api, start, cors, served),
                           deadline - time.monotonic())

        try:
            if api == "predict":
                future = self._pool.submit(self.api.rest_predict_large, model, version, label, request, self._helper)
            else:
                future = self._pool.submit(_parse_large, prepare, model, version, label, request)
        except RuntimeError:  # executor shut down: the server is stopping
            timer.cancel()
            self._fail(conn, ServingError("UNAVAILABLE", "Server is shutting down"), model, api, start, cors)
            return
        future.add_done_callback(lambda fut: dispatcher.completions.push(lambda: parsed(fut)))

    def _fail(self, conn: _Connection, exc: BaseException, model: str, api: str, start: float,
              cors: list[tuple[str, str]], version: str = "") -> None:
        if isinstance(exc, HttpError):  # a body that would not inflate
            self._record(model, api, "INVALID_ARGUMENT", start, version)
            conn.respond(exc.status, _JSON, jt.error_body(exc.message), cors)
            return
        if isinstance(exc, RecursionError):
            exc = ServingError("INVALID_ARGUMENT", "JSON value is nested too deeply")
        elif not isinstance(exc, ServingError):
            log.error("REST request failed", exc_info=exc)
            exc = ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")
        self._record(model, api, exc.code, start, version)
        conn.respond(exc.http_status, _JSON, jt.error_body(exc.message), cors)

    def _answer(self, conn: _Connection, result: Any, finish: Callable[[Any], bytes], model: str, api: str,
                start: float, cors: list[tuple[str, str]], version: str = "") -> None:
        if isinstance(result, BaseException):
            self._fail(conn, result, model, api, start, cors, version)
            return
        if sum(arr.size for arr in result.values()) > _LARGE_OUTPUT_VALUES:
            self._encode_off_loop(conn, result, finish, model, api, start, cors, version)
            return
        try:
            payload = finish(result)
        except Exception as exc:  # noqa: BLE001 - encoding errors become the response
            self._fail(conn, exc, model, api, start, cors, version)
            return
        self._record(model, api, "OK", start, version)
        conn.respond(200, _JSON, payload, cors)

    def _encode_off_loop(self, conn: _Connection, result: Any, finish: Callable[[Any], bytes], model: str,
                         api: str, start: float, cors: list[tuple[str, str]], version: str) -> None:
        assert self.dispatcher is not None
        completions = self.dispatcher.completions

        def encoded(future: Future[bytes]) -> None:  # on the loop
            try:
                payload = future.result()
            except Exception as exc:  # noqa: BLE001 - encoding errors become the response
                self._fail(conn, exc, model, api, start, cors, version)
                return
            self._record(model, api, "OK", start, version)
            conn.respond(200, _JSON, payload, cors)

        try:
            future = self._pool.submit(finish, result)
        except RuntimeError:
            self._fail(conn, ServingError("UNAVAILABLE", "Server is shutting down"), model, api, start, cors,
                       version)
            return
        future.add_done_callback(lambda fut: completions.push(lambda: encoded(fut)))

    def _record(self, model: str, api: str, code: str, start: float, version: str = "") -> None:
        if api:
            self.metrics.record_request(model, api, "REST", code, (time.perf_counter() - start) * 1e6, version)

    def _cors_headers(self) -> list[tuple[str, str]]:
        if not self.options.enable_cors:
            return []
        return [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type")]


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests on it are answered in order, one at a time."""

    def __init__(self, server: RestServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(server.options.max_request_bytes)
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.last_activity = time.monotonic()
        self.head_since: float | None = self.last_activity  # waiting for a request head since then

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.server._connections) >= self.server.max_connections:
            self.closed = True
            transport.write(_OVER_CAPACITY)
            transport.close()
            return
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = time.monotonic()
        if self.head_since is None:
            self.head_since = self.last_activity
        self.reader.feed(data)
        if self.busy:
            if len(self.reader.buf) > 4 * MAX_HEADER_BYTES and self.transport is not None:
                self.transport.pause_reading()  # pipelined flood: wait until the current answer is out
            return
        self._process()

    def _process(self) -> None:
        while not self.busy and not self.closed:
            try:
                request = self.reader.next_request()
            except HttpError as exc:
                ctype = b"text/plain" if exc.status == 431 else _JSON
                body = exc.message.encode() if exc.status == 431 else jt.error_body(exc.message)
                self.keep_alive = False
                self.busy = True
                self.respond(exc.status, ctype, body)
                return
            if request is None:
                if self.reader.continue_due and self.transport is not None:
                    self.reader.continue_due = False
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            self.keep_alive = request.keep_alive
            self.head_since = None
            self.busy = True
            try:
                self.server.handle(self, request)
            except Exception:  # handle() answers its own errors; this is a last resort
                log.exception("REST handler failed")
                if self.busy:
                    self.respond(500, _JSON, jt.error_body("Internal error"))

    def respond(self, status: int, ctype: bytes, payload: bytes, extra: list[tuple[str, str]] | None = None) -> None:
        if not self.busy:
            return
        self.busy = False
        if self.closed or self.transport is None:
            return
        reason = _REASONS.get(status) or _reason(status)
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status, reason, ctype, len(payload))
        if extra:
            head += b"".join(f"{name}: {value}\r\n".encode() for name, value in extra)
        if self.server.options.instance_id:
            head += b"X-Aviary-Instance: %s\r\n" % self.server.options.instance_id.encode("latin-1")
        if not self.keep_alive:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + payload)
        self.last_activity = time.monotonic()
        if not self.keep_alive:
            self.close()
            return
        self.transport.resume_reading()
        if self.reader.buf:
            self.head_since = self.last_activity
            loop = self.server.loop
            assert loop is not None
            loop.call_soon(self._process)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Client Closed Request" if status == 499 else b"Unknown"


_REASONS = {code: _reason(code) for code in (200, 400, 401, 403, 404, 409, 413, 429, 431, 499, 500, 501, 503, 504)}


def _parse_large(prepare: Callable[..., Any], model: str, version: int | None, label: str | None,
                 request: Request) -> Any:
    """prepare() for a large classify/regress body (predict's go to the helper process), on a low-priority
    thread; the parse offers the GIL to the loop at every number.

    The cyclic garbage collector is paused while millions of fresh containers are built: its full
    passes would otherwise hold the GIL (and stall the event loop) for a large fraction of a second.
    """
    with jt.gc_paused():
        return prepare(model, version, label, request.body(), large=True)


def _lower_priority() -> None:
    """Runs in each large-request thread: the OS then prefers the event loop's thread when both want a
    core, so the loop gets the GIL back quickly whenever the parser offers it."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)
