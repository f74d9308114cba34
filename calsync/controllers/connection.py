"""The CalendarConnection controller: conditions from the spec and Secrets, and sync triggers.

Reconciling reads the connection afresh, reads the Secrets its spec names, judges them
(`credentials.evaluate`) and records the verdict in `status.conditions` (see `readiness`).
A condition whose status or reason changes posts a Kubernetes Event and counts in
`calsync_connection_condition_transitions_total`.

It also decides when a sync is due: a connection that has never synced gets a `full` SyncJob as
soon as its credentials are present; a spec change gets another `full` one; the poll timer adds
an `incremental` one whenever `spec.sync.pollInterval` has passed since the last sync and no job
is waiting. Deleting a connection purges its events from the store (the finalizer's job);
owner references remove its SyncJobs.

A Secret that appears or is fixed after its connection must make the connection Ready without
anyone touching the connection, so Secrets are watched too: an in-memory index maps
(namespace, Secret name) to the connections that reference it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kopf
from lightkube import AsyncClient
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec
from calsync.api.conditions import READY, SYNCED, conditions_from_status
from calsync.api.meta import CALENDAR_CONNECTION, GROUP
from calsync.controllers import kube, readiness
from calsync.controllers.credentials import evaluate, referenced_secrets
from calsync.controllers.oauth_setup import OAUTH_PROVIDERS
from calsync.controllers.tokens import TokenStoreError, TokenVault, token_secret_name
from calsync.observability import metrics
from calsync.security.consent import ConnectionRef, consent_link
from calsync.settings import Settings
from calsync.store import EventStore

log = logging.getLogger(__name__)

PLURAL = CALENDAR_CONNECTION.plural
POLL_CHECK_SECONDS = 30.0
ACTIVE_PHASES = ("", "Pending", "Running")


# Authenticated reasons after which the owner has to (re)grant access: the status then carries
# a consent link.
CONSENT_REASONS = frozenset({"ConsentRequired", "InvalidGrant", "TokenUnreadable"})


@dataclass
class ConnectionContext:
    """What the connection handlers share, carried in Kopf's memo."""

    client: AsyncClient
    store: EventStore | None = None
    default_poll_interval: float = 900.0
    settings: Settings | None = None
    vault: TokenVault | None = None
    locks: defaultdict[tuple[str, str], asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )


def _context(memo: Any) -> ConnectionContext:
    ctx = memo.get("connections") if hasattr(memo, "get") else None
    if not isinstance(ctx, ConnectionContext):
        raise kopf.PermanentError("operator context missing: started without calsync.operator")
    return ctx


def connection_key(namespace: str, name: str) -> str:
    """How the store names a connection."""
    return f"{namespace}/{name}"


async def publish(client: AsyncClient, body: dict[str, Any], conds: readiness.Conditions) -> None:
    """Post Events and record metrics for the transitions of a status just written."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    metrics.record_conditions(namespace, name, [(c.type, c.status) for c in conds.items])
    ready_reason = next((c.reason for c in conds.items if c.type == READY), None)
    for cond in conds.transitions:
        metrics.CONNECTION_TRANSITIONS.labels(cond.type, cond.status, cond.reason).inc()
        log.info(
            "condition %s=%s (%s) on %s/%s", cond.type, cond.status, cond.reason, namespace, name
        )
        # Ready carries the summary: one Event per transition of it, plus one for any other
        # condition whose reason says something Ready does not.
        if cond.type == READY or (cond.reason != ready_reason and cond.type != SYNCED):
            good = cond.status == "True" if cond.type != "Degraded" else cond.status == "False"
            await kube.post_event(
                client,
                body,
                type="Normal" if good else "Warning",
                reason=cond.reason,
                message=f"{cond.type}={cond.status}: {cond.message}",
            )


def status_patch(conds: readiness.Conditions, **extra: Any) -> dict[str, Any]:
    return {
        "observedGeneration": conds.generation,
        "conditions": [c.to_wire() for c in conds.items],
        **extra,
    }


async def reconcile(
    ctx: ConnectionContext, namespace: str, name: str, *, credentials_changed: bool = False
) -> dict[str, Any] | None:
    """Bring one connection's conditions in line with its spec and Secrets; return the object."""
    async with ctx.locks[(namespace, name)]:
        outcome: dict[str, readiness.Conditions] = {}

        async def mutate(body: dict[str, Any]) -> dict[str, Any] | None:
            if body["metadata"].get("deletionTimestamp"):
                return None
            extra: dict[str, Any] = {}
            conds = readiness.Conditions(
                conditions_from_status(body.get("status")),
                int(body["metadata"].get("generation", 0)),
                dt.datetime.now(dt.UTC).replace(microsecond=0),
            )
            try:
                spec = CalendarConnectionSpec.model_validate(body.get("spec") or {})
            except ValidationError as exc:
                readiness.apply_invalid_spec(
                    conds, f"spec not understood: {exc.errors()[0]['msg']}"
                )
            else:
                secrets = {
                    secret: await kube.read_secret(ctx.client, namespace, secret)
                    for secret in sorted(referenced_secrets(spec))
                }
                stored, problem = await _token_state(ctx, body, spec)
                verdict = evaluate(spec, secrets, tokens_stored=stored, token_problem=problem)
                readiness.apply_credentials(conds, verdict, credentials_changed=credentials_changed)
                if spec.provider in OAUTH_PROVIDERS:
                    extra["authorizationURL"] = consent_link_for(
                        ctx.settings, ctx.vault, body, spec.provider, conds
                    )
            outcome["conds"] = conds
            return status_patch(conds, **extra)

        body = await kube.update_connection_status(ctx.client, namespace, name, mutate)
        if body is not None and "conds" in outcome:
            await publish(ctx.client, body, outcome["conds"])
        return body


async def _token_state(
    ctx: ConnectionContext, body: dict[str, Any], spec: CalendarConnectionSpec
) -> tuple[bool, tuple[str, str] | None]:
    """Whether calsync holds tokens for an OAuth connection, else (reason, why) they fail."""
    if spec.provider not in OAUTH_PROVIDERS or ctx.vault is None:
        return False, None
    try:
        return await ctx.vault.load(body) is not None, None
    except TokenStoreError as exc:
        return False, (exc.reason, str(exc))


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


# Provider verdicts after which no sync is attempted until the credentials change: another
# attempt would only repeat the refused refresh.
STICKY_AUTH_REASONS = frozenset({"InvalidGrant"})


def _credentials_ok(body: dict[str, Any]) -> bool:
    conds = conditions_from_status(body.get("status"))
    auth = next((c for c in conds if c.type == "Authenticated"), None)
    return (
        auth is not None
        and auth.reason not in readiness.CREDENTIAL_REASONS
        and auth.reason not in STICKY_AUTH_REASONS
    )


async def _active_jobs(ctx: ConnectionContext, namespace: str, name: str) -> list[dict[str, Any]]:
    jobs = await kube.list_syncjobs(ctx.client, namespace, connection=name)
    return [j for j in jobs if (j.get("status") or {}).get("phase", "") in ACTIVE_PHASES]


async def request_sync(
    ctx: ConnectionContext, body: dict[str, Any], *, mode: str, reason: str, only_if_idle: bool
) -> dict[str, Any] | None:
    """Create a SyncJob for the connection unless (with only_if_idle) one is already waiting."""
    meta = body["metadata"]
    if only_if_idle and await _active_jobs(ctx, meta["namespace"], meta["name"]):
        return None
    job = await kube.create_syncjob(ctx.client, body, mode=mode, reason=reason)
    log.info("created SyncJob %s (%s, %s)", job["metadata"]["name"], mode, reason)
    return job


async def ensure_first_sync(ctx: ConnectionContext, body: dict[str, Any] | None) -> None:
    if body is None or not _credentials_ok(body):
        return
    if (body.get("status") or {}).get("lastSyncTime"):
        return
    if (body.get("spec") or {}).get("suspend"):
        return
    meta = body["metadata"]
    if await kube.list_syncjobs(ctx.client, meta["namespace"], connection=meta["name"]):
        return  # a first job exists (maybe it failed: the poll timer or a fix retries)
    await request_sync(ctx, body, mode="full", reason="lifecycle", only_if_idle=False)


@kopf.on.resume(GROUP, PLURAL)
@kopf.on.create(GROUP, PLURAL)
async def connection_created(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    assert namespace is not None  # the kind is namespaced
    ctx = _context(memo)
    await ensure_first_sync(ctx, await reconcile(ctx, namespace, name))


@kopf.on.update(GROUP, PLURAL, field="spec")
async def connection_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    assert namespace is not None
    ctx = _context(memo)
    body = await reconcile(ctx, namespace, name)
    if body is None or not _credentials_ok(body) or (body.get("spec") or {}).get("suspend"):
        return
    # What is mirrored may have changed (URL, calendars, window): re-read everything.
    await request_sync(ctx, body, mode="full", reason="lifecycle", only_if_idle=False)


@kopf.timer(GROUP, PLURAL, interval=POLL_CHECK_SECONDS, initial_delay=POLL_CHECK_SECONDS)
async def poll_timer(
    namespace: str | None, name: str, spec: Any, status: Any, memo: Any, **_: Any
) -> None:
    """Create an incremental SyncJob when the poll interval has passed since the last sync."""
    assert namespace is not None
    ctx = _context(memo)
    try:
        parsed = CalendarConnectionSpec.model_validate(dict(spec))
    except ValidationError:
        return
    if parsed.suspend:
        return
    last = (status or {}).get("lastSyncTime")
    body = await kube.get_connection(ctx.client, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp") or not _credentials_ok(body):
        return
    if not last:
        await ensure_first_sync(ctx, body)
        return
    last_sync = dt.datetime.fromisoformat(str(last).replace("Z", "+00:00"))
    interval = parsed.sync.poll_interval_seconds
    if dt.datetime.now(dt.UTC) - last_sync >= dt.timedelta(seconds=interval):
        await request_sync(ctx, body, mode="incremental", reason="poll", only_if_idle=True)


@kopf.on.delete(GROUP, PLURAL)
async def connection_deleted(
    namespace: str | None,
    name: str,
    status: Any,
    body: Any,
    memo: Any,
    logger: Any,
    **_: Any,
) -> None:
    """Purge the connection's events from the store, then forget its metric series."""
    assert namespace is not None
    ctx = _context(memo)
    if ctx.store is not None:
        purged = await ctx.store.purge_connection(connection_key(namespace, name))
        logger.info("purged %d events of %s/%s from the store", purged, namespace, name)
    if ctx.vault is not None:
        # Garbage collection would remove the owned token Secret too; do not wait for it.
        await ctx.vault.delete({"metadata": dict(body["metadata"])})
    types = [c.type for c in conditions_from_status(status)]
    metrics.forget_connection(namespace, name, types)
    ctx.locks.pop((namespace, name), None)


@kopf.index(GROUP, PLURAL)
def connections_by_secret(
    namespace: str | None, name: str, spec: Any, **_: Any
) -> dict[tuple[str, str], str]:
    assert namespace is not None
    try:
        parsed = CalendarConnectionSpec.model_validate(dict(spec))
    except ValidationError:
        return {}
    secrets = set(referenced_secrets(parsed))
    if parsed.provider in OAUTH_PROVIDERS:
        secrets.add(token_secret_name(name))  # consent and refreshes write it
    return {(namespace, secret): name for secret in secrets}


@kopf.on.event("", "v1", "secrets")
async def secret_changed(
    namespace: str | None, name: str, memo: Any, type: str | None, **kwargs: Any
) -> None:
    index: kopf.Index[tuple[str, str], str] = kwargs["connections_by_secret"]
    if namespace is None:
        return
    ctx = _context(memo)
    for connection in sorted(set(index.get((namespace, name), []))):
        if type is not None:
            await _user_token_replaced(ctx, namespace, connection, name)
        # The initial listing (type None) is not a change of the Secret.
        body = await reconcile(ctx, namespace, connection, credentials_changed=type is not None)
        if body is None:
            continue
        await ensure_first_sync(ctx, body)
        if type is not None and _last_sync_failed(body) and _credentials_ok(body):
            await request_sync(ctx, body, mode="incremental", reason="lifecycle", only_if_idle=True)


async def _user_token_replaced(
    ctx: ConnectionContext, namespace: str, connection: str, secret: str
) -> None:
    """A changed spec.oauth.tokenSecretRef Secret replaces the tokens calsync stored."""
    if ctx.vault is None:
        return
    body = await kube.get_connection(ctx.client, namespace, connection)
    if body is None:
        return
    try:
        spec = CalendarConnectionSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return
    ref = spec.oauth.token_secret_ref if spec.oauth is not None else None
    if ref is not None and ref.name == secret:
        log.info("token Secret %s/%s changed; dropping the stored tokens", namespace, secret)
        await ctx.vault.delete(body)


def _last_sync_failed(body: dict[str, Any]) -> bool:
    conds = conditions_from_status(body.get("status"))
    ready = next((c for c in conds if c.type == READY), None)
    auth = next((c for c in conds if c.type == "Authenticated"), None)
    return (ready is not None and ready.reason == "SyncFailed") or (
        auth is not None and auth.reason == "CredentialsUpdated"
    )
