"""prefect.yaml as data: load it, and re-target its deployments at another work pool.

`prefect deploy --all` ignores its `--pool` option when it deploys several deployments, so the
Kubernetes variant is the same file with each deployment's `work_pool` and `pull` swapped for the
ones under `definitions`. One file, so the two variants cannot drift apart.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"
POOLS = ("process", "kubernetes")
"""Work pools the file defines, by name; the first is the default."""


def load(path: Path = PREFECT_YAML) -> dict[str, Any]:
    """The parsed file; anchors and aliases resolved."""
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a mapping")
    return doc


def for_pool(doc: dict[str, Any], pool: str) -> dict[str, Any]:
    """A copy of `doc` whose deployments all run on `pool`, with that pool's job variables and pull steps."""
    definitions = doc.get("definitions", {})
    pools = definitions.get("work_pools", {})
    if pool not in pools:
        raise ValueError(f"work pool {pool!r} is not under definitions.work_pools (have: {', '.join(pools)})")
    out = copy.deepcopy(doc)
    pull = definitions.get("pull", {}).get(pool)
    for deployment in out.get("deployments", []):
        deployment["work_pool"] = copy.deepcopy(pools[pool])
        if pull is not None:
            deployment["pull"] = copy.deepcopy(pull)
    return out


def write_for_pool(pool: str, out_dir: Path, source: Path = PREFECT_YAML) -> Path:
    """The file to hand `prefect deploy --prefect-file`: the source itself for the default pool."""
    if pool == POOLS[0]:
        return source
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"prefect.{pool}.yaml"
    target.write_text(yaml.safe_dump(for_pool(load(source), pool), sort_keys=False))
    return target


def model_names(doc: dict[str, Any]) -> set[str]:
    """Model names the deployments' parameters mention, plus the config's default: the limits the stack creates."""
    from aviary.config import ExportConfig

    names = {ExportConfig().model_name}
    for deployment in doc.get("deployments", []):
        parameters = deployment.get("parameters", {})
        for named in (parameters.get("config", {}).get("export", {}), parameters):  # retrain's form, the rollouts'
            if "{{" not in str(named.get("model_name", "{{")):
                names.add(named["model_name"])
    return names
