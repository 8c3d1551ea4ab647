"""The model store: TF Serving's `<store>/<model>/<version>/` layout plus aliases and rejected records.

Numeric children are servable versions and nothing else: TF Serving ignores the other names,
so aliases, reservations and records of rejected versions live beside them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aviary.types import GoldenSet, VersionMetadata

ALIASES_FILE = "aliases.json"
RESERVED_DIR = ".reserved"
REJECTED_DIR = "rejected"
METADATA_FILE = "assets.extra/aviary.json"
GOLDEN_FILE = "assets.extra/aviary_golden.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class ModelStore:
    root: Path
    model: str

    @property
    def base(self) -> Path:
        return self.root / self.model

    def version_dir(self, version: int) -> Path:
        return self.base / str(version)

    def versions(self) -> list[int]:
        """Servable versions, oldest first."""
        if not self.base.is_dir():
            return []
        return sorted(int(p.name) for p in self.base.iterdir() if p.name.isdigit() and p.is_dir())

    def metadata(self, version: int) -> VersionMetadata:
        return VersionMetadata.model_validate_json((self.version_dir(version) / METADATA_FILE).read_bytes())

    def golden(self, version: int) -> GoldenSet:
        return GoldenSet.model_validate_json((self.version_dir(version) / GOLDEN_FILE).read_bytes())

    # -- aliases ---------------------------------------------------------
    def aliases(self) -> dict[str, int]:
        path = self.base / ALIASES_FILE
        if not path.exists():
            return {}
        return {k: int(v) for k, v in json.loads(path.read_text()).items() if v is not None}

    def set_aliases(self, **aliases: int | None) -> dict[str, int]:
        """Set (an int) or drop (None) aliases such as `production` and `canary`."""
        current = self.aliases()
        for name, version in aliases.items():
            if version is None:
                current.pop(name, None)
            elif version not in self.versions():
                raise ValueError(f"{self.base}: cannot point alias '{name}' at version {version}: not in the store")
            else:
                current[name] = version
        write_json_atomic(self.base / ALIASES_FILE, current)
        return current

    def baseline(self) -> int | None:
        """The version a candidate is judged against: production, else the last blessed one."""
        production = self.aliases().get("production")
        if production is not None:
            return production
        versions = self.versions()
        return versions[-1] if versions else None

    # -- versions --------------------------------------------------------
    def _taken(self) -> set[int]:
        taken = set(self.versions())
        for sub in (RESERVED_DIR, REJECTED_DIR):
            d = self.base / sub
            if d.is_dir():
                taken.update(int(p.name.split(".")[0]) for p in d.iterdir() if p.name.split(".")[0].isdigit())
        return taken

    def reserve_version(self, run_key: str) -> int:
        """Decide the version once per run: the same `run_key` gets the same number back.

        A reservation is an exclusive create, so two runs at once never share a number.
        """
        reserved = self.base / RESERVED_DIR
        reserved.mkdir(parents=True, exist_ok=True)
        for p in reserved.iterdir():
            if p.read_text() == run_key:
                return int(p.name)
        while True:
            version = max(self._taken(), default=0) + 1
            try:
                fd = os.open(reserved / str(version), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(run_key)
            return version

    def record_rejected(self, version: int, record: dict[str, Any]) -> Path:
        path = self.base / REJECTED_DIR / f"{version}.json"
        write_json_atomic(path, record)
        return path

    def claim_once(self, what: str, version: int) -> bool:
        """True the first time it is asked for (what, version), False ever after: for exactly-once side effects."""
        marks = self.base / ".once"
        marks.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(marks / f"{what}-{version}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def rejected(self, version: int) -> dict[str, Any] | None:
        path = self.base / REJECTED_DIR / f"{version}.json"
        return json.loads(path.read_text()) if path.exists() else None


class History:
    """Promotions and withdrawals of one model, oldest first: where `withdraw` finds the version to return to."""

    def __init__(self, store: ModelStore) -> None:
        self.path = store.base / "history.json"

    def events(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text()) if self.path.exists() else []

    def record(self, event: str, version: int, **details: Any) -> None:
        from datetime import UTC, datetime

        entry = {"event": event, "version": version, "at": datetime.now(UTC).isoformat(timespec="seconds"), **details}
        write_json_atomic(self.path, [*self.events(), entry])

    def previous_production(self, current: int | None) -> int | None:
        """The newest version promoted before `current` that was not itself withdrawn."""
        events = self.events()
        withdrawn = {e["version"] for e in events if e["event"] == "withdrawn"}
        for entry in reversed(events):
            v = entry["version"]
            if entry["event"] == "promoted" and v != current and v not in withdrawn:
                return int(v)
        return None
