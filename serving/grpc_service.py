"""gRPC PredictionService and ModelService (tensorflow-serving-api stubs) on the REST server's event loop.

Predict, Classify and Regress go through the same Dispatcher as REST, so gRPC and REST callers
share batches; MultiInference and config reloads run on worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from aviary.serving.api import Prepared, ServingApi
from aviary.serving.dispatch import Dispatcher
from aviary.serving.metrics import Metrics
from aviary.serving.status import CODE_VALUES, ServingError

log = logging.getLogger("serving")
_MAX_MESSAGE = 1024


async def _abort(context: grpc.aio.ServicerContext, exc: ServingError) -> Any:
    message = exc.message
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "...TRUNCATED"
    await context.abort(exc.grpc_code, message)


def _as_serving_error(exc: BaseException) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, RecursionError):
        return ServingError("INVALID_ARGUMENT", "request is nested too deeply")
    log.error("gRPC request failed", exc_info=exc)
    return ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api: ServingApi, metrics: Metrics, dispatcher: Dispatcher) -> None:
        self.api = api
        self.metrics = metrics
        self.dispatcher = dispatcher

    async def _run(self, name: str, model: str, request: Any, context: grpc.aio.ServicerContext,
                   prepare: Callable[[Any], Prepared]) -> Any:
        start = time.perf_counter()
        version = ""
        try:
            runner, feeds, finish = prepare(request)
            version = str(runner.version)
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            def done(result: Any) -> None:
                if not waiter.done():
                    waiter.set_result(result)

            self.dispatcher.run(runner, feeds, done, context.time_remaining())
            result = await waiter
            if isinstance(result, BaseException):
                raise result
            response = finish(result)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            error = _as_serving_error(exc)
            self.metrics.record_request(model, name, "GRPC", error.code, (time.perf_counter() - start) * 1e6, version)
            return await _abort(context, error)
        self.metrics.record_request(model, name, "GRPC", "OK", (time.perf_counter() - start) * 1e6, version)
        return response

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._run("predict", request.model_spec.name, request, context, self.api.predict)

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._run("classify", request.model_spec.name, request, context, self.api.classify)

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._run("regress", request.model_spec.name, request, context, self.api.regress)

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = request.tasks[0].model_spec.name if request.tasks else ""
        start = time.perf_counter()
        try:
            response = await asyncio.get_running_loop().run_in_executor(None, self.api.multi_inference, request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            error = _as_serving_error(exc)
            self.metrics.record_request(model, "multi_inference", "GRPC", error.code,
                                        (time.perf_counter() - start) * 1e6)
            return await _abort(context, error)
        self.metrics.record_request(model, "multi_inference", "GRPC", "OK", (time.perf_counter() - start) * 1e6)
        return response

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return self.api.metadata(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            return await _abort(context, _as_serving_error(exc))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api: ServingApi, on_reload: Callable[[Any], None]) -> None:
        self.api = api
        self.on_reload = on_reload

    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            return self.api.model_status(spec.name, version)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            return await _abort(context, _as_serving_error(exc))

    async def HandleReloadConfigRequest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Returns once the new config's versions are loaded or have failed, as ServerCore does."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported",
                )
            await asyncio.get_running_loop().run_in_executor(None, self.on_reload, request.config)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            error = _as_serving_error(exc)
            log.error("ReloadConfig failed: %s", error.message)
            response.status.error_code = CODE_VALUES.get(error.code, 2)
            response.status.error_message = error.message
            return await _abort(context, error)
        return response


def _health_handler() -> grpc.GenericRpcHandler:
    """grpc.health.v1.Health/Check answering SERVING, without the grpcio-health-checking package:
    the reply is HealthCheckResponse{status: SERVING}, i.e. field 1 varint 1 on the wire."""

    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"\x08\x01"

    handler = grpc.unary_unary_rpc_method_handler(
        check, request_deserializer=lambda raw: raw, response_serializer=lambda raw: raw
    )
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})


async def start_grpc_server(api: ServingApi, metrics: Metrics, dispatcher: Dispatcher,
                            on_reload: Callable[[Any], None], address: str, max_message_bytes: int,
                            socket_path: str = "", health: bool = False) -> tuple[grpc.aio.Server, int]:
    """Starts the gRPC server on the running event loop; returns it and its bound TCP port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(api, metrics, dispatcher), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(api, on_reload), server)
    if health:
        server.add_generic_rpc_handlers((_health_handler(),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind gRPC to {address}")
    if socket_path:
        server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    return server, port
