"""The rollout's own load: golden rows to a loopback URL, at its rate, only while its block runs."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from aviary.golden_load import GoldenLoad
from tests.helpers import json_server, wait_for

ROWS = [{"x": float(i), "y": 0.0} for i in range(10)]


def test_it_only_calls_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="golden load: http://10.0.0.7:8501/v1/models/m:predict is not a loopback"):
        GoldenLoad("http://10.0.0.7:8501/v1/models/m:predict", ROWS, 20)
    GoldenLoad("http://localhost:1/v1/models/m:predict", ROWS, 20)
    GoldenLoad("http://127.0.0.1:1/v1/models/m:predict", ROWS, 20)


def test_it_cycles_the_golden_rows_at_its_rate_and_stops_with_its_block() -> None:
    seen: list[list[dict[str, float]]] = []
    lock = threading.Lock()

    def answer(body: Any, _headers: dict[str, str]) -> tuple[int, Any]:
        with lock:
            seen.append(body["instances"])
        return 200, {"predictions": []}

    server = json_server(answer)
    try:
        load = GoldenLoad(f"http://127.0.0.1:{server.server_port}/v1/models/m:predict", ROWS, rate=50)
        with load.running(max_seconds=30):
            wait_for("25 requests", lambda: len(seen) >= 25 or None, timeout_s=10, every_s=0.02)
            started, first = time.monotonic(), len(seen)
            wait_for("25 more", lambda: len(seen) >= first + 25 or None, timeout_s=10, every_s=0.02)
            elapsed = time.monotonic() - started
        stopped_at = len(load.codes)
        assert elapsed > 0.3, f"25 requests in {elapsed:.2f} s at 50/s: a burst, not a paced load"
        assert seen[0] == ROWS[:4] and seen[1] == ROWS[4:8] and seen[2] == [*ROWS[8:], *ROWS[:2]]
        assert set(load.codes) == {200}
        time.sleep(0.2)  # nothing may arrive once the block has ended
        assert len(load.codes) == stopped_at
    finally:
        server.shutdown()


def test_its_own_deadline_ends_it_even_inside_the_block() -> None:
    server = json_server(lambda _b, _h: (200, {}))
    try:
        load = GoldenLoad(f"http://127.0.0.1:{server.server_port}/v1/models/m:predict", ROWS, rate=100)
        before = set(threading.enumerate())
        with load.running(max_seconds=0.2):
            (sender,) = [t for t in threading.enumerate() if t not in before and t.name == "golden-load"]
            # It ends by its own deadline, inside the block (a request in flight then still counts).
            wait_for("the load's own deadline", lambda: not sender.is_alive() or None, timeout_s=10, every_s=0.02)
            count = len(load.codes)
            time.sleep(0.2)
            assert len(load.codes) == count and 0 < count < 40
    finally:
        server.shutdown()


def test_through_an_endpoint_it_calls_with_the_endpoints_credentials() -> None:
    """On Kubernetes the load goes where the target's endpoint says (the API server's proxy), with its headers."""
    from aviary.targets.base import Endpoint

    GoldenLoad.through(Endpoint(url="https://10.0.0.7:6443/api/v1/x/proxy/v1/models/m"), ROWS, 20)  # not refused
    tokens: list[str] = []

    def answer(_body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        tokens.append(headers.get("Authorization", ""))
        return 200, {}

    server = json_server(answer)
    try:
        endpoint = Endpoint(url=f"http://127.0.0.1:{server.server_port}/v1/models/m", headers={"Authorization": "Bearer t"})
        load = GoldenLoad.through(endpoint, ROWS, rate=50)
        assert load.url.endswith("/v1/models/m:predict")
        with load.running(max_seconds=5):
            wait_for("3 requests", lambda: len(tokens) >= 3 or None, timeout_s=5, every_s=0.02)
        assert set(tokens) == {"Bearer t"} and set(load.codes) == {200}
    finally:
        server.shutdown()
