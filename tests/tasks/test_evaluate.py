import numpy as np
import pytest

from aviary.config import EvalConfig
from aviary.tasks.evaluate import DEFAULT_THRESHOLD, choose_threshold, evaluate_model_task, report
from aviary.types import Split, TrainedModel

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.35, 0.6, 0.4, 0.7, 0.8, 0.9])


def test_threshold_has_best_recall_at_or_above_the_precision_floor() -> None:
    # At 0.4: tp=4 fp=1 -> precision 0.8, recall 1.0. At 0.7: precision 1.0, recall 0.75.
    assert choose_threshold(LABELS, SCORES, precision_floor=0.8) == pytest.approx(0.4)
    assert choose_threshold(LABELS, SCORES, precision_floor=0.95) == pytest.approx(0.7)


def test_threshold_falls_back_to_one_half_when_no_threshold_reaches_the_floor() -> None:
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.2, 0.9, 0.3, 0.8])  # every positive scores below every negative
    assert choose_threshold(labels, scores, precision_floor=0.9) == DEFAULT_THRESHOLD


def test_report_computes_every_metric_at_the_threshold() -> None:
    r = report(LABELS, SCORES, threshold=0.5)
    # predicted 1: 0.6 (neg), 0.7, 0.8, 0.9 -> tp=3 fp=1 fn=1 tn=3
    assert r.confusion_matrix == ((3, 1), (1, 3))
    assert (r.precision, r.recall, r.accuracy) == (0.75, 0.75, 0.75)
    assert r.f1 == pytest.approx(0.75)
    assert r.roc_auc == pytest.approx(15 / 16)
    assert 0 < r.pr_auc <= 1 and r.rows == 8 and r.threshold == 0.5


def test_evaluate_trained_model_on_eval_set(trained: TrainedModel, circle_split: Split) -> None:
    r = evaluate_model_task.fn(trained, circle_split.eval, EvalConfig(precision_floor=0.9))
    assert r.rows == circle_split.eval.rows
    assert r.precision >= 0.9 and r.recall > 0.85 and r.roc_auc > 0.97
    assert sum(map(sum, r.confusion_matrix)) == r.rows


def test_evaluation_past_the_exact_size_streams_counts_per_level(trained: TrainedModel, circle_split: Split) -> None:
    from aviary.scores import LEVELS
    from aviary.tasks.evaluate import evaluate_model, report_scored, score_keras

    cfg = EvalConfig(precision_floor=0.9)
    exact, binned = evaluate_model(trained, circle_split.eval, cfg), evaluate_model(trained, circle_split.eval, cfg, exact_rows=100)
    assert binned.rows == exact.rows == circle_split.eval.rows
    assert binned.threshold in LEVELS and binned.threshold == pytest.approx(exact.threshold, abs=1e-3)
    assert binned.roc_auc == pytest.approx(exact.roc_auc, abs=1e-3)
    # At the level it chose, the counts are those of the rows themselves.
    rows = score_keras(trained.path, circle_split.eval)
    assert rows.exact and report_scored(rows, binned.threshold).confusion_matrix == binned.confusion_matrix
