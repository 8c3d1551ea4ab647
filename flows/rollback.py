"""`python -m flows.rollback`: the withdraw flow under the name users know.

`rollback` stays importable for deployments registered with the entrypoint `flows/rollback.py:rollback`.
"""

from __future__ import annotations

import sys

from aviary.flows.withdraw import main as _main
from aviary.flows.withdraw import withdraw

rollback = withdraw


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python -m flows.rollback")


if __name__ == "__main__":
    from aviary.quiet import command_line

    sys.exit(command_line(main))
