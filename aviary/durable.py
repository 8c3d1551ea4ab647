"""Writes that survive a crash or a power cut: unique temp names, fsync of the data and of the directory.

A rename is atomic but not durable: without an fsync of the file first, a crash can leave the new
name pointing at an empty file; without an fsync of the directory after, the rename itself can be
lost. Every rename that commits a version, an alias or the history goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from aviary import faults
from aviary.process import alive

TEMP_MARK = ".tmp-"
"""Every temporary name the store makes starts with this, then the owner's pid: `.tmp-<what>-<pid>-<random>`."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file and directory under `root`, deepest first, then `root` itself."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def temp_prefix(what: str) -> str:
    """A temp name that says whose it is, so a later run can tell a dead writer's leftovers from a live one's."""
    return f"{TEMP_MARK}{what}-{os.getpid()}-"


def commit_rename(src: Path, dst: Path, point: str = "") -> None:
    """Rename `src` (already fsynced) to `dst`, then fsync the directory so the rename itself is durable."""
    if point:
        faults.crash_point(f"before-rename-{point}")
    os.rename(src, dst)
    fsync_dir(dst.parent)


def write_bytes_atomic(path: Path, data: bytes, point: str = "") -> None:
    """Readers see the old file or the new one, never half of one, and after a crash the new one if it returned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        commit_rename(Path(tmp), path, point)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any, point: str = "") -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), point)


def _owner_pid(name: str) -> int | None:
    """The pid in `.tmp-<what>-<pid>-<random>`, or None for a name that is not ours."""
    if not name.startswith(TEMP_MARK):
        return None
    parts = name[len(TEMP_MARK):].rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def remove_stale_temps(directory: Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove temp files and directories left in `directory` by writers that died; a live writer's are kept.

    A name without a pid (an older layout) is removed once it is `min_age_s` old.
    """
    if not directory.is_dir():
        return []
    removed = []
    now = time.time()
    for entry in directory.iterdir():
        if not entry.name.startswith(TEMP_MARK):
            continue
        pid = _owner_pid(entry.name)
        if pid is not None and pid != os.getpid() and alive(pid):
            continue
        if pid == os.getpid():
            continue
        try:
            if pid is None and now - entry.lstat().st_mtime < min_age_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # another run cleaned it first
        removed.append(entry)
    return removed
