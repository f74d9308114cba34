"""The `calsync` parser: every subcommand is there, and building it imports nothing heavy.

`calsync --help` runs on laptops and in init containers; kopf, lightkube, SQLAlchemy, aiohttp
and the simulators are imported by the subcommands that use them. A fresh interpreter builds
the parser and reports what it loaded (this process has long imported all of them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from calsync.cli import build_parser

pytestmark = pytest.mark.unit

HEAVY = (
    "kopf",
    "lightkube",
    "sqlalchemy",
    "aiohttp",
    "httpx",
    "prometheus_client",
    "calsync.testing",
)
SUBCOMMANDS = {
    "devcluster",
    "run",
    "operator",
    "worker",
    "gateway",
    "keys",
    "store",
    "simulate",
    "events",
}

PROBE = """
import json, sys
from calsync.cli import build_parser
build_parser().format_help()
print(json.dumps(sorted(sys.modules)))
"""


def test_building_the_parser_imports_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(result.stdout)
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == []


def test_help_needs_no_heavy_import_either() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "calsync", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "usage: calsync" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not {m for m in imported if m.split(".")[0] in {"kopf", "lightkube", "sqlalchemy"}}


def test_every_subcommand_is_registered() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == SUBCOMMANDS
