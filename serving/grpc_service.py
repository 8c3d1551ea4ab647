"""gRPC PredictionService and ModelService from the tensorflow-serving-api stubs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving.api import ServingApi
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.status import CODE_VALUES, ServingError

log = logging.getLogger("serving")
_MAX_MESSAGE = 1024


def _abort(context: grpc.ServicerContext, exc: ServingError) -> Any:
    message = exc.message
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "...TRUNCATED"
    context.abort(exc.grpc_code, message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api: ServingApi, metrics: Metrics) -> None:
        self.api = api
        self.metrics = metrics

    def _call(self, name: str, request: Any, context: grpc.ServicerContext, fn: Callable[..., Any],
              model: str) -> Any:
        start = time.perf_counter()
        remaining = context.time_remaining()
        try:
            response = fn(request, timeout=remaining)
        except ServingError as exc:
            self.metrics.record_request(model, name, "GRPC", exc.code, (time.perf_counter() - start) * 1e6)
            return _abort(context, exc)
        except Exception as exc:
            log.exception("gRPC %s failed", name)
            self.metrics.record_request(model, name, "GRPC", "INTERNAL", (time.perf_counter() - start) * 1e6)
            return _abort(context, ServingError("INTERNAL", f"{type(exc).__name__}: {exc}"))
        self.metrics.record_request(model, name, "GRPC", "OK", (time.perf_counter() - start) * 1e6)
        return response

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("predict", request, context, self.api.predict, request.model_spec.name)

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("classify", request, context, self.api.classify, request.model_spec.name)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("regress", request, context, self.api.regress, request.model_spec.name)

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:
        model = request.tasks[0].model_spec.name if request.tasks else ""
        return self._call("multi_inference", request, context, self.api.multi_inference, model)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.api.metadata(request)
        except ServingError as exc:
            return _abort(context, exc)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api: ServingApi, manager: ModelManager, on_reload: Callable[[Any], None]) -> None:
        self.api = api
        self.manager = manager
        self.on_reload = on_reload

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            return self.api.model_status(spec.name, version)
        except ServingError as exc:
            return _abort(context, exc)

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported",
                )
            self.on_reload(request.config)
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            response.status.error_code = CODE_VALUES.get(exc.code, 2)
            response.status.error_message = exc.message
            return _abort(context, exc)
        return response


def _health_handler() -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health/Check answering SERVING, without the grpcio-health-checking package:
    the reply is HealthCheckResponse{status: SERVING}, i.e. field 1 varint 1 on the wire."""

    def check(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"\x08\x01"

    handler = grpc.unary_unary_rpc_method_handler(
        check, request_deserializer=lambda raw: raw, response_serializer=lambda raw: raw
    )
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})


def start_grpc_server(api: ServingApi, manager: ModelManager, metrics: Metrics, on_reload: Callable[[Any], None],
                      address: str, max_threads: int, max_message_bytes: int, socket_path: str = "",
                      health: bool = False) -> tuple[grpc.Server, int]:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(api, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(api, manager, on_reload), server)
    if health:
        server.add_generic_rpc_handlers((_health_handler(),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC to {address}")
    if socket_path:
        server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    return server, port
