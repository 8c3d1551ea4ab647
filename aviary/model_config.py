"""TF Serving's model config file (`ModelServerConfig` in protobuf text format), for every target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


def render_model_config(
    name: str, base_path: str, versions: Sequence[int], labels: Mapping[str, int] | None = None
) -> str:
    """One model serving exactly `versions` (a `specific` policy), with `labels` pointing into them."""
    labels = dict(labels or {})
    missing = {k: v for k, v in labels.items() if v not in versions}
    if missing:
        raise ValueError(f"labels {missing} point at versions not served ({sorted(versions)})")
    server = model_server_config_pb2.ModelServerConfig()
    model = server.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    model.model_version_policy.specific.versions.extend(sorted(set(versions)))
    for label, version in sorted(labels.items()):
        model.version_labels[label] = version
    return text_format.MessageToString(server)


def parse_model_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
