"""TF Serving's model config file (`ModelServerConfig` in protobuf text format), for every target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


@dataclass(frozen=True)
class ModelEntry:
    """One model serving exactly `versions` (a `specific` policy), with `labels` pointing into them."""

    name: str
    base_path: str
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)


def build_model_config(entries: Sequence[ModelEntry]) -> model_server_config_pb2.ModelServerConfig:
    server = model_server_config_pb2.ModelServerConfig()
    config_list = server.model_config_list  # present even with no models: an empty list unloads all
    config_list.SetInParent()
    for entry in entries:
        missing = {k: v for k, v in entry.labels.items() if v not in entry.versions}
        if missing:
            raise ValueError(f"{entry.name}: labels {missing} point at versions not served ({sorted(entry.versions)})")
        model = config_list.config.add()
        model.name = entry.name
        model.base_path = entry.base_path
        model.model_platform = "tensorflow"
        model.model_version_policy.specific.versions.extend(sorted(set(entry.versions)))
        for label, version in sorted(entry.labels.items()):
            model.version_labels[label] = version
    return server


def render_model_configs(entries: Sequence[ModelEntry]) -> str:
    return text_format.MessageToString(build_model_config(entries))


def render_model_config(
    name: str, base_path: str, versions: Sequence[int], labels: Mapping[str, int] | None = None
) -> str:
    return render_model_configs([ModelEntry(name, base_path, tuple(versions), dict(labels or {}))])


def parse_model_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
