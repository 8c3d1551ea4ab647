"""A local stand-in for TensorFlow Serving's model server: same REST and gRPC APIs, config file, labels.

Run it in the foreground (SIGTERM or SIGINT stops it cleanly, exit 0)::

    python -m aviary.serving --port=8500 --rest_api_port=8501 \\
        --model_config_file=/abs/models.config --model_config_file_poll_wait_seconds=1 \\
        --allow_version_labels_for_unavailable_models=true \\
        --monitoring_config_file=/abs/monitoring.config

Flags are tensorflow_model_server's (`python -m aviary.serving --help` lists them), plus `--host`
(default 127.0.0.1) and `--max_request_bytes`. Importing this package starts nothing.
"""
