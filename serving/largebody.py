"""Large REST predict bodies are parsed in a helper process, so the server's own threads never wait on them.

Parsing 60 MB of JSON into Python objects holds the interpreter lock for seconds in total and its
garbage collection and freeing stall every other thread; in a separate process none of that touches
the event loop. The helper gets the raw body and the signatures' input types and sends back numpy
arrays, running TF Serving's checks in TF Serving's order. It is started in the background when the
REST server starts (spawned: forking a process that runs TensorFlow is unsafe) and restarted if it dies.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from aviary.serving import jsontensor as jt
from aviary.serving.http1 import HttpError, gunzip
from aviary.serving.status import ServingError, invalid

# Outcome as plain tuples (exceptions with custom constructors do not pickle cleanly):
#   ("ok", signature_key, feeds, row_format) | ("error", code, message) | ("http", status, message)
Outcome = tuple[Any, ...]


def write_body(parts: list[bytes]) -> str:
    """The body into a temporary file (memory-backed where the system has one) for the helper to read:
    a file write per part lets other threads run, where pickling 60 MB into a pipe would not."""
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="aviary-body-", dir=directory)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def parse_predict(body_path: str, gzip: bool, max_body: int,
                  signatures: Mapping[str, Mapping[str, int]] | None,
                  resolve_error: tuple[str, str] | None) -> Outcome:
    """In the helper: body -> feeds, with the checks rest_predict makes, in the same order.

    `signatures` maps each signature key of the resolved version to its input dtypes; when the
    model/version/label did not resolve, `resolve_error` is that error (reported after the body checks).
    """
    try:
        with open(body_path, "rb") as fh:
            body = fh.read()
        os.unlink(body_path)
        if gzip:
            body = gunzip(body, max_body)
        doc = jt.parse_json_object(body)
        signature_name = jt.signature_name_of(doc)
        if resolve_error is not None:
            return ("error", *resolve_error)
        assert signatures is not None
        key = signature_name or "serving_default"
        dtypes = signatures.get(key)
        if dtypes is None:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        if not dtypes:
            raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
        feeds, row_format = jt.predict_tensors_from_json(doc, dtypes, body)
        return ("ok", key, feeds, row_format)
    except ServingError as exc:
        return ("error", exc.code, exc.message)
    except HttpError as exc:
        return ("http", exc.status, exc.message)
    except RecursionError:
        return ("error", "INVALID_ARGUMENT", "JSON value is nested too deeply")


def _exit_with(parent: int) -> None:
    """Runs in the helper: a server killed with SIGKILL cannot stop it, so it leaves when its parent is gone."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class HelperProcess:
    """One helper process, started in the background by start() or on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise ServingError("UNAVAILABLE", "Server is shutting down")
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with, initargs=(os.getpid(),)
                )
            return self._pool

    def start(self) -> None:
        """Spawns the helper now, from a background thread, so no request waits for it."""
        def warm() -> None:
            with contextlib.suppress(Exception):
                self._get().submit(_ready).result()

        threading.Thread(target=warm, name="helper-start", daemon=True).start()

    def parse_predict(self, parts: list[bytes], gzip: bool, max_body: int,
                      signatures: Mapping[str, Mapping[str, int]] | None,
                      resolve_error: tuple[str, str] | None) -> Outcome:
        """Runs parse_predict in the helper and waits for it (call from a worker thread, never the loop)."""
        pool = self._get()
        path = write_body(parts)
        try:
            return pool.submit(parse_predict, path, gzip, max_body, signatures, resolve_error).result()
        except Exception as exc:  # noqa: BLE001 - e.g. the helper died (out of memory): this request fails
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise ServingError("INTERNAL", f"Request parser process failed: {type(exc).__name__}: {exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _ready() -> bool:
    return True
