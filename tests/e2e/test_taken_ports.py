"""`calsync run` whose metrics, health or gateway port is taken: one line that names the address,
the port, the flag and the setting, exit code 2, before anything touches the cluster.

Real processes against the test cluster (so nothing but the taken port stands in the way), each
with one of its three listeners' ports held by another socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Kubectl, free_port

pytestmark = pytest.mark.e2e

CALSYNC = str(Path(sys.executable).parent / "calsync")
LISTENERS = [
    pytest.param("--metrics-port", "CALSYNC_METRICS_PORT", "/metrics", id="metrics"),
    pytest.param("--health-port", "CALSYNC_HEALTH_PORT", "/healthz", id="health"),
    pytest.param("--gateway-port", "CALSYNC_GATEWAY_PORT", "gateway", id="gateway"),
]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on, the way a second calsync or another server would."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize(("flag", "setting", "what"), LISTENERS)
def test_a_taken_port_is_one_line_naming_the_flag_and_the_setting(
    kubectl: Kubectl,
    crds: list[str],
    tmp_path: Path,
    taken_port: int,
    flag: str,
    setting: str,
    what: str,
) -> None:
    ports = {"--metrics-port": free_port(), "--health-port": free_port()}
    ports["--gateway-port"] = free_port()
    ports[flag] = taken_port
    env = {
        **os.environ,
        "KUBECONFIG": str(kubectl.kubeconfig),
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'events.db'}",
        "CALSYNC_KEYRING_NAMESPACE": "default",
        "CALSYNC_LOG_FORMAT": "json",
    }
    args = [CALSYNC, "run", *(str(a) for pair in ports.items() for a in pair)]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-4000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-4000:]
    record = json.loads(lines[0])
    assert record["level"] == "error"
    message = record["message"]
    assert f"127.0.0.1:{taken_port}" in message
    assert what in message
    assert flag in message and setting in message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "events.db").exists(), "the store was opened before the listeners"
