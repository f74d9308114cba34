"""The WebhookSubscription controller: push channels registered, renewed and stopped.

Built like the connection controller: Kopf's watch events only update the subscription cache
and put keys on this controller's own work queue (they cannot fail); the queue's tasks
reconcile a key from the caches. `push_policy.decide_subscription` says what is due; this
module carries it out with the connection's provider (built as the worker builds it, with the
tokens from the vault) and writes the outcome to status with a resourceVersion-guarded patch,
so a gateway writing counters or lifecycle events at the same time is never overwritten.

Google channels: the id is `calsync-<first 8 of the subscription's uid>-<channelGeneration>`
and the token an HMAC of it (calsync/security/push_tokens.py). A renewal registers the next
generation first, moves the old channel to `previous*` (the gateway still accepts it), then
stops it and clears `previous*`: make-before-break. A failed registration still advances
`channelGeneration`, so a retry after a crash between the provider's answer and our status
write never reuses an id. Graph subscriptions: clientState is an HMAC of the subscription's
uid; renewal PATCHes the expiration and recreates the subscription (with a full resync of the
calendar) when Graph no longer knows it. Lifecycle events the gateway recorded in
`status.lifecycleEvents` are acted on, then removed.

Deleting a WebhookSubscription stops its channel(s) or deletes the Graph subscription first
(404/410 count as done). When that keeps failing, the finalizer lets go after `purge_timeout`
(at once when the connection, or its credentials, are gone for good) with a Warning Event and
`calsync_subscription_operations_total{result="abandoned"}`: the channel then expires on its
own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import kopf
from lightkube import ApiError
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec
from calsync.api.conditions import AUTHENTICATED, READY, SUBSCRIBED, conditions_from_status
from calsync.api.meta import CALENDAR_CONNECTION, GROUP, WEBHOOK_SUBSCRIPTION
from calsync.api.subscription import WebhookSubscriptionSpec
from calsync.controllers import kube, policy, push_policy, readiness
from calsync.controllers.connection import ConnectionContext
from calsync.controllers.credentials import referenced_secrets
from calsync.controllers.provider_factory import ProviderDeps, build_provider
from calsync.controllers.subscription_cache import Key, SubscriptionCache
from calsync.controllers.workqueue import WorkQueue
from calsync.observability import metrics
from calsync.observability.logging import log_context
from calsync.providers.base import CursorInvalid, ProviderError, RateLimited
from calsync.providers.google import GoogleProvider
from calsync.providers.google.provider import ChannelGone
from calsync.providers.microsoft import MicrosoftProvider, SubscriptionGone, calendar_resource
from calsync.security.push_tokens import channel_token, client_state

log = logging.getLogger(__name__)

PLURAL = WEBHOOK_SUBSCRIPTION.plural
WRITE_ATTEMPTS = 5
FINALIZER_RETRY_CAP = 30.0
FAILURE_REASONS = {
    "register": "RegistrationFailed",
    "recreate": "RegistrationFailed",
    "renew": "RenewalFailed",
    "reauthorize": "ReauthorizationFailed",
    "stop_previous": "StopFailed",
}


class CannotReachProvider(RuntimeError):
    """The subscription's connection (and with it the credentials) is not available."""


@dataclass
class SubscriptionContext:
    """What the subscription handlers share, carried in Kopf's memo next to the connections'."""

    connections: ConnectionContext
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=30.0))
    queue: WorkQueue[Key] = field(init=False)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(
            lambda key: reconcile(self, key),
            concurrency=self.connections.settings.operator_concurrency,
            name="subscriptions",
        )
        cache = self.cache
        renew_before = self.connections.settings.webhook_renewal_before_expiry
        for provider in sorted(push_policy.PUSH_PROVIDERS):
            metrics.SUBSCRIPTION_EXPIRY.labels(provider).set_function(
                lambda p=provider: cache.seconds_to_expiry(p)  # type: ignore[misc]
            )
            metrics.SUBSCRIPTION_RENEWAL_OVERDUE.labels(provider).set_function(
                lambda p=provider: cache.seconds_overdue(p, renew_before)  # type: ignore[misc]
            )
            for ready in (True, False):
                metrics.SUBSCRIPTIONS.labels(provider, str(ready).lower()).set_function(
                    lambda p=provider, r=ready: cache.count(p, r)  # type: ignore[misc]
                )

    @property
    def cache(self) -> SubscriptionCache:
        return self.connections.subscriptions

    @property
    def params(self) -> push_policy.PushParams:
        settings = self.connections.settings
        return push_policy.PushParams(
            renew_before=settings.webhook_renewal_before_expiry,
            allow_insecure=settings.webhook_allow_insecure,
            public_url=settings.public_gateway_url,
        )

    async def aclose(self) -> None:
        await self.http.aclose()


def _context(memo: Any) -> SubscriptionContext | None:
    ctx = memo.get("subscriptions") if hasattr(memo, "get") else None
    return ctx if isinstance(ctx, SubscriptionContext) else None


def _ready_status(obj: Mapping[str, Any] | None) -> tuple[str, str] | None:
    if obj is None:
        return None
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == READY:
            return str(cond.get("status")), str(cond.get("reason"))
    return None


# -- watch handlers: caches and queues, nothing that can fail ---------------------------------


@kopf.on.event(GROUP, PLURAL)
async def subscription_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    ctx = _context(memo)
    if ctx is None:
        return
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    deleted = event.get("type") == "DELETED"
    before = _ready_status(ctx.cache.objects.get((meta.get("namespace", ""), meta.get("name", ""))))
    key, owner = ctx.cache.observe(obj, deleted)
    if deleted:
        ctx.queue.forget(key)
    else:
        ctx.queue.add(key)
    # The connection sums up its subscriptions' Ready: tell it when that may have changed
    # (not on every counter the gateway writes).
    after = None if deleted else _ready_status(obj)
    if owner is not None and (deleted or before is None or before != after):
        ctx.connections.queue.add(owner)


@kopf.on.event(GROUP, CALENDAR_CONNECTION.plural)
async def connection_event_for_subscriptions(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    """A connection changed (credentials, deletion): its subscriptions decide again."""
    ctx = _context(memo)
    if ctx is None:
        return
    meta = (event.get("object") or {}).get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    for sub in ctx.cache.of_connection(namespace, name):
        ctx.queue.add((namespace, sub))


# -- reconcile --------------------------------------------------------------------------------


def _connection_facts(conn: Mapping[str, Any] | None) -> push_policy.ConnectionFacts:
    if conn is None or (conn.get("metadata") or {}).get("deletionTimestamp"):
        return push_policy.ConnectionFacts(found=False)
    for cond in conditions_from_status(conn.get("status")):
        if cond.type == AUTHENTICATED and cond.status == "False":
            return push_policy.ConnectionFacts(
                found=True, authenticated=False, auth_reason=cond.reason
            )
    return push_policy.ConnectionFacts(found=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


async def reconcile(ctx: SubscriptionContext, key: Key) -> float | None:
    """Carry out what `push_policy.decide_subscription` says; return when to look again."""
    with log_context(subscription=f"{key[0]}/{key[1]}"):
        return await _reconcile(ctx, key)


async def _reconcile(ctx: SubscriptionContext, key: Key) -> float | None:
    body = ctx.cache.objects.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    try:
        spec = WebhookSubscriptionSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return None  # the CRD's schema makes this rare; nothing sensible to do
    conn = ctx.connections.connections.get((key[0], spec.connection))
    status = body.get("status") or {}
    now = _now()
    plan = push_policy.decide_subscription(
        spec.provider, status, _connection_facts(conn), now, ctx.params
    )
    if plan.action in ("nothing", "wait", "refuse_insecure"):
        return await _settle(ctx, body, plan, now)
    assert conn is not None
    return await _act(ctx, body, spec, conn, plan, now)


async def _settle(
    ctx: SubscriptionContext, body: dict[str, Any], plan: push_policy.SubscriptionPlan, now: Any
) -> float | None:
    """No provider call: bring the conditions (and the renewal time) up to date."""
    status = body.get("status") or {}
    if plan.action == "wait" and plan.reason in ("BackingOff", "ConnectionNotFound"):
        return plan.wake_after  # the conditions say what failed last; the object may be going
    problem: tuple[str, str] | None = None
    fields: dict[str, Any] = {}
    if plan.action == "refuse_insecure" or plan.action == "wait":
        problem = (plan.reason, plan.message)
    elif int(status.get("consecutiveFailures") or 0):
        # The back-off is over and nothing is due: whatever failed is no longer needed.
        fields.update(consecutiveFailures=0, lastError=None)
    if plan.action == "nothing" and plan.wake_after is not None and plan.wake_after > 0:
        fields["nextRenewalTime"] = push_policy.format_time(
            now + dt.timedelta(seconds=plan.wake_after)
        )
    written = await _write(ctx, body, fields, _identities(status, plan.handled), problem, now)
    if written is not None and written is not body and plan.action == "refuse_insecure":
        metrics.SUBSCRIPTION_OPERATIONS.labels(
            (body.get("spec") or {}).get("provider", ""), "register", "refused"
        ).inc()
    if plan.action == "nothing":
        return plan.wake_after
    return None


def _identities(status: Mapping[str, Any], handled: tuple[int, ...]) -> set[tuple[str, str]]:
    events = status.get("lifecycleEvents") or []
    return {
        (str(events[i].get("event")), str(events[i].get("receivedAt")))
        for i in handled
        if i < len(events) and isinstance(events[i], Mapping)
    }


async def _provider(ctx: SubscriptionContext, conn: dict[str, Any]) -> Any:
    cctx = ctx.connections
    try:
        spec = CalendarConnectionSpec.model_validate(conn.get("spec") or {})
    except ValidationError as exc:
        raise CannotReachProvider(f"connection spec not understood: {exc}") from None
    namespace = conn["metadata"]["namespace"]
    secrets = {
        name: await cctx.secrets.get(namespace, name) for name in sorted(referenced_secrets(spec))
    }
    return await build_provider(
        spec,
        secrets,
        budget=None,
        deps=ProviderDeps(cctx.settings, cctx.vault, ctx.http),
        body=conn,
    )


def _ring(ctx: SubscriptionContext) -> Any:
    vault = ctx.connections.vault
    if vault is None:
        raise CannotReachProvider("no token keyring: push channels cannot be verified")
    return vault.keyring


@dataclass
class _Outcome:
    fields: dict[str, Any]
    operation: str
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    resync: str | None = None
    resync_key: str = ""


async def _act(
    ctx: SubscriptionContext,
    body: dict[str, Any],
    spec: WebhookSubscriptionSpec,
    conn: dict[str, Any],
    plan: push_policy.SubscriptionPlan,
    now: dt.datetime,
) -> float | None:
    status = body.get("status") or {}
    handled = _identities(status, plan.handled)
    operation = plan.action
    provider: Any = None
    try:
        if plan.action == "resync":
            outcome = _Outcome({}, "resync", resync=plan.resync)
        else:
            provider = await _provider(ctx, conn)
            outcome = await _call(ctx, provider, body, spec, plan, now)
    except (ProviderError, CannotReachProvider, httpx.HTTPError) as exc:
        return await _failed(ctx, body, spec, operation, exc, handled, now)
    finally:
        if provider is not None:
            await provider.aclose()
    metrics.SUBSCRIPTION_OPERATIONS.labels(spec.provider, outcome.operation, "ok").inc()
    log.info(
        "%s of WebhookSubscription %s/%s done",
        outcome.operation,
        body["metadata"]["namespace"],
        body["metadata"]["name"],
    )
    if plan.resync and not outcome.resync:
        outcome.resync = plan.resync
    if outcome.resync:
        key = push_policy.lifecycle_key(status.get("lifecycleEvents") or [], plan.handled)
        await _resync(ctx, conn, spec, body, outcome.resync, key or outcome.resync_key)
    outcome.fields.update(consecutiveFailures=0, lastError=None)
    merged = {**status, **outcome.fields}
    expiration = push_policy.parse_time(merged.get("expiration"))
    if expiration is not None:
        due = push_policy.renewal_time(
            push_policy.parse_time(merged.get("registeredAt")),
            expiration,
            ctx.params.renew_before,
        )
        outcome.fields["nextRenewalTime"] = push_policy.format_time(max(due, now))
    written = await _write(ctx, body, outcome.fields, handled, None, now)
    if written is not None:
        for etype, reason, message in outcome.events:
            await kube.post_event(
                ctx.connections.client, written, type=etype, reason=reason, message=message
            )
    return 0.0  # decide again from what was just written (a previous channel to stop, ...)


async def _call(
    ctx: SubscriptionContext,
    provider: Any,
    body: dict[str, Any],
    spec: WebhookSubscriptionSpec,
    plan: push_policy.SubscriptionPlan,
    now: dt.datetime,
) -> _Outcome:
    status = body.get("status") or {}
    uid = str(body["metadata"]["uid"])
    if isinstance(provider, GoogleProvider):
        if plan.action == "stop_previous":
            previous = str(status.get("previousChannelId"))
            stopped = await _stop_google(provider, previous, status.get("previousResourceId"))
            return _Outcome(
                {"previousChannelId": None, "previousResourceId": None},
                "stop",
                events=[
                    (
                        "Normal",
                        "ChannelStopped",
                        f"stopped the replaced channel {previous}"
                        + ("" if stopped else " (the provider no longer knew it)"),
                    )
                ],
            )
        return await _register_google(ctx, provider, status, spec, uid, plan, now)
    if isinstance(provider, MicrosoftProvider):
        channel = status.get("channelId")
        if plan.action in ("renew", "reauthorize") and channel:
            try:
                granted = await provider.renew_subscription(
                    str(channel), push_policy.graph_expiration(now)
                )
            except SubscriptionGone:
                metrics.SUBSCRIPTION_OPERATIONS.labels("microsoft", "renew", "gone").inc()
                outcome = await _register_graph(ctx, provider, status, spec, uid, now)
                outcome.resync, outcome.resync_key = "full", f"gone:{channel}"
                outcome.events.append(
                    (
                        "Warning",
                        "SubscriptionRecreated",
                        f"Graph no longer knew subscription {channel}; created "
                        f"{outcome.fields['channelId']} and queued a full resync",
                    )
                )
                return outcome
            return _Outcome(
                {
                    "expiration": push_policy.format_time(granted.expiration),
                    "registeredAt": push_policy.format_time(now),
                },
                "renew" if plan.action == "renew" else "reauthorize",
            )
        outcome = await _register_graph(ctx, provider, status, spec, uid, now)
        if plan.action == "recreate":
            outcome.operation = "recreate"
            outcome.resync_key = f"recreate:{channel}"
            outcome.events.append(
                (
                    "Normal",
                    "SubscriptionRecreated",
                    f"created subscription {outcome.fields['channelId']} in place of "
                    f"{channel or 'none'}; a full resync follows",
                )
            )
        return outcome
    raise CannotReachProvider(f"provider {spec.provider} has no push channels")


async def _register_google(
    ctx: SubscriptionContext,
    provider: GoogleProvider,
    status: Mapping[str, Any],
    spec: WebhookSubscriptionSpec,
    uid: str,
    plan: push_policy.SubscriptionPlan,
    now: dt.datetime,
) -> _Outcome:
    generation = int(status.get("channelGeneration") or 0) + 1
    channel_id = push_policy.google_channel_id(uid, generation)
    address, _ = push_policy.notification_urls(ctx.params.public_url, "google")
    try:
        channel = await provider.watch(
            spec.calendar_id,
            channel_id=channel_id,
            address=address,
            token=channel_token(_ring(ctx), channel_id),
        )
    except ProviderError as exc:
        exc.generation = generation  # type: ignore[attr-defined]
        raise
    expires = (
        dt.datetime.fromtimestamp(channel.expiration, dt.UTC).replace(microsecond=0)
        if channel.expiration is not None
        else now + dt.timedelta(seconds=push_policy.DEFAULT_LIFETIME)
    )
    fields: dict[str, Any] = {
        "channelId": channel.id,
        "resourceId": channel.resource_id,
        "expiration": push_policy.format_time(expires),
        "registeredAt": push_policy.format_time(now),
        "channelGeneration": generation,
    }
    old = status.get("channelId")
    renewal = bool(old)
    if old:
        # Make-before-break: the old channel stays accepted until it is stopped.
        fields["previousChannelId"] = old
        fields["previousResourceId"] = status.get("resourceId")
    outcome = _Outcome(
        fields,
        "renew" if renewal and not plan.expired else "register",
        resync_key=f"lapsed:{old}" if plan.expired else "",
    )
    outcome.events.append(
        (
            "Normal",
            "ChannelRenewed" if renewal else "ChannelRegistered",
            f"channel {channel.id} open until {push_policy.format_time(expires)}"
            + (f"; {old} is stopped next" if old else ""),
        )
    )
    return outcome


async def _register_graph(
    ctx: SubscriptionContext,
    provider: MicrosoftProvider,
    status: Mapping[str, Any],
    spec: WebhookSubscriptionSpec,
    uid: str,
    now: dt.datetime,
) -> _Outcome:
    url, lifecycle = push_policy.notification_urls(ctx.params.public_url, "microsoft")
    assert lifecycle is not None
    granted = await provider.subscribe(
        resource=calendar_resource(spec.calendar_id),
        notification_url=url,
        lifecycle_notification_url=lifecycle,
        client_state=client_state(_ring(ctx), uid),
        expiration=push_policy.graph_expiration(now),
    )
    fields = {
        "channelId": granted.id,
        "expiration": push_policy.format_time(granted.expiration),
        "registeredAt": push_policy.format_time(now),
        "channelGeneration": int(status.get("channelGeneration") or 0) + 1,
    }
    return _Outcome(
        fields,
        "register",
        events=[
            (
                "Normal",
                "SubscriptionRegistered",
                f"Graph subscription {granted.id} until "
                f"{push_policy.format_time(granted.expiration)}",
            )
        ],
    )


async def _stop_google(provider: GoogleProvider, channel_id: str, resource_id: Any) -> bool:
    """Stop a channel; False when Google no longer knew it (404/410: done all the same)."""
    if not resource_id:
        return False  # never answered with a resourceId: nothing Google would accept
    try:
        return await provider.stop_channel(channel_id, str(resource_id))
    except (ChannelGone, CursorInvalid):
        return False


async def _failed(
    ctx: SubscriptionContext,
    body: dict[str, Any],
    spec: WebhookSubscriptionSpec,
    operation: str,
    exc: Exception,
    handled: set[tuple[str, str]],
    now: dt.datetime,
) -> float | None:
    status = body.get("status") or {}
    failures = int(status.get("consecutiveFailures") or 0) + 1
    delay = push_policy.backoff(failures)
    if isinstance(exc, RateLimited) and exc.retry_after:
        delay = max(delay, exc.retry_after)
    reason = FAILURE_REASONS.get(operation, "RegistrationFailed")
    if isinstance(exc, ProviderError) and type(exc).reason not in ("ProviderError",):
        reason = exc.reason
    message = f"{operation} failed: {type(exc).__name__}: {exc}"[:1024]
    fields: dict[str, Any] = {
        "consecutiveFailures": failures,
        "lastError": message,
        "nextRenewalTime": push_policy.format_time(now + dt.timedelta(seconds=delay)),
    }
    generation = getattr(exc, "generation", None)
    if generation is not None:
        fields["channelGeneration"] = generation  # never ask for the same channel id twice
    metrics.SUBSCRIPTION_OPERATIONS.labels(spec.provider, _metric_op(operation), "error").inc()
    log.warning(
        "WebhookSubscription %s/%s: %s (attempt %d; again in %.0f s)",
        body["metadata"]["namespace"],
        body["metadata"]["name"],
        message,
        failures,
        delay,
    )
    # Lifecycle events stay until they are acted on successfully.
    del handled
    await _write(ctx, body, fields, set(), (reason, message), now)
    return delay


def _metric_op(action: str) -> str:
    return "stop" if action == "stop_previous" else action


async def _resync(
    ctx: SubscriptionContext,
    conn: dict[str, Any],
    spec: WebhookSubscriptionSpec,
    body: dict[str, Any],
    mode: str,
    key: str,
) -> None:
    """Queue a resync of the calendar (best effort: the poll is the safety net)."""
    digest = hashlib.sha256(
        f"{body['metadata']['uid']}\x00{spec.calendar_id}\x00{mode}\x00{key}".encode()
    ).hexdigest()
    name = policy.job_name(conn["metadata"]["name"], mode, digest)
    try:
        await kube.create_syncjob(
            ctx.connections.client,
            conn,
            name=name,
            mode=mode,
            reason="lifecycle",
            calendar_id=spec.calendar_id,
            ttl=int(ctx.connections.settings.syncjob_history),
        )
    except kube.AlreadyExists:
        return
    except (ApiError, httpx.HTTPError) as exc:
        metrics.SUBSCRIPTION_OPERATIONS.labels(spec.provider, "resync", "error").inc()
        log.warning("could not create resync SyncJob %s: %s", name, exc)
        return
    metrics.SUBSCRIPTION_OPERATIONS.labels(spec.provider, "resync", "ok").inc()
    log.info("created SyncJob %s/%s (%s, lifecycle)", conn["metadata"]["namespace"], name, mode)


# -- writing status ---------------------------------------------------------------------------


def _conditions(
    status: Mapping[str, Any],
    generation: int,
    now: dt.datetime,
    problem: tuple[str, str] | None,
) -> readiness.Conditions:
    conds = readiness.Conditions(conditions_from_status(status), generation, now)
    for ctype, cstatus, reason, message in (
        push_policy.ready_condition(status, now, problem),
        push_policy.subscribed_condition(status, now),
    ):
        conds.set(ctype, cstatus, reason, message)  # type: ignore[arg-type]
    return conds


def event_type(ctype: str, status: str, reason: str) -> str:
    if status == "True" or reason in push_policy.PROGRESS_REASONS:
        return "Normal"
    return "Warning"


async def _write(
    ctx: SubscriptionContext,
    body: dict[str, Any],
    fields: Mapping[str, Any],
    handled: set[tuple[str, str]],
    problem: tuple[str, str] | None,
    now: dt.datetime,
) -> dict[str, Any] | None:
    """Merge `fields` into status with the conditions they imply, guarded by resourceVersion.

    A conflict (the gateway counted a notification or recorded a lifecycle event) re-reads
    the object and applies the same fields to it; lifecycle events other than `handled` stay.
    Returns the object as written (or as it is, when nothing changed), None when it is gone.
    """
    client = ctx.connections.client
    current = body
    for _ in range(WRITE_ATTEMPTS):
        meta = current["metadata"]
        status = current.get("status") or {}
        patch: dict[str, Any] = dict(fields)
        events = status.get("lifecycleEvents") or []
        if handled and events:
            patch["lifecycleEvents"] = [
                e for e in events if (str(e.get("event")), str(e.get("receivedAt"))) not in handled
            ]
        merged = {**status, **patch}
        conds = _conditions(merged, int(meta.get("generation") or 0), now, problem)
        patch["conditions"] = [c.to_wire() for c in conds.items]
        patch["observedGeneration"] = int(meta.get("generation") or 0)
        if all(status.get(k) == v for k, v in patch.items()):
            return current
        try:
            written = await kube.patch_status_guarded(
                client,
                kube.WebhookSubscriptionResource,
                meta["namespace"],
                meta["name"],
                meta["resourceVersion"],
                patch,
            )
        except kube.Conflict:
            fresh = await kube.get_webhook_subscription(client, meta["namespace"], meta["name"])
            if fresh is None:
                return None
            current = fresh
            continue
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        ctx.cache.replace(written)
        connection = (written.get("spec") or {}).get("connection")
        if connection and any(c.type == READY for c in conds.transitions):
            # The cache already holds the new Ready, so the watch event will not tell the
            # connection: tell it here.
            ctx.connections.queue.add((meta["namespace"], str(connection)))
        for cond in conds.transitions:
            # Ready tells the story; a lapsed channel is worth its own Event.
            if cond.type != READY and not (
                cond.type == SUBSCRIBED and cond.reason == "ChannelExpired"
            ):
                continue
            await kube.post_event(
                client,
                written,
                type=event_type(cond.type, cond.status, cond.reason),
                reason=cond.reason,
                message=f"{cond.type}={cond.status}: {cond.message}",
            )
        return written
    raise kube.Conflict(
        f"could not update the status of WebhookSubscription {body['metadata']['name']}: "
        "too many conflicts"
    )


# -- deletion ---------------------------------------------------------------------------------


@kopf.on.delete(GROUP, PLURAL)
async def subscription_deleted(
    namespace: str | None,
    name: str,
    spec: Any,
    status: Any,
    body: Any,
    memo: Any,
    retry: int,
    **_: Any,
) -> None:
    """Stop the channel(s) / delete the Graph subscription; give up after `purge_timeout`."""
    assert namespace is not None
    ctx = _context(memo)
    if ctx is None:
        raise kopf.PermanentError("operator context missing: started without calsync.operator")
    raw = {
        "metadata": dict(body["metadata"]),
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
    }
    provider_name = str((spec or {}).get("provider") or "")
    current = dict(status or {})
    try:
        await _release(ctx, namespace, dict(spec or {}), current)
    except CannotReachProvider as exc:
        # No connection, no credentials: nothing can stop the channel but its expiry.
        await _abandon(ctx, raw, provider_name, current, str(exc))
    except (ProviderError, httpx.HTTPError, ApiError) as exc:
        deleted_at = policy.parse_time(body["metadata"].get("deletionTimestamp"))
        waited = (dt.datetime.now(dt.UTC) - deleted_at).total_seconds() if deleted_at else 0.0
        # Refused credentials (or a missing consent) will not work on a retry either.
        permanent = isinstance(exc, ProviderError) and not exc.retryable
        if not permanent and waited < ctx.connections.settings.purge_timeout:
            metrics.SUBSCRIPTION_OPERATIONS.labels(
                provider_name, _stop_op(provider_name), "error"
            ).inc()
            raise kopf.TemporaryError(
                f"cannot stop the channel of {namespace}/{name} yet ({type(exc).__name__}: {exc})",
                delay=min(FINALIZER_RETRY_CAP, 1.0 * 2**retry),
            ) from exc
        await _abandon(ctx, raw, provider_name, current, f"{type(exc).__name__}: {exc}")


def _stop_op(provider: str) -> str:
    return "stop" if provider == "google" else "delete"


async def _release(
    ctx: SubscriptionContext, namespace: str, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> None:
    channels = [
        (str(status[c]), status.get(r))
        for c, r in (("channelId", "resourceId"), ("previousChannelId", "previousResourceId"))
        if status.get(c)
    ]
    if not channels:
        return
    conn = ctx.connections.connections.get((namespace, str(spec.get("connection") or "")))
    if conn is None:
        raise CannotReachProvider(f"connection {spec.get('connection')} is gone")
    provider = await _provider(ctx, conn)
    try:
        for channel_id, resource_id in channels:
            if isinstance(provider, GoogleProvider):
                done = await _stop_google(provider, channel_id, resource_id)
                op = "stop"
            elif isinstance(provider, MicrosoftProvider):
                done = await provider.delete_subscription(channel_id)
                op = "delete"
            else:
                return
            metrics.SUBSCRIPTION_OPERATIONS.labels(
                str(spec.get("provider")), op, "ok" if done else "gone"
            ).inc()
            log.info(
                "%s channel %s of %s/%s%s",
                "stopped" if op == "stop" else "deleted",
                channel_id,
                namespace,
                spec.get("connection"),
                "" if done else " (the provider no longer knew it)",
            )
    finally:
        await provider.aclose()


async def _abandon(
    ctx: SubscriptionContext,
    raw: dict[str, Any],
    provider: str,
    status: Mapping[str, Any],
    why: str,
) -> None:
    if not (status.get("channelId") or status.get("previousChannelId")):
        return
    metrics.SUBSCRIPTION_OPERATIONS.labels(provider, _stop_op(provider), "abandoned").inc()
    expires = status.get("expiration") or "its expiration"
    log.error(
        "giving up stopping the channel of %s/%s: %s; it expires at %s",
        raw["metadata"].get("namespace"),
        raw["metadata"].get("name"),
        why,
        expires,
    )
    await kube.post_event(
        ctx.connections.client,
        raw,
        type="Warning",
        reason="ChannelStopAbandoned",
        message=f"could not stop channel {status.get('channelId')} ({why}); released the "
        f"finalizer anyway, the provider stops delivering at {expires}",
    )
