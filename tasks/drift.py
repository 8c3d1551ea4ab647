"""Data checks against production, as TFX's example validator does them.

Each version records its training data's profile and, per numeric feature, the shares of its training rows
in the bins between its decile edges (plus a bin for missing values). A new training set is compared with
production's: a changed schema (feature set, kinds, label) is an error before anything is trained; drift is
measured per feature (population stability index over production's bins for numbers, Jensen-Shannon distance
between category frequencies for strings) and for the label balance, and becomes gate reasons that warn or block.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from aviary.config import DriftConfig
from aviary.dataio import open_parquet
from aviary.profile import DataProfile, FeatureKind, FeatureProfile
from aviary.types import DriftReport

SMOOTHING = 1e-4
"""Added to every share, so that an empty bin gives a large but finite PSI."""

OTHER = "\x00other"
"""The bucket of categories outside a profile's most frequent ones."""


class SchemaChangeError(ValueError):
    """The new training set's columns or kinds differ from production's. One line."""


# -- bins ------------------------------------------------------------------------------------------


def bin_edges(feature: FeatureProfile) -> list[float]:
    """Production's distinct interior decile edges: the bins are (-inf, e1), [e1, e2), ..., [ek, inf)."""
    return sorted({float(q) for q in feature.quantiles[1:-1] if math.isfinite(q)})


def bin_shares(parquet: Path, edges: Mapping[str, list[float]]) -> dict[str, list[float]]:
    """Per numeric column, the share of rows in each bin between `edges`, the missing ones last.

    One streaming pass over the Parquet file, in record batches, so memory does not grow with the rows.
    """
    counts = {column: np.zeros(len(e) + 2, dtype=np.int64) for column, e in edges.items()}
    if not counts:
        return {}
    rows = 0
    for batch in open_parquet(parquet).iter_batches(columns=list(counts), batch_size=65_536):
        rows += batch.num_rows
        for column in counts:
            # Cast in Arrow: nulls (and booleans' None) become NaN, booleans 0/1.
            numbers = pc.cast(batch.column(column), pa.float64()).to_numpy(zero_copy_only=False)
            missing = np.isnan(numbers)
            bins = np.searchsorted(np.asarray(edges[column], dtype=np.float64), numbers[~missing], side="right")
            counts[column][: len(edges[column]) + 1] += np.bincount(bins, minlength=len(edges[column]) + 1)
            counts[column][-1] += int(missing.sum())
    return {column: (c / rows).tolist() if rows else [0.0] * len(c) for column, c in counts.items()}


def reference(parquet: Path, profile: DataProfile) -> dict[str, Any]:
    """What a version stores about its training data for later drift checks: bins and shares per numeric feature."""
    edges = {f.column: bin_edges(f) for f in profile.features if f.kind != FeatureKind.CATEGORICAL and f.quantiles}
    shares = bin_shares(parquet, edges)
    return {column: {"edges": edges[column], "shares": shares[column]} for column in edges}


# -- measures --------------------------------------------------------------------------------------


def psi(expected: list[float], actual: list[float]) -> float:
    e = np.asarray(expected, dtype=np.float64) + SMOOTHING
    a = np.asarray(actual, dtype=np.float64) + SMOOTHING
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def category_shares(feature: FeatureProfile) -> dict[str, float]:
    """Shares of the profile's top categories, the rest and missing values, over all rows."""
    total = feature.count + feature.missing
    if not total:
        return {}
    shares = {value: n / total for value, n in feature.categories.items()}
    rest = feature.count - sum(feature.categories.values())
    if rest > 0:
        shares[OTHER] = rest / total
    if feature.missing:
        shares[""] = feature.missing / total
    return shares


def js_distance(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    from scipy.spatial.distance import jensenshannon

    keys = sorted(set(p) | set(q))
    if not keys:
        return 0.0
    return float(jensenshannon([p.get(k, 0.0) for k in keys], [q.get(k, 0.0) for k in keys], base=2))


# -- the check -------------------------------------------------------------------------------------


def schema_changes(new: DataProfile, production: DataProfile) -> list[str]:
    changes: list[str] = []
    if new.label != production.label:
        changes.append(f"label '{new.label}' was '{production.label}'")
    old = {f.column: f.kind for f in production.features}
    now = {f.column: f.kind for f in new.features}
    if added := [c for c in now if c not in old]:
        changes.append(f"new feature(s) {', '.join(repr(c) for c in added)}")
    if dropped := [c for c in old if c not in now]:
        changes.append(f"feature(s) {', '.join(repr(c) for c in dropped)} gone")
    changes += [f"'{c}' is {now[c]}, was {old[c]}" for c in now if c in old and now[c] != old[c]]
    return changes


def check_drift(
    new: DataProfile,
    train_parquet: Path,
    production: DataProfile | None,
    production_reference: Mapping[str, Any] | None,
    cfg: DriftConfig,
    baseline_version: int | None = None,
    baseline_role: str = "production",
) -> DriftReport:
    """Raises SchemaChangeError on a changed schema (unless allowed); otherwise drift as gate reasons."""
    if production is None:
        return DriftReport(baseline_version=None)
    where = f"{baseline_role} v{baseline_version}" if baseline_version is not None else baseline_role
    changes = schema_changes(new, production)
    if changes:
        if not cfg.allow_schema_change:
            raise SchemaChangeError(
                f"training data schema differs from {where}: {'; '.join(changes)} "
                "(set gate.drift.allow_schema_change to train a new feature set)"
            )
        return DriftReport(
            baseline_version=baseline_version,
            reasons=(f"schema changed from {where}: {'; '.join(changes)}",),
            schema_changed=True,
        )

    verb = "blocks" if cfg.action == "block" else "warning"
    reasons: list[str] = []
    drifted: list[str] = []
    scores: dict[str, float] = {}
    numeric_refs = dict(production_reference or {})
    by_column = {f.column: f for f in production.features}
    edges = {c: list(r["edges"]) for c, r in numeric_refs.items() if c in by_column}
    new_shares = bin_shares(train_parquet, edges)
    for feature in new.features:
        old = by_column[feature.column]
        if feature.kind == FeatureKind.CATEGORICAL:
            score, measure, limit = js_distance(category_shares(old), category_shares(feature)), "JS distance", cfg.js_limit
        elif feature.column in new_shares:
            score, measure, limit = psi(numeric_refs[feature.column]["shares"], new_shares[feature.column]), "PSI", cfg.psi_limit
        else:
            continue
        scores[feature.column] = round(score, 4)
        if score > limit:
            drifted.append(feature.column)
            reasons.append(f"drift ({verb}): '{feature.column}' {measure} {score:.3f} > {limit:g} against {where}")
    shift = new.positive_rate - production.positive_rate
    if abs(shift) > cfg.label_shift_limit:
        drifted.append(new.label)
        reasons.append(
            f"drift ({verb}): positive label share {new.positive_rate:.3f} moved {shift:+.3f} from {where}'s "
            f"{production.positive_rate:.3f} (limit {cfg.label_shift_limit:g})"
        )
    if not drifted:
        reasons.append(f"no drift against {where} ({len(scores)} features and the label balance checked)")
    return DriftReport(
        baseline_version=baseline_version,
        reasons=tuple(reasons),
        drifted=tuple(drifted),
        blocking=bool(drifted) and cfg.action == "block",
        scores=scores,
    )


@task(name="check-drift")
def check_drift_task(
    new: DataProfile,
    train_parquet: Path,
    production: DataProfile | None,
    production_reference: Mapping[str, Any] | None,
    cfg: DriftConfig,
    baseline_version: int | None = None,
    baseline_role: str = "production",
) -> DriftReport:
    return check_drift(new, train_parquet, production, production_reference, cfg, baseline_version, baseline_role)


@task(name="profile-reference")
def reference_task(parquet: Path, profile: DataProfile) -> dict[str, Any]:
    return reference(parquet, profile)
