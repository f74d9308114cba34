"""Deleting a connection when its store is down: the finalizer lets go after PURGE_TIMEOUT.

`calsync run` on a PostgreSQL store runs against the quiet cluster; the test makes the store
unreachable (the database refuses connections and its sessions are ended), deletes the
connection, and expects the object gone within the purge timeout plus slack, with a
`PurgeAbandoned` Warning Event, so that a namespace deletion can never hang on a down store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.e2e.test_sync import connection as caldav_connection
from tests.e2e.test_sync import secret as caldav_secret
from tests.fixtures.postgres import PostgresServer, _admin
from tests.support import Kubectl, Process, free_port, poll

pytestmark = pytest.mark.e2e


@pytest.fixture
def calsync_on_postgres(
    quiet_kubectl: Kubectl,
    quiet_namespace: str,
    postgres_url: str,
    tmp_path: Path,
) -> Iterator[tuple[Process, str]]:
    store = make_url(postgres_url).set(drivername="postgresql+asyncpg")
    env = {
        **os.environ,
        "KUBECONFIG": str(quiet_kubectl.kubeconfig),
        "CALSYNC_NAMESPACES": quiet_namespace,
        "CALSYNC_KEYRING_NAMESPACE": quiet_namespace,
        "CALSYNC_STORE_URL": store.render_as_string(hide_password=False),
        "CALSYNC_METRICS_PORT": str(free_port()),
        "CALSYNC_HEALTH_PORT": "0",
        "CALSYNC_GATEWAY_PORT": "0",
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_ALLOW_PRIVATE_ADDRESSES": "true",
        "CALSYNC_PURGE_TIMEOUT": "10s",
        "CALSYNC_PROVIDER_TIMEOUT": "3s",
        "CALSYNC_LOG_LEVEL": "INFO",
    }
    proc = Process(["run"], env, tmp_path / "calsync.log")
    try:
        yield proc, str(store.database)
    finally:
        proc.stop()


def test_delete_lets_go_of_a_connection_whose_store_is_down(
    quiet_kubectl: Kubectl,
    quiet_namespace: str,
    calsync_on_postgres: tuple[Process, str],
    postgres_server: PostgresServer,
    caldav_calendar: Any,
) -> None:
    kubectl, namespace = quiet_kubectl, quiet_namespace
    proc, database = calsync_on_postgres
    kubectl.apply(caldav_secret("dav", caldav_calendar.user, caldav_calendar.password), namespace)
    kubectl.apply(caldav_connection("alice", caldav_calendar.url, "dav"), namespace)
    kubectl("wait", "--for=condition=Ready", "calconn/alice", "-n", namespace, "--timeout=120s")

    _admin(postgres_server.url, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
    try:
        terminate = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608 - our own name
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        _admin(postgres_server.url, terminate)
        kubectl("delete", "calconn/alice", "-n", namespace, "--wait=false")

        def gone() -> bool:
            found = kubectl("get", "calconn", "-n", namespace, "-o", "name").stdout
            return "alice" not in found

        poll(gone, timeout=120, what="the connection to be deleted despite the store")
        events = kubectl.json("get", "events", "-n", namespace)["items"]
        abandoned = [e for e in events if e.get("reason") == "PurgeAbandoned"]
        assert abandoned, [e.get("reason") for e in events]
        assert abandoned[0]["type"] == "Warning"
        assert "released the finalizer" in abandoned[0]["message"]
        assert proc.proc.poll() is None, proc.output()[-3000:]
    finally:
        _admin(postgres_server.url, f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
