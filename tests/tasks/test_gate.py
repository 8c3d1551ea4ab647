from aviary.config import GateConfig
from aviary.tasks.gate import gate_model, gate_model_task
from aviary.types import EvalReport


def evaluation(precision: float, recall: float, f1: float | None = None) -> EvalReport:
    f1 = f1 if f1 is not None else 2 * precision * recall / (precision + recall)
    return EvalReport(
        threshold=0.5, precision=precision, recall=recall, f1=f1, accuracy=0.9, roc_auc=0.95, pr_auc=0.94,
        confusion_matrix=((10, 1), (1, 10)), rows=22,
    )


CFG = GateConfig(min_precision=0.8, min_recall=0.8, max_regression=0.02)


def test_first_model_faces_the_floors_alone() -> None:
    verdict = gate_model(evaluation(0.93, 0.88), CFG)
    assert verdict.blessed and verdict.failed == ()
    assert verdict.reasons[:2] == ("precision 0.9300 >= floor 0.80", "recall 0.8800 >= floor 0.80")
    assert "floors alone" in verdict.reasons[2]


def test_a_floor_that_fails_rejects_with_its_reason() -> None:
    verdict = gate_model(evaluation(0.71, 0.9), CFG)
    assert not verdict.blessed
    assert "precision 0.7100 < floor 0.80" in verdict.reasons
    assert verdict.failed == ("precision 0.7100 < floor 0.80",)  # the passing recall rule is not among them


def test_regression_beyond_tolerance_against_production_rejects() -> None:
    verdict = gate_model_task.fn(evaluation(0.93, 0.84), CFG, evaluation(0.93, 0.88), 3)
    assert not verdict.blessed and verdict.baseline_version == 3
    assert "recall 0.8400 fell 0.0400 below production v3 0.8800 (more than the 0.02 allowed)" in verdict.reasons


def test_small_drop_within_tolerance_and_improvements_pass() -> None:
    verdict = gate_model(evaluation(0.92, 0.90), CFG, evaluation(0.93, 0.88), 1)
    assert verdict.blessed
    assert "precision 0.9200 fell 0.0100 below production v1 0.9300" in verdict.reasons
    assert "recall 0.9000 is 0.0200 above production v1 0.8800" in verdict.reasons
    assert len(verdict.reasons) == 5


def test_a_baseline_never_promoted_is_named_the_last_blessed_version() -> None:
    verdict = gate_model(evaluation(0.92, 0.90), CFG, evaluation(0.93, 0.88), 2, "last blessed")
    assert "precision 0.9200 fell 0.0100 below last blessed v2 0.9300" in verdict.reasons
    assert not any("production" in reason for reason in verdict.reasons)
