"""JSON <-> tensor conversion with TF Serving's rules, messages and output layout (util/json_tensor.cc).

Clients were written against the C++ server, so the checks run in the same order and the
messages are built the same way; outputs are laid out as rapidjson's PrettyWriter lays them out.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from aviary.serving.status import ServingError, invalid

# tensorflow.DataType enum values used below (tensorflow/core/framework/types.proto).
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_HALF, DT_UINT32, DT_UINT64 = 9, 10, 19, 22, 23

_DT_NAMES = {
    0: "invalid", 1: "float", 2: "double", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16",
    15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "half", 20: "resource",
    21: "variant", 22: "uint32", 23: "uint64",
}
NUMPY_DTYPES: dict[int, Any] = {
    DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8,
    DT_INT16: np.int16, DT_INT8: np.int8, DT_STRING: object, DT_INT64: np.int64, DT_BOOL: np.bool_,
    DT_HALF: np.float16, DT_UINT32: np.uint32, DT_UINT64: np.uint64, 17: np.uint16,
}
_INT_RANGES = {
    DT_INT32: (-(2**31), 2**31 - 1), DT_INT16: (-(2**31), 2**31 - 1), DT_INT8: (-(2**31), 2**31 - 1),
    DT_UINT8: (-(2**31), 2**31 - 1), DT_INT64: (-(2**63), 2**63 - 1), DT_UINT32: (0, 2**32 - 1),
    DT_UINT64: (0, 2**64 - 1),
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def dtype_string(dtype: int) -> str:
    """tensorflow::DataTypeString: `float`, `int64`, ..."""
    return _DT_NAMES.get(dtype, f"unknown dtype enum ({dtype})")


# --------------------------------------------------------------------------- writing


def write_decimal(value: float, single: bool) -> str:
    """absl::StrCat (six significant digits) if it round-trips, else max_digits10; `.0` on bare integers."""
    if math.isfinite(value):
        text = f"{value:g}"
        back = float(np.float32(float(text))) if single else float(text)
        if back != value:
            text = ("%.9g" if single else "%.17g") % value
        if "." not in text and "e" not in text:
            text += ".0"
        return text
    if math.isnan(value):
        return "NaN"
    return "-Infinity" if value < 0 else "Infinity"


def json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class PrettyWriter:
    """Emulates rapidjson::PrettyWriter (4-space indent, optional single-line arrays)."""

    __slots__ = ("out", "single_line", "stack")

    def __init__(self) -> None:
        self.out: list[str] = []
        self.stack: list[list[int]] = []  # [is_array, value_count]
        self.single_line = False

    def _prefix(self) -> None:
        if not self.stack:
            return
        level = self.stack[-1]
        out = self.out
        if level[0]:
            if level[1] > 0:
                out.append(", " if self.single_line else ",")
            if not self.single_line:
                out.append("\n" + "    " * len(self.stack))
        else:
            if level[1] > 0:
                out.append(",\n" if level[1] % 2 == 0 else ": ")
            else:
                out.append("\n")
            if level[1] % 2 == 0:
                out.append("    " * len(self.stack))
        level[1] += 1

    def raw(self, text: str) -> None:
        self._prefix()
        self.out.append(text)

    def key(self, name: str) -> None:
        self.raw(json_string(name))

    def start_object(self) -> None:
        self._prefix()
        self.out.append("{")
        self.stack.append([0, 0])

    def end_object(self) -> None:
        level = self.stack.pop()
        if level[1]:
            self.out.append("\n" + "    " * len(self.stack))
        self.out.append("}")

    def start_array(self) -> None:
        self._prefix()
        self.out.append("[")
        self.stack.append([1, 0])

    def end_array(self) -> None:
        level = self.stack.pop()
        if level[1] and not self.single_line:
            self.out.append("\n" + "    " * len(self.stack))
        self.out.append("]")

    def value(self, val: Any) -> None:
        """A parsed JSON value, written as rapidjson writes a DOM (used in error messages)."""
        if isinstance(val, dict):
            self.start_object()
            for k, v in val.items():
                self.key(k)
                self.value(v)
            self.end_object()
        elif isinstance(val, list):
            self.start_array()
            for v in val:
                self.value(v)
            self.end_array()
        elif val is None:
            self.raw("null")
        elif val is True:
            self.raw("true")
        elif val is False:
            self.raw("false")
        elif isinstance(val, int):
            self.raw(str(val))
        elif isinstance(val, float):
            self.raw(write_decimal(val, False))
        else:
            self.raw(json_string(str(val)))

    def text(self) -> str:
        return "".join(self.out)


def json_value_to_string(val: Any) -> str:
    writer = PrettyWriter()
    writer.value(val)
    return writer.text()


def json_type_string(val: Any) -> str:
    if val is None:
        return "Null"
    if val is True:
        return "True"
    if val is False:
        return "False"
    if isinstance(val, dict):
        return "Object"
    if isinstance(val, list):
        return "Array"
    if isinstance(val, str):
        return "String"
    return "Number"


def error_body(message: str) -> bytes:
    return ('{ "error": ' + json_string(message) + " }").encode()


# --------------------------------------------------------------------------- parsing


def _rapidjson_reason(exc: json.JSONDecodeError) -> str:
    msg = exc.msg
    if msg.startswith("Expecting property name"):
        return "Missing a name for object member."
    if msg.startswith("Expecting ':'"):
        return "Missing a colon after a name of object member."
    if msg.startswith("Expecting ','"):
        depth_char = _innermost_container(exc.doc, exc.pos)
        if depth_char == "{":
            return "Missing a comma or '}' after an object member."
        return "Missing a comma or ']' after an array element."
    if msg.startswith("Unterminated string"):
        return "Missing a closing quotation mark in string."
    if msg.startswith("Invalid control character"):
        return "Invalid encoding in string."
    if msg.startswith("Invalid \\escape"):
        return "Invalid escape character in string."
    if msg.startswith("Invalid \\u"):
        return "Incorrect hex digit after \\u escape in string."
    if msg.startswith("Extra data"):
        return "The document root must not be followed by other values."
    return "Invalid value."


def _innermost_container(doc: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for ch in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


_gc_lock = threading.Lock()
_gc_holders = 0


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses the cyclic collector while any holder is inside (reference counting still frees memory)."""
    global _gc_holders
    with _gc_lock:
        _gc_holders += 1
        if _gc_holders == 1:
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                gc.enable()


def _yield_float(text: str) -> float:
    return float(text)


def _yield_int(text: str) -> int:
    return int(text)


def parse_json_object(body: bytes, yielding: bool = False) -> dict[str, Any]:
    """ParseJson(): an object, or INVALID_ARGUMENT with rapidjson's reason and offset.

    `yielding` (for large bodies parsed on a worker thread): every number goes through a Python
    function, so the interpreter can hand the GIL to the event loop thread while the C decoder runs.
    """
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    try:
        doc = json.loads(text, parse_float=_yield_float, parse_int=_yield_int) if yielding else json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            raise invalid(f"JSON Parse error: The document is empty. at offset: {len(body)}") from None
        offset = len(text[: exc.pos].encode("utf-8"))
        raise invalid(f"JSON Parse error: {_rapidjson_reason(exc)} at offset: {offset}") from None
    except RecursionError:
        raise invalid("JSON Parse error: Terminate parsing due to Handler error. at offset: 0") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {json_value_to_string(doc)} Is not object")
    return doc


def signature_name_of(doc: dict[str, Any]) -> str:
    if "signature_name" in doc:
        name = doc["signature_name"]
        if not isinstance(name, str):
            raise invalid(
                f"JSON Value: {json_value_to_string(doc)} not formatted correctly. "
                "'signature_name' key must be a string value."
            )
        return name
    return ""


# --------------------------------------------------------------------------- JSON -> tensors


def _is_b64(val: Any) -> bool:
    return isinstance(val, dict) and len(val) == 1 and isinstance(val.get("b64"), str)


def _b64decode(val: Any) -> bytes:
    if not _is_b64(val):
        raise invalid(f"JSON Value: {json_value_to_string(val)} not formatted correctly for base64 data")
    text = val["b64"].strip()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _type_error(val: Any, dtype: int) -> ServingError:
    return invalid(
        f"JSON Value: {json_value_to_string(val)} Type: {json_type_string(val)} "
        f"is not of expected type: {dtype_string(dtype)}"
    )


def _lossless(val: float, single: bool) -> bool:
    if isinstance(val, float):
        if not math.isfinite(val):
            return True
        return (not single) or -_FLOAT32_MAX <= val <= _FLOAT32_MAX
    limit = (1 << (24 if single else 53)) - 1
    return abs(val) <= limit


def _convert_leaf(val: Any, dtype: int) -> Any:
    """AddValueToTensor for one JSON scalar."""
    if dtype in (DT_FLOAT, DT_DOUBLE, DT_HALF):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise _type_error(val, dtype)
        single = dtype != DT_DOUBLE
        if not _lossless(val, single):
            raise invalid(
                f"Cannot convert JSON value: {json_value_to_string(val)} to "
                f"{'float' if single else 'double'} without loss of precision."
            )
        return val
    if dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
            raise _type_error(val, dtype)
        return val
    if dtype == DT_STRING:
        if not isinstance(val, str):
            raise _type_error(val, dtype)
        return val.encode("utf-8")
    if dtype == DT_BOOL:
        if not isinstance(val, bool):
            raise _type_error(val, dtype)
        return val
    raise ServingError(
        "UNIMPLEMENTED", f"Conversion of JSON Value: {json_value_to_string(val)} to type: {dtype_string(dtype)}"
    )


def _dense_shape(val: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(val, list):
        shape.append(len(val))
        if not val:
            break
        val = val[0]
    return shape


def _fill(val: Any, level: int, shape: list[int], dtype: int, out: list[Any]) -> None:
    """FillTensorProto: leaves must all sit at depth len(shape), lists must match the first one's size."""
    rank = len(shape)
    if not isinstance(val, list):
        if level != rank:
            raise invalid(
                f"JSON Value: {json_value_to_string(val)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if isinstance(val, dict):
            if dtype != DT_STRING:
                raise _type_error(val, dtype)
            out.append(_b64decode(val))
        else:
            out.append(_convert_leaf(val, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(val) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(val)} at level: {level} expected size: {shape[level]}"
        )
    for item in val:
        _fill(item, level + 1, shape, dtype, out)


_MAX_RANK = 64  # numpy's limit; TF's is 254, so nothing a real model accepts is refused


def _to_array(flat: list[Any], shape: Sequence[int], dtype: int) -> np.ndarray:
    if len(shape) > _MAX_RANK:
        raise invalid(f"Tensor of rank {len(shape)} is nested too deeply; at most {_MAX_RANK} dimensions")
    np_dtype = NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        raise ServingError("UNIMPLEMENTED", f"Conversion to type: {dtype_string(dtype)}")
    if dtype == DT_STRING:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    return np.asarray(flat, dtype=np_dtype).reshape(shape)


def _fast_numeric(val: Any, dtype: int, expected_shape: list[int]) -> np.ndarray | None:
    """numpy's C conversion for plain numeric lists; None when the slow, exact path must decide."""
    if dtype not in (DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64):
        return None
    try:
        arr = _array_in_slices(val)
    except (ValueError, OverflowError):
        return None
    if list(arr.shape) != expected_shape or arr.dtype.kind not in "if" or arr.size == 0:
        return None
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if arr.dtype.kind == "i":
            limit = (1 << (24 if dtype == DT_FLOAT else 53)) - 1
            if np.abs(arr).max() > limit:
                return None
        elif dtype == DT_FLOAT:
            finite = arr[np.isfinite(arr)]
            if finite.size and np.abs(finite).max() > _FLOAT32_MAX:
                return None
        return arr.astype(np.float32 if dtype == DT_FLOAT else np.float64, copy=False)
    if arr.dtype.kind != "i":
        return None
    if dtype == DT_INT32 and arr.size and (arr.min() < -(2**31) or arr.max() > 2**31 - 1):
        return None
    return arr.astype(np.int32 if dtype == DT_INT32 else np.int64, copy=False)


_SLICE_VALUES = 1 << 16


def _array_in_slices(val: Any) -> np.ndarray:
    """np.array(val), a slice of rows at a time: a huge request never holds the GIL for long."""
    if not isinstance(val, list) or not val:
        return np.array(val)
    row_values = max(1, math.prod(_dense_shape(val[0])))
    step = max(1, _SLICE_VALUES // row_values)
    if len(val) <= step:
        return np.array(val)
    parts = [np.array(val[i:i + step]) for i in range(0, len(val), step)]
    if any(p.dtype.kind not in "if" or p.shape[1:] != parts[0].shape[1:] for p in parts):
        raise ValueError("ragged or non-numeric")
    return np.concatenate(parts)


def release(doc: Any) -> None:
    """Frees a large parsed document a slice at a time (one `del` of millions of values holds the GIL)."""
    stack = [doc]
    while stack:
        node = stack.pop()
        children = list(node.values()) if isinstance(node, dict) else node
        if isinstance(node, dict):
            node.clear()
        for child in children:
            if isinstance(child, (list, dict)) and len(child) > 64:
                stack.append(child)
        if isinstance(node, list):
            while node:
                del node[-256:]
        children.clear()


def _value_to_tensor(val: Any, dtype: int, allow_fast: bool) -> np.ndarray:
    shape = _dense_shape(val)
    if allow_fast and shape:
        arr = _fast_numeric(val, dtype, shape)
        if arr is not None:
            return arr
    flat: list[Any] = []
    _fill(val, 0, shape, dtype, flat)
    return _to_array(flat, shape, dtype)


def _keys_str(names: Sequence[str]) -> str:
    return ",".join(sorted(names))


def tensors_from_instances(
    instances: list[Any], input_dtypes: Mapping[str, int], allow_fast: bool
) -> dict[str, np.ndarray]:
    """Row format: each element is one instance; the batch dimension is prepended."""
    names = sorted(input_dtypes)
    first = instances[0]
    if not isinstance(first, dict) and len(names) > 1:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    objects = isinstance(first, dict) and not _is_b64(first)
    n = len(instances)
    if objects and allow_fast:
        fast = _fast_scalar_objects(instances, input_dtypes, names)
        if fast is not None:
            return fast
    if objects:
        input_set = set(names)
        columns: dict[str, list[Any]] = {name: [] for name in names}
        shapes: dict[str, tuple[int, list[int]]] = {}
        for i, elem in enumerate(instances):
            if not isinstance(elem, dict) or _is_b64(elem):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            for key, item in elem.items():
                try:
                    if key not in input_set:
                        raise invalid(f"JSON object: does not have named input: {key}")
                    _check_item(item, key, input_dtypes[key], shapes)
                except ServingError as exc:
                    raise invalid(
                        f"Failed to process element: {i} key: {key} of 'instances' list. "
                        f"Error: {exc.code}: {exc.message}"
                    ) from None
                columns[key].append(item)
            if set(elem) != input_set:
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{json_value_to_string(elem)} keys must be equal to: {_keys_str(names)}"
                )
        return {name: _stack(columns[name], input_dtypes[name], n, shapes[name][1]) for name in names}
    name = names[0]
    dtype = input_dtypes[name]
    if allow_fast and dtype != DT_STRING:
        inner = _dense_shape(first)
        arr = _fast_numeric(instances, dtype, [n, *inner])
        if arr is not None:
            return {name: arr}
    shapes = {}
    for i, elem in enumerate(instances):
        if isinstance(elem, dict) and not _is_b64(elem):
            raise invalid(f"Expecting value/list but got object at item {i} of input list")
        try:
            _check_item(elem, name, dtype, shapes)
        except ServingError as exc:
            raise invalid(
                f"Failed to process element: {i} of 'instances' list. Error: {exc.code}: {exc.message}"
            ) from None
    return {name: _stack(instances, dtype, n, shapes[name][1])}


_FAST_SCALAR = {DT_FLOAT: np.float32, DT_DOUBLE: np.float64}


def _fast_scalar_objects(instances: list[Any], input_dtypes: Mapping[str, int], names: list[str]
                         ) -> dict[str, np.ndarray] | None:
    """The common case, `[{"x": 0.5, "y": 0.5}, ...]` into float inputs; None means take the exact path."""
    width = len(names)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for name in names:
        if input_dtypes[name] not in _FAST_SCALAR:
            return None
    for inst in instances:
        if type(inst) is not dict or len(inst) != width:
            return None
        for name in names:
            v: Any = inst.get(name)
            t = type(v)
            if t is float or (t is int and -16777215 <= v <= 16777215):
                columns[name].append(v)
            else:
                return None
    out = {}
    for name in names:
        col = columns[name]
        if input_dtypes[name] == DT_FLOAT and not -_FLOAT32_MAX <= min(col) <= max(col) <= _FLOAT32_MAX:
            return None  # out of float range, or NaN/Infinity literals: let the exact path judge
        out[name] = np.array(col, dtype=_FAST_SCALAR[input_dtypes[name]])
    return out


def _check_item(item: Any, name: str, dtype: int, shapes: dict[str, tuple[int, list[int]]]) -> None:
    """AddInstanceItem's checks: valid leaves, and the same size and shape as the first instance."""
    shape = _dense_shape(item)
    if isinstance(item, list) and all(not isinstance(v, (list, dict)) for v in item) and len(shape) == 1:
        for v in item:
            _convert_leaf(v, dtype)
        size = len(item)
    elif not isinstance(item, (list, dict)):
        _convert_leaf(item, dtype)
        size = 1
    else:
        flat: list[Any] = []
        _fill(item, 0, shape, dtype, flat)
        size = len(flat)
    if name not in shapes:
        shapes[name] = (size, shape)
        return
    want_size, want_shape = shapes[name]
    if want_size != size:
        raise invalid(f"Expecting tensor size: {want_size} but got: {size}")
    if want_shape != shape:
        raise invalid(
            f"Expecting shape [{','.join(map(str, want_shape))}] but got: [{','.join(map(str, shape))}]"
        )


def _stack(items: list[Any], dtype: int, n: int, inner: list[int]) -> np.ndarray:
    flat: list[Any] = []
    for item in items:
        _fill(item, 0, inner, dtype, flat)
    return _to_array(flat, [n, *inner], dtype)


def tensors_from_inputs(val: Any, input_dtypes: Mapping[str, int], allow_fast: bool) -> dict[str, np.ndarray]:
    """Columnar format: shapes taken verbatim, no batch dimension added."""
    names = sorted(input_dtypes)
    if not isinstance(val, dict) or _is_b64(val):
        if len(names) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        return {names[0]: _value_to_tensor(val, input_dtypes[names[0]], allow_fast)}
    result = {}
    for name in names:
        if name not in val:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        result[name] = _value_to_tensor(val[name], input_dtypes[name], allow_fast)
    return result


def predict_tensors_from_json(
    doc: dict[str, Any], input_dtypes: Mapping[str, int], body: bytes
) -> tuple[dict[str, np.ndarray], bool]:
    """Returns (tensors, row_format)."""
    allow_fast = b"true" not in body and b"false" not in body
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid(
                f"JSON Value: {json_value_to_string(doc)} Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist "
            )
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {json_value_to_string(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {json_value_to_string(doc)} No values in 'instances' array")
        return tensors_from_instances(instances, input_dtypes, allow_fast), True
    if "inputs" in doc:
        return tensors_from_inputs(doc["inputs"], input_dtypes, allow_fast), False
    raise invalid("Missing 'inputs' or 'instances' key")


# --------------------------------------------------------------------------- examples


def _add_feature_value(val: Any, name: str, kind: list[str | None], values: list[Any]) -> None:
    def want(k: str) -> None:
        if kind[0] is None:
            kind[0] = k
        elif kind[0] != k:
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {kind[0]}")

    if val is None or isinstance(val, list):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type_string(val)}")
    if isinstance(val, bool):
        want("int64")
        values.append(1 if val else 0)
    elif isinstance(val, dict):
        if not _is_b64(val):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type_string(val)}")
        want("bytes")
        values.append(_b64decode(val))
    elif isinstance(val, str):
        want("bytes")
        values.append(val.encode("utf-8"))
    elif isinstance(val, float):
        want("float")
        if not _lossless(val, True):
            raise invalid(
                f"Cannot convert JSON value: {json_value_to_string(val)} to float without loss of precision."
            )
        values.append(val)
    else:
        want("int64")
        if val > 2**63 - 1:
            raise invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if val < -(2**63):
            raise invalid(f"Feature: {name} has element with unexpected JSON type: Number")
        values.append(val)


def example_from_json(val: Any) -> Any:
    """MakeExampleFromJsonObject: number kind from the token (decimal -> float, integer -> int64)."""
    from tensorflow.core.example import example_pb2

    if not isinstance(val, dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type_string(val)}")
    example = example_pb2.Example()
    for name, content in val.items():
        kind: list[str | None] = [None]
        values: list[Any] = []
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, kind, values)
        feature = example.features.feature[name]
        if kind[0] == "float":
            feature.float_list.value.extend(values)
        elif kind[0] == "int64":
            feature.int64_list.value.extend(values)
        elif kind[0] == "bytes":
            feature.bytes_list.value.extend(values)
    return example


def input_from_json(doc: dict[str, Any]) -> Any:
    """FillClassifyRegressRequestFromJson: a tensorflow.serving.Input proto."""
    from tensorflow_serving.apis import input_pb2

    request_input = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        request_input.example_list_with_context.context.CopyFrom(example_from_json(doc["context"]))
    if "examples" not in doc:
        raise invalid(
            f"JSON Value: {json_value_to_string(doc)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {json_value_to_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {json_value_to_string(doc)} 'examples' value is an empty array")
    target = (
        request_input.example_list_with_context.examples if has_context else request_input.example_list.examples
    )
    for item in examples:
        target.add().CopyFrom(example_from_json(item))
    return request_input


# --------------------------------------------------------------------------- tensors -> JSON


def _leaf_writer(arr: np.ndarray, name: str) -> Any:
    kind = arr.dtype.kind
    if arr.dtype == np.float32 or arr.dtype == np.float16:
        return lambda v: write_decimal(float(v), True)
    if arr.dtype == np.float64:
        return lambda v: write_decimal(float(v), False)
    if kind in "iu":
        return lambda v: str(int(v))
    if kind == "b":
        return lambda v: "true" if v else "false"
    if kind in "OSU":
        if name.endswith("_bytes"):
            return lambda v: '{"b64": ' + json_string(base64.b64encode(_as_bytes(v)).decode()) + "}"
        return lambda v: json_string(_as_bytes(v).decode("utf-8", errors="replace"))
    raise invalid(f"Failed to write JSON value for tensor type: {_np_dtype_string(arr.dtype)}")


def _np_dtype_string(dtype: np.dtype) -> str:
    import tensorflow as tf

    try:
        return dtype_string(tf.dtypes.as_dtype(dtype).as_datatype_enum)
    except TypeError:
        return str(dtype)


def _as_bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode("utf-8")


def _write_tensor(writer: PrettyWriter, arr: Any, leaf: Any) -> None:
    if not isinstance(arr, np.ndarray):
        writer.raw(leaf(arr))
        return
    if arr.ndim == 0:
        writer.raw(leaf(arr[()]))
        return
    if arr.ndim == 1:
        writer.start_array()
        for v in arr.tolist() if arr.dtype.kind != "O" else arr:
            writer.raw(leaf(v))
        writer.end_array()
        return
    writer.start_array()
    for sub in arr:
        _write_tensor(writer, sub, leaf)
    writer.end_array()


def predict_response_json(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """MakeJsonFromTensors: `predictions` (rows) or `outputs` (columns)."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if row_format:
        fast = _fast_rows(outputs, names)
        if fast is not None:
            return fast
    leaves = {name: _leaf_writer(outputs[name], name) for name in names}
    writer = PrettyWriter()
    writer.start_object()
    objects = len(names) > 1
    if row_format:
        batch = -1
        for name in names:
            arr = outputs[name]
            if arr.ndim == 0:
                raise invalid(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and arr.shape[0] != batch:
                raise invalid(f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} expecting: {batch}")
            batch = arr.shape[0]
        writer.key("predictions")
        writer.start_array()
        for item in range(batch):
            if objects:
                writer.start_object()
            writer.single_line = True
            for name in names:
                if objects:
                    writer.key(name)
                _write_tensor(writer, outputs[name][item], leaves[name])
            writer.single_line = False
            if objects:
                writer.end_object()
        writer.end_array()
    else:
        writer.key("outputs")
        if objects:
            writer.start_object()
        for name in names:
            if objects:
                writer.key(name)
            _write_tensor(writer, outputs[name], leaves[name])
        if objects:
            writer.end_object()
    writer.end_object()
    return writer.text().encode("utf-8")


def _scalar_texts(arr: np.ndarray) -> list[str] | None:
    if arr.dtype == np.float32:
        return [write_decimal(v, True) for v in arr.tolist()]
    if arr.dtype == np.float64:
        return [write_decimal(v, False) for v in arr.tolist()]
    if arr.dtype.kind in "iu":
        return [str(v) for v in arr.tolist()]
    if arr.dtype.kind == "b":
        return ["true" if v else "false" for v in arr.tolist()]
    return None


def _fast_rows(outputs: Mapping[str, np.ndarray], names: list[str]) -> bytes | None:
    """Row format when every output is a numeric vector: the PrettyWriter layout, built directly."""
    batch = -1
    for name in names:
        arr = outputs[name]
        if arr.ndim != 1 or (batch >= 0 and arr.shape[0] != batch):
            return None
        batch = arr.shape[0]
    texts = []
    for name in names:
        col = _scalar_texts(outputs[name])
        if col is None:
            return None
        texts.append(col)
    if len(names) == 1:
        if not batch:
            return b'{\n    "predictions": []\n}'
        return ('{\n    "predictions": [' + ", ".join(texts[0]) + "\n    ]\n}").encode()
    keys = ["            " + json_string(name) + ": " for name in names]
    rows = []
    for i in range(batch):
        rows.append("\n        {\n" + ",\n".join(k + col[i] for k, col in zip(keys, texts, strict=True))
                    + "\n        }")
    body = ",".join(rows)
    return ('{\n    "predictions": [' + body + ("\n    ]" if batch else "]") + "\n}").encode()


def regress_response_json(values: Sequence[float]) -> bytes:
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.single_line = True
    writer.start_array()
    for v in values:
        writer.raw(write_decimal(float(v), True))
    writer.end_array()
    writer.end_object()
    return writer.text().encode("utf-8")


def classify_response_json(results: Sequence[Sequence[tuple[str, float]]]) -> bytes:
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.start_array()
    for classes in results:
        writer.single_line = True
        writer.start_array()
        for label, score in classes:
            writer.start_array()
            writer.raw(json_string(label))
            writer.raw(write_decimal(float(score), True))
            writer.end_array()
        writer.end_array()
        writer.single_line = False
    writer.end_array()
    writer.end_object()
    return writer.text().encode("utf-8")
