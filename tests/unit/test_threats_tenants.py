"""Tenant isolation claims of docs/security.md that no other test covered: a connection's Secret
references name a Secret of its own namespace only (the model refuses a namespace, the CRD
keeps nothing but a name), and a connection that names another connection's calsync token
Secret gets that Secret's ciphertext, never the token sealed in it. A SyncJob or
WebhookSubscription reaches connections of its own namespace only, and the gateway, the one
component open to the outside, has no route that reads events."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec
from calsync.api.subscription import WebhookSubscriptionSpec
from calsync.api.syncjob import SyncJobSpec
from calsync.controllers.provider_factory import stored_tokens
from calsync.security.keyring import KeyRing, TokenContext
from calsync.settings import Settings
from calsync.webhook_gateway.app import GatewayContext, create_app

pytestmark = pytest.mark.unit

CRD = Path(__file__).resolve().parents[2] / "crds" / "calendarconnections.yaml"


def spec_with(ref_field: str, ref: dict[str, Any]) -> dict[str, Any]:
    if ref_field == "credentialsSecretRef":
        return {"provider": "caldav", "caldav": {"url": "https://dav.example/", ref_field: ref}}
    oauth: dict[str, Any] = {"clientSecretRef": {"name": "client"}}
    oauth[ref_field] = ref
    return {"provider": "google", "oauth": oauth}


@pytest.mark.parametrize("field", ["credentialsSecretRef", "clientSecretRef", "tokenSecretRef"])
def test_a_secret_reference_cannot_name_another_namespace(field: str) -> None:
    assert CalendarConnectionSpec.model_validate(spec_with(field, {"name": "mine"}))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CalendarConnectionSpec.model_validate(
            spec_with(field, {"name": "theirs", "namespace": "team-b"})
        )


@pytest.mark.parametrize(
    ("model", "spec"),
    [
        (SyncJobSpec, {"connection": "alice"}),
        (
            WebhookSubscriptionSpec,
            {"connection": "alice", "calendarId": "primary", "provider": "google"},
        ),
    ],
)
def test_a_syncjob_or_subscription_names_a_connection_of_its_own_namespace_only(
    model: Any, spec: dict[str, Any]
) -> None:
    """A tenant's SyncJob (the manual "sync now") reaches the connection of that name in the
    job's namespace: there is no field to name another namespace's connection."""
    assert model.model_validate(spec)
    for extra in ({"namespace": "team-b"}, {"connectionNamespace": "team-b"}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            model.model_validate({**spec, **extra})


def _secret_refs(schema: Any, path: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    if isinstance(schema, dict):
        for key, value in (schema.get("properties") or {}).items():
            here = f"{path}.{key}"
            if key.endswith("SecretRef"):
                found[here] = value
            found.update(_secret_refs(value, here))
    return found


def test_the_crd_keeps_nothing_but_a_name_in_a_secret_reference() -> None:
    """The API server prunes fields a structural schema does not declare, so a `namespace`
    written into a reference never reaches calsync, which reads the Secret in the
    connection's own namespace."""
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    refs = _secret_refs(spec)
    assert set(refs) == {
        ".caldav.credentialsSecretRef",
        ".oauth.clientSecretRef",
        ".oauth.tokenSecretRef",
    }
    for where, schema in refs.items():
        assert set(schema["properties"]) == {"name"}, where
        assert not schema.get("x-kubernetes-preserve-unknown-fields"), where
        assert schema.get("additionalProperties") in (None, False), where


async def test_naming_another_connections_token_secret_yields_its_ciphertext_only() -> None:
    ring = KeyRing.generate(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    alice = TokenContext("team-a", "alice", "uid-alice")
    sealed = ring.encrypt("alice-refresh-token", alice, "refresh_token")
    # bob names alice's calsync-written Secret (it carries the opt-in label) as his own token.
    bob = CalendarConnectionSpec.model_validate(
        spec_with("tokenSecretRef", {"name": "alice-calsync-tokens"})
    )
    body = {"metadata": {"namespace": "team-a", "name": "bob", "uid": "uid-bob"}}
    secrets = {
        "client": {"client_id": b"id", "client_secret": b"s"},
        "alice-calsync-tokens": {"refresh_token": sealed.encode()},
    }
    got = await stored_tokens(None, body, bob, secrets)
    assert got is not None
    assert got.refresh_token == sealed  # what a provider's token endpoint will refuse
    assert "alice-refresh-token" not in got.refresh_token


def test_the_gateway_serves_no_route_that_reads_events() -> None:
    """The gateway is the one component reachable from outside the cluster; it reads no
    events for anyone. A read API added later must come with its own entry in the threat
    model (who may read which connection), and this list with it."""
    ctx = GatewayContext(
        settings=Settings(),
        client=cast(Any, object()),
        vault=cast(Any, object()),
        ready=True,
        watch=False,
    )
    app = create_app(ctx)
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert routes == {
        ("POST", "/api/webhooks/google"),
        ("POST", "/api/webhooks/microsoft"),
        ("POST", "/api/webhooks/microsoft/lifecycle"),
        ("GET", "/api/health"),
        ("GET", "/api/health/database"),
        ("GET", "/api/health/providers"),
        ("GET", "/api/health/webhooks"),
        ("GET", "/api/health/sync"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/auth/{provider}/start"),
        ("GET", "/auth/{provider}/callback"),
    }
