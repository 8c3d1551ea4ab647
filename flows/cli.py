"""Command-line options that every flow shares, and the one-line error they print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aviary.config import PipelineConfig


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every flow's command line shares."""
    parser.add_argument("--model-name", help="model name in the store and on the server (default: circle)")
    parser.add_argument("--store", type=Path, help="model store root (default: models)")
    parser.add_argument("--runs-dir", type=Path, help="where run directories and TensorBoard logs go (default: runs)")
    parser.add_argument("--target", choices=["none", "local", "kubernetes"], help="where the new version goes")
    parser.add_argument("--config", type=Path, help="a JSON file with a full or partial PipelineConfig")


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
    }
    for (section, field), value in overrides.items():
        if value is not None:
            base.setdefault(section, {})[field] = value
    if args.runs_dir is not None:
        base["runs_dir"] = args.runs_dir
    return PipelineConfig.model_validate(base)


def one_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"invalid config: {where}: {first['msg']}"
    return " ".join(str(error).split()) or type(error).__name__


