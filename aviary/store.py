"""The model store: TF Serving's `<store>/<model>/<version>/` layout plus aliases and rejected records.

Numeric children are servable versions and nothing else: TF Serving ignores the other names,
so aliases, reservations, marks and records of rejected versions live beside them. Every file that
commits something (a version, an alias, the history, a mark) is fsynced with its directory before
the rename that makes it visible (`aviary.durable`), so a crash leaves the old state or the new one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aviary.durable import fsync_dir, remove_stale_temps, write_json_atomic
from aviary.types import GoldenSet, VersionMetadata

ALIASES_FILE = "aliases.json"
RESERVED_DIR = ".reserved"
REJECTED_DIR = "rejected"
METADATA_FILE = "assets.extra/aviary.json"
GOLDEN_FILE = "assets.extra/aviary_golden.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MARKS_DIR = ".once"
STALE_TEMP_AGE_S = 3600.0
"""Temp names without an owner pid (written before pids were part of them) are removed once this old."""

__all__ = ["ModelStore", "History", "StoreError", "write_json_atomic"]


class StoreError(ValueError):
    """The store holds something that cannot be used as it is; the message names the file and what to do."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StoreError(f"{path}: unreadable {what} ({' '.join(str(error).split())}); "
                         "restore it from a backup or remove it") from None


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
    @property
    def aliases_file(self) -> Path:
        return self.base / ALIASES_FILE

    def _raw_aliases(self) -> dict[str, int]:
        path = self.aliases_file
        if not path.exists():
            return {}
        data = _read_json(path, "aliases")
        try:
            return {str(k): int(v) for k, v in data.items() if v is not None}
        except (AttributeError, TypeError, ValueError):
            raise StoreError(f"{path}: aliases must map names to version numbers, got {data!r:.200}; "
                             "restore it from a backup or remove it") from None

    def aliases(self) -> dict[str, int]:
        """Aliases such as `production` and `canary`; one pointing at a version not in the store is refused."""
        aliases = self._raw_aliases()
        versions = self.versions()
        for name, version in aliases.items():
            if version not in versions:
                raise StoreError(
                    f"{self.aliases_file}: alias '{name}' points at version {version}, which is not in the store "
                    f"(versions: {', '.join(map(str, versions)) or 'none'}); nothing was changed: "
                    f"restore {self.version_dir(version)} or fix the alias"
                )
        return aliases

    def set_aliases(self, **aliases: int | None) -> dict[str, int]:
        """Set (an int) or drop (None) aliases such as `production` and `canary`."""
        current = self._raw_aliases()
        for name, version in aliases.items():
            if version is None:
                current.pop(name, None)
            elif version not in self.versions():
                raise StoreError(f"{self.aliases_file}: cannot point alias '{name}' at version {version}: not in the store")
            else:
                current[name] = version
        write_json_atomic(self.aliases_file, current, "aliases")
        return current

    def production(self) -> int | None:
        """The production version; refused with a line naming aliases.json when it is not in the store."""
        return self.aliases().get("production")

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
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(reserved)
            return version

    def remove_stale_temps(self) -> list[Path]:
        """Temp directories and files that killed writers left in the store; a live writer's are kept."""
        return remove_stale_temps(self.base, STALE_TEMP_AGE_S)

    def record_rejected(self, version: int, record: dict[str, Any]) -> Path:
        path = self.base / REJECTED_DIR / f"{version}.json"
        write_json_atomic(path, record)
        return path

    def claim_once(self, what: str, version: int) -> bool:
        """True the first time it is asked for (what, version), False ever after: for exactly-once side effects."""
        marks = self.base / ".once"
        marks.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(marks / f"{what}-{version}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.fsync(fd)
        os.close(fd)
        fsync_dir(marks)
        return True

    # -- marks: durable records that something happened for a version ----
    def _mark_path(self, what: str, version: int) -> Path:
        return self.base / MARKS_DIR / f"{what}-{version}.json"

    def mark(self, what: str, version: int, **details: Any) -> None:
        """Record, durably, that `what` happened for `version` (set after the fact, so a crash before it repeats it)."""
        write_json_atomic(self._mark_path(what, version), {"what": what, "version": version, **details}, f"mark-{what}")

    def marked(self, what: str, version: int) -> dict[str, Any] | None:
        path = self._mark_path(what, version)
        if not path.exists():
            return None
        data = _read_json(path, "mark")
        return data if isinstance(data, dict) else {}

    def unmark(self, what: str, version: int) -> None:
        path = self._mark_path(what, version)
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)

    def marked_versions(self, what: str) -> list[int]:
        """Versions that carry a `what` mark, oldest first."""
        marks = self.base / MARKS_DIR
        if not marks.is_dir():
            return []
        prefix = f"{what}-"
        return sorted(int(p.stem[len(prefix):]) for p in marks.glob(f"{prefix}*.json") if p.stem[len(prefix):].isdigit())

    def rejected(self, version: int) -> dict[str, Any] | None:
        path = self.base / REJECTED_DIR / f"{version}.json"
        return _read_json(path, "record of a rejected version") if path.exists() else None


class History:
    """Promotions and withdrawals of one model, oldest first: where `withdraw` finds the version to return to."""

    def __init__(self, store: ModelStore) -> None:
        self.path = store.base / "history.json"

    def events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        events = _read_json(self.path, "history")
        if not isinstance(events, list):
            raise StoreError(f"{self.path}: the history must be a list of events; restore it from a backup or remove it")
        return events

    def record(self, event: str, version: int, **details: Any) -> None:
        from datetime import UTC, datetime

        entry = {"event": event, "version": version, "at": datetime.now(UTC).isoformat(timespec="seconds"), **details}
        write_json_atomic(self.path, [*self.events(), entry], "history")

    def previous_production(self, current: int | None) -> int | None:
        """The newest version promoted before `current` that was not itself withdrawn."""
        events = self.events()
        withdrawn = {e["version"] for e in events if e["event"] == "withdrawn"}
        for entry in reversed(events):
            v = entry["version"]
            if entry["event"] == "promoted" and v != current and v not in withdrawn:
                return int(v)
        return None
