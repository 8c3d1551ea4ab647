"""gRPC PredictionService and ModelService through the tensorflow-serving-api stubs, unchanged."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import Running
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)


@pytest.fixture(scope="module")
def channel(server: Running) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> Any:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.Channel) -> Any:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def circle_request(x: list[float], y: list[float], **spec: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", "circle")
    if "version" in spec:
        request.model_spec.version.value = spec.pop("version")
    if "label" in spec:
        request.model_spec.version_label = spec.pop("label")
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x, dtype=tf.float32))
    request.inputs["y"].CopyFrom(tf.make_tensor_proto(y, dtype=tf.float32))
    return request


def rpc_error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def test_predict_latest_and_echoed_model_spec(stub: Any) -> None:
    response = stub.Predict(circle_request([0.5, -3.0], [0.5, 0.1]), timeout=10)
    assert response.model_spec.name == "circle"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    probs = tf.make_ndarray(response.outputs["probability"])
    assert list(response.outputs["probability"].float_val) == pytest.approx(list(probs))
    assert probs.tolist() == pytest.approx([1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.9))], abs=1e-6)
    assert list(response.outputs["class"].int64_val) == [1, 0]


def test_predict_by_version_label_and_output_filter(stub: Any) -> None:
    request = circle_request([0.5], [0.5], label="stable")
    request.output_filter.append("class")
    response = stub.Predict(request, timeout=10)
    assert response.model_spec.version.value == 1
    assert set(response.outputs) == {"class"}
    assert stub.Predict(circle_request([0.5], [0.5], version=2), timeout=10).model_spec.version.value == 2


def test_predict_errors_carry_tf_codes(stub: Any) -> None:
    err = rpc_error(stub.Predict, circle_request([1.0], [1.0], name="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Servable not found for request: Latest(nope)"
    err = rpc_error(stub.Predict, circle_request([1.0], [1.0], version=9))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Servable not found for request: Specific(circle, 9)"
    err = rpc_error(stub.Predict, circle_request([1.0], [1.0], label="nope"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "Unrecognized servable version label: nope"

    request = circle_request([1.0], [1.0])
    request.model_spec.signature_name = "nope"
    err = rpc_error(stub.Predict, request)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == 'Serving signature key "nope" not found.'

    request = circle_request([1.0], [1.0])
    del request.inputs["y"]
    err = rpc_error(stub.Predict, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("input size does not match signature: 1!=2")

    for bad in (["nope"], ["class", "class"]):
        request = circle_request([1.0], [1.0])
        request.output_filter.extend(bad)
        err = rpc_error(stub.Predict, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    request = circle_request([1.0], [1.0])
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float64))
    assert rpc_error(stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def _examples(values: list[float]) -> Any:
    from tensorflow.core.example import example_pb2

    out = []
    for v in values:
        ex = example_pb2.Example()
        ex.features.feature["x"].float_list.value.append(v)
        out.append(ex)
    return out


def test_regress_and_classify(stub: Any) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "hpt"
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list.examples.extend(_examples([1.0, 2.0, 80.0]))
    response = stub.Regress(request, timeout=10)
    assert [r.value for r in response.result.regressions] == [2.5, 3.0, 42.0]
    assert response.model_spec.version.value == 123

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "hpt"
    request.model_spec.signature_name = "classify_both"
    request.input.example_list.examples.extend(_examples([2.0]))
    response = stub.Classify(request, timeout=10)
    classes = response.result.classifications[0].classes
    assert [(c.label, c.score) for c in classes] == [("x", 2.0), ("y", 3.0)]

    request.model_spec.signature_name = "nope"
    err = rpc_error(stub.Classify, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "No signature was found with the name: nope"


def test_multi_inference(stub: Any) -> None:
    request = inference_pb2.MultiInferenceRequest()
    for sig, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = request.tasks.add()
        task.model_spec.name = "hpt"
        task.model_spec.signature_name = sig
        task.method_name = f"tensorflow/serving/{method}"
    request.input.example_list.examples.extend(_examples([4.0]))
    response = stub.MultiInference(request, timeout=10)
    assert response.results[0].regression_result.regressions[0].value == 4.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 4.0
    request.tasks[1].model_spec.name = "circle"
    assert rpc_error(stub.MultiInference, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_metadata(stub: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "circle"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 2
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def["serving_default"].inputs) == {"x", "y"}
    del request.metadata_field[:]
    assert rpc_error(stub.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    request.metadata_field.append("nope")
    assert rpc_error(stub.GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_get_model_status(models: Any) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "circle"
    response = models.GetModelStatus(request, timeout=10)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    request.model_spec.version.value = 5
    err = rpc_error(models.GetModelStatus, request)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Could not find version 5 of model circle"


@pytest.mark.parametrize("values, dtype, shape", [
    ([[1.5, 2.5], [3.5, 4.5]], "float32", None),  # large enough for tensor_content
    ([7], "int64", [2, 3]),  # one value fills the shape
    ([1.0, 2.0], "float64", [4]),  # fewer values repeat the last one
    ([], "int32", [2]),  # none: zeros
    ([True, False], "bool", None),
    (["a", "bc"], "string", None),  # not on the fast path
])
def test_tensor_protos_read_like_make_ndarray(values: Any, dtype: str, shape: Any) -> None:
    from aviary.serving.api import tensor_proto_to_array

    proto = tf.make_tensor_proto(values, dtype=getattr(tf, dtype), shape=shape)
    if dtype == "float32":
        proto = tf.make_tensor_proto(np.array(values, np.float32))
        assert proto.tensor_content
    got, want = tensor_proto_to_array(proto), tf.make_ndarray(proto)
    assert got.dtype == want.dtype and got.shape == want.shape and got.tolist() == want.tolist()
