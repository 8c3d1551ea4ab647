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

Progressive-delivery extensions (off until used, so the server stays a TF Serving drop-in):

* Traffic split, per model, changed at run time over REST (not persisted across restarts)::

      POST   /v1/models/<m>/traffic  {"canary_percent": 25, "mirror_percent": 10}
      GET    /v1/models/<m>/traffic  -> {"model", "enabled", "canary_percent", "mirror_percent",
                                         "stable_version", "canary_version"}
      DELETE /v1/models/<m>/traffic  (back to TF Serving's rule)

  `--mirror_percent=N` (default 0, off) starts every configured model with a split that mirrors
  N% (the shadow comparator on Kubernetes runs with 100).

  While a split is set, inference requests that name no version and no label (REST
  `/v1/models/<m>:predict|classify|regress`, gRPC ModelSpec without version/version_label) are
  answered by the version labelled `stable`, except `canary_percent` of them (exact over any run of
  requests: 25 means every 4th) by the version labelled `canary`. With no loaded `stable` label the
  newest version answers, as in TF Serving. Requests naming a version or label, metadata and status
  are never redirected. Each percentage is 0-100 and their sum at most 100.
* Shadow mirroring: `mirror_percent` of the predicts that stable answers are also run on the canary
  after stable's outputs exist, on a worker thread (at most 2 at once; more are dropped and counted).
  The canary's answer never reaches the client; the comparison is published as
  `:aviary:serving:shadow:*` metrics (see `metrics.py`).
* Per-version metrics: `:tensorflow:serving:request_count` and `request_latency` carry a `version`
  label besides TF Serving's labels.
"""
