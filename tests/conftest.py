"""Shared fixtures: a real Kubernetes API server for e2e tests, kubectl, namespaces, the operator.

The e2e tests start their own local control plane (`calsync devcluster`, a unique name per test
session, removed at the end). `CALSYNC_E2E_KUBECONFIG` points them at an existing cluster
instead (kind, k3d, a real one); the CRDs are then applied to it and test namespaces are created
and deleted there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.support import ROOT, Kubectl, Process, free_port, poll, private_cluster

if TYPE_CHECKING:
    from calsync.testing.dns import DnsResponder
    from tests.fixtures.simulators import Simulator

# Fixtures for real servers live in their own modules (one owner each).
pytest_plugins = [
    "tests.fixtures.radicale",
    "tests.fixtures.postgres",
    "tests.fixtures.simulators",
    "tests.fixtures.dns",
]


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    existing = os.environ.get("CALSYNC_E2E_KUBECONFIG")
    if existing:
        yield Path(existing)
        return
    from calsync.devcluster import Cluster

    cluster = Cluster(f"e2e-{os.getpid()}")
    path = cluster.up(log=False)
    try:
        yield path
    finally:
        cluster.down(log=False)


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(kubeconfig)


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> list[str]:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    names = [
        yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in sorted((ROOT / "crds").glob("*.yaml"))
    ]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    return names


@pytest.fixture(scope="session")
def quiet_kubectl() -> Iterator[Kubectl]:
    """kubectl for a second API server on which no session-wide `calsync run` operates.

    For tests that start operators and workers of their own (the fleet, chaos and scaling
    tests): the session's `operator` watches the whole main cluster and would bind their
    connections to its own store and run their jobs. `CALSYNC_E2E_KUBECONFIG` does not apply
    here: this cluster is always local.
    """
    with private_cluster("e2e-quiet") as quiet:
        yield quiet


@pytest.fixture
def quiet_namespace(quiet_kubectl: Kubectl) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    quiet_kubectl("create", "namespace", name)
    yield name
    quiet_kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(kubectl: Kubectl, crds: list[str]) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite event store the e2e operator writes to."""
    return tmp_path_factory.mktemp("store") / "events.db"


@pytest.fixture(scope="session")
def gateway_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def operator(
    kubectl: Kubectl,
    crds: list[str],
    store_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    google_sim: Simulator,
    microsoft_sim: Simulator,
    gateway_url: str,
    dns_responder: DnsResponder,
) -> Iterator[Process]:
    """`calsync run` (controllers, worker, gateway) as a real process against the test cluster.

    Google and Microsoft point at the session's simulators, DNS SRV discovery at its responder.
    """
    import httpx

    health = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubectl.kubeconfig),
        "CALSYNC_METRICS_PORT": str(free_port()),
        "CALSYNC_HEALTH_PORT": str(health),
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_LOG_LEVEL": "DEBUG",
        "CALSYNC_STORE_URL": f"sqlite+aiosqlite:///{store_path}",
        "CALSYNC_ALLOW_PRIVATE_ADDRESSES": "true",
        "CALSYNC_SYNC_RETRY_BACKOFF": "0.2",
        "CALSYNC_SYNC_MAX_RETRIES": "3",
        "CALSYNC_GATEWAY_PORT": gateway_url.rsplit(":", 1)[1],
        "CALSYNC_GATEWAY_URL": gateway_url,
        "CALSYNC_KEYRING_NAMESPACE": "default",
        "CALSYNC_GOOGLE_API_URL": google_sim.url,
        "CALSYNC_GOOGLE_AUTHORIZE_URL": f"{google_sim.url}/o/oauth2/v2/auth",
        "CALSYNC_GOOGLE_TOKEN_URL": f"{google_sim.url}/token",
        "CALSYNC_MICROSOFT_GRAPH_URL": microsoft_sim.url,
        "CALSYNC_MICROSOFT_LOGIN_URL": microsoft_sim.url,
        "CALSYNC_DNS_NAMESERVERS": dns_responder.nameserver,
    }
    proc = Process(["run"], env, tmp_path_factory.mktemp("operator") / "operator.log")

    def healthy() -> bool:
        if proc.proc.poll() is not None:
            pytest.fail(f"operator exited with {proc.proc.returncode}:\n{proc.output()[-4000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    poll(healthy, timeout=60, what="operator /healthz")
    yield proc
    code = proc.stop()
    assert code == 0, f"operator exited with {code}:\n{proc.output()[-4000:]}"


_KINDS = ("unit", "integration", "e2e")


def pytest_configure(config: pytest.Config) -> None:
    # Each test process runs a session-wide operator that watches its whole main cluster: on a
    # cluster of its own (the default) that is fine, on one shared cluster they would fight.
    workers = getattr(config.option, "numprocesses", None)
    if os.environ.get("CALSYNC_E2E_KUBECONFIG") and workers not in (None, 0, 1):
        raise pytest.UsageError(
            "CALSYNC_E2E_KUBECONFIG points every test process at one cluster, where their "
            "operators would act on each other's connections: run the tests in one process "
            "(-n 0, or make test TEST_WORKERS=0)"
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test carries exactly one of the kind markers, or `make test` would skip it."""
    unmarked = [
        item.nodeid for item in items if not any(item.get_closest_marker(k) for k in _KINDS)
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests without a unit/integration/e2e marker: " + ", ".join(unmarked[:10])
        )
