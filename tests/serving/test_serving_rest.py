"""REST routes and their error cases (TFSERVING.md §2-§7), over real HTTP."""

from __future__ import annotations

import base64
import gzip
import math
from typing import Any

import pytest
from conftest import Running


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def post(http: Any, server: Running, path: str, body: Any) -> Any:
    data = body if isinstance(body, (bytes, str)) else None
    if data is None:
        return http.post(server.rest + path, json=body, timeout=10)
    return http.post(server.rest + path, data=data, timeout=10)


def assert_error(resp: Any, status: int, message: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"error": message}


# ------------------------------------------------------------------ status


def test_status_lists_every_version_newest_first(server: Running, http: Any) -> None:
    resp = http.get(server.rest + "/v1/models/circle")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    ]}


def test_status_of_one_version_and_case_insensitive_path(server: Running, http: Any) -> None:
    resp = http.get(server.rest + "/V1/Models/circle/VERSIONS/1")
    assert resp.status_code == 200
    assert [s["version"] for s in resp.json()["model_version_status"]] == ["1"]


def test_status_with_label_ignores_label(server: Running, http: Any) -> None:
    resp = http.get(server.rest + "/v1/models/circle/labels/whatever")
    assert resp.status_code == 200
    assert len(resp.json()["model_version_status"]) == 2


def test_status_errors(server: Running, http: Any) -> None:
    assert_error(http.get(server.rest + "/v1/models/nope"), 404, "Could not find any versions of model nope")
    assert_error(http.get(server.rest + "/v1/models/circle/versions/9"), 404,
                 "Could not find version 9 of model circle")
    assert_error(http.get(server.rest + "/v1/models"), 400, "Missing model name in request.")
    assert_error(http.get(server.rest + "/v1/models/circle/versions/99999999999999999999"), 400,
                 "Failed to convert version: 99999999999999999999 to numeric.")


# ------------------------------------------------------------------ metadata


def test_metadata_lists_signatures_with_int64_as_strings(server: Running, http: Any) -> None:
    resp = http.get(server.rest + "/v1/models/circle/metadata")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["model_spec"] == {"name": "circle", "signature_name": "", "version": "2"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "matrix", "echo"} <= set(sigs)
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert set(default["inputs"]) == {"x", "y"}
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["x"]["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert default["outputs"]["class"]["dtype"] == "DT_INT64"


def test_metadata_by_version_and_label(server: Running, http: Any) -> None:
    assert http.get(server.rest + "/v1/models/circle/versions/1/metadata").json()["model_spec"]["version"] == "1"
    assert http.get(server.rest + "/v1/models/circle/labels/canary/metadata").json()["model_spec"]["version"] == "2"


def test_metadata_errors(server: Running, http: Any) -> None:
    assert_error(http.get(server.rest + "/v1/models/nope/metadata"), 404,
                 "Servable not found for request: Latest(nope)")
    assert_error(http.get(server.rest + "/v1/models/circle/versions/7/metadata"), 404,
                 "Servable not found for request: Specific(circle, 7)")
    assert_error(http.get(server.rest + "/v1/models/circle/labels/nope/metadata"), 400,
                 "Unrecognized servable version label: nope")


# ------------------------------------------------------------------ predict


def test_predict_row_format_latest_version(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/circle:predict", {"instances": [{"x": 0.5, "y": 0.5}, {"x": -3, "y": 0.1}]})
    assert resp.status_code == 200
    preds = resp.json()["predictions"]
    assert [p["class"] for p in preds] == [1, 0]
    assert preds[0]["probability"] == pytest.approx(sigmoid(2.0), abs=1e-6)  # version 2 has bias 1
    assert preds[1]["probability"] == pytest.approx(sigmoid(-1.9), abs=1e-6)


def test_predict_by_version_and_label(server: Running, http: Any) -> None:
    body = {"instances": [{"x": 0.5, "y": 0.5}]}
    v1 = post(http, server, "/v1/models/circle/versions/1:predict", body).json()["predictions"][0]
    stable = post(http, server, "/v1/models/circle/labels/stable:predict", body).json()["predictions"][0]
    canary = post(http, server, "/v1/models/circle/labels/canary:predict", body).json()["predictions"][0]
    assert v1 == stable
    assert v1["probability"] == pytest.approx(sigmoid(1.0), abs=1e-6)
    assert canary["probability"] == pytest.approx(sigmoid(2.0), abs=1e-6)


def test_predict_single_output_row_layout_is_tf_servings(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/hpt:predict", {"instances": [1.0, 2.0, 5.0]})
    assert resp.status_code == 200
    assert resp.text == '{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'


def test_predict_floats_always_decimal(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/hpt:predict", {"instances": [2, 4]})
    assert '"predictions": [3.0, 4.0' in resp.text
    assert resp.json() == {"predictions": [3.0, 4.0]}


def test_predict_columnar_format(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/circle/versions/1:predict", {"inputs": {"x": [0.5, 1.0], "y": [0.5, 1.0]}})
    assert resp.status_code == 200
    out = resp.json()["outputs"]
    assert out["class"] == [1, 1]
    assert out["probability"] == pytest.approx([sigmoid(1.0), sigmoid(2.0)], abs=1e-6)
    single = post(http, server, "/v1/models/hpt:predict", {"inputs": [1.0, 3.0]})
    assert single.json() == {"outputs": [2.5, 3.5]}


def test_predict_named_signature_and_matrix_input(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/circle:predict",
                {"signature_name": "matrix", "instances": [[1.0, 2.0], [3.0, 4.5]]})
    assert resp.status_code == 200
    assert resp.json() == {"predictions": [[2.0, 4.0], [6.0, 9.0]]}


def test_predict_strings_b64_in_and_bytes_out(server: Running, http: Any) -> None:
    raw = b"\x00\xffhello"
    resp = post(http, server, "/v1/models/circle:predict",
                {"signature_name": "echo", "instances": [{"b64": base64.b64encode(raw).decode()}, "abc"]})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert preds[0] == {"length": 7, "text_bytes": {"b64": base64.b64encode(raw).decode()}}
    assert preds[1] == {"length": 3, "text_bytes": {"b64": base64.b64encode(b"abc").decode()}}


def test_predict_gzip_body(server: Running, http: Any) -> None:
    body = gzip.compress(b'{"instances": [1.0]}')
    resp = http.post(server.rest + "/v1/models/hpt:predict", data=body, headers={"Content-Encoding": "gzip"})
    assert resp.json() == {"predictions": [2.5]}


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/models/nope:predict", {"instances": [1.0]}, 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/hpt/versions/9:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(hpt, 9)"),
    ("/v1/models/circle/labels/nope:predict", {"instances": [1.0]}, 400, "Unrecognized servable version label: nope"),
    ("/v1/models/hpt:predict", b"", 400, "JSON Parse error: The document is empty"),
    ("/v1/models/nope:predict", b"{", 400, "JSON Parse error: Missing a name for object member. at offset: 1"),
    ("/v1/models/hpt:predict", b'{"instances": [1.0,]}', 400, "JSON Parse error: Invalid value. at offset: 19"),
    ("/v1/models/hpt:predict", b"[1]", 400, "JSON Value: [\n    1\n] Is not object"),
    ("/v1/models/hpt:predict", {"signature_name": 5, "instances": [1.0]}, 400,
     ('JSON Value: {\n    "signature_name": 5,\n    "instances": [\n        1.0\n    ]\n} not formatted correctly. '
     "'signature_name' key must be a string value.")),
    ("/v1/models/hpt:predict", {"signature_name": "nope", "instances": [1.0]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/hpt:predict", {"instances": [1.0], "inputs": [1.0]}, 400,
     ('JSON Value: {\n    "instances": [\n        1.0\n    ],\n    "inputs": [\n        1.0\n    ]\n} Not formatted '
     "correctly expecting only one of 'inputs' or 'instances' keys to exist ")),
    ("/v1/models/hpt:predict", {"foo": 1}, 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/hpt:predict", {"instances": 1.0}, 400,
     'JSON Value: {\n    "instances": 1.0\n} Excepting \'instances\' to be an list/array'),
    ("/v1/models/hpt:predict", {"instances": []}, 400,
     'JSON Value: {\n    "instances": []\n} No values in \'instances\' array'),
    ("/v1/models/circle:predict", {"instances": [{"x": 1.0, "y": 1.0, "z": 1.0}]}, 400,
     ("Failed to process element: 0 key: z of 'instances' list. Error: INVALID_ARGUMENT: "
     "JSON object: does not have named input: z")),
    ("/v1/models/circle:predict", {"instances": [{"x": 1.0}]}, 400,
     "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"x\": 1.0\n} keys must be equal to: x,y"),
    ("/v1/models/circle:predict", {"inputs": {"x": [1.0]}}, 400, "Missing named input: y in 'inputs' object."),
    ("/v1/models/circle:predict", {"instances": [1.0]}, 400,
     ("instances is a plain list, but expecting list of objects as multiple input tensors required as per "
     "tensorinfo_map")),
    ("/v1/models/circle:predict", {"inputs": [1.0]}, 400,
     ("inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
     "tensorinfo_map")),
    ("/v1/models/hpt:predict", {"instances": ["x"]}, 400,
     ("Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"x\" Type: String "
     "is not of expected type: float")),
    ("/v1/models/circle:predict", {"signature_name": "matrix", "instances": [[1.0, 2.0], [3.0]]}, 400,
     ("Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 "
     "but got: 1")),
    ("/v1/models/circle:predict", {"signature_name": "matrix", "inputs": [[1.0, 2.0], 3.0]}, 400,
     "JSON Value: 3.0 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ("/v1/models/circle:predict", {"signature_name": "echo", "instances": [{"b64": "!!!"}]}, 400,
     "Unable to base64 decode"),
])
def test_predict_errors(server: Running, http: Any, path: str, body: Any, status: int, message: str) -> None:
    resp = post(http, server, path, body)
    if message == "Unable to base64 decode":
        assert resp.status_code == status
        assert "Unable to base64 decode" in resp.json()["error"]
        return
    assert_error(resp, status, message)


def test_shape_rejected_by_model_is_400(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/circle:predict", {"signature_name": "matrix", "instances": [[1.0, 2.0, 3.0]]})
    assert resp.status_code == 400
    assert resp.json()["error"]


def test_malformed_body_to_unknown_model_is_400_not_404(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/nope:predict", b"not json")
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("JSON Parse error: Invalid value.")


# ------------------------------------------------------------------ classify / regress


def test_regress_half_plus_two(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/hpt:regress",
                {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}, {"x": 80.0}]})
    assert resp.status_code == 200
    assert resp.json() == {"results": [2.5, 3.0, 42.0]}


def test_classify_half_plus_two(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/hpt:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert resp.status_code == 200
    assert resp.json() == {"results": [[["", 3.0]]]}
    both = post(http, server, "/v1/models/hpt/versions/123:classify",
                {"signature_name": "classify_both", "context": {"x": 4.0}, "examples": [{}]})
    assert both.json() == {"results": [[["x", 4.0], ["y", 4.0]]]}


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"signature_name": "regress_x_to_y"}, 400,
     ('JSON Value: {\n    "signature_name": "regress_x_to_y"\n} When method is classify, key \'examples\' is expected '
     "and was not found")),
    ({"examples": {}}, 400, 'JSON Value: {\n    "examples": {}\n} Expecting \'examples\' value to be an list/array'),
    ({"examples": []}, 400, 'JSON Value: {\n    "examples": []\n} \'examples\' value is an empty array'),
    ({"examples": [1]}, 400, "Example must be JSON object but got JSON Number"),
    ({"examples": [{"x": None}]}, 400, "Feature: x has element with unexpected JSON type: Null"),
    ({"examples": [{"x": [1, 2.0]}]}, 400, "Unexpected element type in feature: x expecting type: int64"),
    ({"signature_name": "nope", "examples": [{"x": 1.0}]}, 400, "No signature was found with the name: nope"),
])
def test_regress_errors(server: Running, http: Any, body: Any, status: int, message: str) -> None:
    assert_error(post(http, server, "/v1/models/hpt:regress", body), status, message)


def test_regress_on_predict_signature_is_400(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/circle:regress", {"examples": [{"x": 1.0}]})
    assert resp.status_code == 400
    assert resp.json()["error"] == "Expected one input Tensor."


def test_regress_int_feature_rejected_by_float_parser(server: Running, http: Any) -> None:
    resp = post(http, server, "/v1/models/hpt:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 1}]})
    assert resp.status_code == 400


def test_classify_unknown_model_after_body_checks(server: Running, http: Any) -> None:
    assert_error(post(http, server, "/v1/models/nope:classify", {"examples": [{"x": 1.0}]}), 404,
                 "Servable not found for request: Latest(nope)")
    assert post(http, server, "/v1/models/nope:classify", {"examples": []}).status_code == 400


# ------------------------------------------------------------------ routing


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/models/circle:predict"),
    ("POST", "/v1/models/circle"),
    ("POST", "/v1/models/circle/metadata"),
    ("POST", "/v1/models/circle:explain"),
    ("POST", "/v1/models/circle/version/1:predict"),
    ("POST", "/v1/models/circle/versions/x:predict"),
    ("POST", "/v1/models/circle/versions/1/labels/a:predict"),
    ("PUT", "/v1/models/circle:predict"),
    ("DELETE", "/v1/models/circle"),
])
def test_malformed_requests(server: Running, http: Any, method: str, path: str) -> None:
    resp = http.request(method, server.rest + path, data=b"{}")
    assert_error(resp, 400, f"Malformed request: {method} {path}")


def test_non_v1_path_is_plain_404(server: Running, http: Any) -> None:
    resp = http.get(server.rest + "/healthz")
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] != "application/json"


def test_percent_decoded_model_name(server: Running, http: Any) -> None:
    resp = http.get(server.rest + "/v1/models/%63ircle/versions/1")
    assert resp.status_code == 200
