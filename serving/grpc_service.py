"""gRPC PredictionService, ModelService and (optionally) grpc.health.v1.Health on the REST server's event loop.

The messages are tensorflow-serving-api's protos, so clients built on its stubs see TF Serving. Calls
arrive through serving/http2.py; Predict, Classify and Regress go through the same Dispatcher as REST,
so gRPC and REST callers share batches. MultiInference and config reloads run on worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from aviary.serving.api import Prepared, ServingApi
from aviary.serving.dispatch import Dispatcher
from aviary.serving.http2 import Call, Http2Server
from aviary.serving.metrics import Metrics
from aviary.serving.status import CODE_VALUES as STATUS_CODES
from aviary.serving.status import ServingError

log = logging.getLogger("serving")
_MAX_MESSAGE = 1024
_PREDICTION = "/tensorflow.serving.PredictionService/"
_MODEL = "/tensorflow.serving.ModelService/"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}: field 1, varint 1


def _as_serving_error(exc: BaseException) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, RecursionError):
        return ServingError("INVALID_ARGUMENT", "request is nested too deeply")
    log.error("gRPC request failed", exc_info=exc)
    return ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


def _fail(call: Call, exc: ServingError) -> None:
    message = exc.message
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "...TRUNCATED"
    call.fail(STATUS_CODES.get(exc.code, 2), message)


def _parse(call: Call, message_type: Any) -> Any:
    try:
        return message_type.FromString(call.body)
    except DecodeError:
        raise ServingError("INTERNAL", "Exception deserializing request!") from None


class GrpcService:
    """Routes each call by its path to TF Serving's handlers; every method runs on the loop's thread."""

    def __init__(self, api: ServingApi, metrics: Metrics, dispatcher: Dispatcher,
                 on_reload: Callable[[Any], None], health: bool) -> None:
        self.api = api
        self.metrics = metrics
        self.dispatcher = dispatcher
        self.on_reload = on_reload
        self.routes: dict[str, Callable[[Call], None]] = {
            _PREDICTION + "Predict": lambda call: self._model_call(call, "predict", predict_pb2.PredictRequest,
                                                                   api.predict),
            _PREDICTION + "Classify": lambda call: self._model_call(
                call, "classify", classification_pb2.ClassificationRequest, api.classify),
            _PREDICTION + "Regress": lambda call: self._model_call(call, "regress", regression_pb2.RegressionRequest,
                                                                   api.regress),
            _PREDICTION + "MultiInference": self._multi_inference,
            _PREDICTION + "GetModelMetadata": self._metadata,
            _MODEL + "GetModelStatus": self._model_status,
            _MODEL + "HandleReloadConfigRequest": self._reload,
        }
        if health:
            self.routes[_HEALTH_CHECK] = lambda call: call.reply(_SERVING)

    def handle(self, call: Call) -> None:
        route = self.routes.get(call.path)
        if route is None:
            call.fail(STATUS_CODES["UNIMPLEMENTED"], "Method not found!")
            return
        route(call)

    # ----------------------------------------------------------------- model calls

    def _model_call(self, call: Call, name: str, message_type: Any, prepare: Callable[[Any], Prepared]) -> None:
        start = time.perf_counter()
        model = ""
        version = ""
        try:
            request = _parse(call, message_type)
            model = request.model_spec.name
            runner, feeds, finish = prepare(request)
            version = str(runner.version)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            self._failed(call, model, name, start, exc, version)
            return

        def done(result: Any) -> None:
            if call.cancelled:
                return
            try:
                if isinstance(result, BaseException):
                    raise result
                payload = finish(result).SerializeToString()
            except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
                self._failed(call, model, name, start, exc, version)
                return
            call.reply(payload)
            self.metrics.record_request(model, name, "GRPC", "OK", (time.perf_counter() - start) * 1e6, version)

        self.dispatcher.run(runner, feeds, done, call.time_remaining())

    def _failed(self, call: Call, model: str, name: str, start: float, exc: BaseException, version: str = "") -> None:
        error = _as_serving_error(exc)
        self.metrics.record_request(model, name, "GRPC", error.code, (time.perf_counter() - start) * 1e6, version)
        _fail(call, error)

    def _off_loop(self, call: Call, work: Callable[[], bytes], on_error: Callable[[ServingError], None]) -> None:
        """Runs work() on a worker thread and answers on the loop; DEADLINE_EXCEEDED if the call's time runs out."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        remaining = call.time_remaining()
        if remaining is not None:
            timer = loop.call_later(max(0.0, remaining), lambda: call.fail(STATUS_CODES["DEADLINE_EXCEEDED"],
                                                                           "Deadline Exceeded"))

        def finished(future: asyncio.Future[bytes]) -> None:
            if timer is not None:
                timer.cancel()
            exc = future.exception()
            if exc is None:
                call.reply(future.result())
                return
            error = _as_serving_error(exc)
            on_error(error)
            _fail(call, error)

        loop.run_in_executor(None, work).add_done_callback(finished)

    def _multi_inference(self, call: Call) -> None:
        start = time.perf_counter()
        model = ""
        try:
            request = _parse(call, inference_pb2.MultiInferenceRequest)
        except ServingError as exc:
            _fail(call, exc)
            return
        model = request.tasks[0].model_spec.name if request.tasks else ""

        def work() -> bytes:
            payload = self.api.multi_inference(request).SerializeToString()
            self.metrics.record_request(model, "multi_inference", "GRPC", "OK", (time.perf_counter() - start) * 1e6)
            return bytes(payload)

        def on_error(error: ServingError) -> None:
            self.metrics.record_request(model, "multi_inference", "GRPC", error.code,
                                        (time.perf_counter() - start) * 1e6)

        self._off_loop(call, work, on_error)

    def _metadata(self, call: Call) -> None:
        try:
            request = _parse(call, get_model_metadata_pb2.GetModelMetadataRequest)
            payload = self.api.metadata(request).SerializeToString()
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            _fail(call, _as_serving_error(exc))
            return
        call.reply(payload)

    def _model_status(self, call: Call) -> None:
        try:
            request = _parse(call, get_model_status_pb2.GetModelStatusRequest)
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            payload = self.api.model_status(spec.name, version).SerializeToString()
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            _fail(call, _as_serving_error(exc))
            return
        call.reply(payload)

    def _reload(self, call: Call) -> None:
        """Answers once the new config's versions are loaded or have failed, as ServerCore does."""
        try:
            request = _parse(call, model_management_pb2.ReloadConfigRequest)
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported",
                )
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            _fail(call, exc)
            return

        def work() -> bytes:
            self.on_reload(request.config)
            return bytes(model_management_pb2.ReloadConfigResponse().SerializeToString())

        def on_error(error: ServingError) -> None:
            log.error("ReloadConfig failed: %s", error.message)

        self._off_loop(call, work, on_error)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def start_grpc_server(api: ServingApi, metrics: Metrics, dispatcher: Dispatcher,
                            on_reload: Callable[[Any], None], address: str, max_message_bytes: int,
                            socket_path: str = "", health: bool = False) -> tuple[Http2Server, int]:
    """Starts the gRPC server on the running event loop; returns it and its bound TCP port."""
    service = GrpcService(api, metrics, dispatcher, on_reload, health)
    server = Http2Server(service.handle, max_message_bytes)
    host, port = _split_address(address)
    try:
        bound = await server.listen_tcp(host, port)
        if socket_path:
            await server.listen_unix(socket_path)
    except OSError as exc:
        await server.stop()
        raise OSError(f"could not bind gRPC to {address}: {exc}") from None
    return server, bound


__all__ = ["GrpcService", "start_grpc_server"]
