"""The pictures of a model version, drawn with matplotlib's Agg backend into PNG bytes, and the step that keeps them.

Each `*_png` function is pure over arrays and numbers and returns one PNG: no files, no screen.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import precision_recall_curve, roc_curve

from aviary.scores import Scored
from aviary.store import ModelStore
from aviary.types import Dataset, EvalReport, TrainedModel

DPI = 100
SIZE = (5.0, 4.0)
"""Inches: 500 x 400 pixels, readable side by side in an artifact."""
CANDIDATE, BASELINE = "tab:blue", "tab:gray"
PLOTTED_METRICS = ("precision", "recall", "f1", "accuracy", "roc_auc", "pr_auc")


def _figure(size: tuple[float, float] = SIZE) -> tuple[Any, Any]:
    # Agg through the object API: no pyplot state, no display, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _png(figure: Any) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def _point_at(thresholds: np.ndarray, threshold: float) -> int:
    """Index of the curve point whose threshold is closest to the chosen one."""
    return int(np.argmin(np.abs(thresholds - threshold)))


Scores = np.ndarray | Scored
"""Scores one per row (the labels given beside them), or a `Scored` that carries its own labels and row counts."""


def _points(labels: np.ndarray | None, scores: Scores) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(labels, scores, sample weights) for scikit-learn's curves."""
    if isinstance(scores, Scored):
        return scores.labels, scores.scores, scores.weights
    assert labels is not None, "labels are needed beside plain scores"
    return labels, scores, None


def _curves(
    title: str, scores: Scores, threshold: float, baseline: tuple[str, Scores, float] | None
) -> list[tuple[str, Scores, float, str]]:
    """(name, scores, threshold, colour) per curve; a baseline goes first, underneath, so the candidate stays visible."""
    candidate = (title, scores, threshold, CANDIDATE)
    return [candidate] if baseline is None else [(*baseline, BASELINE), candidate]


def pr_curve_png(
    labels: np.ndarray | None,
    scores: Scores,
    threshold: float,
    title: str,
    baseline: tuple[str, Scores, float] | None = None,
) -> bytes:
    """Precision against recall, the chosen threshold marked; a baseline's curve (name, scores, threshold) beside it."""
    figure, ax = _figure()
    curves = _curves(title, scores, threshold, baseline)
    for name, s, t, color in curves:
        y, x, w = _points(labels, s)
        precision, recall, thresholds = precision_recall_curve(y, x, sample_weight=w)
        ax.plot(recall, precision, color=color, label=name)
        i = _point_at(thresholds, t)
        ax.plot(recall[i], precision[i], "o", color=color, markersize=8,
                label=f"threshold {t:.3f}: P {precision[i]:.3f} R {recall[i]:.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _png(figure)


def roc_curve_png(
    labels: np.ndarray | None,
    scores: Scores,
    threshold: float,
    title: str,
    baseline: tuple[str, Scores, float] | None = None,
) -> bytes:
    """True against false positive rate, the chosen threshold marked; a baseline's curve beside it."""
    figure, ax = _figure()
    curves = _curves(title, scores, threshold, baseline)
    for name, s, t, color in curves:
        y, x, w = _points(labels, s)
        fpr, tpr, thresholds = roc_curve(y, x, sample_weight=w)
        ax.plot(fpr, tpr, color=color, label=name)
        i = _point_at(thresholds, t)
        ax.plot(fpr[i], tpr[i], "o", color=color, markersize=8, label=f"threshold {t:.3f}: FPR {fpr[i]:.3f} TPR {tpr[i]:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="lightgray")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.02, 1), ylim=(0, 1.02), title="ROC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(figure)


def confusion_matrix_png(matrix: Sequence[Sequence[int]], threshold: float, title: str) -> bytes:
    """The 2x2 counts, rows true class, columns predicted class."""
    figure, ax = _figure((4.0, 3.6))
    counts = np.asarray(matrix, dtype=int)
    ax.imshow(counts, cmap="Blues")
    top = counts.max() or 1
    for (row, col), n in np.ndenumerate(counts):
        ax.text(col, row, f"{n}", ha="center", va="center", fontsize=14,
                color="white" if n > top / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="true",
           title=f"{title} at threshold {threshold:.3f}")
    return _png(figure)


def compare_metrics_png(candidate: Mapping[str, float], baseline: Mapping[str, float] | None, names: tuple[str, str]) -> bytes:
    """Grouped bars: the candidate beside the baseline on the same eval set."""
    figure, ax = _figure((6.0, 3.6))
    x = np.arange(len(PLOTTED_METRICS))
    bars = [(names[0], candidate, CANDIDATE)] + ([(names[1], baseline, BASELINE)] if baseline is not None else [])
    width = 0.8 / len(bars)
    for i, (name, values, color) in enumerate(bars):
        heights = [float(values[m]) for m in PLOTTED_METRICS]
        drawn = ax.bar(x + (i - (len(bars) - 1) / 2) * width, heights, width, label=name, color=color)
        ax.bar_label(drawn, fmt="%.3f", fontsize=7, padding=1)
    low = min(float(v[m]) for _, v, _ in bars for m in PLOTTED_METRICS)
    ax.set(xticks=x, xticklabels=list(PLOTTED_METRICS), ylim=(max(0.0, low - 0.1), 1.05), title="Same eval set")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, ncols=2, frameon=False)
    return _png(figure)


def history_png(rows: Sequence[Mapping[str, Any]], model: str) -> bytes:
    """The main metrics of every version of the model, rejected ones hollow; `rows` hold version, status, metrics."""
    figure, ax = _figure((6.0, 3.6))
    versions = [int(r["version"]) for r in rows]
    for metric, color in zip(("precision", "recall", "f1", "roc_auc"), ("tab:blue", "tab:orange", "tab:green", "tab:purple"),
                             strict=True):
        values = [float(r["metrics"][metric]) for r in rows]
        ax.plot(versions, values, "-", color=color, label=metric, alpha=0.7)
        for v, y, r in zip(versions, values, rows, strict=True):
            hollow = r["status"] == "rejected"
            ax.plot(v, y, "o", color=color, markerfacecolor="white" if hollow else color)
    for r in rows:
        if r["status"] == "production":
            ax.axvline(int(r["version"]), color="tab:green", alpha=0.2, linewidth=8)
    ax.set(xlabel="version", title=f"{model}: metrics by version (hollow: rejected, band: production)")
    ax.set_xticks(versions)
    ax.grid(alpha=0.3)
    ax.margins(y=0.15)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncols=4, frameon=False)
    return _png(figure)


# -- the step: every picture of a version, and its TensorBoard run -------------


class Baseline(BaseModel):
    """The version a candidate was judged against, and how it scored on the same eval set."""

    model_config = ConfigDict(frozen=True)

    version: int
    role: str
    """"production", or "last blessed" for a version never promoted."""
    report: EvalReport


class VersionPictures(BaseModel):
    model_config = ConfigDict(frozen=True)

    pictures: dict[str, Path]
    tensorboard_run: str
    tensorboard_dir: Path


def draw_pictures(
    trained: TrainedModel,
    eval_set: Dataset,
    evaluation: EvalReport,
    baseline: Baseline | None,
    store: ModelStore,
    version: int,
    runs_dir: Path,
    hparams: Mapping[str, Any],
) -> VersionPictures:
    """Curves, confusion matrix, the baseline beside it and all versions, kept beside the version; its TensorBoard run."""
    from aviary.report import history, write_pictures
    from aviary.tasks.evaluate import score_keras, score_version
    from aviary.tensorboard import log_version, run_name

    scored = score_keras(trained.path, eval_set)
    name = f"v{version}"
    other = None
    if baseline is not None:
        baseline_scores = score_version(store.version_dir(baseline.version), eval_set)
        other = (f"{baseline.role} v{baseline.version}", baseline_scores, baseline.report.threshold)
    rows: list[dict[str, Any]] = [
        {"version": r.version, "status": r.status, "metrics": r.metrics} for r in history(store) if r.version != version
    ]
    rows.append({"version": version, "status": "candidate", "metrics": evaluation.model_dump()})
    pngs = {
        "pr_curve": pr_curve_png(None, scored, evaluation.threshold, name, other),
        "roc_curve": roc_curve_png(None, scored, evaluation.threshold, name, other),
        "confusion_matrix": confusion_matrix_png(evaluation.confusion_matrix, evaluation.threshold, name),
        "versus_baseline": compare_metrics_png(
            evaluation.model_dump(), baseline.report.model_dump() if baseline else None, (name, other[0] if other else "")
        ),
        "history": history_png(rows, store.model),
    }
    logdir = log_version(runs_dir, store.model, version, trained.path.parent / "tensorboard", hparams,
                         {m: getattr(evaluation, m) for m in PLOTTED_METRICS}, scored.labels, scored.scores,
                         scored.weights)
    return VersionPictures(pictures=write_pictures(store, version, pngs), tensorboard_run=run_name(store.model, version),
                           tensorboard_dir=logdir)


@task(name="draw-pictures")
def draw_pictures_task(
    trained: TrainedModel,
    eval_set: Dataset,
    evaluation: EvalReport,
    baseline: Baseline | None,
    store: ModelStore,
    version: int,
    runs_dir: Path,
    hparams: dict[str, Any],
) -> VersionPictures:
    return draw_pictures(trained, eval_set, evaluation, baseline, store, version, runs_dir, hparams)
