"""Cache keys for the steps whose inputs fully determine their output: ingest and training.

A key is made of what the step reads (the bytes of its input file), its slice of the config and the
source of its module, never of run ids or run directories. Ingest's output directory is part of its
key, as the Parquet file its result names lives there. So re-running retrain on unchanged data and
config reuses the earlier results (Prefect logs "Finished in state Cached(...)"), and any change to
the data, the config or the step's code computes afresh. Results are persisted under the runs
directory (`result_storage`), beside the run directories their paths point into: pruning one
without the other would leave a cached path to nothing; should that happen, the cached result whose
files are gone is dropped when its key is computed, and the step computes afresh (`_drop_if_dangling`).
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext
from pydantic import BaseModel

from aviary.files import file_digest

RESULTS_DIR = "results"


def result_storage(runs_dir: Path) -> Path:
    """Where cached results live: `<runs_dir>/results` (a path, which Prefect takes as local storage; no block to save)."""
    return (runs_dir / RESULTS_DIR).resolve()


def _source_digest(context: TaskRunContext) -> str:
    """The task's whole module: a change to the step's code (not only its thin task) invalidates the cache."""
    source = inspect.getsourcefile(context.task.fn)
    return file_digest(Path(source)) if source else context.task.name


def _key(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        text = part.model_dump_json() if isinstance(part, BaseModel) else str(part)
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _drop_if_dangling(context: TaskRunContext, key: str) -> str:
    """A cached result that names a file no longer there is deleted, so this run recomputes it and caches it again."""
    from prefect.filesystems import LocalFileSystem

    store = getattr(context, "result_store", None)
    if store is None or not isinstance(store.result_storage, LocalFileSystem) or not store.result_storage.basepath:
        return key
    try:
        if not store.exists(key):
            return key
        value = store.read(key).result
    except Exception:  # noqa: BLE001 - an unreadable record is recomputed like a missing one
        value = None
    paths = [v for v in vars(value).values() if isinstance(v, Path)] if isinstance(value, BaseModel) else []
    if value is None or not all(p.exists() for p in paths):
        (Path(store.result_storage.basepath).expanduser() / key).unlink(missing_ok=True)
    return key


def ingest_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The CSV's bytes and path, the data config and the output directory; no key (no cache) for a missing file."""
    cfg = parameters["cfg"]
    path = Path(cfg.path)
    if not path.is_file():
        return None
    work_dir = Path(parameters["work_dir"]).resolve()
    return _drop_if_dangling(context, _key("ingest-csv", file_digest(path), path.resolve(), cfg, work_dir, _source_digest(context)))


def train_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The training set's bytes and columns and the training config; the run directory is left out on purpose."""
    train = parameters["train"]
    if not Path(train.path).is_file():
        return None
    key = _key("train-model", file_digest(train.path), train.features, train.label, parameters["cfg"], _source_digest(context))
    return _drop_if_dangling(context, key)
