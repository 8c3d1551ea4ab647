"""A local stand-in for TensorFlow Serving's model server: same REST and gRPC APIs, config file, labels.

Run it in the foreground (SIGTERM or SIGINT stops it cleanly, exit 0)::

    python -m aviary.serving --port=8500 --rest_api_port=8501 \\
        --model_config_file=/abs/models.config --model_config_file_poll_wait_seconds=1 \\
        --allow_version_labels_for_unavailable_models=true \\
        --monitoring_config_file=/abs/monitoring.config

Flags are tensorflow_model_server's (`python -m aviary.serving --help` lists them), plus these of
our own: `--host` (default 127.0.0.1), `--max_request_bytes` (64 MiB), `--rest_api_header_timeout_in_ms`
(10000: a client that has not sent a complete request head by then gets 408 and is closed) and
`--rest_api_max_connections` (0 = half the descriptor limit, at most 4096; connections past it get
an immediate 503 and are closed). Large predict bodies are parsed in a helper process, so status
calls stay fast while a huge request is being served. Importing this package starts nothing.
"""
