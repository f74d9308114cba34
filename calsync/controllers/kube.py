"""The operator's own Kubernetes calls, through one async lightkube client.

Kopf watches and patches the objects it handles; everything else (reading Secrets, patching a
connection's status when a Secret changes, checking that the CRDs are installed) goes through
lightkube with generic resources for our kinds.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, cast

import httpx
from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from calsync.api.meta import CALENDAR_CONNECTION, GROUP, SYNC_JOB, VERSION, WEBHOOK_SUBSCRIPTION

CalendarConnectionResource = create_namespaced_resource(
    GROUP, VERSION, CALENDAR_CONNECTION.kind, CALENDAR_CONNECTION.plural
)
WebhookSubscriptionResource = create_namespaced_resource(
    GROUP, VERSION, WEBHOOK_SUBSCRIPTION.kind, WEBHOOK_SUBSCRIPTION.plural
)
SyncJobResource = create_namespaced_resource(GROUP, VERSION, SYNC_JOB.kind, SYNC_JOB.plural)

ALL_KINDS = (CALENDAR_CONNECTION, WEBHOOK_SUBSCRIPTION, SYNC_JOB)
_RESOURCES = {
    CALENDAR_CONNECTION.plural: CalendarConnectionResource,
    WEBHOOK_SUBSCRIPTION.plural: WebhookSubscriptionResource,
    SYNC_JOB.plural: SyncJobResource,
}


class CrdsMissing(RuntimeError):
    """The calsync CRDs are not served by the API server."""


async def check_crds(client: AsyncClient) -> None:
    """Fail with a clear message unless every calsync kind is served (and listable by us)."""
    missing: list[str] = []
    for kind in ALL_KINDS:
        try:
            async for _ in client.list(_RESOURCES[kind.plural], namespace="*", chunk_size=1):
                break
        except ApiError as exc:
            if exc.status.code == 404:
                missing.append(f"{kind.plural}.{GROUP}")
            elif exc.status.code == 403:
                raise CrdsMissing(
                    f"not allowed to list {kind.plural}.{GROUP}: the operator's RBAC is "
                    f"incomplete ({exc.status.message})"
                ) from exc
            else:
                raise
        except httpx.HTTPStatusError as exc:
            # An unknown API group is a plain-text 404, which lightkube does not parse.
            if exc.response.status_code != 404:
                raise
            missing.append(f"{kind.plural}.{GROUP}")
    if missing:
        raise CrdsMissing(
            f"the calsync CRDs are not installed ({', '.join(missing)} not served at "
            f"{GROUP}/{VERSION}): install them with `kubectl apply -f crds/` or the Helm chart, "
            "then start the operator again"
        )


async def read_secret(client: AsyncClient, namespace: str, name: str) -> Mapping[str, bytes] | None:
    """A Secret's decoded data, or None when it does not exist."""
    try:
        secret = await client.get(Secret, name=name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    for key, value in (secret.stringData or {}).items():  # only set on unsaved objects
        data[key] = value.encode()
    return data


async def get_connection(client: AsyncClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = await client.get(CalendarConnectionResource, name=name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return cast(dict[str, Any], obj.to_dict())  # type: ignore[no-untyped-call]


async def patch_connection_status(
    client: AsyncClient, namespace: str, name: str, status: Mapping[str, Any]
) -> None:
    await client.patch(
        CalendarConnectionResource.Status,
        name,
        {"status": dict(status)},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
