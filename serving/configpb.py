"""TF Serving's config messages and how its files are read: protobuf text format, unknown fields refused.

`tensorflow-serving-api` ships `ModelServerConfig` but not `MonitoringConfig` or
`BatchingParameters`, so those two are declared here with the same package, names, field numbers and
types as tensorflow_serving/config/monitoring_config.proto and
servables/tensorflow/session_bundle_config.proto; protobuf's own `text_format` parses all three.
They live in a private descriptor pool so they can never clash with a package that ships them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(msg: Any, name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> None:
    field = msg.field.add(name=name, number=number, type=kind,
                          label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    prom = monitoring.message_type.add(name="PrometheusConfig")
    _field(prom, "enable", 1, _F.TYPE_BOOL)
    _field(prom, "path", 2, _F.TYPE_STRING)
    cfg = monitoring.message_type.add(name="MonitoringConfig")
    _field(cfg, "prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
    pool.Add(monitoring)

    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    params = batching.message_type.add(name="BatchingParameters")
    int64, string, boolean = (".google.protobuf.Int64Value", ".google.protobuf.StringValue",
                              ".google.protobuf.BoolValue")
    _field(params, "max_batch_size", 1, _F.TYPE_MESSAGE, int64)
    _field(params, "batch_timeout_micros", 2, _F.TYPE_MESSAGE, int64)
    _field(params, "max_enqueued_batches", 3, _F.TYPE_MESSAGE, int64)
    _field(params, "num_batch_threads", 4, _F.TYPE_MESSAGE, int64)
    _field(params, "thread_pool_name", 5, _F.TYPE_MESSAGE, string)
    _field(params, "allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True)
    _field(params, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)
    _field(params, "enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, boolean)
    _field(params, "max_execution_batch_size", 9, _F.TYPE_MESSAGE, int64)
    pool.Add(batching)
    return pool


def message_class(full_name: str) -> Any:
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(full_name))


def monitoring_config() -> Any:
    return message_class("tensorflow.serving.MonitoringConfig")()


def batching_parameters() -> Any:
    return message_class("tensorflow.serving.BatchingParameters")()


def parse_text(text: str, message: Any, source: str) -> Any:
    """Parses `text` into `message`; a bad or unknown field is one ValueError naming the file, line and field."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ValueError(f"Invalid protobuf file: '{source}': {exc}") from None
    return message


def read_text_file(path: str, message: Any) -> Any:
    with open(path, encoding="utf-8") as fh:
        return parse_text(fh.read(), message, path)
