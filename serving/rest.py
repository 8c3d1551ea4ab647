"""TF Serving's REST API on a lean asyncio HTTP/1.1 server (keep-alive, gzip bodies, size limits).

Framing lives in `http1`; this module routes requests and writes answers.

The event loop parses, converts and encodes; model runs happen on worker threads (or the batcher)
and are awaited, so a slow model never blocks status calls, metrics or other connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from aviary.serving import jsontensor as jt
from aviary.serving.api import ServingApi, parse_version
from aviary.serving.dispatch import Dispatcher
from aviary.serving.http1 import MAX_HEADER_BYTES, HttpError, RequestReader
from aviary.serving.metrics import Metrics
from aviary.serving.status import ServingError, invalid
from aviary.serving.traffic import version_of

log = logging.getLogger("serving")

_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE
)
_TRAFFIC_RE = re.compile(r"/v1/models/([^/:]+)/traffic", re.IGNORECASE)  # the traffic-split extension
_V1_RE = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_IDLE_TIMEOUT_S = 120.0
_JSON = b"application/json"


@dataclass(frozen=True)
class RestOptions:
    timeout_s: float = 30.0
    max_request_bytes: int = 64 * 1024 * 1024
    metrics_path: str | None = None
    enable_cors: bool = False


class RestServer:
    def __init__(self, api: ServingApi, metrics: Metrics, options: RestOptions) -> None:
        self.api = api
        self.metrics = metrics
        self.options = options
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dispatcher: Dispatcher | None = None

    async def start(self, host: str, port: int, dispatcher: Dispatcher) -> int:
        self.loop = asyncio.get_running_loop()
        self.dispatcher = dispatcher
        self._server = await self.loop.create_server(lambda: _Connection(self), host, port, backlog=1024)
        self._sweeper = self.loop.call_later(_IDLE_TIMEOUT_S / 4, self._sweep)
        return int(self._server.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Closes connections idle past the timeout (a slow or stalled client cannot hold one forever)."""
        now = time.monotonic()
        for conn in list(self._connections):
            if not conn.busy and now - conn.last_activity > _IDLE_TIMEOUT_S:
                conn.close()
        assert self.loop is not None
        self._sweeper = self.loop.call_later(_IDLE_TIMEOUT_S / 4, self._sweep)

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

    # ----------------------------------------------------------------- routing

    def handle(self, conn: _Connection, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """Answers through conn.respond(), now or when the model run completes."""
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
                runner, feeds, finish = prepare(model, version, label, body)
                assert self.dispatcher is not None
                self.dispatcher.run(
                    runner, feeds,
                    lambda result: self._answer(conn, result, finish, model, api, start, cors),
                    self.options.timeout_s,
                )
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
            if self.api.traffic is not None and method in ("GET", "POST") and (m := _TRAFFIC_RE.fullmatch(path)):
                conn.respond(200, _JSON, self.api.traffic.rest(unquote(m.group(1)), method, body), cors)
                return
            raise invalid(f"Malformed request: {method} {path}")
        except Exception as exc:  # noqa: BLE001 - never let a request take the server down
            self._fail(conn, exc, model, api, start, cors)

    def _fail(self, conn: _Connection, exc: BaseException, model: str, api: str, start: float,
              cors: list[tuple[str, str]], version: int | None = None) -> None:
        if isinstance(exc, RecursionError):
            exc = ServingError("INVALID_ARGUMENT", "JSON value is nested too deeply")
        elif not isinstance(exc, ServingError):
            log.error("REST request failed", exc_info=exc)
            exc = ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")
        self._record(model, api, exc.code, start, version)
        conn.respond(exc.http_status, _JSON, jt.error_body(exc.message), cors)

    def _answer(self, conn: _Connection, result: Any, finish: Callable[[Any], bytes], model: str, api: str,
                start: float, cors: list[tuple[str, str]]) -> None:
        version = version_of(finish)
        if isinstance(result, BaseException):
            self._fail(conn, result, model, api, start, cors, version)
            return
        try:
            payload = finish(result)
        except Exception as exc:  # noqa: BLE001 - encoding errors become the response
            self._fail(conn, exc, model, api, start, cors, version)
            return
        self._record(model, api, "OK", start, version)
        conn.respond(200, _JSON, payload, cors)

    def _record(self, model: str, api: str, code: str, start: float, version: int | None = None) -> None:
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
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
            self.busy = True
            try:
                self.server.handle(self, request.method, request.path, request.headers, request.body)
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
        if not self.keep_alive:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + payload)
        self.last_activity = time.monotonic()
        if not self.keep_alive:
            self.close()
            return
        self.transport.resume_reading()
        if self.reader.buf:
            loop = self.server.loop
            assert loop is not None
            loop.call_soon(self._process)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Client Closed Request" if status == 499 else b"Unknown"


_REASONS = {code: _reason(code) for code in (200, 400, 401, 403, 404, 409, 413, 429, 431, 499, 500, 501, 503, 504)}
