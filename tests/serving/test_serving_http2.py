"""The gRPC server's HTTP/2 layer against grpcio clients: framing, flow control, compression, limits, shutdown."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import grpc
import pytest
from conftest import Running
from hpack import Decoder, Encoder

from aviary.serving.http2 import PREFACE, Call, HpackDecoder, Http2Server, frame, parse_timeout


class LoopServer:
    """An Http2Server on its own event loop thread, with a handler the test chooses."""

    def __init__(self, handle: Callable[[Call], None], max_message_bytes: int = 4 << 20) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = Http2Server(handle, max_message_bytes)
        self.port = self.run(self.server.listen_tcp("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def echo(call: Call) -> None:
    """Answers the request bytes; `fail:<message>` fails the call; `big:<n>` answers n bytes."""
    body = call.body
    if body.startswith(b"fail:"):
        call.fail(9, body[5:].decode())
    elif body.startswith(b"big:"):
        call.reply(b"z" * int(body[4:]))
    elif body.startswith(b"later:"):  # answered from a timer, as the dispatcher does
        asyncio.get_running_loop().call_later(float(body[6:]), call.reply, b"late")
    else:
        call.reply(body)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[LoopServer]:
    server = LoopServer(echo)
    yield server
    server.close()


def method(channel: grpc.Channel) -> Any:
    return channel.unary_unary("/test.Echo/Call")


def test_round_trips_many_concurrent_calls_on_one_channel(echo_server: LoopServer) -> None:
    with grpc.insecure_channel(echo_server.target) as channel:
        call = method(channel)
        futures = [call.future(b"msg-%d" % i, timeout=10) for i in range(200)]
        assert [f.result() for f in futures] == [b"msg-%d" % i for i in range(200)]
        assert call(b"", timeout=10) == b""


def test_large_messages_both_ways_with_compression(echo_server: LoopServer) -> None:
    """3 MiB each way: more than the client's first flow-control window, in many DATA frames."""
    payload = bytes(range(256)) * (3 * 4096)
    with grpc.insecure_channel(echo_server.target) as channel:
        assert method(channel)(payload, timeout=30) == payload
        assert method(channel)(payload, timeout=30, compression=grpc.Compression.Gzip) == payload
        assert len(method(channel)(b"big:%d" % (3 << 20), timeout=30)) == 3 << 20
        # several at once share the connection's window: each waits its turn and all complete
        futures = [method(channel).future(b"big:%d" % (3 << 20), timeout=30) for _ in range(4)]
        assert all(len(f.result()) == 3 << 20 for f in futures)


def test_status_and_message_reach_the_client(echo_server: LoopServer) -> None:
    message = "no such version: ünïcode, 100% sure\n(two lines)"
    with grpc.insecure_channel(echo_server.target) as channel, pytest.raises(grpc.RpcError) as info:
        method(channel)(b"fail:" + message.encode(), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == message


def test_oversized_request_is_resource_exhausted_and_connection_goes_on() -> None:
    server = LoopServer(echo, max_message_bytes=1000)
    try:
        with grpc.insecure_channel(server.target) as channel:
            with pytest.raises(grpc.RpcError) as info:
                method(channel)(b"x" * 200_000, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max (200000 vs. 1000)" in (info.value.details() or "")
            assert method(channel)(b"fine", timeout=10) == b"fine"
    finally:
        server.close()


def test_client_deadline_and_cancel_leave_the_server_serving(echo_server: LoopServer) -> None:
    with grpc.insecure_channel(echo_server.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            method(channel)(b"later:0.5", timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        pending = method(channel).future(b"later:0.3", timeout=10)
        pending.cancel()
        assert method(channel)(b"after", timeout=10) == b"after"


def test_not_http2_is_dropped_and_server_goes_on(echo_server: LoopServer) -> None:
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data[3:4] == b"\x04"  # our SETTINGS came first; then GOAWAY and the close
    assert b"\x07" in data[9:]
    with grpc.insecure_channel(echo_server.target) as channel:
        assert method(channel)(b"still", timeout=10) == b"still"


def read_frames(sock: socket.socket, until_stream_end: int) -> list[tuple[int, int, int, bytes]]:
    frames, data = [], b""
    while True:
        while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
            length = int.from_bytes(data[:3], "big")
            kind, flags, sid = data[3], data[4], int.from_bytes(data[5:9], "big")
            frames.append((kind, flags, sid, data[9:9 + length]))
            data = data[9 + length:]
            if kind == 1 and flags & 1 and sid == until_stream_end:
                return frames
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; frames so far: {frames}"
        data += chunk


def test_continuation_padding_and_pings_from_another_encoder(echo_server: LoopServer) -> None:
    """A header block split over CONTINUATION, a padded DATA frame and a PING, as other HTTP/2 stacks send."""
    block = Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", "/test.Echo/Call"),
                              (":authority", "x"), ("content-type", "application/grpc+proto"), ("te", "trailers"),
                              ("grpc-timeout", "10S"), ("x-pad", "p" * 300)])
    message = b"hello over raw frames"
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=10) as sock:
        sock.sendall(PREFACE + frame(4, 0, 0) + frame(6, 0, 0, b"12345678")
                     + frame(1, 0, 1, block[:100]) + frame(9, 4, 1, block[100:])
                     + frame(0, 0x8 | 0x1, 1, b"\x03" + body + b"\x00\x00\x00"))
        frames = read_frames(sock, 1)
    decoder = Decoder()
    assert (6, 1, 0, b"12345678") in frames  # the PING came back acknowledged
    assert any(kind == 4 and flags == 1 for kind, flags, _, _ in frames)  # our SETTINGS ACK
    headers = [dict(decoder.decode(p)) for kind, _, sid, p in frames if kind == 1 and sid == 1]
    assert headers[0][":status"] == "200" and headers[0]["content-type"] == "application/grpc"
    assert headers[-1]["grpc-status"] == "0"
    assert b"".join(p for kind, _, sid, p in frames if kind == 0 and sid == 1) == body


def test_stop_lets_calls_in_flight_finish() -> None:
    server = LoopServer(echo)
    try:
        with grpc.insecure_channel(server.target) as channel:
            assert method(channel)(b"warm", timeout=10) == b"warm"
            pending: Future[bytes] = method(channel).future(b"later:0.3", timeout=10)
            server.run(asyncio.sleep(0.05))
            server.run(server.server.stop(5))
            assert pending.result() == b"late"
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)
        server.thread.join(10)


def test_hpack_decoder_follows_the_encoders_table() -> None:
    encoder, decoder = Encoder(), HpackDecoder()
    for i in range(300):
        headers = [(":method", "POST"), (":path", f"/svc/M{i % 7}"), ("content-type", "application/grpc"),
                   ("grpc-timeout", f"{i}m"), (f"x-custom-{i % 50}", "v" * (i % 90))]
        block = encoder.encode(headers, huffman=bool(i % 2))
        assert decoder.decode(block) == [(k.encode(), v.encode()) for k, v in headers]
    encoder.header_table_size = 256  # emits a table size update
    block = encoder.encode([("a", "b")])
    assert decoder.decode(block) == [(b"a", b"b")]


def test_grpc_timeout_units() -> None:
    assert parse_timeout(b"5S") == 5.0
    assert parse_timeout(b"250m") == 0.25
    assert parse_timeout(b"2H") == 7200.0
    assert parse_timeout(b"123456789S") is None
    assert parse_timeout(b"5x") is None


def test_unknown_method_is_unimplemented(server: Running) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/tensorflow.serving.PredictionService/Nope")(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/tensorflow.serving.PredictionService/Predict")(b"\xff\xff", timeout=10)
        assert info.value.code() == grpc.StatusCode.INTERNAL
