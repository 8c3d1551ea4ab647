"""What a training set looks like: its schema and statistics, computed once while the data streams past.

Ingest computes the profile of the training split; training builds its preprocessing layers from it
(normalization from mean and variance, lookups from vocabularies), so no second pass over the data is
needed; the store keeps it with the version, and the gate compares a new profile with production's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

_INVALID = re.compile(r"[^A-Za-z0-9_]+")
_VALID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class FeatureKind(StrEnum):
    NUMERIC = "numeric"  # float columns: normalized
    INTEGER = "integer"  # integer columns: normalized like numerics unless declared categorical
    BOOLEAN = "boolean"  # true/false: 0/1
    CATEGORICAL = "categorical"  # strings (or declared integer codes): a vocabulary plus an out-of-vocabulary bucket


class FeatureProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str = Field(description="The column's name in the CSV header, as written.")
    input_name: str = Field(description="The SavedModel input that carries it: a valid TF Serving input name.")
    kind: FeatureKind
    count: int = Field(description="Non-missing values.")
    missing: int = Field(0, description="Missing values (empty cells, NaN).")
    minimum: float | None = None
    maximum: float | None = None
    mean: float | None = None
    std: float | None = None
    categories: dict[str, int] = Field(
        default_factory=dict, description="Most frequent values with their counts (categorical only), most frequent first."
    )
    distinct: int | None = Field(None, description="Distinct non-missing values, where counted.")
    quantiles: tuple[float, ...] = Field(
        (), description="Decile edges (0%, 10%, ..., 100%) of a seeded sample, for drift checks (numeric only)."
    )

    @property
    def missing_rate(self) -> float:
        total = self.count + self.missing
        return self.missing / total if total else 0.0


class DataProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int
    features: tuple[FeatureProfile, ...]
    label: str
    label_counts: dict[int, int] = Field(description="Rows per class after label mapping (0 and 1).")

    @property
    def positive_rate(self) -> float:
        return self.label_counts.get(1, 0) / self.rows if self.rows else 0.0

    def feature(self, column: str) -> FeatureProfile:
        for profile in self.features:
            if profile.column == column:
                return profile
        raise KeyError(column)


def input_names(columns: Iterable[str]) -> dict[str, str]:
    """Deterministic, valid, distinct TF Serving input names for CSV column names.

    Anything but letters, digits and `_` becomes `_`; a leading digit (or an empty result) gets an `f_`
    prefix. Valid names are kept as they are; a mapped name that collides with another gets `_2`, `_3`, ...
    Names are given in sorted order, so the mapping does not depend on the columns' order (a server that
    stores the features as JSONB sorts them).
    """
    columns = list(columns)
    names: dict[str, str] = {}
    taken: set[str] = set()
    for column in sorted(c for c in columns if _VALID.fullmatch(c)):
        if column.lower() not in taken:
            names[column] = column
            taken.add(column.lower())
    for column in sorted(c for c in columns if c not in names):
        base = _INVALID.sub("_", column.strip()).strip("_") or "f"
        if not base[0].isalpha():
            base = f"f_{base}"
        name, n = base, 2
        while name.lower() in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name.lower())
        names[column] = name
    return {column: names[column] for column in columns}
