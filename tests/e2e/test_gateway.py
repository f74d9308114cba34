"""The gateway inside `calsync run`: health, metrics, and consent links that must not open."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Kubectl, Process, condition, free_port, poll

pytestmark = pytest.mark.e2e


def google_connection(name: str, client_ref: str = "google-client") -> dict[str, Any]:
    return {
        "apiVersion": "calsync.io/v1alpha1",
        "kind": "CalendarConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": "google",
            "owner": "nobody@example.com",
            "oauth": {"clientSecretRef": {"name": client_ref}},
        },
    }


def client_secret(name: str = "google-client") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"calsync.io/credentials": "true"}},
        "stringData": {"client_id": "unregistered-client", "client_secret": "s3cr3t"},
    }


def consent_url(kubectl: Kubectl, namespace: str, name: str) -> str:
    def link() -> str | None:
        obj = kubectl.json("get", f"calconn/{name}", "-n", namespace)
        value = (obj.get("status") or {}).get("authorizationURL")
        return value if isinstance(value, str) else None

    return poll(link, timeout=30, what=f"{name} authorizationURL")


def test_health_and_metrics(operator: Process, gateway_url: str) -> None:
    assert httpx.get(f"{gateway_url}/healthz").text == "ok\n"
    assert httpx.get(f"{gateway_url}/readyz").status_code == 200
    metrics = httpx.get(f"{gateway_url}/metrics").text
    assert "calsync_gateway_requests_total" in metrics


def test_unknown_provider_and_damaged_links_are_refused(
    operator: Process, gateway_url: str
) -> None:
    assert httpx.get(f"{gateway_url}/auth/dropbox/start").status_code == 404
    for query in ("", "?c=garbage", "?c=abc.def"):
        answer = httpx.get(f"{gateway_url}/auth/google/start{query}")
        assert answer.status_code == 400
        assert "cannot be used" in answer.text
    answer = httpx.get(f"{gateway_url}/auth/google/callback?code=x&state=forged.state")
    assert answer.status_code == 400


def test_consent_required_publishes_a_link_bound_to_the_connection(
    operator: Process, kubectl: Kubectl, namespace: str, gateway_url: str
) -> None:
    kubectl.apply(client_secret(), namespace)
    kubectl.apply(google_connection("consent"), namespace)
    poll(
        lambda: (
            (condition(kubectl, namespace, "consent", "Authenticated") or {}).get("reason")
            == "ConsentRequired"
        ),
        timeout=30,
        what="Authenticated=False ConsentRequired",
    )
    url = consent_url(kubectl, namespace, "consent")
    assert url.startswith(f"{gateway_url}/auth/google/start?")

    # The link leads to the provider's authorization endpoint with PKCE and a sealed state.
    answer = httpx.get(url)
    assert answer.status_code == 302
    target = httpx.URL(answer.headers["location"])
    assert target.params["client_id"] == "unregistered-client"
    assert target.params["code_challenge_method"] == "S256"
    assert target.params["redirect_uri"] == f"{gateway_url}/auth/google/callback"
    assert target.params["login_hint"] == "nobody@example.com"
    assert "calsync_consent" in answer.headers["set-cookie"]

    # The state only works in the browser that started the flow.
    state = target.params["state"]
    stolen = httpx.get(f"{gateway_url}/auth/google/callback", params={"code": "c", "state": state})
    assert stolen.status_code == 400 and "another browser session" in stolen.text

    # Pointed at a connection of the same name created again, the old link is dead.
    kubectl("delete", "calconn/consent", "-n", namespace)
    kubectl.apply(google_connection("consent"), namespace)
    answer = httpx.get(url)
    assert answer.status_code == 400
    assert "no longer exists" in answer.text


def test_gateway_runs_alone(kubectl: Kubectl, crds: list[str], tmp_path: Path) -> None:
    """`calsync gateway`: its own health, readiness and metrics, no store, no controllers."""
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubectl.kubeconfig),
        "CALSYNC_GATEWAY_PORT": str(port),
        "CALSYNC_BIND_ADDRESS": "127.0.0.1",
        "CALSYNC_KEYRING_NAMESPACE": "default",
        "CALSYNC_STORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'never-created.db'}",
    }
    proc = Process(["gateway"], env, tmp_path / "gateway.log")
    try:

        def ready() -> bool:
            assert proc.proc.poll() is None, proc.output()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, timeout=60, what="calsync gateway /readyz")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert (
            "calsync_gateway_requests_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        )
        assert not (tmp_path / "never-created.db").exists()
    finally:
        assert proc.stop() == 0, proc.output()
