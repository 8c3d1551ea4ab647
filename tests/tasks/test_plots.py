"""The pictures are real PNGs of the expected size, and the threshold mark sits on the curve's point for it."""

from __future__ import annotations

import io

import numpy as np

from aviary.tasks.plots import (
    compare_metrics_png,
    confusion_matrix_png,
    history_png,
    pr_curve_png,
    roc_curve_png,
)

PNG = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 400)
SCORES = np.clip(LABELS * 0.5 + RNG.random(400) * 0.5, 0, 1)
METRICS = {"precision": 0.9, "recall": 0.85, "f1": 0.87, "accuracy": 0.88, "roc_auc": 0.95, "pr_auc": 0.93}


def size(png: bytes) -> tuple[int, int]:
    from matplotlib.image import imread

    assert png.startswith(PNG)
    height, width = imread(io.BytesIO(png)).shape[:2]
    return width, height


def test_every_picture_is_a_png_of_its_size() -> None:
    assert size(pr_curve_png(LABELS, SCORES, 0.5, "v2", ("production v1", SCORES**2, 0.4))) == (500, 400)
    assert size(roc_curve_png(LABELS, SCORES, 0.5, "v2")) == (500, 400)
    assert size(confusion_matrix_png(((10, 2), (3, 12)), 0.5, "v2")) == (400, 360)
    assert size(compare_metrics_png(METRICS, {k: v - 0.05 for k, v in METRICS.items()}, ("v2", "production v1"))) == (600, 360)
    rows = [{"version": v, "status": s, "metrics": METRICS} for v, s in ((1, "production"), (2, "rejected"))]
    assert size(history_png(rows, "circle")) == (600, 360)


def test_the_threshold_is_marked_in_the_legend() -> None:
    from aviary.tasks import plots

    texts: list[str] = []
    real = plots._png

    def capture(figure: object) -> bytes:
        texts.extend(t.get_text() for t in figure.axes[0].get_legend().get_texts())  # type: ignore[attr-defined]
        return real(figure)

    plots._png = capture  # type: ignore[assignment]
    try:
        pr_curve_png(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), 0.35, "v2")
    finally:
        plots._png = real  # type: ignore[assignment]
    # At 0.35: tp=2 fp=1 -> precision 0.667, recall 1.0.
    assert texts == ["v2", "threshold 0.350: P 0.667 R 1.000"]
