"""The operator's own Kubernetes calls, through one async lightkube client.

Kopf watches and patches the objects it handles; everything else (reading Secrets, patching a
connection's status when a Secret changes, checking that the CRDs are installed) goes through
lightkube with generic resources for our kinds.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import httpx
from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from calsync.api.meta import (
    API_VERSION,
    CALENDAR_CONNECTION,
    GROUP,
    SYNC_JOB,
    VERSION,
    WEBHOOK_SUBSCRIPTION,
    KindInfo,
)
from calsync.controllers.credentials import (
    UNLABELLED,
    SecretData,
    UnlabelledSecret,
    credentials_from,
    is_labelled,
)

log = logging.getLogger(__name__)

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


def kinds_for(*, operator: bool, worker: bool, gateway: bool) -> tuple[KindInfo, ...]:
    """The kinds a process running these components lists and watches: the operator all
    three, a worker SyncJobs and connections, a gateway subscriptions and SyncJobs."""
    wanted: set[KindInfo] = set()
    if operator:
        wanted.update(ALL_KINDS)
    if worker:
        wanted.update((SYNC_JOB, CALENDAR_CONNECTION))
    if gateway:
        wanted.update((WEBHOOK_SUBSCRIPTION, SYNC_JOB))
    return tuple(kind for kind in ALL_KINDS if kind in wanted)


class CrdsMissing(RuntimeError):
    """The calsync CRDs are not served by the API server."""


async def check_crds(
    client: AsyncClient,
    namespaces: tuple[str, ...] = (),
    kinds: Sequence[KindInfo] = ALL_KINDS,
) -> None:
    """Fail with a clear message unless every kind of `kinds` is served (and listable by us).

    With `namespaces` the check lists in the first of them only, so namespace-scoped RBAC
    (a Role per watched namespace) is enough. A component passes the kinds it works with
    (`kinds_for`), so its RBAC need not let it list the others.
    """
    missing: list[str] = []
    where = namespaces[0] if namespaces else "*"
    for kind in kinds:
        try:
            await _list_one(client, kind.plural, where)
        except ApiError as exc:
            if exc.status.code == 404:
                missing.append(f"{kind.plural}.{GROUP}")
            elif exc.status.code == 403:
                raise CrdsMissing(
                    f"not allowed to list {kind.plural}.{GROUP}: this component's RBAC is "
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


STARTING_RETRIES = 15


async def _list_one(client: AsyncClient, plural: str, namespace: str) -> None:
    """List at most one object of a kind; a server that is still starting (it answers 503
    until it has installed every path, or 429/5xx) is asked again for a few seconds."""
    for attempt in range(STARTING_RETRIES + 1):
        try:
            async for _ in client.list(_RESOURCES[plural], namespace=namespace, chunk_size=1):
                break
            return
        except ApiError as exc:
            code = exc.status.code or 0
            if attempt == STARTING_RETRIES or not (code == 429 or code >= 500):
                raise
            log.info("the API server is not ready yet (%s); asking again", exc.status.message)
        await asyncio.sleep(1.0)


async def read_credentials_secret(
    client: AsyncClient, namespace: str, name: str
) -> SecretData | UnlabelledSecret | None:
    """A Secret named in a connection's spec, as calsync may use it: its data when it carries
    the opt-in label, `UnlabelledSecret` (no data) when it does not, None when it is missing."""
    try:
        secret = await client.get(Secret, name=name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    meta = secret.metadata
    labels = meta.labels if meta is not None else None
    if not is_labelled(labels):
        return UNLABELLED
    return credentials_from(labels, meta.annotations if meta is not None else None, _data(secret))


def secret_credentials(obj: Mapping[str, Any]) -> SecretData | UnlabelledSecret:
    """The same from a Secret as a watch delivers it (a plain dict)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels")
    if not is_labelled(labels):
        return UNLABELLED
    data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    return credentials_from(labels, meta.get("annotations"), data)


def _data(secret: Secret) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    for key, value in (secret.stringData or {}).items():  # only set on unsaved objects
        data[key] = value.encode()
    return data


async def read_secret(client: AsyncClient, namespace: str, name: str) -> Mapping[str, bytes] | None:
    """A Secret's decoded data, or None when it does not exist."""
    try:
        secret = await client.get(Secret, name=name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return _data(secret)


async def _get(
    client: AsyncClient, resource: Any, namespace: str, name: str
) -> dict[str, Any] | None:
    """One of our objects as a plain dict, or None when it does not exist."""
    try:
        obj = await client.get(resource, name=name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return cast(dict[str, Any], obj.to_dict())


async def get_connection(client: AsyncClient, namespace: str, name: str) -> dict[str, Any] | None:
    return await _get(client, CalendarConnectionResource, namespace, name)


class Conflict(RuntimeError):
    """A resourceVersion-guarded write lost against a concurrent writer."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


async def patch_status_guarded(
    client: AsyncClient,
    resource: Any,
    namespace: str,
    name: str,
    resource_version: str,
    status: Mapping[str, Any],
) -> dict[str, Any]:
    """Merge-patch status only if the object is still at `resource_version` (else Conflict)."""
    try:
        obj = await client.patch(
            resource.Status,
            name,
            {"metadata": {"resourceVersion": resource_version}, "status": dict(status)},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    except ApiError as exc:
        if exc.status.code == 409:
            raise Conflict(f"{namespace}/{name} changed concurrently") from exc
        raise
    return cast(dict[str, Any], obj.to_dict())


async def update_connection_status(
    client: AsyncClient,
    namespace: str,
    name: str,
    mutate: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]],
    *,
    attempts: int = 5,
    current: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Read-modify-write a connection's status, retrying on conflicts.

    `mutate` receives the current object and returns the new status (or None: nothing to
    write). Returns the object as written, or None when the connection is gone. `current` is
    a copy the caller already holds (from a watch cache): it is tried first, and a conflict
    falls back to reading the object.
    """
    for attempt in range(attempts):
        body = current if attempt == 0 and current is not None else None
        if body is None:
            body = await get_connection(client, namespace, name)
        if body is None:
            return None
        status = await mutate(body)
        if status is None:
            return body
        try:
            return await patch_status_guarded(
                client,
                CalendarConnectionResource,
                namespace,
                name,
                body["metadata"]["resourceVersion"],
                status,
            )
        except Conflict:
            continue
    raise Conflict(f"could not update the status of {namespace}/{name}: too many conflicts")


async def post_event(
    client: AsyncClient,
    body: Mapping[str, Any],
    *,
    type: str,
    reason: str,
    message: str,
    component: str = "calsync",
) -> None:
    """Post a core/v1 Event about an object; failures are logged, never raised."""
    meta = body.get("metadata", {})
    now = _now()
    event = Event(
        metadata=ObjectMeta(
            generateName=f"{meta.get('name', 'calsync')}.", namespace=meta.get("namespace")
        ),
        involvedObject=ObjectReference(
            apiVersion=body.get("apiVersion"),
            kind=body.get("kind"),
            name=meta.get("name"),
            namespace=meta.get("namespace"),
            uid=meta.get("uid"),
            resourceVersion=meta.get("resourceVersion"),
        ),
        type=type,
        reason=reason,
        message=message[:1024],
        source=EventSource(component=component),
        reportingComponent=component,
        reportingInstance=socket.gethostname(),
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
    )
    try:
        await client.create(event)
    except (ApiError, httpx.HTTPError) as exc:
        log.warning("could not post Event %s on %s: %s", reason, meta.get("name"), exc)


class AlreadyExists(RuntimeError):
    """A create met an object of the same name (the same decision was carried out before)."""


def _owned(connection: Mapping[str, Any], name: str) -> ObjectMeta:
    """Metadata of an object `connection` controls: its namespace, label and owner reference."""
    meta = connection["metadata"]
    return ObjectMeta(
        name=name,
        namespace=meta["namespace"],
        labels={"calsync.io/connection": meta["name"][:63]},
        ownerReferences=[
            OwnerReference(
                apiVersion=API_VERSION,
                kind=CALENDAR_CONNECTION.kind,
                name=meta["name"],
                uid=meta["uid"],
                controller=True,
                blockOwnerDeletion=False,
            )
        ],
    )


async def create_syncjob(
    client: AsyncClient,
    connection: Mapping[str, Any],
    *,
    name: str,
    mode: str,
    reason: str,
    calendar_id: str = "",
    ttl: int | None = None,
) -> dict[str, Any]:
    """Create the SyncJob `name`, owned by `connection` (so it goes when the connection goes).

    Names are chosen by the caller from what the job is for, so creating the same job twice
    raises AlreadyExists instead of queueing a duplicate.
    """
    meta = connection["metadata"]
    spec: dict[str, Any] = {
        "connection": meta["name"],
        "calendarId": calendar_id,
        "mode": mode,
        "reason": reason,
    }
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    job = SyncJobResource(
        metadata=_owned(connection, name),
        spec=spec,
    )
    try:
        created = await client.create(job)
    except ApiError as exc:
        if exc.status.code == 409:
            raise AlreadyExists(f"SyncJob {meta['namespace']}/{name} exists") from exc
        raise
    return cast(dict[str, Any], created.to_dict())  # type: ignore[no-untyped-call]


async def get_syncjob(client: AsyncClient, namespace: str, name: str) -> dict[str, Any] | None:
    return await _get(client, SyncJobResource, namespace, name)


async def _delete(client: AsyncClient, resource: Any, namespace: str, name: str) -> None:
    """Delete one of our objects; one that is already gone (404) counts as deleted."""
    try:
        await client.delete(resource, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code != 404:
            raise


async def delete_syncjob(client: AsyncClient, namespace: str, name: str) -> None:
    await _delete(client, SyncJobResource, namespace, name)


# -- WebhookSubscriptions ---------------------------------------------------------------------


async def create_webhook_subscription(
    client: AsyncClient, connection: Mapping[str, Any], *, name: str, calendar_id: str
) -> dict[str, Any]:
    """Create the WebhookSubscription `name` for one calendar, controlled by its connection.

    AlreadyExists when an object of that name is there (the names are derived from the
    connection and the calendar, so it is the same subscription).
    """
    meta = connection["metadata"]
    sub = WebhookSubscriptionResource(
        metadata=_owned(connection, name),
        spec={
            "connection": meta["name"],
            "calendarId": calendar_id,
            "provider": (connection.get("spec") or {}).get("provider"),
        },
    )
    try:
        created = await client.create(sub)
    except ApiError as exc:
        if exc.status.code == 409:
            raise AlreadyExists(f"WebhookSubscription {meta['namespace']}/{name} exists") from exc
        raise
    return cast(dict[str, Any], created.to_dict())  # type: ignore[no-untyped-call]


async def get_webhook_subscription(
    client: AsyncClient, namespace: str, name: str
) -> dict[str, Any] | None:
    return await _get(client, WebhookSubscriptionResource, namespace, name)


async def delete_webhook_subscription(client: AsyncClient, namespace: str, name: str) -> None:
    """Delete a WebhookSubscription (its finalizer stops the channel first); 404 is done."""
    await _delete(client, WebhookSubscriptionResource, namespace, name)
