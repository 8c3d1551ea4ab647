"""The gate: absolute floors, and no regression against the baseline (production, else the last blessed version) on the same eval set."""

from __future__ import annotations

from prefect import task

from aviary.config import GateConfig
from aviary.types import DriftReport, EvalReport, Verdict

COMPARED = ("precision", "recall", "f1")


def gate_model(
    candidate: EvalReport,
    cfg: GateConfig,
    baseline: EvalReport | None = None,
    baseline_version: int | None = None,
    baseline_role: str = "production",
    drift: DriftReport | None = None,
) -> Verdict:
    """One readable reason per rule, passed or failed; blessed only when every rule passes.

    `baseline_role` names the baseline in the reasons: "production", or "last blessed" for a version never promoted.
    """
    reasons: list[str] = []
    failed: list[str] = []
    passed = True
    for metric, floor in (("precision", cfg.min_precision), ("recall", cfg.min_recall)):
        value = getattr(candidate, metric)
        ok = value >= floor
        passed &= ok
        reasons.append(f"{metric} {value:.4f} {'>=' if ok else '<'} floor {floor:.2f}")
        failed += [] if ok else reasons[-1:]
    if baseline is None:
        reasons.append("no production version to compare with: floors alone decide")
    else:
        for metric in COMPARED:
            value, reference = getattr(candidate, metric), getattr(baseline, metric)
            drop = reference - value
            ok = drop <= cfg.max_regression
            passed &= ok
            relation = f"fell {drop:.4f} below" if drop > 0 else f"is {-drop:.4f} above" if drop < 0 else "equals"
            limit = "" if ok else f" (more than the {cfg.max_regression:.2f} allowed)"
            reasons.append(f"{metric} {value:.4f} {relation} {baseline_role} v{baseline_version} {reference:.4f}{limit}")
            failed += [] if ok else reasons[-1:]
    if drift is not None:
        reasons.extend(drift.reasons)  # drift warns, or rejects where the config says block
        passed &= not drift.blocking
        failed += list(drift.reasons) if drift.blocking else []
    return Verdict(blessed=passed, reasons=tuple(reasons), failed=tuple(failed), baseline_version=baseline_version)


@task(name="gate-model")
def gate_model_task(
    candidate: EvalReport,
    cfg: GateConfig,
    baseline: EvalReport | None,
    baseline_version: int | None,
    baseline_role: str = "production",
    drift: DriftReport | None = None,
) -> Verdict:
    return gate_model(candidate, cfg, baseline, baseline_version, baseline_role, drift)
