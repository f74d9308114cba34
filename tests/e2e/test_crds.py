"""The generated CRDs on a real API server: examples apply, impossible specs are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, Kubectl

pytestmark = pytest.mark.e2e


def connection(spec: dict[str, Any], name: str = "bad") -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_crds_are_established_with_short_names_and_category(
    kubectl: Kubectl, crds: list[str]
) -> None:
    assert sorted(crds) == [
        "calendarconnections.calsync.io",
        "syncjobs.calsync.io",
        "webhooksubscriptions.calsync.io",
    ]
    resources = kubectl("api-resources", "--api-group=calsync.io", "-o", "wide").stdout
    for short in ("calconn", "whsub", "sj"):
        assert short in resources
    assert resources.count("calsync") >= 3


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: Path(p).name
)
def test_every_example_applies(kubectl: Kubectl, namespace: str, path: Path) -> None:
    kubectl("apply", "-n", namespace, "-f", str(path))
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kind, name = doc["kind"].lower(), doc["metadata"]["name"]
            kubectl("get", "-n", namespace, f"{kind}/{name}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"provider": "caldav", "caldav": {"credentialsSecretRef": {"name": "s"}}},
            "spec.caldav.url is required when provider is caldav",
        ),
        (
            {
                "provider": "caldav",
                "caldav": {"url": "http://dav.example.com/", "credentialsSecretRef": {"name": "s"}},
            },
            "spec.caldav.url must use https:// unless spec.caldav.allowInsecureHTTP is true",
        ),
        (
            {"provider": "google"},
            "spec.oauth.clientSecretRef is required when provider is google or microsoft",
        ),
        (
            {"provider": "microsoft", "oauth": {}},
            "spec.oauth.clientSecretRef: Required value",
        ),
        ({"provider": "yahoo"}, 'supported values: "google", "microsoft", "caldav", "icloud"'),
    ],
    ids=[
        "caldav-without-url",
        "http-without-opt-in",
        "google-without-oauth",
        "microsoft-empty-oauth",
        "unknown-provider",
    ],
)
def test_impossible_specs_are_refused(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any], message: str
) -> None:
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(connection(spec)), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert kubectl("get", "calconn", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_http_is_accepted_with_the_explicit_opt_in(kubectl: Kubectl, namespace: str) -> None:
    spec = {
        "provider": "caldav",
        "caldav": {
            "url": "http://127.0.0.1:5232/",
            "allowInsecureHTTP": True,
            "credentialsSecretRef": {"name": "s"},
        },
    }
    kubectl.apply(connection(spec, "local"), namespace)
    got = kubectl.json("get", "calconn/local", "-n", namespace)
    assert got["spec"]["caldav"]["allowInsecureHTTP"] is True
    assert got["spec"]["sync"]["pollInterval"] == "15m"  # defaulted by the schema


def test_printer_columns(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "caldav-demo.yaml"))
    header = kubectl("get", "calconn", "-A").stdout.splitlines()[0].split()
    assert header[:2] == ["NAMESPACE", "NAME"]
    assert " ".join(header[2:]) == "PROVIDER OWNER READY EVENTS LAST SYNC AGE"
    header = kubectl("get", "sj", "-A").stdout.splitlines()
    assert not header or "PHASE" in header[0]


def test_poll_interval_below_a_minute_is_refused(kubectl: Kubectl, namespace: str) -> None:
    spec = {
        "provider": "icloud",
        "caldav": {"credentialsSecretRef": {"name": "s"}},
        "sync": {"pollInterval": "30s"},
    }
    result = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(connection(spec)), check=False
    )
    assert result.returncode != 0
    assert "spec.sync.pollInterval must be at least 1m" in result.stderr


def test_syncjob_spec_is_immutable(kubectl: Kubectl, namespace: str) -> None:
    job = {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "SyncJob",
        "metadata": {"name": "once"},
        "spec": {"connection": "demo", "mode": "full", "reason": "manual"},
    }
    kubectl.apply(job, namespace)
    job["spec"]["mode"] = "incremental"
    result = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job), check=False)
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr
