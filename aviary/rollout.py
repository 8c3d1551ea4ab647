"""The rollout as an explicit state machine: named phases, one pure transition function, one rollback path.

`advance` holds every transition. `run_rollout` performs the side effect of the current phase
through the target and feeds the outcome back as an event; a failure anywhere leads to RollingBack.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from aviary.targets.base import Endpoint, Target, TargetError


class Phase(StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    CHECKING = "Checking"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class Event(StrEnum):
    START = "start"
    READY = "ready"
    CHECK_PASSED = "check-passed"
    CHECK_FAILED = "check-failed"
    PROMOTED = "promoted"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.PENDING, Event.START): Phase.DEPLOYING,
    (Phase.DEPLOYING, Event.READY): Phase.CHECKING,
    (Phase.DEPLOYING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.CHECKING, Event.CHECK_PASSED): Phase.PROMOTING,
    (Phase.CHECKING, Event.CHECK_FAILED): Phase.ROLLING_BACK,
    (Phase.CHECKING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.PROMOTING, Event.PROMOTED): Phase.PROMOTED,
    (Phase.PROMOTING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.ROLLING_BACK, Event.ROLLED_BACK): Phase.ROLLED_BACK,
    (Phase.ROLLING_BACK, Event.FAILED): Phase.FAILED,
}
TERMINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED})


class InvalidTransition(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    phase: Phase
    event: Event | None
    reason: str
    at: float


@dataclass(frozen=True)
class Rollout:
    """One canary rollout of `version` beside `stable`: its phase now and every step that led there."""

    model: str
    version: int
    stable: int | None
    phase: Phase = Phase.PENDING
    reason: str = ""
    history: tuple[Step, ...] = field(default=())

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    @property
    def failure(self) -> str:
        """Why the rollout went to RollingBack, if it did."""
        for step in self.history:
            if step.phase is Phase.ROLLING_BACK:
                return step.reason
        return ""


def advance(state: Rollout, event: Event, reason: str = "", at: float | None = None) -> Rollout:
    """The one place where phases change."""
    target = TRANSITIONS.get((state.phase, event))
    if target is None:
        raise InvalidTransition(f"no transition from {state.phase} on {event}")
    step = Step(phase=target, event=event, reason=reason, at=time.time() if at is None else at)
    return replace(state, phase=target, reason=reason, history=(*state.history, step))


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    summary: str


Check = Callable[[Endpoint], CheckOutcome]
Observer = Callable[[Rollout], None]


def _act(state: Rollout, target: Target, check: Check, ready_timeout_s: float) -> tuple[Event, str]:
    """Perform the current phase's side effect; return the event it produced."""
    model, version = state.model, state.version
    try:
        match state.phase:
            case Phase.PENDING:
                beside = f"beside stable v{state.stable}" if state.stable is not None else "with no stable version"
                return Event.START, f"{target.name}: canary v{version} {beside}"
            case Phase.DEPLOYING:
                target.deploy_canary(model, version, state.stable)
                target.wait_ready(model, version, ready_timeout_s)
                return Event.READY, f"v{version} is available"
            case Phase.CHECKING:
                outcome = check(target.endpoint(model, "canary"))
                return (Event.CHECK_PASSED if outcome.passed else Event.CHECK_FAILED), outcome.summary
            case Phase.PROMOTING:
                target.promote(model, version)
                return Event.PROMOTED, f"v{version} is stable"
            case Phase.ROLLING_BACK:
                target.roll_back(model, state.stable)
                left = f"stable v{state.stable} serving" if state.stable is not None else "nothing else was serving"
                return Event.ROLLED_BACK, f"canary v{version} removed; {left}"
    except Exception as error:  # noqa: BLE001 - whatever breaks, the rollback path must run
        detail = str(error) if isinstance(error, TargetError) else f"{type(error).__name__}: {error}"
        return Event.FAILED, detail
    raise InvalidTransition(f"nothing to do in {state.phase}")


def run_rollout(
    target: Target,
    model: str,
    version: int,
    stable: int | None,
    check: Check,
    ready_timeout_s: float,
    observe: Observer | None = None,
) -> Rollout:
    state = Rollout(model=model, version=version, stable=stable)
    while not state.done:
        event, reason = _act(state, target, check, ready_timeout_s)
        state = advance(state, event, reason)
        if observe is not None:
            observe(state)
    return state
