from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aviary.store import ModelStore


def test_version_is_decided_once_per_run(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    assert store.reserve_version("run-a") == 1
    assert store.reserve_version("run-b") == 2
    assert store.reserve_version("run-a") == 1


def test_concurrent_runs_never_share_a_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(store.reserve_version, [f"run-{i}" for i in range(32)]))
    assert sorted(versions) == list(range(1, 33))


def test_rejected_versions_keep_their_number(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    (tmp_path / "circle" / "1").mkdir(parents=True)
    store.record_rejected(2, {"verdict": "no"})
    assert store.versions() == [1]
    assert store.rejected(2) == {"verdict": "no"}
    assert store.reserve_version("next") == 3


def test_aliases_point_only_at_versions_in_the_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    for v in (1, 2):
        (tmp_path / "circle" / str(v)).mkdir(parents=True)
    assert store.baseline() == 2, "the last blessed version stands in for production"
    store.set_aliases(production=1, canary=2)
    assert store.aliases() == {"production": 1, "canary": 2} and store.baseline() == 1
    store.set_aliases(canary=None)
    assert store.aliases() == {"production": 1}
    with pytest.raises(ValueError, match="version 9: not in the store"):
        store.set_aliases(production=9)


def test_claim_once_is_true_exactly_once(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda _: store.claim_once("exported-event", 3), range(16)))
    assert claims.count(True) == 1
    assert store.claim_once("exported-event", 4)
