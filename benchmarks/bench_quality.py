"""Model quality: the exported model beside scikit-learn baselines on the same split, one table per run.

Each data set is written as a CSV and goes through the pipeline's own steps with the default config:
ingest, split, train, evaluate (threshold), export. The exported SavedModel is then called through its
serving signature with the eval rows' raw values (strings for categories, numbers unscaled), as a client
would, and scored with ROC AUC and PR AUC. On the very same train/eval Parquet files: StandardScaler +
LogisticRegression (categories one-hot) and HistGradientBoostingClassifier (categories native).

    python benchmarks/bench_quality.py [--million-rows 1000000] [--only breast_cancer scales ...] [--split-seed 42]

`--split-seed` draws another train/eval split of the same data, to check that a default is not fitted to one split.

The goal: the exported model within 0.01 ROC AUC of the better baseline on every data set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.01


@dataclass(frozen=True)
class Case:
    name: str
    frame: pd.DataFrame
    features: tuple[str, ...]
    label: str
    categorical: tuple[str, ...] = ()
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def _labels(logit: np.ndarray, rng: np.random.Generator, positive_share: float) -> np.ndarray:
    """Bernoulli labels whose positive share is about `positive_share` (the intercept is solved for)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(logit + mid)))).mean() < positive_share:
            lo = mid
        else:
            hi = mid
    return (rng.random(len(logit)) < 1 / (1 + np.exp(-(logit + lo)))).astype(int)


def breast_cancer() -> Case:
    """scikit-learn's copy of the Wisconsin diagnostic data: 569 rows, 30 columns from 0.001 to 4000, names with spaces."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": "malignant"})
    frame["malignant"] = 1 - frame["malignant"]  # scikit-learn's 1 is benign; the rarer class is the positive
    features = tuple(str(c) for c in data.feature_names)
    return Case("breast_cancer", frame, features, "malignant", note="569 rows, 30 numeric, 37% positive")


def scales(rows: int = 600, seed: int = 1) -> Case:
    """A few hundred rows, eight numeric features on scales from 1e-3 to 4e3, an interaction and a curve.

    The signal is strong (ROC AUC near 0.95), as 120 eval rows measure a weak one too coarsely for a 0.01 goal.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, 8))
    scale = np.array([1e-3, 0.05, 1, 30, 200, 1e3, 4e3, 1e-2])
    logit = 1.2 * z[:, 0] - 0.9 * z[:, 1] + 0.8 * z[:, 2] * z[:, 3] + 0.7 * z[:, 4] ** 2 + 0.5 * z[:, 5] - 0.4 * z[:, 6]
    frame = pd.DataFrame(z * scale + scale * 3, columns=[f"sensor {i} (raw)" for i in range(8)])
    frame["fault"] = _labels(2.5 * logit, rng, 0.25)
    return Case("scales", frame, tuple(frame.columns[:-1]), "fault", note=f"{rows} rows, 8 numeric 1e-3..4e3, 25% positive")


def _mixed(rows: int, seed: int, positive: float, cities: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, 4))
    colours = np.array(["red", "green", "blue", "black", "white", "silver", "gold", "pink"])
    colour = rng.choice(len(colours), size=rows, p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
    city = np.minimum(rng.zipf(1.3, size=rows), cities) - 1
    member = rng.random(rows) < 0.4
    colour_effect = rng.normal(0, 0.8, len(colours))
    city_effect = rng.normal(0, 0.6, cities)
    logit = (
        1.0 * z[:, 0] + 0.6 * np.tanh(2 * z[:, 1]) - 0.5 * z[:, 2] * z[:, 0] + colour_effect[colour]
        + city_effect[city] + 0.7 * member + 0.3 * z[:, 3]
    )
    return pd.DataFrame(
        {
            "age": np.round(40 + 12 * z[:, 0]).astype(int),
            "income (EUR)": np.exp(10 + 0.5 * z[:, 1]),
            "visits": np.round(np.exp(1 + 0.3 * z[:, 2])).astype(int),
            "score": 500 + 100 * z[:, 3],
            "colour": colours[colour],
            "city": np.char.add("city-", city.astype(str)),
            "member": np.where(member, "yes", "no"),
            "bought": _labels(logit, rng, positive),
        }
    )


def categorical(rows: int = 5000, seed: int = 2) -> Case:
    frame = _mixed(rows, seed, positive=0.15, cities=400)
    return Case(
        "categorical", frame, tuple(frame.columns[:-1]), "bought", categorical=("colour", "city", "member"),
        note=f"{rows} rows, 4 numeric + 3 categorical (8, ~400 and 2 values), 15% positive",
    )


def imbalanced(rows: int = 50_000, seed: int = 3) -> Case:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, 10))
    logit = z[:, 0] + z[:, 1] * z[:, 2] + np.sin(2 * z[:, 3]) + 0.5 * z[:, 4:].sum(axis=1) / np.sqrt(6)
    frame = pd.DataFrame(z * np.logspace(-2, 3, 10), columns=[f"v{i}" for i in range(10)])
    frame["event"] = _labels(2 * logit, rng, 0.03)
    return Case("imbalanced", frame, tuple(frame.columns[:-1]), "event", note=f"{rows} rows, 10 numeric, 3% positive")


def million(rows: int = 1_000_000, seed: int = 4) -> Case:
    frame = _mixed(rows, seed, positive=0.2, cities=2000)
    return Case(
        "million", frame, tuple(frame.columns[:-1]), "bought", categorical=("colour", "city", "member"),
        note=f"{rows:,} rows, 4 numeric + 3 categorical (8, ~2000 and 2 values), 20% positive",
    )


CASES: dict[str, Callable[..., Case]] = {
    "breast_cancer": breast_cancer,
    "scales": scales,
    "categorical": categorical,
    "imbalanced": imbalanced,
    "million": million,
}


# -- the pipeline's model ---------------------------------------------------------------------------


def ours(case: Case, work: Path, split_seed: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, dict[str, float]]:
    """Train and export with the default config; score the eval rows through the serving signature."""
    from aviary.config import DataConfig, EvalConfig, ExportConfig, SplitConfig, TrainConfig
    from aviary.saved_model import predict_saved_model
    from aviary.tasks.evaluate import evaluate_model
    from aviary.tasks.export import export_model
    from aviary.tasks.ingest import ingest_csv
    from aviary.tasks.split import split_dataset
    from aviary.tasks.train import train_model
    from aviary.types import Verdict

    csv = work / f"{case.name}.csv"
    case.frame.to_csv(csv, index=False)
    extra = {"categorical": case.categorical} if case.categorical else {}
    data = DataConfig(path=csv, features=case.features, label=case.label, **extra)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    dataset = ingest_csv(data, work / "datasets")
    split = split_dataset(dataset, SplitConfig(seed=split_seed), work / "split")
    timings["prepare_s"] = time.perf_counter() - start
    start = time.perf_counter()
    trained = train_model(split.train, TrainConfig(), work / "run")
    timings["train_s"] = time.perf_counter() - start
    timings["epochs"] = trained.epochs_run
    evaluation = evaluate_model(trained, split.eval, EvalConfig())
    blessed = Verdict(blessed=True, reasons=("benchmark",))
    exported = export_model(trained, split.eval, evaluation, blessed, 1, ExportConfig(store=work / "store", model_name="bench"))
    train = pd.read_parquet(split.train.path)
    evaluation_rows = pd.read_parquet(split.eval.path)
    inputs = {f.column: f.input_name for f in trained.profile.features} if trained.profile else {}
    scores = predict_saved_model(exported.path, evaluation_rows, inputs)["probability"]
    return train, evaluation_rows, scores, timings


# -- baselines --------------------------------------------------------------------------------------


def baselines(case: Case, train: pd.DataFrame, evaluation: pd.DataFrame) -> dict[str, np.ndarray]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler, TargetEncoder

    numeric = [c for c in case.features if c not in case.categorical]
    categorical = list(case.categorical)

    # HistGB takes at most 255 categories natively; larger vocabularies get scikit-learn's target encoding.
    native = [c for c in categorical if train[c].nunique() <= 250]
    encoded = [c for c in categorical if c not in native]
    target = TargetEncoder().fit(train[encoded].astype(str), train[case.label]) if encoded else None

    def for_boosting(frame: pd.DataFrame, fitting: bool = False) -> pd.DataFrame:
        frame = frame[list(case.features)].copy()
        for c in native:
            frame[c] = pd.Categorical(frame[c].astype(str), categories=sorted(train[c].astype(str).unique()))
        if target is not None:
            values = frame[encoded].astype(str)
            # fit_transform cross-fits on the training rows, so their own labels do not leak into the codes
            frame[encoded] = target.fit_transform(values, train[case.label]) if fitting else target.transform(values)
        return frame

    logistic = make_pipeline(
        ColumnTransformer(
            [("numeric", StandardScaler(), numeric), ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical)]
        ),
        LogisticRegression(max_iter=2000),
    )
    y = train[case.label].astype(int).to_numpy()
    logistic.fit(train[list(case.features)].astype({c: str for c in categorical}), y)
    boosted = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    boosted.fit(for_boosting(train, fitting=True), y)
    return {
        "logistic": logistic.predict_proba(evaluation[list(case.features)].astype({c: str for c in categorical}))[:, 1],
        "hist_gb": boosted.predict_proba(for_boosting(evaluation))[:, 1],
    }


def run_case(case: Case, split_seed: int) -> dict[str, object]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    with tempfile.TemporaryDirectory(prefix=f"bench-quality-{case.name}-") as tmp:
        train, evaluation, scores, timings = ours(case, Path(tmp), split_seed)
    labels = evaluation[case.label].astype(int).to_numpy()
    others = baselines(case, train, evaluation)
    row: dict[str, object] = {"data set": case.name, "rows": len(case.frame), "note": case.note}
    for name, s in {"aviary": scores, **others}.items():
        row[f"{name} roc"] = roc_auc_score(labels, s)
        row[f"{name} pr"] = average_precision_score(labels, s)
    best = max(float(row["logistic roc"]), float(row["hist_gb roc"]))  # type: ignore[arg-type]
    row["gap"] = best - float(row["aviary roc"])  # type: ignore[arg-type]
    row.update(timings)
    return row


def table(rows: list[dict[str, object]]) -> str:
    head = "| data set | rows | aviary ROC / PR | LogReg ROC / PR | HistGB ROC / PR | gap to best | within 0.01 | train s | epochs |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['data set']} | | error: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['data set']} | {r['rows']:,} | {r['aviary roc']:.4f} / {r['aviary pr']:.4f} "
            f"| {r['logistic roc']:.4f} / {r['logistic pr']:.4f} | {r['hist_gb roc']:.4f} / {r['hist_gb pr']:.4f} "
            f"| {r['gap']:+.4f} | {'yes' if float(r['gap']) <= GOAL else 'NO'} | {r['train_s']:.1f} | {r['epochs']} |"  # type: ignore[arg-type]
        )
    notes = [f"- {r['data set']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join([*lines, "", *notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run these data sets only")
    parser.add_argument("--million-rows", type=int, default=1_000_000, help="rows of the large data set")
    parser.add_argument("--split-seed", type=int, default=42, help="seed of the train/eval split (42: the config's default)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    rows = []
    for name in args.only or list(CASES):
        case = CASES[name](rows=args.million_rows) if name == "million" else CASES[name]()
        try:
            rows.append(run_case(case, args.split_seed))
        except Exception as error:  # noqa: BLE001 - one failing data set must not hide the others' rows
            rows.append({"data set": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(f"split seed {args.split_seed}")
    print(table(rows))


if __name__ == "__main__":
    main()
