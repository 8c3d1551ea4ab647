"""Fixtures of the rollout tests on the local target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aviary.config import PipelineConfig
from aviary.targets.local import LocalTarget
from tests.helpers import free_port


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[PipelineConfig]:
    config = PipelineConfig.model_validate(
        {
            "export": {"store": tmp_path / "store", "golden_rows": 60, "warmup_records": 5},
            "rollout": {
                "target": "local",
                "ready_timeout_s": 60,
                "lock_timeout_s": 0,
                "check": {"p95_budget_ms": 2000},
                "local": {"rest_port": free_port(), "grpc_port": free_port(), "state_dir": tmp_path / "serving",
                          "grace_s": 0.2},
                # No clients here: the golden-set check alone decides (test_canary_local has live traffic).
                "canary": {"steps": []},
            },
        }
    )
    yield config
    LocalTarget(config.rollout.local, config.export.store).stop()
