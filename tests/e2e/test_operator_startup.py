"""Operator start-up: a clear failure without CRDs, JSON logs when it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from calsync.devcluster import Cluster
from tests.support import Process

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A second control plane with no CRDs installed (also proves two run side by side)."""
    cluster = Cluster(f"bare-{os.getpid()}", tmp_path_factory.mktemp("bare-state"))
    try:
        yield cluster.up(log=False)
    finally:
        cluster.down(log=False)


def test_operator_refuses_to_start_without_crds(bare_cluster: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(bare_cluster), "CALSYNC_METRICS_PORT": "0"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "calsync"), "operator", "--health-port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    last = json.loads(result.stderr.strip().splitlines()[-1])
    assert last["level"] == "error"
    assert "calsync CRDs are not installed" in last["message"]
    assert "kubectl apply -f crds/" in last["message"]


def test_bad_setting_is_reported_with_its_source() -> None:
    env = {**os.environ, "CALSYNC_SYNC_MAX_RETRIES": "many"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "calsync"), "operator"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "sync_max_retries (from environment variable CALSYNC_SYNC_MAX_RETRIES)" in result.stderr


def test_operator_logs_are_json(operator: Process) -> None:
    lines = [line for line in operator.output().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record)
