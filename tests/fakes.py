"""A fake target that records what was asked of it, for driving the rollout machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aviary.targets.base import Endpoint, NotReady, Serving, TargetError, Track
from tests.fake_traffic import FakeTraffic


@dataclass
class FakeTarget:
    name: str = "fake"
    fail_on: dict[str, Exception] = field(default_factory=dict)
    stable: int | None = None
    canary: int | None = None
    calls: list[str] = field(default_factory=list)
    traffic_split: bool = True
    traffic: FakeTraffic | None = None
    traffic_calls: list[tuple[int, int]] = field(default_factory=list)

    def _maybe_fail(self, op: str) -> None:
        self.calls.append(op)
        if op in self.fail_on:
            raise self.fail_on[op]

    def publish(self, model: str, version: int, path: Path) -> None:
        self._maybe_fail("publish")

    def deploy_canary(self, model: str, version: int, stable: int | None) -> None:
        self._maybe_fail("deploy_canary")
        self.canary = version

    def wait_ready(self, model: str, version: int, timeout_s: float) -> None:
        self._maybe_fail("wait_ready")

    def endpoint(self, model: str, track: Track) -> Endpoint:
        return Endpoint(url=f"fake://{model}/{track}")

    def promote(self, model: str, version: int) -> None:
        self._maybe_fail("promote")
        self.stable, self.canary = version, None

    def roll_back(self, model: str, stable: int | None) -> None:
        self._maybe_fail("roll_back")
        self.stable, self.canary = stable, None

    def serving(self, model: str) -> Serving:
        return Serving(stable=self.stable, canary=self.canary)

    def set_traffic(self, model: str, canary_percent: int, mirror_percent: int) -> None:
        self._maybe_fail("set_traffic")
        self.traffic_calls.append((canary_percent, mirror_percent))

    def keep_traffic(self, model: str) -> None:
        self._maybe_fail("keep_traffic")

    def scrape(self, model: str) -> dict[str, str]:
        """One server's metrics page, after the scripted clients' requests at the current split."""
        self._maybe_fail("scrape")
        share = self.traffic_calls[-1] if self.traffic_calls else (0, 0)
        return {"server": self.traffic.scrape(*share)} if self.traffic is not None else {}


__all__ = ["FakeTarget", "NotReady", "TargetError"]
