"""The rollout as an explicit state machine: named phases, one pure transition function, one rollback path.

`advance` holds every transition. `run_rollout` performs the side effect of the current phase
through the target and feeds the outcome back as an event; a failure anywhere leads to RollingBack.

After the golden-set check, a canary earns its promotion on live traffic, step by step:
Shifting (the canary's share of unversioned requests, and the mirrored share) -> Baking (live
traffic over a window) -> Analysing (canary vs stable, shadow agreement) -> the next step. A failed
or inconclusive analysis bakes the same step again until the failed-checks threshold rolls it back.
After the last step an optional approval decides, then Promoting.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aviary.analysis import (
    Limits,
    Scrape,
    Snapshot,
    StepAnalysis,
    Verdict,
    analyse_window,
    increase,
    parse_scrape,
)
from aviary.config import CanaryConfig
from aviary.targets.base import Endpoint, Target, TargetError


class Phase(StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    CHECKING = "Checking"
    SHIFTING = "Shifting"
    BAKING = "Baking"
    ANALYSING = "Analysing"
    AWAITING_APPROVAL = "AwaitingApproval"
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
    SHIFTED = "shifted"
    BAKED = "baked"
    STEP_PASSED = "step-passed"
    ANALYSIS_FAILED = "analysis-failed"
    CHECKS_EXHAUSTED = "checks-exhausted"
    STEPS_DONE = "steps-done"
    APPROVAL_NEEDED = "approval-needed"
    APPROVED = "approved"
    REJECTED = "rejected"
    PROMOTED = "promoted"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.PENDING, Event.START): Phase.DEPLOYING,
    (Phase.DEPLOYING, Event.READY): Phase.CHECKING,
    (Phase.DEPLOYING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.CHECKING, Event.CHECK_PASSED): Phase.SHIFTING,
    (Phase.CHECKING, Event.CHECK_FAILED): Phase.ROLLING_BACK,
    (Phase.CHECKING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.SHIFTING, Event.SHIFTED): Phase.BAKING,
    (Phase.SHIFTING, Event.STEPS_DONE): Phase.PROMOTING,
    (Phase.SHIFTING, Event.APPROVAL_NEEDED): Phase.AWAITING_APPROVAL,
    (Phase.SHIFTING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.BAKING, Event.BAKED): Phase.ANALYSING,
    (Phase.BAKING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.ANALYSING, Event.STEP_PASSED): Phase.SHIFTING,
    (Phase.ANALYSING, Event.ANALYSIS_FAILED): Phase.BAKING,
    (Phase.ANALYSING, Event.CHECKS_EXHAUSTED): Phase.ROLLING_BACK,
    (Phase.ANALYSING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.AWAITING_APPROVAL, Event.APPROVED): Phase.PROMOTING,
    (Phase.AWAITING_APPROVAL, Event.REJECTED): Phase.ROLLING_BACK,
    (Phase.AWAITING_APPROVAL, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.PROMOTING, Event.PROMOTED): Phase.PROMOTED,
    (Phase.PROMOTING, Event.FAILED): Phase.ROLLING_BACK,
    (Phase.ROLLING_BACK, Event.ROLLED_BACK): Phase.ROLLED_BACK,
    (Phase.ROLLING_BACK, Event.FAILED): Phase.FAILED,
}
TERMINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED})
COUNTED: dict[Event, str] = {
    Event.STEP_PASSED: "step",
    Event.ANALYSIS_FAILED: "failed_checks",
    Event.CHECKS_EXHAUSTED: "failed_checks",
}
"""Events that count something in the state: steps passed, and failed checks (never reset)."""


class InvalidTransition(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    phase: Phase
    event: Event | None
    reason: str
    at: float


@dataclass(frozen=True)
class StepResult:
    """One analysis of one traffic step: its share, its window and what the analysis concluded."""

    step: int
    canary_percent: int
    mirror_percent: int
    started: float
    ended: float
    analysis: StepAnalysis


@dataclass(frozen=True)
class Rollout:
    """One canary rollout of `version` beside `stable`: its phase now and every step that led there."""

    model: str
    version: int
    stable: int | None
    phase: Phase = Phase.PENDING
    reason: str = ""
    history: tuple[Step, ...] = field(default=())
    step: int = 0
    canary_percent: int = 0
    failed_checks: int = 0
    steps: tuple[StepResult, ...] = ()
    approval: Mapping[str, str] | None = None

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


def advance(state: Rollout, event: Event, reason: str = "", at: float | None = None,
            **changes: Any) -> Rollout:
    """The one place where phases change; `changes` are what the phase's action observed."""
    target = TRANSITIONS.get((state.phase, event))
    if target is None:
        raise InvalidTransition(f"no transition from {state.phase} on {event}")
    step = Step(phase=target, event=event, reason=reason, at=time.time() if at is None else at)
    if event in COUNTED:
        name = COUNTED[event]
        changes[name] = getattr(state, name) + 1
    return replace(state, phase=target, reason=reason, history=(*state.history, step), **changes)


def judge(state: Rollout, analysis: StepAnalysis, failed_checks: int) -> Event:
    """A passed analysis moves on; anything else counts against the threshold."""
    if analysis.verdict is Verdict.PASSED:
        return Event.STEP_PASSED
    return Event.CHECKS_EXHAUSTED if state.failed_checks + 1 >= failed_checks else Event.ANALYSIS_FAILED


class Approval(BaseModel):
    """The approver's answer before promotion; the Prefect UI shows it as a form."""

    model_config = ConfigDict(frozen=True)

    decision: Literal["promote", "roll back"] = Field(description="Promote the canary, or roll it back.")
    comment: str = Field("", max_length=500, description="Why; kept in the rollout record.")


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    summary: str


Check = Callable[[Endpoint], CheckOutcome]
Observer = Callable[[Rollout], None]
Approver = Callable[[Rollout], Approval | None]
"""Asks for a decision; None when none came before the configured timeout."""
Load = Callable[[float], AbstractContextManager[object]]
"""The rollout's own traffic while a step bakes, given its deadline in seconds (aviary.golden_load)."""


@dataclass
class _Window:
    """The scrapes of the step being baked: kept by the runner, not in the state."""

    started: float = 0.0
    ended: float = 0.0
    counted: Snapshot = field(default_factory=Snapshot)
    """What the servers counted since the window opened, summed scrape by scrape."""
    analysis: StepAnalysis | None = None


def limits(cfg: CanaryConfig) -> Limits:
    shadow = cfg.shadow
    return Limits(
        min_requests=cfg.min_requests, max_error_rate_delta=cfg.max_error_rate_delta,
        max_latency_ratio=cfg.max_latency_ratio, latency_slack_ms=cfg.latency_slack_ms,
        min_shadow_rows=shadow.min_rows, min_class_agreement=shadow.min_class_agreement,
        max_mean_abs_diff=shadow.max_mean_abs_diff, max_p99_abs_diff=shadow.max_p99_abs_diff,
        max_positive_rate_shift=shadow.max_positive_rate_shift,
    )


class _Runner:
    def __init__(self, target: Target, check: Check, ready_timeout_s: float, canary: CanaryConfig | None,
                 approve: Approver | None, load: Load | None = None) -> None:
        self.target, self.check, self.ready_timeout_s = target, check, ready_timeout_s
        self.cfg = canary
        self.approve = approve
        self.load = load
        self.window = _Window()

    def plan(self, state: Rollout) -> tuple[int, ...]:
        """Traffic steps need a stable version to compare with and a target that can split traffic."""
        if self.cfg is None or state.stable is None or not getattr(self.target, "traffic_split", False):
            return ()
        return self.cfg.steps

    def mirror(self) -> int:
        return self.cfg.shadow.mirror_percent if self.cfg is not None else 0

    @property
    def no_shadow(self) -> str:
        """Why the target's steps carry no shadow comparison ('' where they do)."""
        return str(getattr(self.target, "shadow_unavailable", ""))

    def scrape(self, model: str) -> Scrape:
        return parse_scrape(self.target.scrape(model), model)

    def act(self, state: Rollout) -> tuple[Event, str, dict[str, Any]]:
        """Perform the current phase's side effect; return the event it produced and what it observed."""
        try:
            return self._act(state)
        except Exception as error:  # noqa: BLE001 - whatever breaks, the rollback path must run
            detail = str(error) if isinstance(error, TargetError) else f"{type(error).__name__}: {error}"
            return Event.FAILED, detail, {}

    def _act(self, state: Rollout) -> tuple[Event, str, dict[str, Any]]:
        model, version, target = state.model, state.version, self.target
        plan = self.plan(state)
        mirror = self.mirror()
        match state.phase:
            case Phase.PENDING:
                beside = f"beside stable v{state.stable}" if state.stable is not None else "with no stable version"
                return Event.START, f"{target.name}: canary v{version} {beside}", {}
            case Phase.DEPLOYING:
                if plan:  # before the canary loads, so unversioned requests stay with stable
                    target.set_traffic(model, 0, 0)
                target.deploy_canary(model, version, state.stable)
                target.wait_ready(model, version, self.ready_timeout_s)
                return Event.READY, f"v{version} is available", {}
            case Phase.CHECKING:
                outcome = self.check(target.endpoint(model, "canary"))
                return (Event.CHECK_PASSED if outcome.passed else Event.CHECK_FAILED), outcome.summary, {}
            case Phase.SHIFTING:
                if state.step < len(plan):
                    asked = plan[state.step]
                    answer = target.set_traffic(model, asked, mirror)
                    share = asked if answer is None else answer
                    why = f"step {state.step + 1}/{len(plan)}: canary answers {share}% of unversioned requests"
                    if share != asked:
                        why += f" ({asked}% asked, the nearest its replicas give)"
                    if mirror:
                        why += f", {mirror}% mirrored to it"
                        if self.no_shadow:
                            why += f"; shadow comparison skipped: {self.no_shadow}"
                    return Event.SHIFTED, why, {"canary_percent": share}
                done = f"{len(plan)} traffic steps passed" if plan else "golden-set check passed"
                if self.cfg is not None and self.cfg.approval.required:
                    return Event.APPROVAL_NEEDED, f"{done}; waiting for approval", {}
                return Event.STEPS_DONE, done, {}
            case Phase.BAKING:
                return self._bake(state, mirror)
            case Phase.ANALYSING:
                assert self.cfg is not None and self.window.analysis is not None
                analysis, window = self.window.analysis, self.window
                noted = analysis
                if mirror and self.no_shadow:  # the record says so at every step
                    noted = replace(analysis, reasons=(*analysis.reasons, f"shadow comparison skipped: {self.no_shadow}"))
                result = StepResult(step=state.step + 1, canary_percent=state.canary_percent,
                                    mirror_percent=mirror, started=window.started, ended=window.ended,
                                    analysis=noted)
                event = judge(state, analysis, self.cfg.failed_checks)
                why = analysis.summary
                if event is not Event.STEP_PASSED:
                    why = (f"{state.canary_percent}% step, check {state.failed_checks + 1}"
                           f"/{self.cfg.failed_checks} failed: {why}")
                return event, why, {"steps": (*state.steps, result)}
            case Phase.AWAITING_APPROVAL:
                return self._approval(state)
            case Phase.PROMOTING:
                if plan:
                    target.set_traffic(model, 0, 0)
                target.promote(model, version)
                return Event.PROMOTED, f"v{version} is stable", {}
            case Phase.ROLLING_BACK:
                if plan:
                    # Best effort: dropping the canary below ends its share anyway.
                    with contextlib.suppress(Exception):
                        target.set_traffic(model, 0, 0)
                target.roll_back(model, state.stable)
                left = f"stable v{state.stable} serving" if state.stable is not None else "nothing else was serving"
                return Event.ROLLED_BACK, f"canary v{version} removed; {left}", {}
        raise InvalidTransition(f"nothing to do in {state.phase}")

    def _bake(self, state: Rollout, mirror: int) -> tuple[Event, str, dict[str, Any]]:
        """Live traffic at this share until the window can be judged: bake time and enough requests,
        or a failure already beyond doubt, or the step's deadline."""
        assert self.cfg is not None
        cfg, model = self.cfg, state.model
        started = time.monotonic()
        with self.load(cfg.max_bake_s) if self.load is not None else contextlib.nullcontext():
            window, last = _Window(started=time.time()), self.scrape(model)
            while True:
                time.sleep(cfg.scrape_interval_s)  # the scrape cadence: new traffic has to arrive between scrapes
                self.target.keep_traffic(model)
                scrape = self.scrape(model)
                window.counted, last = window.counted + increase(last, scrape), scrape
                analysis = analyse_window(window.counted, state.version, state.stable,
                                          mirror > 0 and not self.no_shadow, limits(cfg))
                elapsed = time.monotonic() - started
                if (analysis.verdict is Verdict.FAILED
                        or (analysis.verdict is Verdict.PASSED and elapsed >= cfg.bake_s)
                        or elapsed >= cfg.max_bake_s):
                    break
        window.ended, window.analysis = time.time(), analysis
        self.window = window
        return Event.BAKED, f"{analysis.canary.requests} canary requests in {elapsed:.1f} s", {}

    def _approval(self, state: Rollout) -> tuple[Event, str, dict[str, Any]]:
        assert self.cfg is not None
        cfg = self.cfg.approval
        answer = self.approve(state) if self.approve is not None else None
        if answer is None:
            decision, why = cfg.default, f"no decision within {cfg.timeout_s:g} s: default {cfg.default}"
        elif answer.decision == "promote":
            decision, why = "promote", f"approved: {answer.comment}" if answer.comment else "approved"
        else:
            decision, why = "roll back", f"rolled back by approver: {answer.comment}".rstrip(": ")
        event = Event.APPROVED if decision == "promote" else Event.REJECTED
        return event, why, {"approval": {"decision": decision, "why": why}}


def run_rollout(
    target: Target,
    model: str,
    version: int,
    stable: int | None,
    check: Check,
    ready_timeout_s: float,
    observe: Observer | None = None,
    canary: CanaryConfig | None = None,
    approve: Approver | None = None,
    load: Load | None = None,
) -> Rollout:
    """Drive the machine to a terminal phase. Without `canary`, the golden-set check alone decides;
    `load` sends traffic of the rollout's own while each step bakes."""
    runner = _Runner(target, check, ready_timeout_s, canary, approve, load)
    state = Rollout(model=model, version=version, stable=stable)
    while not state.done:
        event, reason, changes = runner.act(state)
        state = advance(state, event, reason, **changes)
        if observe is not None:
            observe(state)
    return state
