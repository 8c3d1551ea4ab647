"""HTTP/2 server framing for gRPC's unary calls (all of TF Serving's are unary), on the asyncio loop.

Written for this server rather than run on grpcio's server: grpc.aio spends several hundred
microseconds of Python per call on this machine, which made gRPC slower than REST here, though
TF Serving's clients pick it as the fast path. This module does what gRPC's wire protocol asks of a
server (RFC 9113 framing and flow control, RFC 7541 header decoding, gRPC's length-prefixed messages,
deadlines, compression, status trailers) and nothing else: no server push, no streaming calls, no TLS.
Callers are plain grpcio (or any gRPC) clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from aviary.serving.status import CODE_VALUES as STATUS_CODES

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0, 1, 3, 6, 9
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 1, 4, 5
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65535
OUR_MAX_FRAME = 1 << 20  # large request bodies arrive in fewer frames
MAX_HEADER_BLOCK = 64 * 1024  # as the REST server's limit on a request head
_FRAME_HEAD = struct.Struct(">IBI")  # 24-bit length + type packed as (length << 8 | type), flags, stream id

_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class ConnectionError_(Exception):
    """A connection-level protocol error: the connection answers GOAWAY with `code` and closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- HPACK (RFC 7541)


def _read_int(data: bytes, i: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = data[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        if i >= len(data):
            raise ConnectionError_(COMPRESSION_ERROR, "truncated integer in header block")
        b = data[i]
        i += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i
        if shift > 28:
            raise ConnectionError_(COMPRESSION_ERROR, "integer too large in header block")


def _int_bytes(value: int, prefix: int, first: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_STATIC = [(b"", b"")] + list(HeaderTable.STATIC_TABLE)


class HpackDecoder:
    """Header block decoder with the dynamic table; Huffman strings are decoded once and remembered."""

    def __init__(self, max_table_size: int = 4096) -> None:
        self.table: deque[tuple[bytes, bytes]] = deque()
        self.size = 0
        self.max_size = max_table_size
        self.settings_max = max_table_size
        self._huffman: dict[bytes, bytes] = {}
        # Whole blocks whose decoding left the table as it was (a client's repeat calls are usually
        # all indexed fields): decoded once until the table changes. Callers must not mutate the dicts.
        self._blocks: dict[bytes, dict[bytes, bytes]] = {}
        self._changes = 0

    def _string(self, data: bytes, i: int) -> tuple[bytes, int]:
        huffman = data[i] & 0x80
        length, i = _read_int(data, i, 7)
        end = i + length
        if end > len(data):
            raise ConnectionError_(COMPRESSION_ERROR, "truncated string in header block")
        raw = data[i:end]
        if not huffman:
            return raw, end
        value = self._huffman.get(raw)
        if value is None:
            try:
                value = bytes(decode_huffman(raw))
            except Exception:  # noqa: BLE001 - any malformed Huffman string is the peer's fault
                raise ConnectionError_(COMPRESSION_ERROR, "bad Huffman string in header block") from None
            if len(self._huffman) < 1024:
                self._huffman[raw] = value
        return value, end

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index < len(_STATIC):
            return _STATIC[index]
        k = index - len(_STATIC)
        if 0 <= k < len(self.table):
            return self.table[k]
        raise ConnectionError_(COMPRESSION_ERROR, f"header index {index} out of range")

    def _add(self, name: bytes, value: bytes) -> None:
        self._blocks.clear()
        self._changes += 1
        cost = len(name) + len(value) + 32
        self.table.appendleft((name, value))
        self.size += cost
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.table:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32

    def decode_dict(self, data: bytes) -> dict[bytes, bytes]:
        """decode() as a dict (a repeated name keeps its last value), remembered while the table stands."""
        cached = self._blocks.get(data)
        if cached is not None:
            return cached
        changes = self._changes
        headers = dict(self.decode(data))
        if self._changes == changes and len(self._blocks) < 256:  # the table did not change meanwhile
            self._blocks[data] = headers
        return headers

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if b & 0x80:  # indexed field
                index, i = _read_int(data, i, 7)
                headers.append(self._entry(index))
                continue
            if b & 0x40:  # literal, added to the table
                index, i = _read_int(data, i, 6)
                indexed = True
            elif b & 0x20:  # table size update
                size, i = _read_int(data, i, 5)
                if size > self.settings_max:
                    raise ConnectionError_(COMPRESSION_ERROR, "header table size above the agreed limit")
                self.max_size = size
                self._blocks.clear()
                self._changes += 1
                self._evict()
                continue
            else:  # literal without indexing / never indexed
                index, i = _read_int(data, i, 4)
                indexed = False
            if index:
                name = self._entry(index)[0]
            else:
                name, i = self._string(data, i)
            value, i = self._string(data, i)
            if indexed:
                self._add(name, value)
            headers.append((name, value))
        return headers


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing (so the encoder keeps no state)."""
    return b"\x00" + _int_bytes(len(name), 7) + name + _int_bytes(len(value), 7) + value


_RESPONSE_HEAD = b"\x88" + literal(b"content-type", b"application/grpc") + literal(
    b"grpc-accept-encoding", b"identity,deflate,gzip")  # 0x88: ":status: 200" from the static table
_TRAILERS_OK = literal(b"grpc-status", b"0")


def _percent_encode(message: str) -> bytes:
    """grpc-message: printable ASCII but '%' as is, every other byte of the UTF-8 as %XX."""
    raw = message.encode("utf-8", "replace")
    if all(0x20 <= c <= 0x7E and c != 0x25 for c in raw):
        return raw
    return b"".join(bytes((c,)) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in raw)


def status_block(code: int, message: str) -> bytes:
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", _percent_encode(message))
    return block


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _FRAME_HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout: up to 8 digits and a unit; None if malformed (then the call has no deadline)."""
    text = value.decode("ascii", "replace")
    unit = _TIMEOUT_UNITS.get(text[-1:])
    digits = text[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


_TIMEOUTS: dict[bytes, float | None] = {}


def _timeout_of(value: bytes) -> float | None:
    """parse_timeout, remembered: clients send the same few values over and over."""
    try:
        return _TIMEOUTS[value]
    except KeyError:
        seconds = _TIMEOUTS[value] = parse_timeout(value)
        if len(_TIMEOUTS) > 4096:
            _TIMEOUTS.clear()
        return seconds


# --------------------------------------------------------------------------- calls


class Call:
    """One unary call: the request message and its metadata; answer with reply() or fail(), once."""

    __slots__ = ("_conn", "_deadline", "answered", "body", "headers", "path", "stream_id")

    def __init__(self, conn: GrpcConnection, stream_id: int, path: str, headers: dict[bytes, bytes],
                 body: bytes, deadline: float | None) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.path = path
        self.headers = headers
        self.body = body
        self._deadline = deadline
        self.answered = False

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def reply(self, message: bytes) -> None:
        if not self.answered:
            self.answered = True
            self._conn.send_message(self.stream_id, message)

    def fail(self, code: int, message: str) -> None:
        if not self.answered:
            self.answered = True
            self._conn.send_status(self.stream_id, code, message)

    @property
    def cancelled(self) -> bool:
        return self.stream_id not in self._conn.streams or self._conn.closed


Handler = Callable[[Call], None]


class _Stream:
    __slots__ = ("body", "ended", "expect", "headers", "rejected", "send_window")

    def __init__(self, headers: dict[bytes, bytes], send_window: int) -> None:
        self.headers = headers
        self.body = bytearray()
        self.expect = -1  # the request message's length once its 5-byte prefix is in
        self.rejected = False  # answered already (e.g. too large); the rest of its body is dropped
        self.ended = False  # the client's half is closed
        self.send_window = send_window


class GrpcConnection(asyncio.Protocol):
    """One client connection: frames in, calls out to the handler, answers framed back in order of completion."""

    def __init__(self, server: Http2Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface_seen = False
        self.decoder = HpackDecoder()
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.peer_window = DEFAULT_WINDOW  # the peer's initial stream window (its SETTINGS)
        self.peer_max_frame = 16384
        self.send_window = DEFAULT_WINDOW  # connection-level window for what we send
        self.unacked_recv = 0  # bytes received since our last connection WINDOW_UPDATE
        self.pending: deque[list[Any]] = deque()  # [stream_id, remaining message bytes, end frames] blocked by flow control
        self.continuation: tuple[int, int, bytearray] | None = None  # (stream, flags, block so far)
        self.closed = False
        self.going_away = False

    # ----------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        settings = struct.pack(">HIHI", SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW, SETTINGS_MAX_FRAME_SIZE, OUR_MAX_FRAME)
        transport.write(frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.streams.clear()
        self.pending.clear()
        self.server.connections.discard(self)
        self.server.connection_closed()

    def data_received(self, data: bytes) -> None:
        if self.buf:
            self.buf += data
            data = bytes(self.buf)
            self.buf.clear()
        try:
            rest = self._process(data)
        except ConnectionError_ as exc:
            self._goaway(exc.code, str(exc))
            return
        if rest:
            self.buf += rest

    # ----------------------------------------------------------------- reading

    def _process(self, data: bytes) -> bytes:
        """Handles every whole frame in `data`; returns the incomplete tail."""
        if not self.preface_seen:
            if len(data) < len(PREFACE):
                if not PREFACE.startswith(data):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return data
            if not data.startswith(PREFACE):
                raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            data = data[len(PREFACE):]
            self.preface_seen = True
        pos = 0
        end = len(data)
        unpack = _FRAME_HEAD.unpack_from
        while end - pos >= 9 and not self.closed:
            length_type, flags, stream_id = unpack(data, pos)
            length = length_type >> 8
            if length > OUR_MAX_FRAME:
                raise ConnectionError_(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
            start = pos + 9
            if end - start < length:
                break
            pos = start + length
            self._frame(length_type & 0xFF, flags, stream_id & 0x7FFFFFFF, data[start:pos])
        return data[pos:] if pos < end else b""

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuation is not None and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self.continuation is None or self.continuation[0] != stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION")
            sid, first_flags, block = self.continuation
            block += payload
            if len(block) > MAX_HEADER_BLOCK:
                raise ConnectionError_(PROTOCOL_ERROR, "header block too large")
            if flags & FLAG_END_HEADERS:
                self.continuation = None
                self._header_block(sid, first_flags, bytes(block))
        elif kind == SETTINGS:
            if stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & FLAG_ACK:
                self._settings(payload)
        elif kind == PING:
            if len(payload) != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & FLAG_ACK:
                self._write(frame(PING, FLAG_ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == RST_STREAM:
            self.streams.pop(stream_id, None)
        elif kind == GOAWAY:
            self.going_away = True
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "clients cannot push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for k in range(0, len(payload), 6):
            ident, value = struct.unpack_from(">HI", payload, k)
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self._write(frame(SETTINGS, FLAG_ACK, 0))
        self._flush_pending()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
        if self.pending:
            self._flush_pending()

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & FLAG_PADDED:
            if not payload:
                raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
            start, end = 1, end - payload[0]
        if flags & FLAG_PRIORITY:
            start += 5
        if start > end:
            raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
        block = payload[start:end]
        if flags & FLAG_END_HEADERS:
            self._header_block(stream_id, flags, block)
        else:
            self.continuation = (stream_id, flags, bytearray(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self.decoder.decode_dict(block)  # always decoded: the table must follow the peer's
        if stream_id in self.streams or stream_id <= self.last_stream:
            return  # trailers from a client or a stream we reset: nothing to do for unary calls
        if not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, "client streams must be odd")
        self.last_stream = stream_id
        stream = _Stream(headers, self.peer_window)
        self.streams[stream_id] = stream
        if self.going_away or self.server.stopping:
            self.send_status(stream_id, STATUS_CODES["UNAVAILABLE"], "server is shutting down")
            return
        if headers.get(b":method") != b"POST" or not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self.streams.pop(stream_id, None)
            self._write(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, stream_id, b"\x00" + _int_bytes(7, 7)
                              + b":status" + _int_bytes(3, 7) + b"415"))
            return
        if flags & FLAG_END_STREAM:
            self._complete(stream_id, stream, b"")

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self.unacked_recv += size
        if self.unacked_recv >= 1 << 30:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked_recv)))
            self.unacked_recv = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.rejected:
            return
        if flags & FLAG_PADDED:
            if not payload or payload[0] >= size:
                raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
            payload = payload[1:size - payload[0]]
        if flags & FLAG_END_STREAM and not stream.body:  # the usual small call: its message in one frame
            self._complete(stream_id, stream, payload)
            return
        stream.body += payload
        if stream.expect < 0 and len(stream.body) >= 5:
            stream.expect = int.from_bytes(stream.body[1:5], "big")
            limit = self.server.max_message_bytes
            if stream.expect > limit:
                stream.rejected = True
                stream.body = bytearray()
                self.send_status(stream_id, STATUS_CODES["RESOURCE_EXHAUSTED"],
                                 f"Received message larger than max ({stream.expect} vs. {limit})")
                return
        if stream.expect >= 0 and len(stream.body) > stream.expect + 5:
            stream.rejected = True
            self.send_status(stream_id, STATUS_CODES["UNIMPLEMENTED"], "More than one request message in a unary call")
            return
        if flags & FLAG_END_STREAM:
            body = bytes(stream.body)
            stream.body = bytearray()
            self._complete(stream_id, stream, body)

    def _complete(self, stream_id: int, stream: _Stream, body: bytes) -> None:
        """The request is in: check the message, then hand the call over."""
        stream.ended = True
        headers = stream.headers
        if len(body) < 5:
            self.send_status(stream_id, STATUS_CODES["INTERNAL"], "Missing request message")
            return
        expect = int.from_bytes(body[1:5], "big")
        limit = self.server.max_message_bytes
        if expect > limit:
            self.send_status(stream_id, STATUS_CODES["RESOURCE_EXHAUSTED"],
                             f"Received message larger than max ({expect} vs. {limit})")
            return
        if len(body) != expect + 5:
            self.send_status(stream_id, STATUS_CODES["INTERNAL"] if len(body) < expect + 5 else
                             STATUS_CODES["UNIMPLEMENTED"], "Incomplete request message" if len(body) < expect + 5
                             else "More than one request message in a unary call")
            return
        message = body[5:]
        if body[0]:
            encoding = headers.get(b"grpc-encoding", b"identity")
            wbits = {b"gzip": 31, b"deflate": 15}.get(encoding)
            if wbits is None:
                self.send_status(stream_id, STATUS_CODES["UNIMPLEMENTED"],
                                 f"Compression algorithm '{encoding.decode('latin-1')}' is not supported")
                return
            limit = self.server.max_message_bytes
            inflater = zlib.decompressobj(wbits)
            try:
                message = inflater.decompress(message, limit + 1)
            except zlib.error as exc:
                self.send_status(stream_id, STATUS_CODES["INTERNAL"], f"Failed to decompress the message: {exc}")
                return
            if len(message) > limit:
                self.send_status(stream_id, STATUS_CODES["RESOURCE_EXHAUSTED"],
                                 f"Received message larger than max ({len(message)}+ vs. {limit})")
                return
        timeout = headers.get(b"grpc-timeout")
        seconds = _timeout_of(timeout) if timeout is not None else None
        deadline = None if seconds is None else time.monotonic() + seconds
        path = headers.get(b":path", b"").decode("latin-1")
        call = Call(self, stream_id, path, headers, message, deadline)
        self.server.handle(call)

    # ----------------------------------------------------------------- writing

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _headers_frames(self, stream_id: int, block: bytes, end_stream: bool) -> bytes:
        flags = FLAG_END_STREAM if end_stream else 0
        limit = self.peer_max_frame
        if len(block) <= limit:
            return frame(HEADERS, flags | FLAG_END_HEADERS, stream_id, block)
        parts = [block[k:k + limit] for k in range(0, len(block), limit)]
        out = [frame(HEADERS, flags, stream_id, parts[0])]
        out += [frame(CONTINUATION, 0, stream_id, p) for p in parts[1:-1]]
        out.append(frame(CONTINUATION, FLAG_END_HEADERS, stream_id, parts[-1]))
        return b"".join(out)

    def send_status(self, stream_id: int, code: int, message: str) -> None:
        """A trailers-only answer: the call failed before any message."""
        stream = self.streams.pop(stream_id, None)
        if stream is None or self.closed:
            return
        block = _RESPONSE_HEAD + status_block(code, message)
        out = self._headers_frames(stream_id, block, True)
        if not stream.ended:
            out += frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR))  # the client may still be sending
        self._write(out)
        self.server.stream_done()

    def send_message(self, stream_id: int, message: bytes) -> None:
        """The response message and OK trailers, as far as flow control lets them go now."""
        stream = self.streams.get(stream_id)
        if stream is None or self.closed:
            return
        size = len(message) + 5
        if size <= self.send_window and size <= stream.send_window and size <= self.peer_max_frame and not self.pending:
            self.send_window -= size
            del self.streams[stream_id]
            pack = _FRAME_HEAD.pack
            self._write(b"".join((
                pack(len(_RESPONSE_HEAD) << 8 | HEADERS, FLAG_END_HEADERS, stream_id), _RESPONSE_HEAD,
                pack(size << 8 | DATA, 0, stream_id), b"\x00", len(message).to_bytes(4, "big"), message,
                pack(len(_TRAILERS_OK) << 8 | HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, stream_id), _TRAILERS_OK)))
            self.server.stream_done()
            return
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        trailers = self._headers_frames(stream_id, _TRAILERS_OK, True)
        self._write(self._headers_frames(stream_id, _RESPONSE_HEAD, False))
        self.pending.append([stream_id, memoryview(body), trailers])
        self._flush_pending()

    def _flush_pending(self) -> None:
        while self.pending and self.send_window > 0:
            entry = self.pending[0]
            stream_id, rest, trailers = entry
            stream = self.streams.get(stream_id)
            if stream is None:  # reset by the client meanwhile
                self.pending.popleft()
                continue
            out = []
            while rest and self.send_window > 0 and stream.send_window > 0:
                n = min(len(rest), self.send_window, stream.send_window, self.peer_max_frame)
                out.append(frame(DATA, 0, stream_id, bytes(rest[:n])))
                rest = rest[n:]
                self.send_window -= n
                stream.send_window -= n
            entry[1] = rest
            if rest:
                if out:
                    self._write(b"".join(out))
                if stream.send_window <= 0:  # this stream waits; let the others use the connection window
                    self.pending.rotate(-1)
                    if all(self.streams.get(e[0]) is not None and self.streams[e[0]].send_window <= 0
                           for e in self.pending):
                        return
                    continue
                return
            self.pending.popleft()
            del self.streams[stream_id]
            out.append(trailers)
            self._write(b"".join(out))
            self.server.stream_done()

    def _goaway(self, code: int, message: str) -> None:
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code) + message.encode()[:256]))
        self.close()

    def goaway(self) -> None:
        """Graceful shutdown: no new streams; the ones in flight finish."""
        self.going_away = True
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, NO_ERROR)))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class Http2Server:
    """The listening sockets and their connections; `handle` receives every complete call."""

    def __init__(self, handle: Handler, max_message_bytes: int) -> None:
        self.handle = handle
        self.max_message_bytes = max_message_bytes
        self.connections: set[GrpcConnection] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.stopping = False
        self._idle: asyncio.Event | None = None

    async def listen_tcp(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: GrpcConnection(self), host, port)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def listen_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.servers.append(await loop.create_unix_server(lambda: GrpcConnection(self), path))

    def stream_done(self) -> None:
        if self._idle is not None and self._in_flight() == 0:
            self._idle.set()

    def connection_closed(self) -> None:
        self.stream_done()

    def _in_flight(self) -> int:
        return sum(len(conn.streams) for conn in self.connections if not conn.closed)

    async def stop(self, grace: float | None = None) -> None:
        """Stops listening, lets calls in flight finish for up to `grace` seconds, then closes every connection."""
        self.stopping = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.goaway()
        if grace and self._in_flight():
            self._idle = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for conn in list(self.connections):
            conn.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
