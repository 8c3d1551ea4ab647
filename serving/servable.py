"""One loaded model version: its SignatureDefs, callable signatures, warmup, predict/classify/regress."""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from aviary.serving.batching import BatchingOptions, SignatureBatcher, run_merged
from aviary.serving.jsontensor import DT_FLOAT, DT_STRING, NUMPY_DTYPES, dtype_string
from aviary.serving.status import ServingError, failed_precondition, from_tf_exception, invalid

log = logging.getLogger("serving")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000
# Signatures that run faster than this on average are run on the REST event loop directly.
INLINE_RUN_LIMIT_S = 0.002


@dataclass(frozen=True)
class LoadOptions:
    tags: tuple[str, ...] = ("serve",)
    enable_warmup: bool = True
    warmup_iterations: int = 1
    batching: BatchingOptions | None = None
    signature_method_name_check: bool = False


class Runner:
    """A signature's concrete function, called directly; batching is optional and per signature."""

    def __init__(self, name: str, signature_def: Any, fn: Callable[..., Any], executor: Executor,
                 batching: BatchingOptions | None, version: int = 0) -> None:
        self.name = name
        self.version = version  # the model version it belongs to (metrics label)
        self.signature_def = signature_def
        self.input_dtypes: dict[str, int] = {k: v.dtype for k, v in signature_def.inputs.items()}
        self.output_names = sorted(signature_def.outputs)
        self._fn = fn
        self._executor = executor
        self.batching = batching
        self._batcher = SignatureBatcher(self.run, batching) if batching else None
        # Cost estimate: the fastest run in the current window of runs. The minimum ignores runs slowed by
        # contention; the window lets the estimate follow a model whose cost really changed.
        self.run_cost_s = INLINE_RUN_LIMIT_S  # unknown until measured: assume too slow to run inline
        self._window_min_s = float("inf")
        self._window_runs = 0

    @property
    def inline_ok(self) -> bool:
        """Cheap enough to run on the REST event loop itself (no thread hand-offs, no GIL ping-pong)."""
        return self.run_cost_s < INLINE_RUN_LIMIT_S

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the signature in the calling thread; errors come back as ServingError."""
        start = time.perf_counter()
        try:
            result = self._fn(**feeds)
            outputs = {k: v.numpy() for k, v in result.items()}
        except Exception as exc:  # noqa: BLE001 - any runtime failure is the caller's error status
            raise from_tf_exception(exc) from None
        finally:
            self._observe(time.perf_counter() - start)
        return outputs

    def _observe(self, elapsed: float) -> None:
        self._window_min_s = min(self._window_min_s, elapsed)
        self._window_runs += 1
        if self._window_runs >= 200 or self._window_min_s < self.run_cost_s:
            self.run_cost_s = self._window_min_s
        if self._window_runs >= 200:
            self._window_min_s, self._window_runs = float("inf"), 0

    def submit_merged(self, feeds_list: list[Mapping[str, np.ndarray]]) -> Future[list[Any]]:
        """One batch formed by the caller (the REST loop), run on a worker thread."""
        assert self.batching is not None
        return self._executor.submit(run_merged, self.run, feeds_list, self.batching)

    def submit(self, feeds: Mapping[str, np.ndarray]) -> Future[dict[str, np.ndarray]]:
        if self._batcher is not None and self._batcher.accepts(feeds):
            return self._batcher.submit(feeds)
        return self._executor.submit(self.run, feeds)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()


class Servable:
    """A SavedModel version loaded for serving. Requests hold a reference, so unloading never cuts them."""

    def __init__(self, name: str, version: int, path: str, executor: Executor, options: LoadOptions) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.options = options
        self.signature_defs = _read_signature_defs(path, options.tags)
        import tensorflow as tf

        try:
            self._loaded = tf.saved_model.load(path, tags=list(options.tags))
        except Exception as exc:  # noqa: BLE001 - a corrupt model is a load error, not a crash
            raise from_tf_exception(exc) from None
        self.runners: dict[str, Runner] = {}
        signatures = self._loaded.signatures
        for key, sig in self.signature_defs.items():
            if key in signatures:
                self.runners[key] = Runner(key, sig, signatures[key], executor, options.batching, version)

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()

    # ----------------------------------------------------------------- predict

    def runner_for_predict(self, signature_name: str) -> Runner:
        """gRPC Predict's lookup: unknown signature is FAILED_PRECONDITION."""
        key = signature_name or DEFAULT_SIGNATURE
        runner = self.runners.get(key)
        if runner is None:
            raise failed_precondition(f'Serving signature key "{key}" not found.')
        return runner

    def runner_for_rest(self, signature_name: str) -> Runner:
        key = signature_name or DEFAULT_SIGNATURE
        runner = self.runners.get(key)
        if runner is None:
            raise invalid(f'Serving signature name: "{key}" not found in signature def')
        return runner

    # ----------------------------------------------------------------- classify / regress

    def _signature_for(self, signature_name: str) -> tuple[str, Any, Runner]:
        key = signature_name or DEFAULT_SIGNATURE
        runner = self.runners.get(key)
        if runner is None:
            raise invalid(f"No signature was found with the name: {key}")
        return key, runner.signature_def, runner

    def prepare_regress(self, signature_name: str) -> tuple[str, Runner]:
        key, sig, runner = self._signature_for(signature_name)
        if self.options.signature_method_name_check and sig.method_name != "tensorflow/serving/regress":
            raise invalid(
                f"Expected regression signature method_name to be tensorflow/serving/regress. Was: {sig.method_name}"
            )
        if len(sig.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        if len(sig.outputs) != 1:
            raise invalid("Expected one output Tensor.")
        if "inputs" not in sig.inputs:
            raise invalid(f"No regression inputs found in SignatureDef: {_debug_string(sig)}")
        if "outputs" not in sig.outputs:
            raise invalid(f"No regression outputs found in SignatureDef: {_debug_string(sig)}")
        return key, runner

    def prepare_classify(self, signature_name: str) -> tuple[str, Runner]:
        key, sig, runner = self._signature_for(signature_name)
        if self.options.signature_method_name_check and sig.method_name != "tensorflow/serving/classify":
            raise invalid(
                "Expected classification signature method_name to be tensorflow/serving/classify. "
                f"Was: {sig.method_name}"
            )
        if len(sig.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        if len(sig.outputs) not in (1, 2):
            raise invalid(f"Expected one or two output Tensors, found {len(sig.outputs)}")
        if "inputs" not in sig.inputs:
            raise invalid(f"No classification inputs found in SignatureDef: {_debug_string(sig)}")
        if "classes" not in sig.outputs and "scores" not in sig.outputs:
            raise invalid(
                "Expected classification signature outputs to contain at least one of classes or scores. "
                f"Signature was: {_debug_string(sig)}"
            )
        return key, runner

    # ----------------------------------------------------------------- warmup

    def warmup(self, run_record: Callable[[Servable, Any], None]) -> int:
        """Replays assets.extra/tf_serving_warmup_requests; any failure fails the load."""
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, WARMUP_FILE)
        if not self.options.enable_warmup or not os.path.exists(path):
            return 0
        records = read_tfrecords(path)
        if len(records) > MAX_WARMUP_RECORDS:
            raise invalid(f"Number of warmup records exceeeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        for record in records:
            entry = prediction_log_pb2.PredictionLog()
            try:
                entry.ParseFromString(record)
            except Exception:  # noqa: BLE001 - protobuf raises DecodeError subclasses by backend
                raise invalid(f"Failed to parse warmup record: {record[:64]!r} from model path: {self.path}") from None
            kind = entry.WhichOneof("log_type")
            if kind not in ("predict_log", "classify_log", "regress_log", "multi_inference_log"):
                raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {kind}")
            for _ in range(max(1, self.options.warmup_iterations)):
                run_record(self, entry)
        return len(records)


def _debug_string(message: Any) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(message))


def read_tfrecords(path: str) -> list[bytes]:
    """TFRecord framing: u64 length, u32 crc, data, u32 crc (CRCs are not verified)."""
    with open(path, "rb") as fh:
        data = fh.read()
    records = []
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ServingError("DATA_LOSS", f"truncated record at {pos} in {path}")
        (length,) = struct.unpack_from("<Q", data, pos)
        start = pos + 12
        end = start + length
        if end + 4 > len(data):
            raise ServingError("DATA_LOSS", f"truncated record at {pos} in {path}")
        records.append(data[start:end])
        pos = end + 4
    return records


def _read_signature_defs(path: str, tags: tuple[str, ...]) -> dict[str, Any]:
    """The MetaGraph's SignatureDef map, exactly as TF Serving reports it in metadata."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(path, "saved_model.pb")
    if not os.path.exists(pb):
        raise ServingError(
            "NOT_FOUND",
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}. "
            "Check that the directory exists and that you have the right permissions for accessing it.",
        )
    model = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as fh:
            model.ParseFromString(fh.read())
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError subclasses by backend
        raise ServingError("DATA_LOSS", f"Can't parse {pb} as binary proto") from None
    for meta_graph in model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return dict(meta_graph.signature_def)
    available = [list(mg.meta_info_def.tags) for mg in model.meta_graphs]
    raise ServingError(
        "NOT_FOUND",
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. "
        f"To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`. "
        f"available_tags: {available}",
    )


def load_servable(name: str, version: int, path: str, executor: Executor, options: LoadOptions,
                  run_record: Callable[[Servable, Any], None]) -> Servable:
    """Loads and warms up one version; raises ServingError on any failure."""
    start = time.monotonic()
    servable = Servable(name, version, path, executor, options)
    try:
        count = servable.warmup(run_record)
    except ServingError:
        servable.close()
        raise
    except Exception as exc:  # noqa: BLE001 - warmup failures fail the load
        servable.close()
        raise from_tf_exception(exc) from None
    log.debug("loaded %s version %d in %.3fs (%d warmup records)", name, version, time.monotonic() - start, count)
    return servable


def check_output_dtype(arr: np.ndarray, want: int, what: str) -> None:
    expected = NUMPY_DTYPES[want]
    ok = arr.dtype.kind == "O" if want == DT_STRING else arr.dtype == expected
    if not ok:
        import tensorflow as tf

        got = tf.dtypes.as_dtype(arr.dtype).as_datatype_enum if arr.dtype.kind != "O" else DT_STRING
        raise invalid(f"Expected {what} Tensor of DT_{dtype_string(want).upper()}.  Got: DT_{dtype_string(got).upper()}")


__all__ = ["DT_FLOAT", "LoadOptions", "Runner", "Servable", "load_servable", "read_tfrecords"]
