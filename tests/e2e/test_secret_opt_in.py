"""Secrets opt in (docs/decisions/0013), on a real API server with `calsync run` and Radicale.

Why: anyone who may create a CalendarConnection in a namespace could name any Secret there with
`username`/`password` keys and a `caldav.url` they control, and the worker would send those
credentials to them. Now calsync uses only Secrets labelled `calsync.io/credentials=true`, and
a Secret annotated `calsync.io/allowed-host` only for that host.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calsync.testing.radicale import RadicaleServer
from tests.fixtures import manifests
from tests.support import Kubectl, Process, condition, poll, ready_reason

pytestmark = pytest.mark.e2e

LABEL = {"calsync.io/credentials": "true"}
REQUEST = re.compile(r"\b(GET|PUT|POST|PROPFIND|REPORT|OPTIONS|DELETE|HEAD|MKCOL|MKCALENDAR)\b")


def secret(
    name: str,
    user: str,
    password: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    assert labels in (None, LABEL)
    return manifests.secret(
        name, labelled=labels is not None, annotations=annotations, username=user, password=password
    )


def connection(name: str, url: str, secret_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": "caldav",
            "caldav": {
                "url": url,
                "allowInsecureHTTP": True,
                "credentialsSecretRef": {"name": secret_name},
            },
        },
    }


@pytest.fixture
def private_radicale(tmp_path: Path) -> Iterator[RadicaleServer]:
    """A Radicale of this test's own, logging every request it receives."""
    server = RadicaleServer(tmp_path / "radicale", log_level="info")
    server.add_user("carol", "carol-secret")
    with server:
        yield server


def requests_seen(server: RadicaleServer, since: int) -> list[str]:
    text = server.log_path.read_bytes()[since:].decode(errors="replace")
    return [line for line in text.splitlines() if "request for" in line and REQUEST.search(line)]


def test_an_unlabelled_secret_is_not_used_until_it_is_labelled(
    kubectl: Kubectl, namespace: str, operator: Process, private_radicale: RadicaleServer
) -> None:
    url = private_radicale.create_calendar("carol", "carol-secret", "work", "Work", "#336699ff")
    start = private_radicale.log_path.stat().st_size
    kubectl.apply(secret("dav", "carol", "carol-secret"), namespace)  # no label
    kubectl.apply(connection("carol", url, "dav"), namespace)

    ready = ready_reason(kubectl, namespace, "carol", "CredentialsNotLabelled", timeout=60)
    assert ready["status"] == "False"
    command = f"kubectl label secret dav -n {namespace} calsync.io/credentials=true"
    assert command in ready["message"], ready
    auth = condition(kubectl, namespace, "carol", "Authenticated")
    assert auth is not None and (auth["status"], auth["reason"]) == (
        "False",
        "CredentialsNotLabelled",
    )
    time.sleep(2.0)  # a sync that wrongly started would have reached the server by now
    assert requests_seen(private_radicale, start) == []

    # Labelling the Secret is enough: the label-selected watch reports it, nothing else changes.
    kubectl("label", "secret", "dav", "-n", namespace, "calsync.io/credentials=true")
    kubectl("wait", "--for=condition=Ready", "calconn/carol", "-n", namespace, "--timeout=90s")
    assert requests_seen(private_radicale, start)

    # Taking the label away takes the Secret away again.
    kubectl("label", "secret", "dav", "-n", namespace, "calsync.io/credentials-")
    ready_reason(kubectl, namespace, "carol", "CredentialsNotLabelled", timeout=60)


def test_credentials_are_never_sent_to_a_host_the_secret_does_not_allow(
    kubectl: Kubectl, namespace: str, operator: Process, private_radicale: RadicaleServer
) -> None:
    url = private_radicale.create_calendar("carol", "carol-secret", "work", "Work", "#336699ff")
    start = private_radicale.log_path.stat().st_size
    kubectl.apply(
        secret(
            "dav",
            "carol",
            "carol-secret",
            labels=LABEL,
            annotations={"calsync.io/allowed-host": "dav.example.org"},
        ),
        namespace,
    )
    kubectl.apply(connection("carol", url, "dav"), namespace)

    ready = ready_reason(kubectl, namespace, "carol", "CredentialsHostMismatch", timeout=60)
    assert ready["status"] == "False"
    assert "dav.example.org" in ready["message"] and "127.0.0.1" in ready["message"], ready
    assert "carol-secret" not in ready["message"]
    # A manual "sync now" is refused as well, before any request.
    kubectl.apply(
        {
            "apiVersion": "calsync.io/v1alpha1",
            "kind": "SyncJob",
            "metadata": {"name": "now"},
            "spec": {"connection": "carol", "reason": "manual", "mode": "full"},
        },
        namespace,
    )

    def finished() -> str | None:
        obj = kubectl.json("get", "sj/now", "-n", namespace)
        phase = str((obj.get("status") or {}).get("phase") or "")
        return phase if phase in ("Failed", "Succeeded", "Superseded") else None

    assert poll(finished, timeout=60, what="the manual SyncJob to finish") != "Succeeded"
    assert requests_seen(private_radicale, start) == []

    # The host the annotation names is fine.
    kubectl(
        "annotate",
        "secret",
        "dav",
        "-n",
        namespace,
        "--overwrite",
        "calsync.io/allowed-host=127.0.0.1",
    )
    kubectl("wait", "--for=condition=Ready", "calconn/carol", "-n", namespace, "--timeout=90s")
    assert requests_seen(private_radicale, start)
