"""Copying an exported version onto the store volume through ConfigMap chunks and a Job."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from aviary.targets import kubernetes as kube_module
from aviary.targets.base import TargetError
from aviary.targets.kubernetes import KubernetesTarget

from .conftest import KubeReader, make_target
from .emulator import EmulatorThread
from .test_kube_target import in_thread, wait_for


def export_dir(tmp_path: Path) -> Path:
    version = tmp_path / "circle" / "7"
    (version / "variables").mkdir(parents=True)
    (version / "assets.extra").mkdir()
    (version / "saved_model.pb").write_bytes(random.Random(7).randbytes(200_000))  # incompressible: several chunks
    (version / "variables" / "variables.index").write_bytes(b"index")
    (version / "assets.extra" / "aviary.json").write_text('{"version": 7}')
    return version


def job_name(read: KubeReader) -> str:
    (name,) = read.names("Job")
    return name


def test_kube_upload_copies_a_version_through_a_job(kube: EmulatorThread, kube_client: ApiClient,
                                                    kube_read: KubeReader, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_module, "CHUNK_BYTES", 64 * 1024)
    target = make_target(kube_client)
    assert target.needs_upload
    source = export_dir(tmp_path)
    thread, errors = in_thread(lambda: target.upload_version("circle", 7, source, timeout_s=10))

    wait_for(lambda: bool(kube_read.names("Job")))
    name = job_name(kube_read)
    job = kube_read.get("Job", name)
    assert job is not None
    kubernetes_validate.validate({k: v for k, v in job.items() if k != "status"} | {"metadata": {
        "name": name, "namespace": "aviary", "labels": job["metadata"]["labels"]}}, "1.37", strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["image"] == "busybox:1.36"
    assert env["STORE"] == "/models" and env["MODEL"] == "circle" and env["VERSION"] == "7"
    assert 'mv "$tmp" "$dst"' in container["command"][-1]
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "aviary-models"}

    sources = job["spec"]["template"]["spec"]["volumes"][1]["projected"]["sources"]
    assert len(sources) > 1
    payload = b""
    for source_ref in sources:
        config_map = kube_read.get("ConfigMap", source_ref["configMap"]["name"])
        assert config_map is not None
        kubernetes_validate.validate({k: config_map[k] for k in ("apiVersion", "kind", "binaryData")} | {
            "metadata": {"name": config_map["metadata"]["name"]}}, "1.37", strict=True)
        payload += base64.b64decode(config_map["binaryData"]["part"])
    assert hashlib.sha256(payload).hexdigest() == env["SHA256"]
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert files == {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}

    kube_read.set_status("Job", name, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    thread.join(5)
    assert not thread.is_alive() and not errors
    assert not kube_read.names("Job") and not kube_read.names("ConfigMap")


def test_kube_upload_is_content_addressed_and_repeatable(kube: EmulatorThread, kube_target: KubernetesTarget,
                                                         kube_read: KubeReader, tmp_path: Path) -> None:
    source = export_dir(tmp_path)
    names = []
    for _ in range(2):
        thread, errors = in_thread(lambda: kube_target.upload_version("circle", 7, source, timeout_s=10))
        wait_for(lambda: bool(kube_read.names("Job")))
        names.append(job_name(kube_read))
        kube_read.set_status("Job", names[-1], {"succeeded": 1})
        thread.join(5)
        assert not errors
    assert names[0] == names[1] and names[0].startswith("circle-copy-v7-")


def test_kube_upload_failure_names_the_job(kube: EmulatorThread, kube_target: KubernetesTarget,
                                           kube_read: KubeReader, tmp_path: Path) -> None:
    source = export_dir(tmp_path)
    thread, errors = in_thread(lambda: kube_target.upload_version("circle", 7, source, timeout_s=10))
    wait_for(lambda: bool(kube_read.names("Job")))
    name = job_name(kube_read)
    kube_read.set_status("Job", name, {"failed": 2, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the "
                                                                                          "specified backoff limit"}]})
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], TargetError)
    assert str(errors[0]) == (f"copy job {name} failed: Job has reached the specified backoff limit; "
                              f"see kubectl -n aviary logs job/{name}")
    assert not kube_read.names("ConfigMap")  # the chunks never outlive the copy
    assert kube_read.names("Job") == {name}  # kept for its logs

    thread, errors = in_thread(lambda: kube_target.upload_version("circle", 7, source, timeout_s=10))
    wait_for(lambda: "status" not in (kube_read.get("Job", name) or {"status": "gone"}))  # a fresh Job, not the failed one
    kube_read.set_status("Job", name, {"succeeded": 1})
    thread.join(5)
    assert not errors and not kube_read.names("Job")


def test_kube_upload_refuses_what_does_not_fit(kube_client: ApiClient, tmp_path: Path) -> None:
    target = make_target(kube_client, max_upload_bytes=1000)
    with pytest.raises(TargetError, match=r"over the 1000-byte limit .*\(store_uri\)$"):
        target.upload_version("circle", 7, export_dir(tmp_path))


def test_kube_store_uri_serves_from_object_store(kube_client: ApiClient, kube_read: KubeReader) -> None:
    target = make_target(kube_client, store_uri="gs://aviary-models/store/")
    assert not target.needs_upload
    target.deploy_canary("circle", 3, None)
    cm = kube_read.get("ConfigMap", "circle-canary-config")
    assert cm is not None and 'base_path: "gs://aviary-models/store/circle"' in cm["data"]["models.config"]
