"""The rollout's own load while a step bakes (as Flagger's loadtester): golden-set rows to the default URL.

Without clients a canary's step sees no requests, is inconclusive until its deadline and is rolled back,
so a freshly trained model on an idle local server could never be promoted. The load calls the URL
clients use (no version, no label), so the traffic split decides who answers it, exactly as for clients.
Locally it only ever calls a loopback address; on Kubernetes it calls the model's Service through the
target's transport (`GoldenLoad.through`: the API server's service proxy with the flow's credentials,
or in-cluster DNS). It stops when the bake ends or at its own deadline.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlparse

import requests

from aviary.targets.base import Endpoint

ROWS_PER_REQUEST = 4
"""Golden rows per request: more rows for the shadow comparison at the same request rate."""


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class GoldenLoad:
    """`rate` requests/s to `url` (a `:predict` URL), cycling through `rows`."""

    url: str
    rows: Sequence[dict[str, float | str]]
    rate: float
    rows_per_request: int = ROWS_PER_REQUEST
    codes: list[int] = field(default_factory=list)
    endpoint: Endpoint | None = None
    """The transport (headers, TLS) of a target's endpoint; without one only loopback URLs are called."""

    @classmethod
    def through(cls, endpoint: Endpoint, rows: Sequence[dict[str, float | str]], rate: float) -> GoldenLoad:
        """Load on `endpoint` (a model's REST prefix, e.g. a Service through the API server's proxy)."""
        return cls(f"{endpoint.url}:predict", rows, rate, endpoint=endpoint)

    def __post_init__(self) -> None:
        if self.endpoint is None and not is_loopback(self.url):
            raise ValueError(f"golden load: {self.url} is not a loopback address; it only calls 127.0.0.1")
        if not self.rows:
            raise ValueError("golden load: no golden rows to send")

    def _batch(self, i: int) -> list[dict[str, float | str]]:
        n = len(self.rows)
        return [dict(self.rows[(i * self.rows_per_request + k) % n]) for k in range(self.rows_per_request)]

    def _post(self, session: requests.Session, body: dict[str, object]) -> int:
        if self.endpoint is None:
            return session.post(self.url, json=body, timeout=5).status_code
        # The transport per request: a session's own `verify` would lose to $REQUESTS_CA_BUNDLE.
        return session.post(self.url, json=body, timeout=5, headers=dict(self.endpoint.headers),
                            verify=self.endpoint.verify, cert=self.endpoint.cert).status_code

    def _send(self, stop: threading.Event, deadline: float) -> None:
        interval = 1.0 / self.rate
        with requests.Session() as session:
            due, i = time.monotonic(), 0
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    code = self._post(session, {"instances": self._batch(i)})
                except requests.RequestException:
                    code = 0
                self.codes.append(code)
                i += 1
                # Steady pacing; a slow answer delays the next request, never causes a burst to catch up.
                due = max(due + interval, time.monotonic() - interval)
                if stop.wait(max(0.0, due - time.monotonic())):
                    return

    @contextmanager
    def running(self, max_seconds: float) -> Iterator[GoldenLoad]:
        """Sends while the block runs, and never longer than `max_seconds`."""
        if self.rate <= 0:
            yield self
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._send, args=(stop, time.monotonic() + max_seconds),
                                  name="golden-load", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=10)
