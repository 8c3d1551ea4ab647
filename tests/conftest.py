"""Shared fixtures: small circle data sets and one trained model per session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd
import pytest

from aviary.config import DataConfig, PipelineConfig, SplitConfig, TrainConfig
from aviary.types import Dataset, Split, TrainedModel

FAST_TRAIN = TrainConfig(epochs=25, batch_size=32, learning_rate=0.02, patience=5, seed=7)


def circle_frame(rows: int, seed: int) -> pd.DataFrame:
    from aviary.data.generate import generate

    return generate(rows=rows, seed=seed, noise=0.0)


def small_pipeline(tmp_path: Path, data: Path, **sections: dict[str, Any]) -> PipelineConfig:
    """The pipeline on small data with fast training, writing under `tmp_path`; `sections` override config parts."""
    base: dict[str, Any] = {
        "data": {"path": data, "min_rows": 100},
        "train": FAST_TRAIN.model_dump(),
        "export": {"store": tmp_path / "store", "warmup_records": 10, "golden_rows": 40},
        "runs_dir": tmp_path / "runs",
        "rollout": {"target": "none"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return PipelineConfig.model_validate(base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parquet_dataset(frame: pd.DataFrame, path: Path, fingerprint: str = "test") -> Dataset:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return Dataset(path=path, source=path, rows=len(frame), fingerprint=fingerprint, features=("x", "y"), label="class")


@pytest.fixture(scope="session")
def circle_split(tmp_path_factory: pytest.TempPathFactory) -> Split:
    from aviary.tasks.split import split_dataset

    root = tmp_path_factory.mktemp("circle")
    dataset = parquet_dataset(circle_frame(3000, seed=1), root / "all.parquet")
    return split_dataset(dataset, SplitConfig(eval_fraction=0.2, seed=3), root / "split")


@pytest.fixture(scope="session")
def trained(circle_split: Split, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    from aviary.tasks.train import train_model

    return train_model(circle_split.train, FAST_TRAIN, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect API for flow tests; heartbeats off, they cost a second a run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture
def data_config() -> DataConfig:
    return DataConfig(min_rows=10)

