"""The `calsync` command (console script `calsync`, and `python -m calsync`).

One module per group of subcommands, each adding its parser with an `add_*_parser(sub)`:
`components` (run, operator, worker, gateway), `devcluster`, `keys`, `store`, `simulate`,
`events`. Heavy imports (kopf, lightkube, SQLAlchemy, the simulators) happen inside the
subcommands that need them, so that `calsync --help` and `calsync devcluster ...` start fast;
tests/unit/test_cli_parser.py holds the parser to that.

The CLI sits on top of the layer contract in pyproject.toml: it may import any layer, no layer
imports it, and it is the only place outside `calsync.testing` that may import the simulators.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from calsync import __version__
from calsync.cli.components import add_component_parsers
from calsync.cli.devcluster import add_devcluster_parser
from calsync.cli.events import add_events_parser
from calsync.cli.keys import add_keys_parser
from calsync.cli.simulate import add_simulate_parser
from calsync.cli.store import add_store_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calsync", description="Kubernetes-native calendar sync")
    parser.add_argument("--version", action="version", version=f"calsync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_devcluster_parser(sub)
    add_component_parsers(sub)
    add_keys_parser(sub)
    add_store_parser(sub)
    add_simulate_parser(sub)
    add_events_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
