"""`calsync events --connection NAMESPACE/NAME` against a real API server: the name is looked
up there, the store is read under the connection's uid, and a name that does not exist is an
error rather than an empty table."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import BIN, Kubectl
from tests.unit.test_cli_events import OCCURRENCES, RANGE, fill_store

pytestmark = pytest.mark.e2e


def calsync_events(kubectl: Kubectl, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "calsync"), "events", *args],
        env={**os.environ, "KUBECONFIG": str(kubectl.kubeconfig)},
        capture_output=True,
        text=True,
        check=False,
    )


def demo_connection(name: str) -> dict[str, object]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": "icloud",
            "caldav": {"credentialsSecretRef": {"name": "absent"}},
        },
    }


def test_a_connection_that_does_not_exist_is_one_line_and_exit_1(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    store = fill_store(tmp_path / "events.db")
    done = calsync_events(kubectl, "--connection", f"{namespace}/nope", "--store", store)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"calsync: CalendarConnection {namespace}/nope not found\n"


def test_events_are_read_under_the_connections_uid(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl.apply(demo_connection("carol"), namespace)
    uid = kubectl.json("get", "calconn/carol", "-n", namespace)["metadata"]["uid"]
    store = fill_store(tmp_path / "events.db", key=uid)

    done = calsync_events(kubectl, "--connection", f"{namespace}/carol", "--store", store, *RANGE)
    assert (done.returncode, done.stderr) == (0, "")
    assert len(done.stdout.splitlines()) == 1 + OCCURRENCES

    by_key = calsync_events(kubectl, "--connection-key", uid, "--store", store, *RANGE)
    assert by_key.stdout == done.stdout
