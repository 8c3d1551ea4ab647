"""The progressive rollout through every step with a fake target and scripted live traffic."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from aviary.config import ApprovalConfig, CanaryConfig, ShadowConfig
from aviary.rollout import (
    TERMINAL,
    TRANSITIONS,
    Approval,
    CheckOutcome,
    Event,
    Phase,
    Rollout,
    run_rollout,
)
from aviary.targets.base import TargetError
from tests.fake_traffic import Behaviour, FakeTraffic, render_metrics
from tests.fakes import FakeTarget

PASS = CheckOutcome(passed=True, summary="40/40 golden predictions match")
FAST = CanaryConfig(steps=(10, 25, 50), bake_s=0, max_bake_s=2.0, scrape_interval_s=0, min_requests=20,
                    failed_checks=2, shadow=ShadowConfig(mirror_percent=20, min_rows=20))
STEP = [Phase.SHIFTING, Phase.BAKING, Phase.ANALYSING]
GOOD = [Phase.DEPLOYING, Phase.CHECKING, *STEP * 3, Phase.SHIFTING, Phase.PROMOTING, Phase.PROMOTED]


def fake(behaviour: Callable[[int], Behaviour] = lambda _s: Behaviour(), per_scrape: int = 100) -> FakeTarget:
    return FakeTarget(stable=1, traffic=FakeTraffic("circle", stable=1, canary=2, per_scrape=per_scrape,
                                                    behaviour=behaviour))


def drive(target: FakeTarget, canary: CanaryConfig = FAST,
          approve: Callable[[Rollout], Approval | None] | None = None) -> Rollout:
    seen: list[Phase] = []
    state = run_rollout(target, "circle", 2, 1, lambda _e: PASS, 5.0, lambda s: seen.append(s.phase),
                        canary=canary, approve=approve)
    assert [step.phase for step in state.history] == seen
    return state


def phases(state: Rollout) -> list[Phase]:
    return [step.phase for step in state.history]


def test_a_good_canary_earns_its_promotion_step_by_step() -> None:
    target = fake()
    state = drive(target)
    assert phases(state) == GOOD
    assert target.traffic_calls == [(0, 0), (10, 20), (25, 20), (50, 20), (0, 0)]
    assert [(s.canary_percent, str(s.analysis.verdict)) for s in state.steps] == [
        (10, "passed"), (25, "passed"), (50, "passed")]
    first = state.steps[0].analysis
    assert first.canary.requests >= 20 and first.stable is not None and first.stable.requests > first.canary.requests
    assert first.shadow is not None and first.shadow.agreement == 1.0
    assert (target.stable, target.canary, state.failed_checks) == (2, None, 0)


@pytest.mark.parametrize("bad_share", [10, 25, 50])
def test_a_canary_that_fails_at_a_step_is_rolled_back_there(bad_share: int) -> None:
    target = fake(lambda share: Behaviour(error_rate=0.3 if share == bad_share else 0.0))
    state = drive(target)
    assert state.phase is Phase.ROLLED_BACK
    shares = [s.canary_percent for s in state.steps]
    assert shares[-2:] == [bad_share, bad_share] and max(shares) == bad_share
    assert state.failed_checks == 2
    assert re.search(rf"^{bad_share}% step, check 2/2 failed: canary error rate 3\d\.\d% vs stable 0\.0%", state.failure)
    assert "promote" not in target.calls and (target.stable, target.canary) == (1, None)
    assert target.traffic_calls[-1] == (0, 0)


def test_one_blip_does_not_kill_a_good_canary() -> None:
    scrapes_at_25: list[int] = []

    def behaviour(share: int) -> Behaviour:
        if share == 25:
            scrapes_at_25.append(share)
        # The first window at 25% (its opening scrape and one more) sees errors; the retry is clean.
        return Behaviour(error_rate=0.5 if share == 25 and len(scrapes_at_25) <= 2 else 0.0)

    state = drive(fake(behaviour))
    assert state.phase is Phase.PROMOTED and state.failed_checks == 1
    assert [(s.canary_percent, str(s.analysis.verdict)) for s in state.steps] == [
        (10, "passed"), (25, "failed"), (25, "passed"), (50, "passed")]


def test_the_failed_checks_threshold_decides_how_many_failures_a_canary_survives() -> None:
    bad = fake(lambda _s: Behaviour(error_rate=0.3))
    state = drive(bad, FAST.model_copy(update={"failed_checks": 3}))
    assert state.phase is Phase.ROLLED_BACK and state.failed_checks == 3
    assert [s.canary_percent for s in state.steps] == [10, 10, 10]
    strict = drive(fake(lambda _s: Behaviour(error_rate=0.3)), FAST.model_copy(update={"failed_checks": 1}))
    assert len(strict.steps) == 1 and strict.phase is Phase.ROLLED_BACK


def test_a_canary_without_traffic_is_never_promoted() -> None:
    target = fake(per_scrape=0)
    state = drive(target)
    assert state.phase is Phase.ROLLED_BACK
    assert "0 canary requests, need 20" in state.failure and state.failed_checks == 2


def test_a_drifting_canary_is_rolled_back_by_the_shadow_comparison() -> None:
    target = fake(lambda _s: Behaviour(abs_diff=0.3, disagreement=0.2))
    state = drive(target)
    assert state.phase is Phase.ROLLED_BACK and len(state.steps) == 2
    assert "shadow class agreement 80.0% < 98.0%" in state.failure
    assert "shadow p99 |p diff|" in state.failure


def test_a_slow_canary_is_rolled_back_on_latency() -> None:
    state = drive(fake(lambda _s: Behaviour(latency_us=200_000)))
    assert state.phase is Phase.ROLLED_BACK and "canary p95" in state.failure


def test_a_metrics_scrape_that_breaks_rolls_back() -> None:
    target = fake()
    target.fail_on["scrape"] = TargetError("metrics at http://127.0.0.1:1 unreachable")
    state = drive(target)
    assert phases(state)[-3:] == [Phase.BAKING, Phase.ROLLING_BACK, Phase.ROLLED_BACK]
    assert state.failure == "metrics at http://127.0.0.1:1 unreachable"


APPROVAL = FAST.model_copy(update={"approval": ApprovalConfig(required=True, timeout_s=60, default="roll back")})


def test_approval_promote() -> None:
    asked: list[Rollout] = []

    def approve(state: Rollout) -> Approval:
        asked.append(state)
        return Approval(decision="promote", comment="dashboards look fine")

    state = drive(fake(), APPROVAL, approve)
    assert state.phase is Phase.PROMOTED
    assert asked[0].phase is Phase.AWAITING_APPROVAL and asked[0].canary_percent == 50 and len(asked[0].steps) == 3
    assert state.approval == {"decision": "promote", "why": "approved: dashboards look fine"}
    assert phases(state)[-4:] == [Phase.SHIFTING, Phase.AWAITING_APPROVAL, Phase.PROMOTING, Phase.PROMOTED]


def test_approval_roll_back() -> None:
    target = fake()
    state = drive(target, APPROVAL, lambda _s: Approval(decision="roll back", comment="wait for Monday"))
    assert state.phase is Phase.ROLLED_BACK and state.failure == "rolled back by approver: wait for Monday"
    assert "promote" not in target.calls


@pytest.mark.parametrize(("default", "outcome"), [("roll back", Phase.ROLLED_BACK), ("promote", Phase.PROMOTED)])
def test_approval_timeout_takes_the_default(default: str, outcome: Phase) -> None:
    canary = APPROVAL.model_copy(update={"approval": ApprovalConfig(required=True, timeout_s=60, default=default)})
    state = drive(fake(), canary, lambda _s: None)
    assert state.phase is outcome
    assert state.approval == {"decision": default, "why": f"no decision within 60 s: default {default}"}


def test_approval_without_an_approver_takes_the_default() -> None:
    assert drive(fake(), APPROVAL).phase is Phase.ROLLED_BACK


def test_a_first_version_and_a_target_without_a_split_go_straight_to_promotion() -> None:
    first = FakeTarget()
    state = run_rollout(first, "circle", 1, None, lambda _e: PASS, 5.0, canary=FAST)
    assert phases(state) == [Phase.DEPLOYING, Phase.CHECKING, Phase.SHIFTING, Phase.PROMOTING, Phase.PROMOTED]
    assert first.traffic_calls == []
    no_split = fake()
    no_split.traffic_split = False
    assert drive(no_split).steps == () and no_split.traffic_calls == []


def test_every_phase_that_can_fail_leads_to_rolling_back() -> None:
    for phase in Phase:
        if phase in TERMINAL or phase in (Phase.PENDING, Phase.ROLLING_BACK):
            continue
        assert TRANSITIONS[(phase, Event.FAILED)] is Phase.ROLLING_BACK, phase
    assert TRANSITIONS[(Phase.ANALYSING, Event.CHECKS_EXHAUSTED)] is Phase.ROLLING_BACK
    assert TRANSITIONS[(Phase.AWAITING_APPROVAL, Event.REJECTED)] is Phase.ROLLING_BACK


class ReplicaSteps(FakeTarget):
    """A target that can only come near a share (a canary's replica ratio) and cannot mirror."""

    shadow_unavailable = "a Service cannot mirror requests"

    def set_traffic(self, model: str, canary_percent: int, mirror_percent: int) -> int:
        super().set_traffic(model, canary_percent, mirror_percent)
        return 0 if canary_percent == 0 else max(canary_percent, 50)


def test_the_share_a_target_gives_is_recorded_and_no_shadow_is_awaited_where_it_cannot_mirror() -> None:
    target = ReplicaSteps(stable=1, traffic=FakeTraffic("circle", stable=1, canary=2, per_scrape=100))
    state = drive(target, FAST.model_copy(update={"steps": (10, 75)}))
    assert phases(state)[-1] is Phase.PROMOTED and state.failed_checks == 0
    assert target.traffic_calls == [(0, 0), (10, 20), (75, 20), (0, 0)]
    assert [s.canary_percent for s in state.steps] == [50, 75]
    assert all(s.analysis.shadow is None and s.analysis.reasons[-1] == "shadow comparison skipped: a Service cannot "
               "mirror requests" for s in state.steps)
    (shift,) = [h.reason for h in state.history if h.reason.startswith("step 1/2")]
    assert "answers 50% of unversioned requests (10% asked" in shift


class ReplacedCanaryPod(FakeTarget):
    """Two servers per scrape: stable's pod, and a canary pod that fails 8 of its first 15 requests and
    is then replaced by a healthy one whose counters start again from zero."""

    def __init__(self) -> None:
        super().__init__(stable=1)
        self.scrapes = 0

    def scrape(self, model: str) -> dict[str, str]:
        self._maybe_fail("scrape")
        n, self.scrapes = self.scrapes, self.scrapes + 1
        if n < 2:
            pod, counts = "canary-a", (15, 8, 2000.0) if n else (0, 0, 2000.0)
        else:
            pod, counts = "canary-b", (10 * (n - 1), 0, 2000.0)
        return {"stable-a": render_metrics(model, {1: (100 * n, 0, 2000.0)}), pod: render_metrics(model, {2: counts})}


def test_errors_a_canary_pod_served_before_it_was_replaced_still_fail_the_step() -> None:
    target = ReplacedCanaryPod()
    state = drive(target, FAST.model_copy(update={"failed_checks": 1}))
    assert state.phase is Phase.ROLLED_BACK and target.scrapes == 3  # judged at the scrape after the replacement
    assert "canary error rate 32.0% vs stable 0.0%" in state.failure and "8/25 failed" in state.failure
