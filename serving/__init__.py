"""A local stand-in for TensorFlow Serving's model server: same REST and gRPC APIs, config file, labels.

Run it in the foreground (SIGTERM or SIGINT stops it cleanly, exit 0)::

    python -m aviary.serving --port=8500 --rest_api_port=8501 \\
        --model_config_file=/abs/models.config --model_config_file_poll_wait_seconds=1 \\
        --allow_version_labels_for_unavailable_models=true \\
        --monitoring_config_file=/abs/monitoring.config

Flags are tensorflow_model_server's (`python -m aviary.serving --help` lists them), plus `--host`
(default 127.0.0.1) and `--max_request_bytes`. Importing this package starts nothing.

Extensions beyond TF Serving:

* Request metrics carry a `version` label (the version that answered):
  `:tensorflow:serving:request_count{model_name,version,status}` and the
  `:tensorflow:serving:request_latency{model_name,version,API,entrypoint}` histogram (microseconds).
* `--enable_traffic_split` (off by default; without it the server is a TF Serving drop-in): a
  predict/classify/regress request that names no version and no label (REST `/v1/models/m:predict`,
  gRPC ModelSpec without version or label) is answered by the version labelled `stable`, except
  `canary_percent` % answered by the one labelled `canary`; of stable's, `mirror_percent` % are also
  run on the canary in the background (bounded queue, dropped when full), never delaying or changing
  the answer, and the two answers are compared. A model without a `stable` label keeps the newest.
  Shares are exact over every 100 requests. Set and read them at run time::

      POST /v1/models/<m>/traffic  {"canary_percent": 10, "mirror_percent": 20}   (either key; 0-100)
      GET  /v1/models/<m>/traffic  -> {"canary_percent", "mirror_percent", "stable_version", "canary_version"}

  The shadow comparison of predict outputs (`probability`, or the only float output; `class` or
  p >= 0.5) is exported per canary {model_name, version}: `:tensorflow:serving:shadow_compared_rows`,
  `shadow_class_disagreements`, `shadow_stable_positives`, `shadow_canary_positives` (counters),
  `shadow_abs_probability_diff` (histogram of per-row |canary - stable|), and `shadow_dropped` /
  `shadow_errors` (mirrored requests dropped, or the canary failed them).
"""
