import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aviary import durable
from aviary.store import History, ModelStore, StoreError


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


# -- faults: dangling aliases, corrupt files, crashed writers, durability ------------------------


def test_an_alias_to_a_missing_version_is_refused_naming_aliases_json(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    (tmp_path / "circle" / "1").mkdir(parents=True)
    store.aliases_file.write_text('{"production": 9}')
    with pytest.raises(StoreError, match=r"circle/aliases.json: alias 'production' points at version 9, which is not "
                                         r"in the store \(versions: 1\); nothing was changed"):
        store.production()
    assert store.aliases_file.read_text() == '{"production": 9}'
    store.set_aliases(production=1)  # the way to fix it
    assert store.production() == 1


@pytest.mark.parametrize("content", ["{not json", '["production", 1]', '{"production": "v1"}'])
def test_a_corrupt_aliases_file_is_named_in_one_line(tmp_path: Path, content: str) -> None:
    store = ModelStore(tmp_path, "circle")
    (tmp_path / "circle").mkdir()
    store.aliases_file.write_text(content)
    with pytest.raises(StoreError, match=r"circle/aliases.json: .*restore it from a backup or remove it") as caught:
        store.aliases()
    assert "\n" not in str(caught.value)


def test_a_corrupt_history_is_named(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    (tmp_path / "circle").mkdir()
    (tmp_path / "circle" / "history.json").write_text("{}")
    with pytest.raises(StoreError, match="history.json: the history must be a list"):
        History(store).events()


def test_temps_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    base = tmp_path / "circle"
    (base / "1").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        killed_export = base / f".tmp-2-{dead.pid}-abc123"
        running_export = base / f".tmp-3-{live.pid}-def456"
        old_layout = base / ".tmp-4-xyz"
        for d in (killed_export, running_export, old_layout):
            (d / "variables").mkdir(parents=True)
        killed_write = base / f".tmp-aliases.json-{dead.pid}-q1w2"
        killed_write.write_text("{")
        os.utime(old_layout, (time.time() - 2 * 3600, time.time() - 2 * 3600))
        removed = store.remove_stale_temps()
        assert sorted(removed) == sorted([killed_export, old_layout, killed_write])
        assert running_export.is_dir() and store.versions() == [1]
    finally:
        live.kill()
        live.wait()


def test_every_commit_is_fsynced_before_its_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path, "circle")
    (tmp_path / "circle" / "1").mkdir(parents=True)
    log: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        log.append(("rename", str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "rename", rename)
    store.set_aliases(production=1)
    History(store).record("promoted", 1)
    for name in ("aliases.json", "history.json"):
        final = str(tmp_path / "circle" / name)
        at = log.index(("rename", final))
        assert log[at - 1][0] == "fsync" and Path(log[at - 1][1]).name.startswith(f".tmp-{name}-")
        assert log[at + 1] == ("fsync", str(tmp_path / "circle"))


def test_concurrent_writers_of_one_file_never_share_a_temp_name(tmp_path: Path) -> None:
    target = tmp_path / "models.json"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: durable.write_json_atomic(target, {"writer": i}), range(32)))
    assert json.loads(target.read_text())["writer"] in range(32)
    assert [p.name for p in tmp_path.iterdir()] == ["models.json"]


def test_marks_record_what_happened_durably(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "circle")
    assert store.marked("deployed", 3) is None and store.marked_versions("deployed") == []
    store.mark("deployed", 3, key="aviary.model.circle.3", phase="Promoted")
    store.mark("deployed", 12)
    assert store.marked("deployed", 3) == {"what": "deployed", "version": 3, "key": "aviary.model.circle.3",
                                           "phase": "Promoted"}
    assert store.marked_versions("deployed") == [3, 12]
    store.unmark("deployed", 3)
    assert store.marked_versions("deployed") == [12]
