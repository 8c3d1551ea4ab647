"""Command-line options that every flow shares, and the one-line error they print."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from aviary.config import PipelineConfig

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every flow's command line shares."""
    parser.add_argument("--model-name", help="model name in the store and on the server (default: circle)")
    parser.add_argument("--store", type=Path, help="model store root (default: models)")
    parser.add_argument("--runs-dir", type=Path, help="where run directories and TensorBoard logs go (default: runs)")
    parser.add_argument("--target", choices=["none", "local", "kubernetes"], help="where the new version goes")
    parser.add_argument("--config", type=Path, help="a JSON file with a full or partial PipelineConfig")
    parser.add_argument("--ready-timeout", type=float, help="seconds for the canary to become available")
    parser.add_argument("--hand-off", action="store_const", const=True,
                        help="export only: the export event has canary-deploy roll out with these settings")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's log on the console too")
    kube = parser.add_argument_group("kubernetes target")
    kube.add_argument("--namespace", help="namespace of the TF Serving Deployments (default: aviary)")
    kube.add_argument("--kube-context", help="kubeconfig context (default: the current one)")
    kube.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    kube.add_argument("--in-cluster", action="store_const", const=True, help="use the pod's service account")
    kube.add_argument("--kube-image", help="TF Serving image, pinned by version")
    kube.add_argument("--kube-replicas", type=int, help="stable replicas")
    kube.add_argument("--canary-replicas", type=int, help="canary replicas (traffic share by replica ratio)")
    kube.add_argument("--canary-weight", type=int, help="canary traffic percent through a Gateway API HTTPRoute")
    kube.add_argument("--store-claim", help="PersistentVolumeClaim holding the model store")
    kube.add_argument("--store-uri", help="object-store base that TF Serving reads (gs://, s3://) instead of the claim")
    kube.add_argument("--copy-image", help="image of the Job that copies a version onto the claim")
    kube.add_argument("--copy-timeout", type=float, help="seconds the copy Job may take (default: 300)")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    base: dict[str, Any] = {}
    if args.config is not None:
        base = json.loads(args.config.read_text())
    overrides = {
        ("data", "path"): getattr(args, "data", None),
        ("train", "epochs"): getattr(args, "epochs", None),
        ("export", "model_name"): args.model_name,
        ("export", "store"): args.store,
        ("rollout", "target"): args.target,
        ("rollout", "ready_timeout_s"): args.ready_timeout,
        ("rollout", "hand_off"): getattr(args, "hand_off", None),
    }
    kube_overrides = {
        "namespace": args.namespace,
        "context": args.kube_context,
        "kubeconfig": args.kubeconfig,
        "in_cluster": args.in_cluster,
        "image": args.kube_image,
        "replicas": args.kube_replicas,
        "canary_replicas": args.canary_replicas,
        "canary_weight": args.canary_weight,
        "store_claim": args.store_claim,
        "store_uri": args.store_uri,
        "copy_image": args.copy_image,
        "copy_timeout_s": getattr(args, "copy_timeout", None),
    }
    for (section, field), value in overrides.items():
        if value is not None:
            base.setdefault(section, {})[field] = value
    for field, value in kube_overrides.items():
        if value is not None:
            base.setdefault("rollout", {}).setdefault("kubernetes", {})[field] = value
    if args.runs_dir is not None:
        base["runs_dir"] = args.runs_dir
    return PipelineConfig.model_validate(base)


def one_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"invalid config: {where}: {first['msg']}"
    return " ".join(str(error).split()) or type(error).__name__


def run_main(run: Callable[[], T], describe: Callable[[T], str]) -> int:
    """A flow's command line: what `describe` says of the result and exit 0, or the one-line error and exit 1."""
    from aviary.prefect_api import own_prefect_api
    from aviary.quiet import finish_progress

    try:
        with own_prefect_api():  # with no API configured, a throwaway one that dies with this process
            result = run()
    except Exception as error:  # noqa: BLE001 - the CLI's contract is one line, not a traceback
        finish_progress()
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    finish_progress()
    print(describe(result))
    return 0
