import numpy as np
import pytest

from aviary.scores import LEVELS, ScoreCollector, collect, level_index
from aviary.tasks.evaluate import choose_threshold, report, report_scored


def _data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, rows).astype(np.int8)
    logits = rng.normal(0, 2, rows) + 2.5 * (labels * 2 - 1)
    return labels, (1 / (1 + np.exp(-logits))).astype(np.float32)


def _batches(labels: np.ndarray, scores: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(labels[i : i + size], scores[i : i + size]) for i in range(0, len(labels), size)]


def test_small_eval_sets_keep_every_score_and_match_the_in_memory_metrics() -> None:
    labels, scores = _data(5_000)
    scored = collect(_batches(labels, scores, 700), exact_rows=5_000)
    assert scored.exact and scored.rows == 5_000
    assert np.array_equal(scored.labels, labels) and np.array_equal(scored.scores, scores)
    threshold = choose_threshold(labels, scores, 0.9)
    assert report_scored(scored, threshold) == report(labels, scores, threshold)


def test_large_eval_sets_count_rows_per_level_in_fixed_memory() -> None:
    labels, scores = _data(50_000)
    exact = report(labels, scores, 0.5)
    collector = ScoreCollector(exact_rows=10_000)
    for batch in _batches(labels, scores, 4_096):
        collector.add(*batch)
    assert collector._counts is not None and collector._counts.nbytes == 2 * len(LEVELS) * 8
    binned = collector.result()
    assert not binned.exact and binned.rows == 50_000 and len(binned.labels) <= 2 * len(LEVELS)
    # Counts per level agree with the rows themselves.
    assert binned.weights is not None
    assert binned.weights[binned.labels == 1].sum() == labels.sum()
    # A threshold on a level: the confusion matrix and the metrics made of it are exact.
    level = float(LEVELS[level_index(np.array([0.5], dtype=np.float32))[0]])
    at_level, exact_at_level = report_scored(binned, level), report(labels, scores, level)
    assert at_level.confusion_matrix == exact_at_level.confusion_matrix
    assert at_level.precision == pytest.approx(exact_at_level.precision, abs=1e-12)
    assert at_level.recall == pytest.approx(exact_at_level.recall, abs=1e-12)
    assert at_level.accuracy == pytest.approx(exact_at_level.accuracy, abs=1e-12)
    # Curves: ties within a level move the areas by far less than a metric's tolerance in the gate.
    assert at_level.roc_auc == pytest.approx(exact.roc_auc, abs=1e-4)
    assert at_level.pr_auc == pytest.approx(exact.pr_auc, abs=1e-4)
    chosen = choose_threshold(binned.labels, binned.scores, 0.9, binned.weights)
    assert chosen in LEVELS and chosen == pytest.approx(choose_threshold(labels, scores, 0.9), abs=1e-3)


def test_levels_are_fine_at_both_ends_and_scores_land_at_or_above_their_level() -> None:
    assert LEVELS[0] == 0 and LEVELS[-1] == 1 and np.all(np.diff(LEVELS) > 0)
    steps = np.diff(LEVELS)
    assert steps.max() < 2e-4  # about 0.00014 around 0.5, finer towards 0 and 1
    scores = np.array([0.0, 1e-30, 0.25, 0.5, 0.9999, 1.0], dtype=np.float32)
    levels = LEVELS[level_index(scores)]
    assert np.all(levels <= scores) and np.all(LEVELS[np.minimum(level_index(scores) + 1, len(LEVELS) - 1)][:-1] > scores[:-1])


def test_counted_scores_draw_curves_and_a_tensorboard_pr_curve(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from aviary.tasks.plots import pr_curve_png, roc_curve_png
    from aviary.tensorboard import log_version

    labels, scores = _data(3_000)
    binned = collect(_batches(labels, scores, 1_000), exact_rows=0)
    plain = ("production v1", scores**2, 0.4)
    assert pr_curve_png(labels, binned, 0.5, "v2", plain).startswith(b"\x89PNG")
    assert roc_curve_png(None, binned, 0.5, "v2", ("production v1", binned, 0.4)).startswith(b"\x89PNG")
    assert binned.weights is not None
    logdir = log_version(tmp_path, "m", 2, tmp_path / "none", {}, {"roc_auc": 0.9}, binned.labels, binned.scores, binned.weights)
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    events.Reload()
    curve = events.Tensors("eval/pr_curve")[0].tensor_proto
    # Row 0 of the PR tensor: true positives at each threshold; the lowest threshold counts every positive.
    from tensorboard.util import tensor_util

    assert tensor_util.make_ndarray(curve)[0][0] == pytest.approx(labels.sum())
