"""An ordinary tabular CSV end to end: a header with spaces, a text column, served raw by the local model server."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from aviary.flows.retrain import main
from aviary.store import ModelStore
from tests.helpers import free_port

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

FEATURES = ["mean radius", "texture (mm)", "colour"]


def shop_csv(path: Path, rows: int = 1200, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    radius = rng.normal(14.0, 3.5, rows)
    texture = rng.normal(0.02, 0.01, rows)
    colour = rng.choice(["red", "green", "blue"], rows, p=[0.5, 0.3, 0.2])
    logit = 1.5 * (radius - 14.0) + 2.5 * (colour == "red") - 1.2 + 80 * (texture - 0.02)
    frame = pd.DataFrame({"mean radius": radius, "texture (mm)": texture, "colour": colour})
    frame["malignant"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(path, index=False)
    return path


def test_a_csv_with_spaces_and_text_is_served_on_raw_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aviary.config import LocalConfig
    from aviary.targets.local import LocalTarget

    csv = shop_csv(tmp_path / "cells.csv")
    local = {"rest_port": free_port(), "grpc_port": free_port(), "state_dir": str(tmp_path / "serving")}
    cfg = {
        "data": {
            "features": FEATURES,
            "label": "malignant",
            "cases": [
                {"inputs": {"mean radius": 25.0, "texture (mm)": 0.02, "colour": "red"}, "expect": 1},
                {"inputs": {"mean radius": 5.0, "texture (mm)": 0.02, "colour": "blue"}, "expect": 0},
            ],
        },
        "train": {"epochs": 30, "seed": 3},
        "gate": {"min_precision": 0.6, "min_recall": 0.6},
        "export": {"model_name": "cells", "golden_rows": 40, "warmup_records": 5},
        "rollout": {"target": "local", "local": local, "check": {"p95_budget_ms": 2000}},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    try:
        code = main(["--data", str(csv), "--store", str(tmp_path / "store"), "--runs-dir", str(tmp_path / "runs"),
                     "--config", str(tmp_path / "cfg.json")])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "cells v1: BLESSED" in out and "rollout: v1 Promoted" in out
        assert "inputs: 'mean radius' is mean_radius, 'texture (mm)' is texture_mm" in out

        # The printed curl line works as printed: real input names, a real eval row.
        curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
        body, url = shlex.split(curl)[3], shlex.split(curl)[4]
        example = json.loads(body)["instances"][0]
        assert set(example) == {"mean_radius", "texture_mm", "colour"} and isinstance(example["colour"], str)
        assert requests.post(url, data=body, timeout=10).status_code == 200

        rest = f"http://127.0.0.1:{local['rest_port']}/v1/models/cells"
        metadata = requests.get(f"{rest}/metadata", timeout=10).json()
        inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
        assert {name: spec["dtype"] for name, spec in inputs.items()} == {
            "mean_radius": "DT_FLOAT", "texture_mm": "DT_FLOAT", "colour": "DT_STRING"
        }
        answer = requests.post(
            f"{rest}:predict",
            json={"instances": [
                {"mean_radius": 25.0, "texture_mm": 0.02, "colour": "red"},
                {"mean_radius": 5.0, "texture_mm": 0.02, "colour": "blue"},
                {"mean_radius": 14.0, "texture_mm": 0.02, "colour": "never seen before"},
                {"mean_radius": 1e30, "texture_mm": -1e30, "colour": ""},
            ]},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [p["class"] for p in predictions[:2]] == [1, 0]
        assert all(0.0 <= p["probability"] <= 1.0 for p in predictions), "unseen, missing and extreme values answer"

        meta = ModelStore(tmp_path / "store", "cells").metadata(1)
        assert meta.inputs["texture (mm)"] == "texture_mm" and meta.profile is not None
        assert re.search(r"mean_radius", json.dumps(meta.model_dump(mode="json")))
    finally:
        LocalTarget(LocalConfig.model_validate(local), tmp_path / "store").stop()
