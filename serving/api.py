"""The request logic REST and gRPC share: resolve the servable, check, run, shape the answer.

Each model call is one `prepare` that checks the request and builds the feeds, returning
`(runner, feeds, finish)`: the front ends run the feeds through the dispatcher (batched or not) and
finish() shapes the answer; warmup runs the same calls in the loading thread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from aviary.serving import jsontensor as jt
from aviary.serving.http1 import HttpError, Request
from aviary.serving.largebody import HelperProcess
from aviary.serving.manager import ModelManager
from aviary.serving.servable import Runner, Servable, check_output_dtype
from aviary.serving.shadow import Shadow
from aviary.serving.status import ServingError, invalid

Outputs = dict[str, np.ndarray]
Finish = Callable[[Outputs], Any]
Prepared = tuple[Runner, dict[str, np.ndarray], Finish]

_STATE_NUMBERS = {"UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


# --------------------------------------------------------------------------- tensor protos


# Dtypes read straight into numpy (tensor_content bytes, or the typed repeated field); others go through
# tf.make_ndarray. The rules are make_ndarray's: one value fills the shape, fewer values repeat the
# last one, no values mean zeros.
_FAST_DTYPES: dict[int, tuple[Any, str]] = {
    jt.DT_FLOAT: (np.float32, "float_val"), jt.DT_DOUBLE: (np.float64, "double_val"),
    jt.DT_INT32: (np.int32, "int_val"), jt.DT_INT64: (np.int64, "int64_val"), jt.DT_BOOL: (np.bool_, "bool_val"),
}


def tensor_proto_to_array(proto: Any) -> np.ndarray:
    fast = _FAST_DTYPES.get(proto.dtype)
    shape_proto = proto.tensor_shape
    if fast is not None and not shape_proto.unknown_rank:
        shape = [d.size for d in shape_proto.dim]
        if min(shape, default=0) >= 0:
            dtype, field = fast
            count = math.prod(shape)
            if proto.tensor_content:
                data = proto.tensor_content
                if len(data) == count * np.dtype(dtype).itemsize:
                    return np.frombuffer(data, dtype=dtype).reshape(shape)  # read-only view: inputs are
            else:
                field_values = getattr(proto, field)
                values = np.fromiter(field_values, dtype, len(field_values))
                if values.size == count:
                    return values if len(shape) == 1 else values.reshape(shape)
                if values.size == 0:
                    return np.zeros(shape, dtype)
                if values.size < count:
                    return np.pad(values, (0, count - values.size), "edge").reshape(shape)
    return _make_ndarray(proto)


def _make_ndarray(proto: Any) -> np.ndarray:
    import tensorflow as tf

    try:
        return tf.make_ndarray(proto)
    except Exception as exc:  # noqa: BLE001 - malformed client tensors are the client's error
        raise invalid(f"tensor parsing error: {exc}") from None


_DTYPE_ENUMS = {np.dtype(np.int32): 3, np.dtype(np.int16): 5, np.dtype(np.int8): 6, np.dtype(np.uint8): 4,
                np.dtype(np.uint16): 17}


def array_to_tensor_proto(arr: np.ndarray, proto: Any = None) -> Any:
    """AsProtoField: typed repeated fields (float_val, int64_val, ...), as TF Serving answers; fills
    `proto` (an empty TensorProto, e.g. a response's map entry, saving a copy) or a new one."""
    if proto is None:
        from tensorflow.core.framework import tensor_pb2

        proto = tensor_pb2.TensorProto()
    dims = proto.tensor_shape.dim
    for d in arr.shape:
        dims.add().size = d
    flat = arr.ravel()
    kind = arr.dtype
    if kind == np.float32:
        proto.dtype = jt.DT_FLOAT
        proto.float_val.extend(flat.tolist())
    elif kind == np.float64:
        proto.dtype = jt.DT_DOUBLE
        proto.double_val.extend(flat.tolist())
    elif kind == np.int64:
        proto.dtype = jt.DT_INT64
        proto.int64_val.extend(flat.tolist())
    elif kind in _DTYPE_ENUMS:
        proto.dtype = _DTYPE_ENUMS[kind]
        proto.int_val.extend(flat.astype(np.int64).tolist())
    elif kind == np.bool_:
        proto.dtype = jt.DT_BOOL
        proto.bool_val.extend(flat.tolist())
    elif kind == np.float16:
        proto.dtype = jt.DT_HALF
        proto.half_val.extend(flat.view(np.uint16).astype(np.int64).tolist())
    elif kind == np.uint32:
        proto.dtype = jt.DT_UINT32
        proto.uint32_val.extend(flat.tolist())
    elif kind == np.uint64:
        proto.dtype = jt.DT_UINT64
        proto.uint64_val.extend(flat.tolist())
    elif kind.kind in "OSU":
        proto.dtype = jt.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        import tensorflow as tf

        proto.CopyFrom(tf.make_tensor_proto(arr))
    return proto


# --------------------------------------------------------------------------- examples


def serialized_examples(request_input: Any) -> np.ndarray:
    """Input -> 1-D string tensor of serialized tf.Examples (context merged by concatenation)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        records = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = request_input.example_list_with_context.context.SerializeToString()
        records = [ctx + e.SerializeToString() for e in request_input.example_list_with_context.examples]
    else:
        records = []
    if not records:
        raise invalid("Input is empty.")
    arr = np.empty(len(records), dtype=object)
    arr[:] = records
    return arr


def regression_values(outputs: Outputs, num_examples: int) -> list[float]:
    """PostProcessRegressionResult's checks."""
    arr = outputs.get("outputs")
    if arr is None:
        raise invalid("Could not find output tensor 'outputs'")
    if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
        raise invalid(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"[{','.join(map(str, arr.shape))}]"
        )
    if arr.shape[0] != num_examples:
        raise invalid(f"Input batch size did not match output batch size: {num_examples} vs. {arr.shape[0]}")
    check_output_dtype(arr, jt.DT_FLOAT, "output")
    return [float(v) for v in arr.reshape(-1).tolist()]


def classification_values(outputs: Outputs, num_examples: int) -> list[list[tuple[str, float]]]:
    """PostProcessClassificationResult's checks: classes [batch, k] strings, scores [batch, k] floats."""
    classes = outputs.get("classes")
    scores = outputs.get("scores")
    num_classes = -1
    for name, arr, dtype in (("classes", classes, jt.DT_STRING), ("scores", scores, jt.DT_FLOAT)):
        if arr is None:
            continue
        check_output_dtype(arr, dtype, name)
        if arr.ndim != 2 or arr.shape[0] != num_examples:
            raise invalid(
                f"Expected Tensor shape: [batch_size num_classes] but got [{','.join(map(str, arr.shape))}]"
            )
        if num_classes >= 0 and arr.shape[1] != num_classes:
            raise invalid(
                f"Tensors class and score should match in dim_size(1). Got {num_classes} vs. {arr.shape[1]}"
            )
        num_classes = arr.shape[1]
    results = []
    for i in range(num_examples):
        row = []
        for c in range(max(num_classes, 0)):
            label = classes[i, c] if classes is not None else b""
            score = float(scores[i, c]) if scores is not None else 0.0
            row.append((label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label), score))
        results.append(row)
    return results


# --------------------------------------------------------------------------- the service


class ServingApi:
    """TF Serving's request handlers over a ModelManager."""

    def __init__(self, manager: ModelManager, shadow: Shadow | None = None) -> None:
        self.manager = manager
        self.shadow = shadow

    def _route(self, name: str, version: int | None, label: str | None) -> tuple[Servable, Servable | None]:
        """An inference request's version: the traffic split decides when it names no version or label."""
        if version is None and label is None:
            return self.manager.route(name)
        return self.manager.resolve(name, version, label), None

    def _mirrored(self, finish: Finish, model: str, stable: Servable, canary: Servable | None, signature_name: str,
                  feeds: dict[str, np.ndarray]) -> Finish:
        """finish() that also queues the canary's shadow run once stable's outputs exist."""
        shadow = self.shadow
        if canary is None or shadow is None:
            return finish

        def finish_and_mirror(outputs: Outputs) -> Any:
            shadow.mirror(model, stable.version, canary, signature_name, feeds, outputs)
            return finish(outputs)

        return finish_and_mirror

    # ----------------------------------------------------------------- REST

    def rest_predict(self, name: str, version: int | None, label: str | None, body: bytes,
                     large: bool = False) -> Prepared:
        doc = jt.parse_json_object(body, yielding=large)
        try:
            signature_name = jt.signature_name_of(doc)
            servable, mirror = self._route(name, version, label)
            runner = servable.runner_for_rest(signature_name)
            if not runner.input_dtypes:
                raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
            feeds, row_format = jt.predict_tensors_from_json(doc, runner.input_dtypes, body)
        finally:
            if large:
                jt.release(doc)
        finish = self._mirrored(lambda outputs: jt.predict_response_json(outputs, row_format), name, servable,
                                mirror, runner.name, feeds)
        return runner, feeds, finish

    def rest_predict_large(self, name: str, version: int | None, label: str | None, request: Request,
                           helper: HelperProcess) -> Prepared:
        """rest_predict for a large body: the JSON is parsed in the helper process (call from a worker thread)."""
        servable: Servable | None = None
        resolve_error = None
        try:
            servable = self._route(name, version, label)[0]  # no mirror for bodies this large
        except ServingError as exc:  # reported after the body's own checks, as rest_predict orders them
            resolve_error = (exc.code, exc.message)
        signatures = ({key: dict(r.input_dtypes) for key, r in servable.runners.items()}
                      if servable is not None else None)
        outcome = helper.parse_predict(request.parts, request.gzip, request.max_body, signatures, resolve_error)
        if outcome[0] == "http":
            raise HttpError(outcome[1], outcome[2])
        if outcome[0] == "error":
            raise ServingError(outcome[1], outcome[2])
        _, key, feeds, row_format = outcome
        assert servable is not None
        return servable.runners[key], feeds, lambda outputs: jt.predict_response_json(outputs, row_format)

    def rest_classify(self, name: str, version: int | None, label: str | None, body: bytes,
                      large: bool = False) -> Prepared:
        signature_name, request_input = _examples_from_json(body, large)
        servable = self._route(name, version, label)[0]
        _, runner, feeds, n = _examples_call(servable.prepare_classify, signature_name, request_input)
        return runner, feeds, lambda outputs: jt.classify_response_json(classification_values(outputs, n))

    def rest_regress(self, name: str, version: int | None, label: str | None, body: bytes,
                     large: bool = False) -> Prepared:
        signature_name, request_input = _examples_from_json(body, large)
        servable = self._route(name, version, label)[0]
        _, runner, feeds, n = _examples_call(servable.prepare_regress, signature_name, request_input)
        return runner, feeds, lambda outputs: jt.regress_response_json(regression_values(outputs, n))

    def rest_status(self, name: str, version: int | None) -> bytes:
        response = self.model_status(name, version)
        from google.protobuf import json_format

        data = json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return (json.dumps(data, indent=1) + "\n").encode()

    def rest_metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        from google.protobuf import json_format

        servable = self.manager.resolve(name, version, label)
        spec = {"name": name, "signature_name": "", "version": str(servable.version)}
        sigs = {
            "signature_def": {
                key: json_format.MessageToDict(
                    sig, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
                for key, sig in servable.signature_defs.items()
            }
        }
        text = (
            "{\n\"model_spec\":" + json.dumps(spec, indent=1) + "\n,\n\"metadata\": {\"signature_def\": "
            + json.dumps(sigs, indent=1) + "\n}\n}\n"
        )
        return text.encode()

    # ----------------------------------------------------------------- protos (gRPC + warmup)

    def _servable_for(self, spec: Any) -> Servable:
        """Metadata's version: TF Serving's rule, never the traffic split."""
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return self.manager.resolve(spec.name, spec.version.value)
        if choice == "version_label":
            return self.manager.resolve(spec.name, None, spec.version_label)
        return self.manager.resolve(spec.name)

    def _routed(self, spec: Any) -> tuple[Servable, Servable | None]:
        """An inference call's version (and the canary to mirror to): the split applies when none is named."""
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return self.manager.resolve(spec.name, spec.version.value), None
        if choice == "version_label":
            return self.manager.resolve(spec.name, None, spec.version_label), None
        return self.manager.route(spec.name)

    def predict(self, request: Any, servable: Servable | None = None) -> Prepared:
        """gRPC Predict (and warmup): checks done, feeds built; finish() makes the PredictResponse."""
        mirror = None
        if servable is None:
            servable, mirror = self._routed(request.model_spec)
        runner = servable.runner_for_predict(request.model_spec.signature_name)
        sig_inputs = set(runner.input_dtypes)
        sent = set(request.inputs)
        if sent != sig_inputs:
            if len(sent) != len(sig_inputs):
                raise invalid(
                    f"input size does not match signature: {len(sent)}!={len(sig_inputs)} "
                    f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(sig_inputs))}}}). "
                    f"Sent extra: {{{','.join(sorted(sent - sig_inputs))}}}. "
                    f"Missing but required: {{{','.join(sorted(sig_inputs - sent))}}}."
                )
            alias = min(sent - sig_inputs)
            raise invalid(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{','.join(sorted(sig_inputs))}}}."
            )
        feeds = {}
        for index, alias in enumerate(sorted(sent)):
            proto = request.inputs[alias]
            want = runner.input_dtypes[alias]
            if proto.dtype != want:
                raise invalid(
                    f"Expects arg[{index}] to be {jt.dtype_string(want)} but {jt.dtype_string(proto.dtype)} is provided"
                )
            feeds[alias] = tensor_proto_to_array(proto)
        wanted: list[str] = []
        for alias in request.output_filter:
            if alias not in runner.signature_def.outputs:
                raise invalid(
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(runner.signature_def.outputs))}}}."
                )
            if alias in wanted:
                raise invalid(f"duplicate output tensor alias: {alias}")
            wanted.append(alias)
        version = servable.version

        def finish(outputs: Outputs) -> Any:
            from tensorflow_serving.apis import predict_pb2

            response = predict_pb2.PredictResponse()
            _fill_spec(response.model_spec, request.model_spec.name, version, runner.name)
            for alias in wanted or sorted(outputs):
                array_to_tensor_proto(outputs[alias], response.outputs[alias])
            return response

        return runner, feeds, self._mirrored(finish, request.model_spec.name, servable, mirror, runner.name, feeds)

    def classify(self, request: Any, servable: Servable | None = None) -> Prepared:
        from tensorflow_serving.apis import classification_pb2

        servable = servable or self._routed(request.model_spec)[0]
        key, runner, feeds, n = _examples_call(servable.prepare_classify, request.model_spec.signature_name,
                                               request.input)
        version = servable.version

        def finish(outputs: Outputs) -> Any:
            response = classification_pb2.ClassificationResponse()
            _fill_spec(response.model_spec, request.model_spec.name, version, key)
            _fill_classifications(response.result, classification_values(outputs, n))
            return response

        return runner, feeds, finish

    def regress(self, request: Any, servable: Servable | None = None) -> Prepared:
        from tensorflow_serving.apis import regression_pb2

        servable = servable or self._routed(request.model_spec)[0]
        key, runner, feeds, n = _examples_call(servable.prepare_regress, request.model_spec.signature_name,
                                               request.input)
        version = servable.version

        def finish(outputs: Outputs) -> Any:
            response = regression_pb2.RegressionResponse()
            _fill_spec(response.model_spec, request.model_spec.name, version, key)
            _fill_regressions(response.result, regression_values(outputs, n))
            return response

        return runner, feeds, finish

    def multi_inference(self, request: Any, servable: Servable | None = None) -> Any:
        """Runs every task in the calling thread (a worker thread, or the loader during warmup)."""
        from tensorflow_serving.apis import inference_pb2

        tasks = list(request.tasks)
        if not tasks:
            raise invalid("Inference request should contain at least one task.")
        names = {t.model_spec.name for t in tasks}
        if len(names) != 1:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        seen: set[str] = set()
        for task in tasks:
            key = task.model_spec.signature_name or "serving_default"
            if key in seen:
                raise invalid(f"Duplicate evaluation of signature: {key}")
            seen.add(key)
            if task.method_name not in ("tensorflow/serving/classify", "tensorflow/serving/regress"):
                raise invalid(f"Unsupported signature method_name: {task.method_name}")
        servable = servable or self._routed(tasks[0].model_spec)[0]
        response = inference_pb2.MultiInferenceResponse()
        for task in tasks:
            result = response.results.add()
            classify = task.method_name == "tensorflow/serving/classify"
            prepare = servable.prepare_classify if classify else servable.prepare_regress
            key, runner, feeds, n = _examples_call(prepare, task.model_spec.signature_name, request.input)
            outputs = runner.run(feeds)
            if classify:
                _fill_classifications(result.classification_result, classification_values(outputs, n))
            else:
                _fill_regressions(result.regression_result, regression_values(outputs, n))
            _fill_spec(result.model_spec, task.model_spec.name, servable.version, key)
        return response

    def metadata(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        fields = list(request.metadata_field)
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field_name in fields:
            if field_name != "signature_def":
                raise invalid(f"Metadata field {field_name} is not supported")
        servable = self._servable_for(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def model_status(self, name: str, version: int | None) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        if not name:
            raise invalid("Missing model name in request.")
        response = get_model_status_pb2.GetModelStatusResponse()
        for state in self.manager.version_states(name, version):
            entry = response.model_version_status.add()
            entry.version = state.version
            entry.state = _STATE_NUMBERS[state.state]
            entry.status.error_code = _error_code_number(state.error_code)
            entry.status.error_message = state.error_message
        return response

    def run_warmup_record(self, servable: Servable, record: Any) -> None:
        """Replays one PredictionLog against a version that is not yet serving, in the calling thread."""
        kind = record.WhichOneof("log_type")
        if kind == "multi_inference_log":
            self.multi_inference(record.multi_inference_log.request, servable=servable)
            return
        prepare = {"predict_log": self.predict, "classify_log": self.classify, "regress_log": self.regress}.get(kind)
        if prepare is not None:
            runner, feeds, finish = prepare(getattr(record, kind).request, servable=servable)
            finish(runner.run(feeds))


def _error_code_number(name: str) -> int:
    from aviary.serving.status import CODE_VALUES

    return CODE_VALUES.get(name, 2)


def _examples_from_json(body: bytes, large: bool) -> tuple[str, Any]:
    doc = jt.parse_json_object(body, yielding=large)
    try:
        return jt.signature_name_of(doc), jt.input_from_json(doc)
    finally:
        if large:
            jt.release(doc)


def _examples_call(prepare: Callable[[str], tuple[str, Runner]], signature_name: str, request_input: Any
                   ) -> tuple[str, Runner, dict[str, np.ndarray], int]:
    """Classify/regress: the checked signature, its runner, the serialized-Examples feed and its size."""
    key, runner = prepare(signature_name)
    examples = serialized_examples(request_input)
    return key, runner, {"inputs": examples}, len(examples)


def _fill_spec(spec: Any, name: str, version: int, signature_name: str) -> None:
    spec.name = name
    spec.version.value = version
    spec.signature_name = signature_name


def _fill_classifications(result: Any, values: list[list[tuple[str, float]]]) -> None:
    for row in values:
        classifications = result.classifications.add()
        for label, score in row:
            cls = classifications.classes.add()
            cls.label = label
            cls.score = score


def _fill_regressions(result: Any, values: list[float]) -> None:
    for value in values:
        result.regressions.add().value = value


def parse_version(text: str) -> int:
    value = int(text)
    if value >= 2**63:
        raise invalid(f"Failed to convert version: {text} to numeric.")
    return value


__all__ = ["ServingApi", "array_to_tensor_proto", "parse_version", "tensor_proto_to_array"]
