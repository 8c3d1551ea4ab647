"""HTTP framing and config files: request smuggling refused, config typos refused like TF Serving."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from conftest import Running

from aviary.serving.batching import BatchingOptions
from aviary.serving.http1 import HttpError, RequestReader
from aviary.serving.server import main

BODY = b'{"instances": [1.0]}'


def exchange(server: Running, payload: bytes) -> bytes:
    """Sends payload, reads until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.server.rest_port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


@pytest.mark.parametrize("headers", [
    b"Content-Length: 20\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 20\r\n",
    b"Content-Length: 20\r\nContent-Length: 20\r\n",
    b"Content-Length: 20\r\nContent-Length: 5\r\n",
    b"Content-Length: +20\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Content-Length: 20\r\n Content-Length: 5\r\n",
])
def test_ambiguous_framing_is_400_and_connection_closed(server: Running, headers: bytes) -> None:
    smuggled = b"GET /v1/models/hpt HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = exchange(server, b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
                     + BODY + smuggled)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert reply.count(b"HTTP/1.1") == 1  # the smuggled request never ran
    assert b"Connection: close" in reply


def test_chunk_without_crlf_is_400(server: Running) -> None:
    reply = exchange(server, b"POST /v1/models/hpt:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4\r\nabcdXX0\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 400 ", reply), reply[:200]


def test_reader_frames_pipelined_chunked_and_length_requests_fed_bytewise() -> None:
    reader = RequestReader(1000)
    stream = (b"POST /a?q=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"
              b"POST /b HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nxy")
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i:i + 1])
        while (request := reader.next_request()) is not None:
            got.append(request)
    assert [(r.path, r.body, r.keep_alive) for r in got] == [("/a", b"abcde", True), ("/b", b"xy", False)]


def test_reader_limits_chunked_bodies() -> None:
    reader = RequestReader(4)
    reader.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n")
    with pytest.raises(HttpError) as err:
        reader.next_request()
    assert err.value.status == 413


def test_misspelled_monitoring_field_fails_startup_naming_file_and_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true pth: "/metrics" }\n')
    code = main([f"--model_base_path={tmp_path}", f"--monitoring_config_file={monitoring}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert str(monitoring) in err[0] and 'no field named "pth"' in err[0]


def test_misspelled_batching_field_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"params\.txt.*no field named \"max_batch_sise\""):
        BatchingOptions.from_text("max_batch_sise { value: 8 }", "params.txt")
    options = BatchingOptions.from_text(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 100 } allowed_batch_sizes: 4 "
        "allowed_batch_sizes: 8 enable_large_batch_splitting { value: true }", "params.txt")
    assert (options.max_batch_size, options.batch_timeout_micros, options.allowed_batch_sizes,
            options.enable_large_batch_splitting) == (8, 100, (4, 8), True)
    params = tmp_path / "batching.config"
    params.write_text("num_batch_thread { value: 2 }\n")
    code = main([f"--model_base_path={tmp_path}", "--enable_batching", f"--batching_parameters_file={params}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and str(params) in err and "num_batch_thread" in err
