"""Behavioural cases every circle model must get right, in unit tests and after every deploy."""

from __future__ import annotations

# Deep inside the unit circle is class 1, far outside it class 0, whatever the threshold.
CASES: tuple[tuple[dict[str, float], int], ...] = (
    ({"x": 0.0, "y": 0.0}, 1),
    ({"x": 0.1, "y": -0.1}, 1),
    ({"x": -0.2, "y": 0.15}, 1),
    ({"x": 1.45, "y": 1.45}, 0),
    ({"x": -1.45, "y": 1.4}, 0),
    ({"x": 1.4, "y": -1.45}, 0),
)
FEATURES = ("x", "y")


def applies_to(features: tuple[str, ...] | list[str]) -> bool:
    return tuple(features) == FEATURES
