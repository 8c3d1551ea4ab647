"""One rollout per model at a time: a file lock on this machine, and a Prefect limit across machines.

`model_lock` is an advisory file lock on the store with a deadline; it is held in every case.

`rollout_slot` holds Prefect's global concurrency limit `rollout-<model>`. Collision strategy: a
second rollout of the same model waits up to `rollout.lock_timeout_s` for the slot, then fails with
`Busy` (its run fails, which notifies), never runs unguarded and never skips silently. Runs the
canary-deploy deployment starts also queue before they start (its deployment concurrency limit,
ENQUEUE), so the wait here is for rollouts started some other way.

The limit is acquired with `strict=True`, so a limit that cannot be found is an error, never a
warning and an unguarded rollout. When it is missing it is created first (limit 1, no decay), so a
model the stack did not know about is guarded from its first rollout. Without a Prefect API (a
plain `python -m flows.retrain`, whose API is a throwaway server of its own) there is nothing to
share a limit with: the file lock is the guard. Nor with the throwaway server the command lines start
(`prefect_api`): its slots would outlive a killed run in the shared database, its leases would not.

A crashed holder frees its slot when its lease lapses (`LEASE_S`), so a dead run cannot block a model for long.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import httpx
from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

from aviary.prefect_api import throwaway

POLL_S = 0.2
LEASE_S = 60.0
SLOT_POLL_S = 0.5


class Busy(RuntimeError):
    pass


@contextmanager
def model_lock(path: Path, what: str, timeout_s: float) -> Iterator[None]:
    """Wait up to `timeout_s` for the lock, then refuse with who holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace") or "{}"
                    raise Busy(f"{what} is locked by another rollout {json.loads(holder)}; waited {timeout_s:g} s") from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def rollout_limit_name(model: str) -> str:
    return f"rollout-{model}"


def _create_if_missing(client: SyncPrefectClient, name: str) -> None:
    try:
        client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        with suppress(ObjectAlreadyExists):  # another run created it first
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, slot_decay_per_second=0))


async def ensure_rollout_limit(client: PrefectClient, model: str) -> bool:
    """Create `rollout-<model>` unless it exists (an operator's changes are kept); True if created."""
    name = rollout_limit_name(model)
    try:
        await client.read_global_concurrency_limit_by_name(name)
        return False
    except ObjectNotFound:
        pass
    try:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, slot_decay_per_second=0))
    except ObjectAlreadyExists:
        return False
    return True


@contextmanager
def rollout_slot(model: str, timeout_s: float) -> Iterator[str | None]:
    """Hold the model's rollout slot for the block; yields the limit's name, or None without an API."""
    if get_current_settings().api.url is None or throwaway(get_current_settings().api.url):
        yield None
        return
    name = rollout_limit_name(model)
    with get_client(sync_client=True) as client:
        _create_if_missing(client, name)
    deadline = time.monotonic() + timeout_s
    with ExitStack() as held:
        while True:
            # One request per try (max_retries=0): a try cut off by a timeout while its request is in
            # flight can be granted a lease after all, which nobody releases until it lapses.
            try:
                held.enter_context(
                    concurrency(name, occupy=1, max_retries=0, lease_duration=LEASE_S, strict=True)
                )
                break
            except ConcurrencySlotAcquisitionError as error:
                cause = error.__cause__
                taken = isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423
                if not taken:
                    raise
            if time.monotonic() >= deadline:
                raise Busy(f"model '{model}': another rollout holds the Prefect limit '{name}'; waited {timeout_s:g} s")
            time.sleep(SLOT_POLL_S)
        yield name
