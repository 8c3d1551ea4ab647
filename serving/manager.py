"""Which versions of which models are aspired, loaded and labelled (ServerCore + AspiredVersionsManager).

A reconcile (config reload or file-system poll) loads new aspired versions first and only then
unloads the ones no longer aspired, so a `latest` model always has a version to serve. Requests
hold a reference to the Servable they resolved, so an unload never cuts one short.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aviary.serving.servable import LoadOptions, Servable, load_servable
from aviary.serving.status import ServingError, failed_precondition, invalid, not_found

log = logging.getLogger("serving")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionState:
    version: int
    state: str = START
    error_code: str = "OK"
    error_message: str = ""
    servable: Servable | None = None
    stale: bool = False


@dataclass
class ModelEntry:
    name: str
    base_path: str = ""
    platform: str = "tensorflow"
    policy: str = "latest"
    num_versions: int = 1
    specific: tuple[int, ...] = ()
    in_config: bool = True
    versions: dict[int, VersionState] = field(default_factory=dict)


@dataclass
class TrafficSplit:
    """How requests that name no version or label are spread (an extension; absent = TF Serving's rule).

    Shares are kept exact over any run of requests (an accumulator, not a coin), so 25% is every 4th.
    """

    canary_percent: float = 0.0
    mirror_percent: float = 0.0
    _canary_acc: float = 0.0
    _mirror_acc: float = 0.0

    def take(self, which: str) -> bool:
        percent = self.canary_percent if which == "canary" else self.mirror_percent
        acc = (self._canary_acc if which == "canary" else self._mirror_acc) + percent
        hit = acc >= 100.0
        if hit:
            acc -= 100.0
        if which == "canary":
            self._canary_acc = acc
        else:
            self._mirror_acc = acc
        return hit


@dataclass(frozen=True)
class ManagerOptions:
    allow_labels_for_unavailable: bool = False
    load: LoadOptions = field(default_factory=LoadOptions)
    max_num_load_retries: int = 0
    load_retry_interval_s: float = 60.0
    load_threads: int = 2


def scan_versions(base_path: str) -> list[int]:
    """Children of base_path whose names parse as int64 (`00000123` -> 123)."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return []
    versions = []
    for name in names:
        if name.isdigit() and os.path.isdir(os.path.join(base_path, name)):
            value = int(name)
            if value < 2**63:
                versions.append(value)
    return sorted(set(versions))


class ModelManager:
    def __init__(self, options: ManagerOptions, executor: Executor,
                 run_record: Callable[[Servable, Any], None],
                 on_loaded: Callable[[str, int, float], None] | None = None) -> None:
        self.options = options
        self._executor = executor
        self._run_record = run_record
        self._on_loaded = on_loaded
        self._lock = threading.RLock()  # guards models and labels (fast, never held while loading)
        self._reconcile_lock = threading.Lock()  # one config change / file-system poll at a time
        self._load_pool = ThreadPoolExecutor(max(1, options.load_threads), thread_name_prefix="load")
        self.models: dict[str, ModelEntry] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.traffic: dict[str, TrafficSplit] = {}
        self._closed = False
        self._closing = threading.Event()

    # ----------------------------------------------------------------- config

    def apply_config(self, config: Any) -> None:
        """Replaces the model config (a ModelServerConfig); returns once its versions are loaded or failed."""
        if config.WhichOneof("config") == "custom_model_config":
            raise ServingError("UNIMPLEMENTED", "custom_model_config is not supported")
        configs = list(config.model_config_list.config)
        with self._reconcile_lock:
            seen: set[str] = set()
            for mc in configs:
                if mc.name in seen:
                    raise invalid(f"Illegal to list model {mc.name} multiple times in config list")
                seen.add(mc.name)
                platform = mc.model_platform or "tensorflow"
                if platform != "tensorflow":
                    raise invalid(f"Model {mc.name} requested unsupported platform {platform}")
                old = self.models.get(mc.name)
                if old is not None and old.in_config and old.platform != platform:
                    raise invalid(
                        f"Illegal to change a model's platform. For model {mc.name} platform was "
                        f"{old.platform} and new platform requested is {platform}"
                    )
                if not os.path.isabs(mc.base_path):
                    raise invalid(f"Expected model {mc.name} to have an absolute path or URI; got base_path()={mc.base_path}")
            new_labels = self._validate_labels(configs)
            with self._lock:
                for entry in self.models.values():
                    entry.in_config = False
                for mc in configs:
                    entry = self.models.setdefault(mc.name, ModelEntry(mc.name))
                    entry.in_config = True
                    entry.base_path = mc.base_path
                    entry.platform = mc.model_platform or "tensorflow"
                    policy = mc.model_version_policy.WhichOneof("policy_choice") or "latest"
                    entry.policy = policy
                    entry.num_versions = max(1, mc.model_version_policy.latest.num_versions or 1)
                    entry.specific = tuple(mc.model_version_policy.specific.versions)
                self.labels = new_labels
            self._reconcile_locked()

    def _validate_labels(self, configs: list[Any]) -> dict[str, dict[str, int]]:
        """UpdateModelVersionLabelMap: a label may only point at an AVAILABLE version, unless the flag
        allows a new (or unmoved) label to point at one that is not yet available."""
        new_map: dict[str, dict[str, int]] = {}
        with self._lock:
            for mc in configs:
                if not mc.version_labels:
                    continue
                entry = self.models.get(mc.name)
                for label, version in mc.version_labels.items():
                    allow = self.options.allow_labels_for_unavailable
                    if allow:
                        existing = self.labels.get(mc.name, {}).get(label)
                        allow = existing is None or existing == version
                    state = entry.versions.get(version) if entry else None
                    if not allow and (state is None or state.state != AVAILABLE):
                        raise failed_precondition(
                            f"Request to assign label to version {version} of model {mc.name}, "
                            "which is not currently available for inference"
                        )
                    new_map.setdefault(mc.name, {})[label] = version
        return new_map

    def poll_file_system(self) -> None:
        """Picks up versions that appeared or disappeared under the base paths."""
        if self._reconcile_lock.acquire(blocking=False):
            try:
                self._reconcile_locked()
            finally:
                self._reconcile_lock.release()

    def _aspired(self, entry: ModelEntry) -> set[int]:
        if not entry.in_config:
            return set()
        present = scan_versions(entry.base_path)
        if entry.policy == "all":
            return set(present)
        if entry.policy == "specific":
            return set(present) & set(entry.specific)
        return set(present[-entry.num_versions:])

    def _reconcile_locked(self) -> None:
        to_load: list[tuple[ModelEntry, VersionState]] = []
        to_unload: list[tuple[ModelEntry, VersionState]] = []
        with self._lock:
            entries = list(self.models.values())
        for entry in entries:
            aspired = self._aspired(entry)
            with self._lock:
                for version in sorted(aspired):
                    state = entry.versions.get(version)
                    if state is None or (state.state == END and (state.error_code == "OK" or state.stale)):
                        state = VersionState(version)
                        entry.versions[version] = state
                        to_load.append((entry, state))
                for version, state in entry.versions.items():
                    if version not in aspired and state.state in (AVAILABLE, START, LOADING):
                        to_unload.append((entry, state))
                    elif version not in aspired and state.state == END:
                        state.stale = True  # a failed version is retried if it is aspired again
        futures = [self._load_pool.submit(self._load, entry, state) for entry, state in to_load]
        for future in futures:
            future.result()
        for entry, state in to_unload:
            self._unload(entry, state)

    def _load(self, entry: ModelEntry, state: VersionState) -> None:
        path = os.path.join(entry.base_path, _version_dir(entry.base_path, state.version))
        with self._lock:
            state.state = LOADING
        attempts = 1 + max(0, self.options.max_num_load_retries)
        error: ServingError | None = None
        start = time.monotonic()
        for attempt in range(attempts):
            if self._closed:
                break
            try:
                servable = load_servable(entry.name, state.version, path, self._executor, self.options.load,
                                         self._run_record)
            except ServingError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - a broken model must never take the server down
                error = ServingError("UNKNOWN", f"{type(exc).__name__}: {exc}")
            else:
                with self._lock:
                    state.servable = servable
                    state.state = AVAILABLE
                    state.error_code, state.error_message = "OK", ""
                log.info("Successfully loaded servable version {name: %s version: %d}", entry.name, state.version)
                if self._on_loaded is not None:
                    self._on_loaded(entry.name, state.version, time.monotonic() - start)
                return
            if attempt + 1 < attempts:
                log.warning("Loading %s version %d failed, retrying: %s", entry.name, state.version, error)
                self._closing.wait(self.options.load_retry_interval_s)  # shutdown cuts the wait short
        assert error is not None or self._closed
        with self._lock:
            state.state = END
            if error is not None:
                state.error_code, state.error_message = error.code, error.message
        log.error("Loading servable: {name: %s version: %d} failed: %s", entry.name, state.version,
                  error.message if error else "server shutting down")

    def _unload(self, entry: ModelEntry, state: VersionState) -> None:
        with self._lock:
            servable = state.servable
            state.state = UNLOADING
            state.servable = None
        if servable is not None:
            servable.close()
        with self._lock:
            state.state = END
            state.error_code, state.error_message = "OK", ""
        log.info("Unloaded servable version {name: %s version: %d}", entry.name, state.version)

    def close(self) -> None:
        self._closed = True
        self._closing.set()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for entry in self.models.values():
                for state in entry.versions.values():
                    if state.servable is not None:
                        state.servable.close()

    # ----------------------------------------------------------------- lookups

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """GetServableHandle: Latest(name) / Specific(name, N) / label -> version."""
        with self._lock:
            if label is not None:
                mapped = self.labels.get(name, {}).get(label)
                if mapped is None:
                    raise invalid(f"Unrecognized servable version label: {label}")
                version = mapped
            entry = self.models.get(name)
            if version is None:
                best: Servable | None = None
                if entry is not None:
                    for state in entry.versions.values():
                        if state.servable is not None and (best is None or state.version > best.version):
                            best = state.servable
                if best is None:
                    raise not_found(f"Servable not found for request: Latest({name})")
                return best
            found = entry.versions.get(version) if entry is not None else None
            if found is None or found.servable is None:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return found.servable

    def route(self, name: str) -> tuple[Servable, Servable | None]:
        """The version that answers an inference request naming no version or label, and the canary to
        mirror it to (or None). Without a traffic split, or without a loaded `stable` label, that is
        TF Serving's rule (the newest version); with one, `stable` answers except the canary share."""
        with self._lock:
            split = self.traffic.get(name)
            stable = self._labelled(name, "stable") if split is not None else None
            if split is None or stable is None:
                return self.resolve(name), None
            canary = self._labelled(name, "canary")
            if canary is None or canary.version == stable.version:
                return stable, None
            if split.take("canary"):
                return canary, None
            return stable, canary if split.take("mirror") else None

    def _labelled(self, name: str, label: str) -> Servable | None:
        version = self.labels.get(name, {}).get(label)
        entry = self.models.get(name)
        state = entry.versions.get(version) if entry is not None and version is not None else None
        return state.servable if state is not None else None

    def set_traffic(self, name: str, canary_percent: float, mirror_percent: float) -> None:
        with self._lock:
            self.traffic[name] = TrafficSplit(canary_percent, mirror_percent)

    def clear_traffic(self, name: str) -> None:
        with self._lock:
            self.traffic.pop(name, None)

    def traffic_state(self, name: str) -> dict[str, Any]:
        """The split as the admin endpoint reports it, with the versions the labels point at now."""
        with self._lock:
            split = self.traffic.get(name)
            labels = self.labels.get(name, {})
            return {
                "model": name,
                "enabled": split is not None,
                "canary_percent": split.canary_percent if split else 0,
                "mirror_percent": split.mirror_percent if split else 0,
                "stable_version": str(labels["stable"]) if "stable" in labels else None,
                "canary_version": str(labels["canary"]) if "canary" in labels else None,
            }

    def version_states(self, name: str, version: int | None = None) -> list[VersionState]:
        """GetModelStatus: every version seen, newest first; errors as TF Serving words them."""
        with self._lock:
            entry = self.models.get(name)
            if entry is None or not entry.versions:
                raise not_found(f"Could not find any versions of model {name}")
            if version is not None:
                state = entry.versions.get(version)
                if state is None:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [_copy(state)]
            return [_copy(entry.versions[v]) for v in sorted(entry.versions, reverse=True)]

    def available(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(e.name, s.version) for e in self.models.values() for s in e.versions.values()
                    if s.state == AVAILABLE]


def _copy(state: VersionState) -> VersionState:
    return VersionState(state.version, state.state, state.error_code, state.error_message, None)


def _version_dir(base_path: str, version: int) -> str:
    """The child directory for a version, keeping leading zeros (`00000123`)."""
    try:
        for name in os.listdir(base_path):
            if name.isdigit() and int(name) == version:
                return name
    except OSError:
        pass
    return str(version)
