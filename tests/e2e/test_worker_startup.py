"""One SQLite store serves one worker: a second refuses; a killed one does not block the next."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import BIN, Kubectl, Process, free_port, poll

pytestmark = pytest.mark.e2e


def env_for(kubectl: Kubectl, namespace: str, store: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(kubectl.kubeconfig),
        "CALSYNC_NAMESPACES": namespace,
        "CALSYNC_KEYRING_NAMESPACE": namespace,
        "CALSYNC_STORE_URL": f"sqlite+aiosqlite:///{store}",
        "CALSYNC_METRICS_PORT": "0",
        "CALSYNC_HEALTH_PORT": str(free_port()),
        "CALSYNC_GATEWAY_PORT": "0",
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_OPERATOR_LEASE_NAME": f"op-{namespace}",
    }


def test_second_worker_on_sqlite_refuses_then_a_successor_starts(
    quiet_kubectl: Kubectl, quiet_namespace: str, tmp_path: Path
) -> None:
    store = tmp_path / "events.db"
    env = env_for(quiet_kubectl, quiet_namespace, store)
    first = Process(["run"], env, tmp_path / "first.log")
    try:
        poll(lambda: "writes to event store" in first.output(), timeout=60, what="first worker")
        second = subprocess.run(
            [str(BIN / "calsync"), "worker"],
            env={**env, "CALSYNC_HEALTH_PORT": "0"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr[-2000:]
        text = second.stdout + second.stderr
        assert "SQLite serves one worker only" in text
        assert "PostgreSQL" in text
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.stop()
    # Killed without a goodbye: its heartbeat is still live, yet a successor on this host starts.
    successor = Process(["worker"], {**env, "CALSYNC_HEALTH_PORT": "0"}, tmp_path / "next.log")
    try:
        poll(
            lambda: (
                "writes to event store" in successor.output() or successor.proc.poll() is not None
            ),
            timeout=60,
            what="the successor to start",
        )
        assert successor.proc.poll() is None, successor.output()[-2000:]
    finally:
        assert successor.stop() == 0, successor.output()[-2000:]
