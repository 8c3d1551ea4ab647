"""HTTP/1.1 request framing for the REST server: bytes in, complete requests out (no I/O here).

Written for this server rather than taken from h11: requests are read incrementally (a large body or
a chunked upload costs one pass, not one re-scan per packet), and a pipelined keep-alive request
costs a few string operations, which matters on the predict hot path. Framing that two parsers
could read differently is refused with 400 (request smuggling): Content-Length together with
Transfer-Encoding, a repeated Content-Length, a non-digit length, an unknown transfer coding,
folded or malformed header lines and malformed chunks.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

MAX_HEADER_BYTES = 64 * 1024
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class HttpError(Exception):
    """A request that cannot be framed; the connection answers `status` and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str  # the target without its query string
    headers: dict[str, str]  # lower-cased names
    parts: list[bytes]  # the body as it arrived; body() joins (and inflates) it
    size: int  # bytes on the wire
    keep_alive: bool
    max_body: int

    @property
    def gzip(self) -> bool:
        return self.size > 0 and self.headers.get("content-encoding", "").lower() == "gzip"

    def body(self) -> bytes:
        """The body, inflated if it was sent gzip-encoded (HttpError 400/413 if that fails)."""
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        return gunzip(body, self.max_body) if self.gzip else body


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    length: int  # -1: chunked


class RequestReader:
    """Frames requests from a byte stream: feed() what arrives, then next_request() until it returns None."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body = max_body_bytes
        self.buf = bytearray()
        self._head: _Head | None = None
        self._parts: list[bytes] = []  # a Content-Length body is kept as received, copied once at the end
        self._want = 0
        self._chunks: list[bytes] = []
        self._chunked_total = 0
        self._chunk_left = -1  # bytes of the current chunk still to come (+2 for its CRLF); -1: at a size line
        self._in_trailers = False
        self.continue_due = False  # the client sent Expect: 100-continue and waits for it

    def feed(self, data: bytes) -> None:
        if self._want > 0:
            take = data if len(data) <= self._want else data[:self._want]
            self._parts.append(take)
            self._want -= len(take)
            if len(take) < len(data):
                self.buf += data[len(take):]
        else:
            self.buf += data

    @property
    def reading_head(self) -> bool:
        """True while the current request's header block is incomplete (bytes may or may not have come)."""
        return self._head is None

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive; HttpError if it is malformed."""
        if self._head is None:
            end = self.buf.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
            if end < 0:
                if len(self.buf) > MAX_HEADER_BYTES:
                    raise HttpError(431, "Request header fields too large")
                return None
            self._head = head = _parse_head(bytes(self.buf[:end]), self.max_body)
            del self.buf[:end + 4]
            self.continue_due = head.headers.get("expect", "").lower() == "100-continue"
            if head.length > 0:
                now = min(len(self.buf), head.length)
                self._parts = [bytes(self.buf[:now])]
                del self.buf[:now]
                self._want = head.length - now
        head = self._head
        if head.length >= 0:
            if self._want > 0:
                return None
            parts, self._parts = self._parts, []
        else:
            chunked = self._read_chunked()
            if chunked is None:
                return None
            parts = [chunked]
        self._head = None
        self.continue_due = False
        return Request(head.method, head.target.split("?", 1)[0], head.headers, parts,
                       sum(len(p) for p in parts), _keep_alive(head), self.max_body)

    def _read_chunked(self) -> bytes | None:
        buf = self.buf
        while True:
            if self._in_trailers:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        raise HttpError(431, "Request trailer fields too large")
                    return None
                del buf[:eol + 2]
                if eol == 0:
                    body = b"".join(self._chunks)
                    self._chunks, self._chunked_total, self._in_trailers = [], 0, False
                    return body
                continue
            if self._chunk_left < 0:
                eol = buf.find(b"\r\n", 0, 1026)
                if eol < 0:
                    if len(buf) > 1024:
                        raise HttpError(400, "Invalid chunk size")
                    return None
                size_text = bytes(buf[:eol]).split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size_text):
                    raise HttpError(400, "Invalid chunk size")
                size = int(size_text, 16)
                del buf[:eol + 2]
                if size == 0:
                    self._in_trailers = True
                    continue
                self._chunked_total += size
                if self._chunked_total > self.max_body:
                    raise HttpError(413, f"Request body exceeds the limit of {self.max_body} bytes")
                self._chunk_left = size
            if len(buf) < self._chunk_left + 2:
                return None
            if buf[self._chunk_left:self._chunk_left + 2] != b"\r\n":
                raise HttpError(400, "Invalid chunk: data not followed by CRLF")
            self._chunks.append(bytes(buf[:self._chunk_left]))
            del buf[:self._chunk_left + 2]
            self._chunk_left = -1


def _keep_alive(head: _Head) -> bool:
    connection = head.headers.get("connection", "").lower()
    if "close" in connection:
        return False
    return head.version == "HTTP/1.1" or "keep-alive" in connection


def _parse_head(raw: bytes, max_body: int) -> _Head:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/"):
        raise HttpError(400, "Bad request line")
    headers: dict[str, str] = {}
    lengths: list[str] = []
    encodings: list[str] = []
    for line in lines[1:]:
        if "\n" in line or "\r" in line or line[:1] in (" ", "\t"):
            raise HttpError(400, "Bad header line")  # bare CR/LF or obsolete line folding
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, "Bad header line")
        key = name.lower()
        value = value.strip(" \t")
        if key == "content-length":
            lengths.append(value)
        elif key == "transfer-encoding":
            encodings.append(value)
        headers[key] = value
    if lengths and encodings:
        raise HttpError(400, "Request has both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise HttpError(400, "Request has more than one Content-Length")
    if encodings:
        if len(encodings) > 1 or encodings[0].lower() != "chunked" or parts[2] != "HTTP/1.1":
            raise HttpError(400, f"Unsupported Transfer-Encoding: {', '.join(encodings)}")
        length = -1
    elif lengths:
        if not _DIGITS.fullmatch(lengths[0]):
            raise HttpError(400, "Invalid Content-Length")
        length = int(lengths[0])
        if length > max_body:
            raise HttpError(413, f"Request body of {length} bytes exceeds the limit of {max_body} bytes")
    else:
        length = 0
    return _Head(parts[0], parts[1], parts[2], headers, length)


def gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise HttpError(400, "Failed to decompress gzip request body") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise HttpError(413, f"Decompressed request body exceeds the limit of {limit} bytes")
    return out
