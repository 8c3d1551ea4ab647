"""TF Serving's REST API on a lean asyncio HTTP/1.1 server (keep-alive, gzip bodies, size limits).

The event loop parses, converts and encodes; model runs happen on worker threads (or the batcher)
and are awaited, so a slow model never blocks status calls, metrics or other connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from serving import jsontensor as jt
from serving.api import ServingApi, parse_version
from serving.metrics import Metrics
from serving.status import ServingError, invalid

log = logging.getLogger("serving")

_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE
)
_V1_RE = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_MAX_HEADER_BYTES = 64 * 1024
_IDLE_TIMEOUT_S = 120.0
_JSON = b"application/json"


@dataclass(frozen=True)
class RestOptions:
    timeout_s: float = 30.0
    max_request_bytes: int = 64 * 1024 * 1024
    metrics_path: str | None = None
    enable_cors: bool = False


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RestServer:
    def __init__(self, api: ServingApi, metrics: Metrics, options: RestOptions) -> None:
        self.api = api
        self.metrics = metrics
        self.options = options
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve_connection, host, port, limit=_MAX_HEADER_BYTES,
                                                  backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # ----------------------------------------------------------------- HTTP

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, 431, b"text/plain", b"Request header fields too large", True)
                    return
                keep_alive = await self._one_request(head, reader, writer)
                if not keep_alive:
                    return
        except Exception:
            log.exception("REST connection failed")
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _one_request(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            method, target, version, headers = _parse_head(head)
        except _HttpError as exc:
            await self._send(writer, exc.status, b"text/plain", exc.message.encode(), True)
            return False
        keep_alive = version == "HTTP/1.1"
        connection = headers.get("connection", "").lower()
        if "close" in connection:
            keep_alive = False
        elif "keep-alive" in connection:
            keep_alive = True
        try:
            body = await self._read_body(headers, reader, writer)
        except _HttpError as exc:
            await self._send(writer, exc.status, _JSON, jt.error_body(exc.message), True)
            return False
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return False
        path = target.split("?", 1)[0]
        status, ctype, payload, extra = await self._dispatch(method, path, body, headers)
        await self._send(writer, status, ctype, payload, not keep_alive, extra)
        return keep_alive

    async def _read_body(self, headers: dict[str, str], reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> bytes:
        limit = self.options.max_request_bytes
        encoding = headers.get("transfer-encoding", "").lower()
        if "chunked" in encoding:
            body = await self._read_chunked(reader, limit)
        else:
            try:
                length = int(headers.get("content-length", "0") or "0")
            except ValueError:
                raise _HttpError(400, "Invalid Content-Length") from None
            if length < 0:
                raise _HttpError(400, "Invalid Content-Length")
            if length > limit:
                raise _HttpError(413, f"Request body of {length} bytes exceeds the limit of {limit} bytes")
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await asyncio.wait_for(reader.readexactly(length), _IDLE_TIMEOUT_S) if length else b""
        if headers.get("content-encoding", "").lower() == "gzip" and body:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body, limit + 1)
            except zlib.error:
                raise _HttpError(400, "Failed to decompress gzip request body") from None
            if len(body) > limit or inflater.unconsumed_tail:
                raise _HttpError(413, f"Decompressed request body exceeds the limit of {limit} bytes")
        return body

    async def _read_chunked(self, reader: asyncio.StreamReader, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), _IDLE_TIMEOUT_S)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, "Invalid chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                raise _HttpError(413, f"Request body exceeds the limit of {limit} bytes")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def _send(self, writer: asyncio.StreamWriter, status: int, ctype: bytes, payload: bytes, close: bool,
                    extra: list[tuple[str, str]] | None = None) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Client Closed Request" if status == 499 else "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}\r\nContent-Type: ".encode(), ctype,
                 f"\r\nContent-Length: {len(payload)}\r\n".encode()]
        for name, value in extra or ():
            lines.append(f"{name}: {value}\r\n".encode())
        if close:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        lines.append(payload)
        writer.write(b"".join(lines))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    # ----------------------------------------------------------------- routing

    async def _dispatch(self, method: str, path: str, body: bytes, headers: dict[str, str]
                        ) -> tuple[int, bytes, bytes, list[tuple[str, str]]]:
        cors = self._cors_headers()
        if self.options.metrics_path is not None and path == self.options.metrics_path and method == "GET":
            return 200, b"text/plain; version=0.0.4", self.metrics.render().encode(), []
        if not _V1_RE.fullmatch(path):
            return 404, b"text/plain", b"Not Found", []
        if method == "OPTIONS" and self.options.enable_cors:
            origin = headers.get("origin", "")
            ok = "http://" in origin or "https://" in origin
            return (200 if ok else 400), _JSON, b"", cors
        start = time.perf_counter()
        model = api = ""
        try:
            if method == "POST" and (m := _PREDICT_RE.fullmatch(path)):
                model = unquote(m.group(1))
                api = m.group(4).lower()
                version = parse_version(m.group(2)) if m.group(2) else None
                label = unquote(m.group(3)) if m.group(3) else None
                payload = await self._run_model(api, model, version, label, body)
            elif method == "GET" and (m := _STATUS_RE.fullmatch(path)):
                if not m.group(1):
                    raise invalid("Missing model name in request.")
                model = unquote(m.group(1))
                version = parse_version(m.group(2)) if m.group(2) else None
                label = unquote(m.group(3)) if m.group(3) else None
                if m.group(4):
                    payload = self.api.rest_metadata(model, version, label)
                else:
                    payload = self.api.rest_status(model, version)
            else:
                raise invalid(f"Malformed request: {method} {path}")
            status = 200
        except ServingError as exc:
            status, payload = exc.http_status, jt.error_body(exc.message)
            self._record(model, api, exc.code, start)
            return status, _JSON, payload, cors
        except Exception as exc:
            log.exception("REST request failed: %s %s", method, path)
            self._record(model, api, "INTERNAL", start)
            return 500, _JSON, jt.error_body(f"{type(exc).__name__}: {exc}"), cors
        self._record(model, api, "OK", start)
        return status, _JSON, payload, cors

    def _record(self, model: str, api: str, code: str, start: float) -> None:
        if api:
            self.metrics.record_request(model, api, "REST", code, (time.perf_counter() - start) * 1e6)

    def _cors_headers(self) -> list[tuple[str, str]]:
        if not self.options.enable_cors:
            return []
        return [("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type")]

    async def _run_model(self, api: str, model: str, version: int | None, label: str | None, body: bytes) -> bytes:
        prepare: Callable[..., Any] = {
            "predict": self.api.rest_predict, "classify": self.api.rest_classify, "regress": self.api.rest_regress,
        }[api]
        future, finish = prepare(model, version, label, body)
        try:
            outputs = await asyncio.wait_for(asyncio.wrap_future(future), self.options.timeout_s)
        except TimeoutError:
            future.cancel()
            raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
        result: bytes = finish(outputs)
        return result


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise _HttpError(400, "Bad request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _HttpError(400, "Bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HttpError(400, "Bad header line")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers
