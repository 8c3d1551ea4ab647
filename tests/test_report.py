"""Version records, statuses and the side-by-side comparison, over a store written by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aviary.report import (
    compare_markdown,
    read_pictures,
    verdict_markdown,
    version_record,
    write_pictures,
)
from aviary.store import METADATA_FILE, History, ModelStore

PNG = b"\x89PNG\r\n\x1a\nfake"


def metrics(precision: float, threshold: float) -> dict[str, Any]:
    return {"precision": precision, "recall": 0.9, "f1": 0.9, "accuracy": 0.9, "roc_auc": 0.97, "pr_auc": 0.96,
            "threshold": threshold, "confusion_matrix": [[50, 2], [3, 45]], "rows": 100}


def exported(store: ModelStore, version: int, **extra: Any) -> None:
    path = store.version_dir(version) / METADATA_FILE
    path.parent.mkdir(parents=True)
    data = {"model": "circle", "version": version, "data_fingerprint": f"fp{version}", "data_source": "data/circle.csv",
            "metrics": metrics(0.91, 0.4), "threshold": 0.4,
            "verdict": {"blessed": True, "reasons": ["precision 0.9100 >= floor 0.80"], "failed": []},
            "config": {"train": {"epochs": 40, "learning_rate": 0.01}, "rollout": {"target": "local"}},
            "exported_at": "2026-11-30T00:00:00+00:00", **extra}
    path.write_text(json.dumps(data))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path, "circle")
    exported(store, 1)
    exported(store, 2, config={"train": {"epochs": 10, "learning_rate": 0.01}},
             data_profile={"rows": 900, "label_counts": {"0": 600, "1": 300},
                           "features": [{"column": "x", "mean": 0.01, "std": 0.5}]})
    store.record_rejected(3, {"version": 3, "data_fingerprint": "fp2", "metrics": metrics(0.7, 0.5),
                              "verdict": {"blessed": False, "reasons": ["precision 0.7000 < floor 0.80",
                                                                        "recall 0.9000 >= floor 0.80"],
                                          "failed": ["precision 0.7000 < floor 0.80"]}})
    store.set_aliases(production=2)
    History(store).record("promoted", 1)
    History(store).record("promoted", 2, replaced=1)
    rollouts = store.base / "rollouts" / "2"
    rollouts.mkdir(parents=True)
    (rollouts / "20261130T000000Z.json").write_text(json.dumps({"outcome": "Promoted", "reason": "checks passed"}))
    (rollouts / "20261130T000000Z.png").write_bytes(PNG)
    return store


def test_each_version_says_what_became_of_it(store: ModelStore) -> None:
    assert [version_record(store, v).status for v in (1, 2, 3)] == ["previously production", "production", "rejected"]
    with pytest.raises(ValueError, match=r"no version 7 \(known: v1, v2, v3\)$"):
        version_record(store, 7)


def test_two_versions_side_by_side(store: ModelStore) -> None:
    write_pictures(store, 2, {"pr_curve": PNG})
    text = compare_markdown(store, 2, 3)
    assert text.startswith("# circle: v2 beside v3\n")
    assert "| status | production | rejected |" in text
    assert "| precision | 0.9100 | 0.7000 | -0.2100 |" in text
    assert "| threshold | 0.4000 | 0.5000 | +0.1000 |" in text
    assert "| fingerprint | fp2 | fp2 |" in text and "Same data." in text
    assert "| rows | 900 | – |" in text and "| x mean | 0.0100 | – |" in text
    assert "- ❌ precision 0.7000 < floor 0.80" in text and "- ✅ recall 0.9000 >= floor 0.80" in text
    assert "**v2**: Promoted (checks passed)" in text and "**v3**: no rollout record" in text
    assert text.count("data:image/png;base64,") == 2  # v2's rollout picture and its PR curve; v3 has none

    one = compare_markdown(store, 1, 2, images=False)
    assert "| **train.epochs** | 40 | 10 |" in one and "| train.learning_rate | 0.0100 | 0.0100 |" in one
    assert "rollout.target" not in one  # the training config only
    assert "**Different data.**" in one and "data:image" not in one


def test_a_version_from_before_features_mapped_to_kinds_compares_as_it_reads_today(store: ModelStore) -> None:
    exported(store, 4, config={"data": {"features": ["x", "code"], "categorical": ["code"]}})
    exported(store, 5, config={"data": {"features": {"x": "auto", "code": "categorical"}}})
    text = compare_markdown(store, 4, 5, images=False)
    assert "| data.features.code | categorical | categorical |" in text
    assert "**data" not in text  # no difference in bold


def test_pictures_are_replaced_whole(store: ModelStore) -> None:
    write_pictures(store, 3, {"pr_curve": PNG, "roc_curve": PNG})
    write_pictures(store, 3, {"pr_curve": PNG + b"2"})
    assert read_pictures(store, 3) == {"pr_curve": PNG + b"2"}
    assert [p.name for p in (store.base / "reports").iterdir()] == ["3"]  # no temporary or old folder left


def test_the_verdict_sets_failing_rules_apart() -> None:
    text = verdict_markdown("circle", 3, False, ["precision 0.7000 < floor 0.80", "recall 0.9000 >= floor 0.80"],
                            ["precision 0.7000 < floor 0.80"])
    assert text == ("# circle v3: rejected\n\n**Failed**\n\n- ❌ **precision 0.7000 < floor 0.80**\n\n"
                    "**Passed**\n\n- ✅ recall 0.9000 >= floor 0.80\n")
