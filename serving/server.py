"""`python -m aviary.serving`: flags as tensorflow_model_server spells them, start-up, polling, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

log = logging.getLogger("serving")

VERSION = "2.21.0-aviary"


@dataclass
class Flags:
    """tensorflow_model_server's flags (main.cc), plus --host, --max_request_bytes, --instance_id and the REST guards of our own."""

    port: int = 8500
    rest_api_port: int = 8501
    host: str = "127.0.0.1"
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    allow_version_labels_for_unavailable_models: bool = False
    file_system_poll_wait_seconds: int = 1
    monitoring_config_file: str = ""
    enable_batching: bool = False
    batching_parameters_file: str = ""
    rest_api_timeout_in_ms: int = 30000
    rest_api_num_threads: int = 0
    rest_api_enable_cors_support: bool = False
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    saved_model_tags: str = "serve"
    max_num_load_retries: int = 0
    load_retry_interval_micros: int = 60_000_000
    grpc_max_threads: int = 0  # accepted; gRPC runs on the event loop (serving/http2.py), not a thread pool
    grpc_channel_arguments: str = ""
    grpc_socket_path: str = ""
    enable_signature_method_name_check: bool = False
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    tensorflow_session_parallelism: int = 0
    enable_grpc_healthcheck_service: bool = False
    max_request_bytes: int = 64 * 1024 * 1024
    # Our own REST guards: seconds a client may take to send a request head, and the most open REST
    # connections (0: half the descriptor limit, at most 4096); connections past it get 503 and close.
    rest_api_header_timeout_in_ms: int = 10000
    rest_api_max_connections: int = 0
    instance_id: str = ""  # ours: echoed as X-Aviary-Instance, so a client can tell which server answers
    # Ours: every configured model starts with this traffic split's mirror share (its `canary` label's
    # answers compared with `stable`'s); 0, the default, leaves the server a TF Serving drop-in.
    mirror_percent: int = 0
    version: bool = False


# Accepted for command-line compatibility; they change nothing here.
_IGNORED = {
    "platform_config_file", "per_process_gpu_memory_fraction", "xla_cpu_compilation_enabled",
    "enable_profiler", "flush_filesystem_caches", "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_interpreters_per_pool", "num_tflite_pools", "ssl_config_file",
    "model_config_file_poll_wait_seconds_is_set", "response_log_config_file", "tensorflow_session_config_file",
    "mixed_precision", "use_tflite_model", "use_alts_credentials", "skip_initialize_tpu",
    "enable_model_warmup_on_startup", "thread_pool_factory_config_file", "batching_policy",
}


def usage() -> str:
    lines = ["usage: python -m aviary.serving [--flag=value | --flag value | --bool_flag[=true|false]] ...", "", "Flags:"]
    for f in fields(Flags):
        lines.append(f"  --{f.name}  (default: {getattr(Flags(), f.name)!r})")
    lines.append("")
    lines.append("Accepted and ignored: " + ", ".join(f"--{name}" for name in sorted(_IGNORED)))
    return "\n".join(lines)


class FlagError(ValueError):
    pass


def parse_flags(argv: Sequence[str]) -> Flags:
    """Accepts `--flag=value`, `--flag value`, bare `--bool_flag` and `true/false/1/0` booleans."""
    flags = Flags()
    types = {f.name: f.type for f in fields(Flags)}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            raise FlagError(f"Unexpected argument: {arg}")
        body = arg.lstrip("-")
        name, has_value, value = body.partition("=")
        if name not in types and name.startswith("no") and name[2:] in types and types[name[2:]] in (bool, "bool"):
            setattr(flags, name[2:], False)
            continue
        if name in _IGNORED:
            if not has_value and i < len(args) and not args[i].startswith("--"):
                i += 1
            continue
        if name not in types:
            raise FlagError(f"Unknown command line flag '{name}'")
        kind = types[name]
        if kind in (bool, "bool"):
            if not has_value:
                if i < len(args) and args[i].lower() in ("true", "false", "1", "0"):
                    value = args[i]
                    i += 1
                else:
                    value = "true"
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise FlagError(f"Illegal value '{value}' specified for bool flag '{name}'")
            setattr(flags, name, lowered in ("true", "1"))
            continue
        if not has_value:
            if i >= len(args):
                raise FlagError(f"Missing value for flag '{name}'")
            value = args[i]
            i += 1
        if kind in (int, "int"):
            try:
                setattr(flags, name, int(value))
            except ValueError:
                raise FlagError(f"Illegal value '{value}' specified for int flag '{name}'") from None
        else:
            setattr(flags, name, value)
    return flags


def _read_model_config(flags: Flags) -> Any:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    if flags.model_config_file:
        with open(flags.model_config_file, encoding="utf-8") as fh:
            text = fh.read()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            raise ValueError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: "
                             f"'{flags.model_config_file}': {exc}") from None
        return config
    if flags.model_base_path:
        model = config.model_config_list.config.add()
        model.name = flags.model_name
        model.base_path = flags.model_base_path
        model.model_platform = "tensorflow"
    return config


def _metrics_path(flags: Flags) -> str | None:
    if not flags.monitoring_config_file:
        return None
    from aviary.serving import configpb

    config = configpb.read_text_file(flags.monitoring_config_file, configpb.monitoring_config())
    if not config.prometheus_config.enable:
        return None
    return str(config.prometheus_config.path or "/monitoring/prometheus/metrics")


class ModelServer:
    """Owns the manager, the two front ends and the pollers; `run()` blocks until SIGTERM/SIGINT."""

    def __init__(self, flags: Flags) -> None:
        from aviary.serving.api import ServingApi
        from aviary.serving.batching import BatchingOptions
        from aviary.serving.manager import ManagerOptions, ModelManager
        from aviary.serving.metrics import Metrics
        from aviary.serving.servable import LoadOptions
        from aviary.serving.shadow import Shadow

        self.flags = flags
        self.metrics_path = _metrics_path(flags)  # a bad monitoring file fails start-up, before any load
        batching = None
        if flags.enable_batching:
            if flags.batching_parameters_file:
                with open(flags.batching_parameters_file, encoding="utf-8") as fh:
                    batching = BatchingOptions.from_text(fh.read(), flags.batching_parameters_file)
            else:
                batching = BatchingOptions()
        cpus = os.cpu_count() or 1
        self.executor = ThreadPoolExecutor(max_workers=max(4, flags.rest_api_num_threads or 2 * cpus),
                                           thread_name_prefix="run")
        self.metrics = Metrics()
        options = ManagerOptions(
            allow_labels_for_unavailable=flags.allow_version_labels_for_unavailable_models,
            load=LoadOptions(
                tags=tuple(t for t in flags.saved_model_tags.split(",") if t),
                enable_warmup=flags.enable_model_warmup,
                warmup_iterations=flags.num_request_iterations_for_warmup,
                batching=batching,
                signature_method_name_check=flags.enable_signature_method_name_check,
            ),
            max_num_load_retries=flags.max_num_load_retries,
            load_retry_interval_s=flags.load_retry_interval_micros / 1e6,
        )
        self.api: ServingApi
        self.manager = ModelManager(options, self.executor, lambda s, r: self.api.run_warmup_record(s, r),
                                    on_loaded=self._loaded)
        self.api = ServingApi(self.manager, Shadow(self.executor, self.metrics))
        self._stop = threading.Event()
        self._config_text: str | None = None
        self._threads: list[threading.Thread] = []
        self.grpc_port = 0
        self.rest_port = 0
        self.rest_server: Any = None

    def _loaded(self, model: str, version: int, seconds: float) -> None:
        self.metrics.record_warmup(model, version, seconds)
        gc.freeze()

    def reload(self, config: Any) -> None:
        """Apply a config; like ServerCore, fail if a model ends up with no available version."""
        from aviary.serving.status import ServingError

        self.manager.apply_config(config)
        available = {name for name, _ in self.manager.available()}
        missing = [mc.name for mc in config.model_config_list.config if mc.name not in available]
        if missing:
            raise ServingError("UNKNOWN", f"Some models did not become available: {{{', '.join(sorted(missing))}}}")

    def load_initial(self) -> None:
        config = _read_model_config(self.flags)
        if self.flags.model_config_file:
            with open(self.flags.model_config_file, encoding="utf-8") as fh:
                self._config_text = fh.read()
        self.manager.apply_config(config)
        if self.flags.mirror_percent:
            for model in config.model_config_list.config:
                self.manager.set_traffic(model.name, 0, self.flags.mirror_percent)

    def _poll_config(self) -> None:
        from aviary.serving.status import ServingError

        wait = self.flags.model_config_file_poll_wait_seconds
        while not self._stop.wait(wait):
            try:
                with open(self.flags.model_config_file, encoding="utf-8") as fh:
                    text = fh.read()
                if text == self._config_text:
                    continue
                config = _read_model_config(self.flags)
                self._config_text = text
                log.info("Model config file changed; reloading")
                self.manager.apply_config(config)
            except (OSError, ValueError, ServingError) as exc:
                log.error("Failed to reload model config %s: %s", self.flags.model_config_file, exc)

    def _poll_file_system(self) -> None:
        wait = max(0.05, float(self.flags.file_system_poll_wait_seconds))
        while not self._stop.wait(wait):
            try:
                self.manager.poll_file_system()
            except Exception:
                log.exception("file system poll failed")

    def start_pollers(self) -> None:
        if self.flags.model_config_file and self.flags.model_config_file_poll_wait_seconds > 0:
            self._threads.append(threading.Thread(target=self._poll_config, name="config-poll", daemon=True))
        if self.flags.file_system_poll_wait_seconds > 0:
            self._threads.append(threading.Thread(target=self._poll_file_system, name="fs-poll", daemon=True))
        for thread in self._threads:
            thread.start()

    async def serve(self, ready: threading.Event | None = None) -> None:
        from aviary.serving.dispatch import Dispatcher
        from aviary.serving.grpc_service import start_grpc_server
        from aviary.serving.rest import RestOptions, RestServer

        flags = self.flags
        dispatcher = Dispatcher(asyncio.get_running_loop())
        grpc_server, self.grpc_port = await start_grpc_server(
            self.api, self.metrics, dispatcher, self.reload, f"{_host_for(flags.host)}:{flags.port}",
            flags.max_request_bytes, socket_path=flags.grpc_socket_path,
            health=flags.enable_grpc_healthcheck_service,
        )
        log.info("Running gRPC ModelServer at %s:%d ...", flags.host, self.grpc_port)
        rest = None
        if flags.rest_api_port:
            if flags.rest_api_port == flags.port:
                raise ValueError("--port and --rest_api_port must differ")
            rest = RestServer(self.api, self.metrics, RestOptions(
                timeout_s=flags.rest_api_timeout_in_ms / 1000.0,
                max_request_bytes=flags.max_request_bytes,
                metrics_path=self.metrics_path,
                enable_cors=flags.rest_api_enable_cors_support,
                header_timeout_s=flags.rest_api_header_timeout_in_ms / 1000.0,
                max_connections=flags.rest_api_max_connections,
                instance_id=flags.instance_id,
            ))
            self.rest_server = rest
            self.rest_port = await rest.start(flags.host, flags.rest_api_port, dispatcher)
            log.info("Exporting HTTP/REST API at:%s:%d ...", flags.host, self.rest_port)
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not possible off the main thread (tests run the server in a thread).
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stopped.set)
        self._async_stop = (loop, stopped)
        if ready is not None:
            ready.set()
        await stopped.wait()
        log.info("Shutting down")
        self._stop.set()
        if rest is not None:
            await rest.close()
        await grpc_server.stop(1.0)
        self.manager.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def request_stop(self) -> None:
        """Thread-safe stop (what SIGTERM does)."""
        loop, stopped = self._async_stop
        loop.call_soon_threadsafe(stopped.set)


def _host_for(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _configure_tensorflow(flags: Flags) -> None:
    if not (flags.tensorflow_intra_op_parallelism or flags.tensorflow_inter_op_parallelism
            or flags.tensorflow_session_parallelism):
        return  # importing TF is slow; a bad config file should fail fast
    import tensorflow as tf

    if flags.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(flags.tensorflow_intra_op_parallelism)
    inter = flags.tensorflow_inter_op_parallelism or flags.tensorflow_session_parallelism
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if any(arg in ("-h", "--help", "-help", "--helpfull") for arg in argv):
        print(usage())
        return 0
    try:
        flags = parse_flags(argv)
    except FlagError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if flags.version:
        print(f"TensorFlow ModelServer: {VERSION}\nTensorFlow Library: 2.21")
        return 0
    if not all(c.isalnum() or c in "._-" for c in flags.instance_id):
        print("--instance_id may hold only letters, digits, '.', '_' and '-'", file=sys.stderr)
        return 2
    if not 0 <= flags.mirror_percent <= 100:
        print("--mirror_percent must be between 0 and 100", file=sys.stderr)
        return 2
    if not flags.model_config_file and not flags.model_base_path:
        print("Either --model_config_file or --model_base_path must be given", file=sys.stderr)
        return 2
    from aviary.serving.status import ServingError

    _configure_tensorflow(flags)
    try:
        server = ModelServer(flags)
        server.load_initial()
    except (OSError, ValueError, ServingError) as exc:
        message = f"{exc.code}: {exc.message}" if isinstance(exc, ServingError) else str(exc)
        print(f"Failed to start server. Error: {message}", file=sys.stderr)
        return 1
    server.start_pollers()
    try:
        asyncio.run(server.serve())
    except OSError as exc:
        print(f"Failed to start server. Error: {exc}", file=sys.stderr)
        server.manager.close()
        return 1
    return 0
