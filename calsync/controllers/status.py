"""Writing a connection's status: the patch, its Events and its metrics.

Both the connection controller and the worker change a connection's conditions; they share the
helpers here, so an Event's type always follows the condition's polarity in one place: Normal
on the healthy path (including progress such as waiting for the first sync), Warning when
something needs a person's attention.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from lightkube import AsyncClient

from calsync.api.conditions import DEGRADED, READY, SYNCED, THROTTLED
from calsync.controllers import kube, readiness
from calsync.controllers.tokens import TokenVault
from calsync.observability import metrics
from calsync.security.consent import ConnectionRef, consent_link
from calsync.settings import Settings

log = logging.getLogger(__name__)

# Conditions for which True is the bad state.
NEGATIVE_POLARITY = frozenset({DEGRADED, THROTTLED})
# Reasons that describe progress on the healthy path even though the status is not True.
PROGRESS_REASONS = frozenset(
    {
        "AwaitingFirstSync",
        "SpecChanged",
        "CredentialsFound",
        "CredentialsUpdated",
        "Suspended",
        "Resyncing",
        "Registering",  # push channels being registered (calsync/controllers/push_policy.py)
        "PushNotConfigured",  # no public gateway URL: a deployment choice, polling goes on
    }
)


# Authenticated reasons after which the owner has to (re)grant access: the status then carries
# a consent link.
CONSENT_REASONS = frozenset({"ConsentRequired", "InvalidGrant", "TokenUnreadable"})


def store_key(body: dict[str, Any]) -> str:
    """How the event store names a connection: its UID, never reused by a new object."""
    return str(body["metadata"]["uid"])


def event_type(ctype: str, status: str, reason: str) -> str:
    if reason in PROGRESS_REASONS:
        return "Normal"
    healthy = status == "False" if ctype in NEGATIVE_POLARITY else status == "True"
    return "Normal" if healthy else "Warning"


async def publish(client: AsyncClient, body: dict[str, Any], conds: readiness.Conditions) -> None:
    """Post Events and count the transitions of a status just written.

    The condition gauges are not set here: the operator sets them from the statuses its watch
    sees (`controllers.connection.connection_event`), whoever wrote them. A worker setting them
    for the connections it happened to sync kept a copy per worker that went stale as soon as
    another worker synced the connection, and grew with every connection it ever touched."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    ready_reason = next((c.reason for c in conds.items if c.type == READY), None)
    for cond in conds.transitions:
        metrics.CONNECTION_TRANSITIONS.labels(cond.type, cond.status, cond.reason).inc()
        log.info(
            "condition %s=%s (%s) on %s/%s", cond.type, cond.status, cond.reason, namespace, name
        )
        # Ready carries the summary: one Event per transition of it, plus one for any other
        # condition whose reason says something Ready does not.
        if cond.type == READY or (cond.reason != ready_reason and cond.type != SYNCED):
            await kube.post_event(
                client,
                body,
                type=event_type(cond.type, cond.status, cond.reason),
                reason=cond.reason,
                message=f"{cond.type}={cond.status}: {cond.message}",
            )


def status_patch(conds: readiness.Conditions, **extra: Any) -> dict[str, Any]:
    """The conditions (always the whole list) and any other status fields to write."""
    return {"conditions": [c.to_wire() for c in conds.items], **extra}


def consent_link_for(
    settings: Settings | None,
    vault: TokenVault | None,
    body: dict[str, Any],
    provider: str,
    conds: readiness.Conditions,
) -> str | None:
    """The consent link while the owner has to grant access; None (removed) otherwise."""
    auth = conds.get("Authenticated")
    if auth is None or auth.reason not in CONSENT_REASONS:
        return None
    if settings is None or vault is None:
        return None
    now = time.time()
    current = (body.get("status") or {}).get("authorizationURL")
    if isinstance(current, str):
        expires = parse_qs(urlsplit(current).query).get("exp", ["0"])[0]
        if (
            current.startswith(settings.public_gateway_url + "/")
            and expires.isdigit()
            and int(expires) > now + settings.consent_link_ttl / 2
        ):
            return current  # still fresh: do not rewrite the status on every reconcile
    meta = body["metadata"]
    return consent_link(
        settings.public_gateway_url,
        vault.keyring,
        ConnectionRef(meta["namespace"], meta["name"], meta["uid"]),
        provider,
        now + settings.consent_link_ttl,
    )
