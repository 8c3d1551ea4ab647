"""A Kubernetes serving pod as the manifests and the flow set it up, on the TF-Serving-compatible
server: the container's own args and the flow's ConfigMap files. Its probe path answers 200 only
once the pinned version is AVAILABLE, and Prometheus metrics answer where the scrape annotations
point (TF Serving's behaviour on both: docs/kubernetes.md)."""

from __future__ import annotations

from pathlib import Path

import requests
from conftest import Store, start_server, wait_for

from aviary.targets import kube_objects as objects


def test_pod_is_ready_only_once_its_pinned_version_is_available_and_exports_metrics(store: Store,
                                                                                     tmp_path: Path) -> None:
    model, version = "fraud", 3
    config_dir, models = tmp_path / "etc-aviary", tmp_path / "models"
    (models / model).mkdir(parents=True)
    config_dir.mkdir()
    text = objects.model_config_text(model, str(models / model), version, "stable")
    for name, content in objects.config_map("aviary", model, "stable", text)["data"].items():
        (config_dir / name).write_text(content)
    container = objects.serving_container(model, "stable", "tensorflow/serving:2.19.0", "/models", {})
    args = [a.replace(objects.CONFIG_DIR, str(config_dir)) for a in container["args"]
            if not a.startswith(("--port=", "--rest_api_port="))]  # free ports instead
    assert f"--monitoring_config_file={config_dir}/{objects.MONITORING_FILE}" in args
    server = start_server(args)
    try:
        readiness = container["readinessProbe"]["httpGet"]["path"]
        assert readiness == container["startupProbe"]["httpGet"]["path"] == f"/v1/models/{model}/labels/stable/metadata"
        probe = requests.get(server.rest + readiness, timeout=5)
        assert probe.status_code == 404, probe.text  # the label points at a version not loaded: not ready
        store.add_version(models / model, version, store.circle_v1)
        wait_for(lambda: requests.get(server.rest + readiness, timeout=5).status_code == 200, timeout=30)
        assert requests.get(server.rest + readiness, timeout=5).json()["model_spec"]["version"] == str(version)

        annotations = objects.SCRAPE_ANNOTATIONS
        assert annotations["prometheus.io/port"] == str(objects.REST_PORT)
        metrics = requests.get(server.rest + annotations["prometheus.io/path"], timeout=5)
        assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
        assert "# TYPE" in metrics.text
    finally:
        server.stop()
