"""The import contracts cover what they claim: every runtime module of calsync is a source of the
contract that keeps calsync.testing and the CLI out of runtime code, so a new package cannot
slip past it by being left off the list."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import pytest

import calsync

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NOT_RUNTIME = {"calsync.cli", "calsync.testing", "calsync.__main__"}


def contract(name_start: str) -> dict[str, object]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (found,) = [c for c in config["contracts"] if c["name"].startswith(name_start)]
    return dict(found)


def test_every_runtime_module_is_kept_from_the_simulators_and_the_cli() -> None:
    runtime = {f"calsync.{m.name}" for m in pkgutil.iter_modules(calsync.__path__)} - NOT_RUNTIME
    rule = contract("Runtime code never imports calsync.testing")
    assert rule["forbidden_modules"] == ["calsync.testing", "calsync.cli"]
    missing = runtime - set(rule["source_modules"])  # type: ignore[arg-type]
    assert not missing, f"add {sorted(missing)} to the contract's source_modules in pyproject.toml"


def test_the_cli_package_is_the_top_layer() -> None:
    layers = contract("Layers:")["layers"]
    assert isinstance(layers, list) and layers[0] == "calsync.cli"
    assert (ROOT / "calsync" / "cli" / "__init__.py").is_file()
