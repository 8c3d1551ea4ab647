"""Two versions of a model side by side: metrics, threshold, data, training config, verdict, rollout.

    python -m flows.compare 3 4 [--model-name circle] [--store models]

Prints the comparison and, as a flow run, leaves it as the `<model>-compare` artifact with the pictures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from aviary.config import ExportConfig
from aviary.report import compare_markdown
from aviary.store import ModelStore

DEFAULTS = ExportConfig()


@flow(name="compare")
def compare(a: int, b: int, store: Path = DEFAULTS.store, model_name: str = DEFAULTS.model_name) -> str:
    """Put versions a and b of a model side by side, in an artifact."""
    models = ModelStore(store, model_name)
    text = compare_markdown(models, a, b, images=False)  # fails with one line before the run writes anything
    create_markdown_artifact(key=f"{model_name}-compare", markdown=compare_markdown(models, a, b),
                             description=f"{model_name} v{a} beside v{b}")
    return text


def main(argv: list[str] | None = None) -> int:
    from aviary.flows.cli import run_main

    parser = argparse.ArgumentParser(prog="python -m flows.compare", description=compare.__doc__)
    parser.add_argument("a", type=int, help="a version (exported or rejected)")
    parser.add_argument("b", type=int, help="another version")
    parser.add_argument("--model-name", default=DEFAULTS.model_name, help="model name (default: circle)")
    parser.add_argument("--store", type=Path, default=DEFAULTS.store, help="model store root (default: models)")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's log on the console too")
    args = parser.parse_args(argv)
    return run_main(lambda: compare(args.a, args.b, args.store, args.model_name), str)


if __name__ == "__main__":
    from aviary.quiet import command_line

    sys.exit(command_line(main))
