"""The narrow interface every rollout target implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Track = Literal["stable", "canary"]


class TargetError(RuntimeError):
    """A target refused or failed an operation; the message says which and why."""


class NotReady(TargetError):
    """A version did not become available before its deadline, or failed to load."""


@dataclass(frozen=True)
class Endpoint:
    """A track's TF Serving REST prefix, e.g. http://127.0.0.1:8501/v1/models/circle/labels/canary.

    Append ``:predict`` or ``/metadata``. Headers, TLS verification and client certificate
    are what the transport needs (the Kubernetes API server's service proxy wants credentials).
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool | str = True
    cert: tuple[str, str] | None = None


@dataclass(frozen=True)
class Serving:
    """What a target serves for one model now."""

    stable: int | None
    canary: int | None


class Target(Protocol):
    name: str
    traffic_split: bool
    """Whether `set_traffic` can give the canary a share of live traffic; without it a canary gets no steps."""

    def publish(self, model: str, version: int, path: Path) -> None:
        """Make an exported version's files reachable by the servers; changes nothing that serves."""

    def deploy_canary(self, model: str, version: int, stable: int | None) -> None:
        """Start serving `version` as the canary beside `stable`; returns without waiting."""

    def wait_ready(self, model: str, version: int, timeout_s: float) -> None:
        """Return once the canary answers; raise NotReady when the deadline passes or it fails to load."""

    def endpoint(self, model: str, track: Track) -> Endpoint:
        """Where one track can be reached from where the flow runs."""

    def promote(self, model: str, version: int) -> None:
        """Make `version` the stable one and retire the canary."""

    def roll_back(self, model: str, stable: int | None) -> None:
        """Remove the canary, leaving `stable` serving as it was and nothing else behind."""

    def serving(self, model: str) -> Serving:
        """Which versions the target serves now."""

    # -- progressive delivery: live traffic steps and their metrics ------------
    def set_traffic(self, model: str, canary_percent: int, mirror_percent: int) -> int | None:
        """Requests that name no version or label: stable answers them except `canary_percent` % that the
        canary answers; `mirror_percent` % are also sent to the canary in the shadow, its answers compared
        with stable's and never returned. (0, 0): stable answers all, even while a canary is loaded.
        Returns the share the canary actually takes where it differs (replica steps), else None.
        A target that cannot compare mirrored answers says why in a `shadow_unavailable` attribute."""

    def keep_traffic(self, model: str) -> None:
        """Called at every scrape of a step: hold the share `set_traffic` gave against what changed
        since (a canary pod replaced mid-step), without waiting."""

    def scrape(self, model: str) -> dict[str, str]:
        """The Prometheus metrics page of every server that serves `model`, as text, by a name of the
        server (its instance) that stays the same while it lives: a window sums each one's increase."""
