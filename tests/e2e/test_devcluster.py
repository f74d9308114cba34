"""The local control plane: idempotent `up`, clean `down`, several clusters side by side."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from calsync.devcluster import Cluster

pytestmark = pytest.mark.e2e

CALSYNC = str(Path(sys.executable).parent / "calsync")


def calsync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CALSYNC, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CALSYNC_DEVCLUSTER_STATE": str(tmp_path / "state")}


def _version(kubeconfig: Path) -> str:
    kubectl = Path(sys.executable).parent / "kubectl"
    out = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "version", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    return str(json.loads(out.stdout)["serverVersion"]["gitVersion"])


def test_up_twice_is_a_noop_and_down_removes_everything(state_env: dict[str, str]) -> None:
    first = calsync("devcluster", "up", "--name", "one", env=state_env)
    assert first.returncode == 0, first.stderr
    kubeconfig = Path(first.stdout.strip())
    assert kubeconfig.is_file()
    cluster = Cluster("one", Path(state_env["CALSYNC_DEVCLUSTER_STATE"]))
    before = cluster.state()
    assert before is not None and set(before.pids) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
    }
    assert _version(kubeconfig).startswith("v1.")  # stamped, not v0.0.0-master

    second = calsync("devcluster", "up", "--name", "one", env=state_env)
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stderr
    assert Path(second.stdout.strip()) == kubeconfig
    assert cluster.state() == before

    printed = calsync("devcluster", "kubeconfig", "--name", "one", env=state_env)
    assert Path(printed.stdout.strip()) == kubeconfig

    down = calsync("devcluster", "down", "--name", "one", env=state_env)
    assert down.returncode == 0, down.stderr
    assert not cluster.dir.exists()
    for pid in before.pids.values():
        assert (
            not Path(f"/proc/{pid}").exists()
            or cluster.dir.as_posix().encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{before.server}/readyz", verify=False, timeout=2)  # noqa: S501

    missing = calsync("devcluster", "kubeconfig", "--name", "one", env=state_env)
    assert missing.returncode == 1
    assert "not running" in missing.stderr


def test_two_clusters_side_by_side(state_env: dict[str, str]) -> None:
    root = Path(state_env["CALSYNC_DEVCLUSTER_STATE"])
    a, b = Cluster("side-a", root), Cluster("side-b", root)
    try:
        ka, kb = a.up(log=False), b.up(log=False)
        sa, sb = a.state(), b.state()
        assert sa and sb and sa.apiserver_port != sb.apiserver_port
        kubectl = str(Path(sys.executable).parent / "kubectl")
        subprocess.run(
            [kubectl, "--kubeconfig", str(ka), "create", "namespace", "only-in-a"], check=True
        )
        listed = subprocess.run(
            [kubectl, "--kubeconfig", str(kb), "get", "namespace", "only-in-a"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert listed.returncode != 0 and "NotFound" in listed.stderr
        a.down(log=False)
        assert b.running() and not a.running()
    finally:
        a.down(log=False)
        b.down(log=False)


def test_invalid_name_is_refused(state_env: dict[str, str]) -> None:
    result = calsync("devcluster", "up", "--name", "bad/name", env=state_env)
    assert result.returncode == 1
    assert "invalid cluster name" in result.stderr
