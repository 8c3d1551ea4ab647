"""TF Serving pods' Prometheus pages, labelled with the version each pod serves.

TF Serving's metrics carry `model_name` but no `version`. On Kubernetes each pod serves exactly one
pinned version (its track's), so the flow attributes every series of a pod's page to the version in
the pod's `aviary.dev/version` annotation; aviary.analysis then sums the pages of all pods per version.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from aviary.analysis import SHADOW_PREFIX


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _render(text: str, labels: Mapping[str, str], keep: Callable[[str], bool]) -> str:
    """The page's samples whose names `keep` accepts, with `labels` added where they lack them (a label
    the server set wins), rendered as untyped samples, which the text parser reads back under the same names."""
    lines: list[str] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if keep(sample.name):
                merged = {**labels, **sample.labels}
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(merged.items()))
                lines.append(f"{sample.name}{{{rendered}}} {_number(sample.value)}")
    return "\n".join(lines) + "\n"


def relabel(text: str, labels: Mapping[str, str]) -> str:
    """The page with `labels` added to every sample that lacks them."""
    return _render(text, labels, lambda _name: True)


def shadow_series(text: str) -> str:
    """Only the shadow comparison's series of a page (the shadow comparator's): its request counters
    count mirrored requests stable's pods already counted."""
    return _render(text, {}, lambda name: name.startswith(SHADOW_PREFIX))
