import pytest

from aviary.rollout import (
    TERMINAL,
    TRANSITIONS,
    CheckOutcome,
    Event,
    InvalidTransition,
    Phase,
    Rollout,
    advance,
    run_rollout,
)
from aviary.targets.base import Endpoint, NotReady, TargetError
from tests.fakes import FakeTarget

PASS = CheckOutcome(passed=True, summary="200/200 golden predictions match")
FAIL = CheckOutcome(passed=False, summary="12/200 golden predictions differ")


def drive(target: FakeTarget, outcome: CheckOutcome = PASS) -> Rollout:
    seen: list[Phase] = []
    state = run_rollout(target, "circle", 2, 1, lambda _e: outcome, 5.0, lambda s: seen.append(s.phase))
    assert [step.phase for step in state.history] == seen
    return state


def phases(state: Rollout) -> list[Phase]:
    return [step.phase for step in state.history]


def test_a_good_canary_is_promoted() -> None:
    target = FakeTarget(stable=1)
    state = drive(target)
    assert phases(state) == [Phase.DEPLOYING, Phase.CHECKING, Phase.SHIFTING, Phase.PROMOTING, Phase.PROMOTED]
    assert target.serving("circle").stable == 2 and target.canary is None
    assert target.calls == ["deploy_canary", "wait_ready", "promote"]


def test_a_canary_that_never_becomes_ready_is_rolled_back() -> None:
    target = FakeTarget(stable=1, fail_on={"wait_ready": NotReady("circle v2 not AVAILABLE within 5 s")})
    state = drive(target)
    assert phases(state) == [Phase.DEPLOYING, Phase.ROLLING_BACK, Phase.ROLLED_BACK]
    assert state.failure == "circle v2 not AVAILABLE within 5 s"
    assert (target.stable, target.canary) == (1, None)


def test_a_canary_that_fails_its_check_is_rolled_back_and_stable_untouched() -> None:
    target = FakeTarget(stable=1)
    state = drive(target, FAIL)
    assert phases(state) == [Phase.DEPLOYING, Phase.CHECKING, Phase.ROLLING_BACK, Phase.ROLLED_BACK]
    assert state.failure == FAIL.summary
    assert "promote" not in target.calls and target.stable == 1


def test_a_check_that_crashes_still_leads_to_rollback() -> None:
    def broken(_: Endpoint) -> CheckOutcome:
        raise ConnectionError("connection refused")

    target = FakeTarget(stable=1)
    state = run_rollout(target, "circle", 2, 1, broken, 5.0)
    assert state.phase is Phase.ROLLED_BACK and "ConnectionError: connection refused" in state.failure


def test_a_failed_promotion_is_rolled_back() -> None:
    target = FakeTarget(stable=1, fail_on={"promote": TargetError("HTTP 500 patching deployment")})
    state = drive(target)
    assert phases(state)[-2:] == [Phase.ROLLING_BACK, Phase.ROLLED_BACK]
    assert target.stable == 1


def test_a_failed_rollback_ends_failed() -> None:
    target = FakeTarget(
        stable=1, fail_on={"deploy_canary": TargetError("quota"), "roll_back": TargetError("API down")}
    )
    state = drive(target)
    assert phases(state) == [Phase.DEPLOYING, Phase.ROLLING_BACK, Phase.FAILED]
    assert state.reason == "API down" and state.failure == "quota"


def test_every_phase_that_can_fail_leads_to_rolling_back() -> None:
    for phase in (Phase.DEPLOYING, Phase.CHECKING, Phase.PROMOTING):
        assert TRANSITIONS[(phase, Event.FAILED)] is Phase.ROLLING_BACK
    assert not any(phase in TERMINAL for phase, _ in TRANSITIONS), "terminal phases have no way out"


def test_advance_is_pure_and_rejects_invalid_transitions() -> None:
    start = Rollout(model="circle", version=2, stable=1)
    moved = advance(start, Event.START, "go", at=1.0)
    assert start.phase is Phase.PENDING and start.history == ()
    assert moved.phase is Phase.DEPLOYING and moved.history[0].at == 1.0
    with pytest.raises(InvalidTransition, match="no transition from Pending on ready"):
        advance(start, Event.READY)
    with pytest.raises(InvalidTransition):
        advance(advance(advance(moved, Event.FAILED), Event.ROLLED_BACK), Event.START)
