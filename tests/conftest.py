"""Shared fixtures: small circle data sets and one trained model per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from aviary.config import DataConfig, SplitConfig
from aviary.types import Split, TrainedModel
from tests.helpers import FAST_TRAIN, circle_frame, parquet_dataset


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

    # A loaded 2-core machine can take over 30 s (the default) to start it.
    with prefect_test_harness(server_startup_timeout=120), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture
def data_config() -> DataConfig:
    return DataConfig(min_rows=10)

