"""An eval set's labels and scores, gathered batch by batch in memory that stops growing with the rows.

Up to `EXACT_ROWS` rows, every (label, score) pair is kept (1 + 4 bytes a row) and the metrics are
scikit-learn's, exact. Past it, each score is rounded down to one of about 65,000 fixed levels
(`LEVELS`, even steps in log-odds between -18 and 18, so as fine near 0 and 1 as in the middle)
and only the count of rows per (label, level) is kept: 1 MiB, however many rows. The metrics are
then scikit-learn's over those levels, with the counts as sample weights. At a threshold that is a
level (the chosen threshold always is), the confusion matrix, precision, recall, f1 and accuracy
are exact, since `score >= level` holds for exactly the rows counted at or above it; ROC AUC and
average precision count the scores within one level as tied, which moves them by less than the
share of positive-negative pairs that fall within one level (about 1e-4 for a model whose scores
spread over the range).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

EXACT_ROWS = 1_000_000
"""Rows up to which every score is kept and the metrics are exact: 5 MiB, and about 50 MiB of
scikit-learn's sorting and curves on top while they are computed."""

LOGIT_RANGE = 18.0
"""float32 sigmoid saturates at 1.0 just past logit 17: the levels reach both ends."""

LEVELS: np.ndarray = np.unique(
    np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-np.linspace(-LOGIT_RANGE, LOGIT_RANGE, 1 << 16)))]).astype(np.float32)
)
"""Lower edges of the score levels, ascending, as float32 (the scores' own type, so comparisons agree)."""


@dataclass(frozen=True)
class Scored:
    """Labels (int8) and scores (float32), one entry per row, or per (label, level) with `weights` counting its rows."""

    labels: np.ndarray
    scores: np.ndarray
    weights: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.labels) if self.weights is None else int(self.weights.sum())

    @property
    def exact(self) -> bool:
        return self.weights is None


def level_index(scores: np.ndarray) -> np.ndarray:
    """The level each score falls in: the last edge at or below it (scores below 0 count as 0)."""
    return np.maximum(np.searchsorted(LEVELS, scores, side="right") - 1, 0)


class ScoreCollector:
    """Feed it (labels, scores) batch by batch; `result()` is a `Scored`, exact while rows <= `exact_rows`."""

    def __init__(self, exact_rows: int = EXACT_ROWS) -> None:
        self.exact_rows = exact_rows
        self.rows = 0
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._counts: np.ndarray | None = None  # (2, levels) rows per label and level, once past exact_rows

    def add(self, labels: np.ndarray, scores: np.ndarray) -> None:
        labels = np.asarray(labels).reshape(-1).astype(np.int8)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(labels) != len(scores):
            raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
        self.rows += len(labels)
        if self._counts is None:
            self._labels.append(labels)
            self._scores.append(scores)
            if self.rows <= self.exact_rows:
                return
            labels, scores = np.concatenate(self._labels), np.concatenate(self._scores)
            self._labels, self._scores = [], []
            self._counts = np.zeros((2, len(LEVELS)), dtype=np.int64)
        flat = level_index(scores) + (labels != 0) * len(LEVELS)
        self._counts += np.bincount(flat, minlength=2 * len(LEVELS)).reshape(2, len(LEVELS))

    def result(self) -> Scored:
        if self._counts is None:
            if not self._labels:
                return Scored(np.empty(0, dtype=np.int8), np.empty(0, dtype=np.float32))
            return Scored(np.concatenate(self._labels), np.concatenate(self._scores))
        counts = self._counts.reshape(-1)
        kept = counts > 0
        labels = np.repeat(np.array([0, 1], dtype=np.int8), len(LEVELS))[kept]
        return Scored(labels, np.tile(LEVELS, 2)[kept], counts[kept])


def collect(batches: Iterable[tuple[np.ndarray, np.ndarray]], exact_rows: int = EXACT_ROWS) -> Scored:
    """A `Scored` from (labels, scores) pairs."""
    collector = ScoreCollector(exact_rows)
    for labels, scores in batches:
        collector.add(labels, scores)
    return collector.result()
