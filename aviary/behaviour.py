"""Behavioural cases: inputs with the class a model must give them, in unit tests and after every deploy.

The config lists them (`data.cases`) for any feature set, keyed by CSV column names; the example's
circle cases are the default when the features are the circle's `x` and `y`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Case(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: dict[str, float | str] = Field(description="One value per feature column, as the CSV writes it.")
    expect: Literal[0, 1] = Field(description="The class the model must give these inputs.")


# Deep inside the unit circle is class 1, far outside it class 0, whatever the threshold.
CIRCLE: tuple[Case, ...] = tuple(
    Case(inputs={"x": x, "y": y}, expect=expect)
    for (x, y), expect in (
        ((0.0, 0.0), 1),
        ((0.1, -0.1), 1),
        ((-0.2, 0.15), 1),
        ((1.45, 1.45), 0),
        ((-1.45, 1.4), 0),
        ((1.4, -1.45), 0),
    )
)
CIRCLE_FEATURES = ("x", "y")


def default_cases(features: tuple[str, ...]) -> tuple[Case, ...]:
    return CIRCLE if tuple(features) == CIRCLE_FEATURES else ()
