"""The record every rollout leaves with its version in the store: steps, shares, metrics, verdicts, outcome.

`<store>/<model>/rollouts/<version>/<UTC time>.json`, with a PNG of canary vs stable per step beside it.
A rolled-back canary keeps its record, so why it went is on disk after the run.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from aviary.rollout import Rollout
from aviary.store import ModelStore, write_json_atomic

ROLLOUTS_DIR = "rollouts"


class StepRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: int
    canary_percent: int
    mirror_percent: int
    started: float
    ended: float
    verdict: str
    reasons: tuple[str, ...]
    canary: dict[str, Any] | None
    stable: dict[str, Any] | None
    shadow: dict[str, Any] | None


class RolloutRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    version: int
    stable: int | None
    target: str
    outcome: str
    reason: str
    failure: str
    started: float
    finished: float
    failed_checks: int
    approval: dict[str, str] | None
    steps: tuple[StepRecord, ...]
    timeline: tuple[dict[str, Any], ...]


def _clean(value: Any) -> Any:
    """NaN (no requests, no quantile) is null in JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def build_record(state: Rollout, target: str) -> RolloutRecord:
    steps = []
    for result in state.steps:
        a = result.analysis
        steps.append(StepRecord(
            step=result.step, canary_percent=result.canary_percent, mirror_percent=result.mirror_percent,
            started=result.started, ended=result.ended, verdict=str(a.verdict), reasons=a.reasons,
            canary=_clean({**asdict(a.canary), "error_rate": a.canary.error_rate}),
            stable=_clean({**asdict(a.stable), "error_rate": a.stable.error_rate}) if a.stable else None,
            shadow=_clean({**asdict(a.shadow), "positive_rate_shift": a.shadow.positive_rate_shift})
            if a.shadow else None,
        ))
    history = state.history
    return RolloutRecord(
        model=state.model, version=state.version, stable=state.stable, target=target,
        outcome=str(state.phase), reason=state.reason, failure=state.failure,
        started=history[0].at if history else 0.0, finished=history[-1].at if history else 0.0,
        failed_checks=state.failed_checks,
        approval=dict(state.approval) if state.approval else None,
        steps=tuple(steps),
        timeline=tuple({"phase": str(s.phase), "event": str(s.event), "reason": s.reason, "at": s.at}
                       for s in history),
    )


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def write_record(store: ModelStore, record: RolloutRecord) -> Path:
    """Write the record (and its picture when it has steps); returns the JSON path."""
    path = store.base / ROLLOUTS_DIR / str(record.version) / f"{_stamp(record.started)}.json"
    write_json_atomic(path, record.model_dump(mode="json"))
    if record.steps:
        plot_record(record, path.with_suffix(".png"))
    return path


def records(store: ModelStore, version: int) -> list[RolloutRecord]:
    """Every rollout of one version, oldest first."""
    folder = store.base / ROLLOUTS_DIR / str(version)
    if not folder.is_dir():
        return []
    return [RolloutRecord.model_validate_json(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _num(stats: dict[str, Any] | None, key: str, scale: float = 1.0) -> float:
    value = None if stats is None else stats.get(key)
    return math.nan if value is None else float(value) * scale


def plot_record(record: RolloutRecord, path: Path) -> Path:
    """Canary vs stable error rate and p95 latency per step: the one picture of a rollout."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    labels = [f"{s.step}: {s.canary_percent}%" for s in record.steps]
    x = list(range(len(labels)))
    fig = Figure(figsize=(8, 3.4), dpi=100, layout="constrained")
    errors, latency = fig.subplots(1, 2)
    for track, color in (("stable", "tab:blue"), ("canary", "tab:orange")):
        rows = [getattr(s, track) for s in record.steps]
        errors.plot(x, [_num(r, "error_rate", 100) for r in rows], marker="o", color=color, label=track)
        latency.plot(x, [_num(r, "p95_ms") for r in rows], marker="o", color=color, label=f"{track} p95")
        latency.plot(x, [_num(r, "p50_ms") for r in rows], linestyle=":", color=color, label=f"{track} p50")
    for step_x, step in zip(x, record.steps, strict=True):
        if step.verdict != "passed":
            errors.axvspan(step_x - 0.3, step_x + 0.3, color="tab:red", alpha=0.12)
    errors.set(title="error rate", ylabel="% of requests", xlabel="step: canary share")
    latency.set(title="latency", ylabel="ms", xlabel="step: canary share")
    for ax in (errors, latency):
        ax.set_xticks(x, labels)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    errors.set_ylim(bottom=0)
    latency.set_ylim(bottom=0)
    fig.suptitle(f"{record.model} v{record.version} vs stable v{record.stable}: {record.outcome}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def record_markdown(record: RolloutRecord, image: Path | None = None) -> str:
    lines = [
        f"# Rollout of {record.model} v{record.version}: {record.outcome}",
        "",
        f"Stable v{record.stable} on {record.target}. {record.failure or record.reason}",
        "",
    ]
    if record.steps:
        lines += [
            "| step | canary % | mirror % | verdict | canary req | canary err | stable err | canary p95 ms "
            "| stable p95 ms | shadow agreement | why |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in record.steps:
            agreement = _num(s.shadow, "agreement", 100)
            lines.append(
                f"| {s.step} | {s.canary_percent} | {s.mirror_percent} | {s.verdict} "
                f"| {int(_num(s.canary, 'requests')) if s.canary else 0} "
                f"| {_num(s.canary, 'error_rate', 100):.1f}% | {_num(s.stable, 'error_rate', 100):.1f}% "
                f"| {_num(s.canary, 'p95_ms'):.1f} | {_num(s.stable, 'p95_ms'):.1f} "
                f"| {'' if math.isnan(agreement) else f'{agreement:.1f}%'} "
                f"| {'; '.join(s.reasons).replace('|', '/')} |"
            )
        lines.append("")
    if record.approval:
        lines += [f"Approval: {record.approval.get('decision')} ({record.approval.get('why', '')})", ""]
    if image is not None:
        lines += [f"![canary vs stable per step]({image.resolve().as_uri()})", ""]
    lines += ["| at (UTC) | phase | why |", "|---|---|---|"]
    for step in record.timeline:
        at = datetime.fromtimestamp(step["at"], UTC).strftime("%H:%M:%S.%f")[:-3]
        lines.append(f"| {at} | {step['phase']} | {str(step['reason']).replace('|', '/')} |")
    return "\n".join(lines) + "\n"
