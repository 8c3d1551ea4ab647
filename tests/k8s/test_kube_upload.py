"""The copy Job's client side: what it refuses before touching the cluster, what it sends.
The copy itself runs through the real Job controller in test_real_cluster.py."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from pathlib import Path

import pytest
from kubernetes.client import ApiClient

from aviary.targets import kube_copy
from aviary.targets.base import TargetError

from .conftest import KubeReader, make_target


def export_dir(tmp_path: Path) -> Path:
    version = tmp_path / "circle" / "7"
    (version / "variables").mkdir(parents=True)
    (version / "assets.extra").mkdir()
    (version / "saved_model.pb").write_bytes(random.Random(7).randbytes(200_000))  # incompressible: several chunks
    (version / "variables" / "variables.index").write_bytes(b"index")
    (version / "assets.extra" / "aviary.json").write_text('{"version": 7}')
    return version


def test_kube_upload_refuses_what_does_not_fit(kube_client: ApiClient, tmp_path: Path) -> None:
    target = make_target(kube_client, max_upload_bytes=1000)
    with pytest.raises(TargetError, match=r"over the 1000-byte limit .*\(store_uri\)$"):
        target.upload_version("circle", 7, export_dir(tmp_path))


def test_kube_upload_archive_is_reproducible(tmp_path: Path) -> None:
    source = export_dir(tmp_path)
    first = kube_copy.tar_gz(source)
    (source / "saved_model.pb").touch()  # a newer mtime changes nothing
    assert kube_copy.tar_gz(source) == first
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        names = tar.getnames()
        assert {m.uid for m in tar.getmembers()} == {0}
    assert names == sorted(names) and "saved_model.pb" in names


def test_kube_copy_job_is_content_addressed_with_its_deadline() -> None:
    job = kube_copy.copy_job(namespace="aviary", model="circle", version=7, digest="ab" * 32, chunk_count=2,
                             image="busybox:1.36", store_claim="aviary-models", store_mount="/models",
                             deadline_s=42, tmp_size="16Mi")
    assert job["metadata"]["name"] == "circle-copy-v7-ababababab"
    assert job["spec"]["activeDeadlineSeconds"] == 42
    sources = job["spec"]["template"]["spec"]["volumes"][1]["projected"]["sources"]
    assert [s["configMap"]["name"] for s in sources] == ["circle-copy-v7-ababababab-0", "circle-copy-v7-ababababab-1"]


def test_kube_store_uri_serves_from_object_store(kube_client: ApiClient, kube_read: KubeReader) -> None:
    target = make_target(kube_client, store_uri="gs://aviary-models/store/")
    assert not target.needs_upload
    target.deploy_canary("circle", 3, None)
    cm = kube_read.get("ConfigMap", "circle-canary-config")
    assert cm is not None and 'base_path: "gs://aviary-models/store/circle"' in cm["data"]["models.config"]
