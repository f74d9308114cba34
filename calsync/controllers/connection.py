"""The CalendarConnection controller: level-triggered reconcile through one work queue.

Kopf delivers watch events of connections, SyncJobs and Secrets; the handlers here only update
in-memory caches and put the affected connection's key on the operator's work queue
(`workqueue.WorkQueue`): they cannot fail, so nothing is lost although Kopf never retries an
event handler. The queue's tasks reconcile a key from what the caches hold: the connection,
its Secrets, its SyncJobs and the queue depth go into `policy.decide`, and the plan it returns
is carried out idempotently (a status patch only when something changed, a SyncJob with a
name derived from the state, so a retry or a race hits 409 instead of a duplicate). The plan
also says when the decision changes by itself (the next poll): the queue holds that due time,
so an idle connection costs no task and no request until then. A due poll is not a SyncJob:
it is asked for in the event store under the same derived name, and a worker runs it from
there (docs/decisions/0018), so a poll that changes nothing costs the API server one write,
the worker's status report.

Push providers' connections own one WebhookSubscription per calendar (`push_policy`); the
reconcile creates and deletes them, and their Ready conditions become the connection's
`Subscribed` and `Degraded` (and its poll interval: `push_poll_interval` while all are Ready).

Deleting a connection first deletes its WebhookSubscriptions and waits until their finalizers
have stopped the channels (they need the connection's tokens), then purges its events (keyed
by its UID) and its tokens. The purge is retried
with back-off for `purge_timeout`; then the finalizer lets go with a Warning Event and a metric,
so a namespace deletion never hangs on a store that is down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from lightkube import ApiError, AsyncClient
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec
from calsync.api.conditions import conditions_from_status
from calsync.api.meta import CALENDAR_CONNECTION, GROUP, SYNC_JOB
from calsync.controllers import kube, policy, push_policy, readiness
from calsync.controllers.credentials import Verdict, evaluate, referenced_secrets
from calsync.controllers.oauth_setup import OAUTH_PROVIDERS
from calsync.controllers.status import consent_link_for, publish, status_patch, store_key
from calsync.controllers.subscription_cache import SubscriptionCache
from calsync.controllers.tokens import TokenStoreError, TokenVault, token_secret_name
from calsync.controllers.workqueue import WorkQueue
from calsync.observability import metrics
from calsync.observability.logging import log_context
from calsync.settings import Settings
from calsync.store import EventStore

log = logging.getLogger(__name__)

PLURAL = CALENDAR_CONNECTION.plural
ACTIVE_PHASES = frozenset({"", "Pending", "Running"})
CONFLICT_RECHECK = 1.0
# A poll asked for and not yet run is asked for again this often (the same key: idempotent),
# so a poll the store dropped (a run covered it but reported nothing) is not lost.
POLL_REASK = 300.0
WRITE_ATTEMPTS = 3

Key = tuple[str, str]  # (namespace, name)


class SecretCache:
    """Decoded data of the Secrets connections reference, read once, then kept by the watch.

    The watch sees only Secrets labelled `calsync.io/credentials=true` (the operator's Kopf
    settings): an unlabelled Secret is read once by name, kept as `UnlabelledSecret` (no
    data), and becomes usable when the label appears, which the watch reports as ADDED.
    A DELETED event is also what the watch sends when the label goes, so it drops the entry
    and the next reconcile reads the Secret by name again to tell the two apart.
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._data: dict[Key, Mapping[str, bytes] | None] = {}
        self._reading: dict[Key, asyncio.Task[Mapping[str, bytes] | None]] = {}

    async def get(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        key = (namespace, name)
        if key in self._data:
            return self._data[key]
        # Reconciles of connections sharing a Secret miss together: one read serves them all.
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.create_task(
                kube.read_credentials_secret(self._client, namespace, name)
            )
            self._reading[key] = reading
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        data = await asyncio.shield(reading)
        self._data.setdefault(key, data)
        return self._data[key]

    def observe(self, namespace: str, name: str, kind: str | None, obj: Mapping[str, Any]) -> None:
        key = (namespace, name)
        if key not in self._data and kind != "ADDED":
            return  # nobody asked for it yet: the first read fetches it
        if kind == "DELETED":
            # Deleted, or no longer labelled: the next get() reads it by name to tell.
            self._data.pop(key, None)
            return
        self._data[key] = kube.secret_credentials(obj)

    def drop(self, namespace: str, name: str) -> None:
        self._data.pop((namespace, name), None)


@dataclass
class ConnectionContext:
    """What the connection handlers share, carried in Kopf's memo."""

    client: AsyncClient
    store: EventStore
    settings: Settings
    vault: TokenVault | None = None
    connections: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # Jobs by connection: {(namespace, connection): {job name: phase}}.
    jobs: dict[Key, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    by_secret: dict[Key, set[str]] = field(default_factory=lambda: defaultdict(set))
    secret_refs: dict[Key, set[str]] = field(default_factory=dict)  # connection -> Secrets
    pending_total: int = 0
    polls_waiting: int = 0  # polls due in the store and not started (decision 0018)
    phase_totals: dict[str, int] = field(default_factory=dict)  # calsync_syncjobs{phase}
    foreign_logged: set[Key] = field(default_factory=set)
    # WebhookSubscriptions, fed by the subscription controller's watch (subscriptions.py).
    subscriptions: SubscriptionCache = field(default_factory=SubscriptionCache)
    secrets: SecretCache = field(init=False)
    # Bounds the API and store calls of deletions, which Kopf runs all at once.
    purge_slots: asyncio.Semaphore = field(init=False)
    queue: WorkQueue[Key] = field(init=False)

    def __post_init__(self) -> None:
        for phase in metrics.SYNCJOB_PHASES:
            self.phase_totals[phase] = 0
            metrics.SYNCJOBS.labels(phase).set(0)
        self.secrets = SecretCache(self.client)
        self.purge_slots = asyncio.Semaphore(self.settings.operator_concurrency)
        self.queue = WorkQueue(
            lambda key: reconcile(self, key),
            concurrency=self.settings.operator_concurrency,
            name="connections",
        )

    @property
    def store_id(self) -> str:
        return self.store.store_id

    # -- caches fed by the watches -----------------------------------------------------------

    def observe_job(self, namespace: str, obj: Mapping[str, Any], deleted: bool) -> Key | None:
        name = obj["metadata"]["name"]
        connection = (obj.get("spec") or {}).get("connection")
        if not connection:
            return None
        key = (namespace, connection)
        jobs = self.jobs[key]
        before = jobs.get(name)
        if deleted:
            jobs.pop(name, None)
            if not jobs:
                self.jobs.pop(key, None)
            after = None
        else:
            after = str((obj.get("status") or {}).get("phase") or "")
            jobs[name] = after
        self.pending_total += _pending(after) - _pending(before)
        metrics.SYNCJOBS_PENDING.set(self.pending_total)
        for phase, step in ((_phase(before), -1), (_phase(after), 1)):
            if phase is not None:
                self.phase_totals[phase] += step
                metrics.SYNCJOBS.labels(phase).set(self.phase_totals[phase])
        return key

    def active_jobs(self, key: Key) -> int:
        return sum(1 for phase in self.jobs.get(key, {}).values() if phase in ACTIVE_PHASES)

    def index_secrets(self, key: Key, names: set[str]) -> None:
        namespace = key[0]
        for old in self.secret_refs.get(key, set()) - names:
            holders = self.by_secret.get((namespace, old))
            if holders is not None:
                holders.discard(key[1])
                if not holders:
                    del self.by_secret[(namespace, old)]
                    self.secrets.drop(namespace, old)
        for name in names:
            self.by_secret[(namespace, name)].add(key[1])
        if names:
            self.secret_refs[key] = names
        else:
            self.secret_refs.pop(key, None)


def _pending(phase: str | None) -> int:
    return 1 if phase in ("", "Pending") else 0


def _phase(phase: str | None) -> str | None:
    """The `phase` label of a job's phase (None: no job, or a phase we do not know)."""
    if phase is None:
        return None
    phase = phase or "Pending"
    return phase if phase in metrics.SYNCJOB_PHASES else None


def _context(memo: Any) -> ConnectionContext:
    ctx = memo.get("connections") if hasattr(memo, "get") else None
    if not isinstance(ctx, ConnectionContext):
        raise kopf.PermanentError("operator context missing: started without calsync.operator")
    return ctx


def _strip(obj: Mapping[str, Any]) -> dict[str, Any]:
    body = dict(obj)
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    body["metadata"] = meta
    return body


def _secret_names(name: str, spec: CalendarConnectionSpec) -> set[str]:
    names = set(referenced_secrets(spec))
    if spec.provider in OAUTH_PROVIDERS:
        names.add(token_secret_name(name))  # consent and refreshes write it
    return names


# -- watch handlers: caches and the queue, nothing that can fail ------------------------------
# They are coroutines although they never await: Kopf runs a plain function on a thread of its
# executor, and the caches and the asyncio queue they touch belong to the event loop's thread.


@kopf.on.event(GROUP, PLURAL)
async def connection_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    ctx = _context(memo)
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    key = (meta.get("namespace", ""), meta.get("name", ""))
    if event.get("type") == "DELETED":
        ctx.connections.pop(key, None)
        ctx.index_secrets(key, set())
        ctx.queue.forget(key)
        ctx.foreign_logged.discard(key)
        metrics.forget_connection(*key)
        return
    ctx.connections[key] = _strip(obj)
    # The condition gauges follow the status as stored, whichever process wrote it.
    conditions = conditions_from_status(obj.get("status"))
    metrics.observe_conditions(*key, [(c.type, c.status) for c in conditions])
    try:
        spec = CalendarConnectionSpec.model_validate(obj.get("spec") or {})
    except ValidationError:
        ctx.index_secrets(key, set())
    else:
        ctx.index_secrets(key, _secret_names(key[1], spec))
    ctx.queue.add(key)
    metrics.RECONCILE_QUEUE.set(len(ctx.queue))


@kopf.on.event(GROUP, SYNC_JOB.plural)
async def syncjob_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    ctx = _context(memo)
    obj = event.get("object") or {}
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    deleted = event.get("type") == "DELETED"
    key = ctx.observe_job(namespace, obj, deleted)
    phase = (obj.get("status") or {}).get("phase") or ""
    if key is not None and (deleted or phase not in ACTIVE_PHASES):
        ctx.queue.add(key)  # the connection may be due for its next job now


@kopf.on.event("", "v1", "secrets")
async def secret_event(event: Mapping[str, Any], memo: Any, **_: Any) -> None:
    ctx = _context(memo)
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    holders = ctx.by_secret.get((namespace, name))
    if not holders:
        return
    ctx.secrets.observe(namespace, name, event.get("type"), obj)
    for connection in sorted(holders):
        ctx.queue.add((namespace, connection))


# -- reconcile --------------------------------------------------------------------------------


async def reconcile(ctx: ConnectionContext, key: Key) -> float | None:
    """Carry out what `policy.decide` says for one connection; return when to look again."""
    body = ctx.connections.get(key)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    try:
        with log_context(connection=f"{key[0]}/{key[1]}"):
            again = await _reconcile(ctx, key, body)
    except Exception:
        metrics.RECONCILES.labels("error").inc()
        raise
    metrics.RECONCILES.labels("ok").inc()
    metrics.RECONCILE_QUEUE.set(len(ctx.queue))
    return again


async def _reconcile(ctx: ConnectionContext, key: Key, body: dict[str, Any]) -> float | None:
    namespace, name = key
    meta = body["metadata"]
    status = body.get("status") or {}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    generation = int(meta.get("generation", 0))
    conds = readiness.Conditions(conditions_from_status(status), generation, now)
    extra: dict[str, Any] = {}
    try:
        spec = CalendarConnectionSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        readiness.apply_invalid_spec(conds, f"spec not understood: {exc.errors()[0]['msg']}")
        await _write(ctx, body, conds, extra)
        return None

    names = _secret_names(name, spec)
    secrets = {secret: await ctx.secrets.get(namespace, secret) for secret in sorted(names)}
    referenced = referenced_secrets(spec)
    stored, problem = await _token_state(ctx, body, spec)
    verdict = evaluate(
        spec,
        {k: v for k, v in secrets.items() if k in referenced},
        tokens_stored=stored,
        token_problem=problem,
        namespace=namespace,
    )
    digest = policy.credentials_digest(secrets)
    current = body
    for _ in range(WRITE_ATTEMPTS):
        plan, conds, patch = _plan(ctx, key, current, spec, verdict, digest, now)
        if plan.foreign_store:
            _say_foreign(ctx, key, current)
            return None
        if patch is None:
            break
        meta = current["metadata"]
        try:
            written = await kube.patch_status_guarded(
                ctx.client,
                kube.CalendarConnectionResource,
                namespace,
                name,
                meta["resourceVersion"],
                patch,
            )
        except kube.Conflict:
            # Our copy is stale (Kopf's own patches, a worker's report): decide again from
            # the object as it is now instead of waiting for the watch to bring it.
            fresh = await kube.get_connection(ctx.client, namespace, name)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return None
            if int(fresh["metadata"].get("generation", 0)) != generation:
                return 0.0  # the spec changed too: start over with it
            current = _strip(fresh)
            continue
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        if key in ctx.connections:
            ctx.connections[key] = _strip(written)
        await publish(ctx.client, written, conds)
        break
    else:
        return CONFLICT_RECHECK
    again = plan.recheck_after
    if plan.job is not None and plan.job.reason == "poll":
        await _request_poll(ctx, current, plan.job)
        again = POLL_REASK
    elif plan.job is not None:
        await _create_job(ctx, current, plan.job)
    await _sync_subscriptions(ctx, ctx.connections.get(key, current))
    return again


def _plan(
    ctx: ConnectionContext,
    key: Key,
    body: dict[str, Any],
    spec: CalendarConnectionSpec,
    verdict: Verdict,
    digest: str,
    now: dt.datetime,
) -> tuple[policy.Plan, readiness.Conditions, dict[str, Any] | None]:
    """The plan for `body` and the status patch it needs (None: the status is right)."""
    meta = body["metadata"]
    status = body.get("status") or {}
    generation = int(meta.get("generation", 0))
    configured = ctx.settings.gateway_url is not None
    push = push_policy.summarize(
        push_policy.wanted_subscriptions(body, configured=configured),
        ctx.subscriptions.of_connection(*key),
        body=body,
        configured=configured,
    )
    plan = policy.decide(
        policy.Facts(
            name=key[1],
            uid=str(meta["uid"]),
            generation=generation,
            spec=spec,
            status=status,
            credentials_usable=verdict.ready[0] == "True",
            credentials=digest,
            active_jobs=ctx.active_jobs(key),
            queue_pending=ctx.pending_total,
            store_id=ctx.store_id,
            now=now,
            default_poll_interval=ctx.settings.caldav_poll_interval,
            queue_cap=ctx.settings.queue_cap,
            subscribed=push.subscribed == "True",
            push_poll_interval=ctx.settings.push_poll_interval,
        )
    )
    conds = readiness.Conditions(conditions_from_status(status), generation, now)
    if plan.foreign_store:
        return plan, conds, None
    readiness.apply_credentials(conds, verdict, credentials_changed=plan.credentials_changed)
    if plan.spec_changed:
        readiness.apply_spec_changed(conds, generation)
    if plan.queue_full:
        readiness.apply_queue_full(conds, ctx.pending_total, ctx.settings.queue_cap)
        metrics.SYNCJOBS_REFUSED.labels("queue_full").inc()
    else:
        readiness.apply_queue_room(conds)
    readiness.apply_push(conds, push.subscribed, push.reason, push.message, degraded=push.degraded)
    extra: dict[str, Any] = {}
    if plan.bind_store:
        extra["storeId"] = ctx.store_id
    if plan.observed_generation is not None:
        extra["observedGeneration"] = plan.observed_generation
    if spec.provider in OAUTH_PROVIDERS:
        extra["authorizationURL"] = consent_link_for(
            ctx.settings, ctx.vault, body, spec.provider, conds
        )
    patch = status_patch(conds, **extra)
    if all(status.get(k) == v for k, v in patch.items()):
        return plan, conds, None
    return plan, conds, patch


def _say_foreign(ctx: ConnectionContext, key: Key, body: dict[str, Any]) -> None:
    if key in ctx.foreign_logged:
        return
    ctx.foreign_logged.add(key)
    metrics.SYNCJOBS_SKIPPED.labels("foreign_store").inc()
    log.warning(
        "CalendarConnection %s/%s is bound to event store %s, not to ours (%s): leaving it alone",
        key[0],
        key[1],
        (body.get("status") or {}).get("storeId"),
        ctx.store_id,
    )


async def _write(
    ctx: ConnectionContext,
    body: dict[str, Any],
    conds: readiness.Conditions,
    extra: dict[str, Any],
) -> bool:
    """Patch the status when it differs; False when our copy of the object was stale."""
    status = body.get("status") or {}
    patch = status_patch(conds, **extra)
    if all(status.get(k) == v for k, v in patch.items()):
        return True
    meta = body["metadata"]
    try:
        written = await kube.patch_status_guarded(
            ctx.client,
            kube.CalendarConnectionResource,
            meta["namespace"],
            meta["name"],
            meta["resourceVersion"],
            patch,
        )
    except kube.Conflict:
        return False
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise
    key = (meta["namespace"], meta["name"])
    if key in ctx.connections:
        ctx.connections[key] = _strip(written)
    await publish(ctx.client, written, conds)
    return True


async def _request_poll(
    ctx: ConnectionContext, body: dict[str, Any], job: policy.JobRequest
) -> None:
    """Ask the store for the poll: a worker runs it without a SyncJob (decision 0018)."""
    meta = body["metadata"]
    if await ctx.store.request_poll(store_key(body), job.name):
        log.debug("asked for poll %s of %s/%s", job.name, meta["namespace"], meta["name"])


async def _create_job(ctx: ConnectionContext, body: dict[str, Any], job: policy.JobRequest) -> None:
    meta = body["metadata"]
    try:
        created = await kube.create_syncjob(
            ctx.client,
            body,
            name=job.name,
            mode=job.mode,
            reason=job.reason,
            ttl=int(ctx.settings.syncjob_history),
        )
    except kube.AlreadyExists:
        return  # the same decision was carried out before
    ctx.observe_job(meta["namespace"], created, deleted=False)
    log.info("created SyncJob %s/%s (%s, %s)", meta["namespace"], job.name, job.mode, job.reason)


async def _sync_subscriptions(ctx: ConnectionContext, body: dict[str, Any]) -> None:
    """Create the WebhookSubscriptions the connection wants, delete the ones it no longer does.

    Names are derived from the connection and the calendar, so a create that races another
    (or repeats one whose watch event is still on its way) meets AlreadyExists.
    """
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    wanted = push_policy.wanted_subscriptions(body, configured=ctx.settings.gateway_url is not None)
    existing = ctx.subscriptions.of_connection(namespace, name)
    for sub, calendar_id in sorted(wanted.items()):
        if sub in existing:
            continue
        try:
            created = await kube.create_webhook_subscription(
                ctx.client, body, name=sub, calendar_id=calendar_id
            )
        except kube.AlreadyExists:
            continue
        ctx.subscriptions.observe(created, deleted=False)
        log.info("created WebhookSubscription %s/%s for calendar %s", namespace, sub, calendar_id)
    for sub, obj in existing.items():
        if sub in wanted or obj["metadata"].get("deletionTimestamp"):
            continue
        # Its finalizer stops the channel at the provider before the object goes.
        await kube.delete_webhook_subscription(ctx.client, namespace, sub)
        log.info("deleted WebhookSubscription %s/%s (no longer wanted)", namespace, sub)


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


# -- deletion ---------------------------------------------------------------------------------


@kopf.on.delete(GROUP, PLURAL)
async def connection_deleted(
    namespace: str | None,
    name: str,
    status: Any,
    body: Any,
    memo: Any,
    retry: int,
    **_: Any,
) -> None:
    """Purge the connection's events and tokens; give up after `purge_timeout`."""
    assert namespace is not None
    ctx = _context(memo)
    raw = {
        "metadata": dict(body["metadata"]),
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
    }
    bound = (status or {}).get("storeId")
    deleted_at = policy.parse_time(body["metadata"].get("deletionTimestamp"))
    waited = (dt.datetime.now(dt.UTC) - deleted_at).total_seconds() if deleted_at else 0.0
    subscriptions = ctx.subscriptions.of_connection(namespace, name)
    if subscriptions and waited < ctx.settings.purge_timeout:
        # Their finalizers stop the channels with the connection's tokens: purge those after.
        for sub, obj in subscriptions.items():
            if not obj["metadata"].get("deletionTimestamp"):
                await kube.delete_webhook_subscription(ctx.client, namespace, sub)
        raise kopf.TemporaryError(
            f"waiting for {len(subscriptions)} WebhookSubscriptions of {namespace}/{name} to "
            "stop their channels",
            delay=1.0,
        )
    try:
        async with ctx.purge_slots:
            await _purge(ctx, raw, bound, namespace, name)
    except Exception as exc:
        if waited < ctx.settings.purge_timeout:
            raise kopf.TemporaryError(
                f"cannot purge {namespace}/{name} yet ({type(exc).__name__}: {exc})",
                delay=min(60.0, 2.0 * 2**retry),
            ) from exc
        metrics.PURGES.labels("abandoned").inc()
        log.error(
            "giving up purging %s/%s after %.0f s: %s; its data stays in the store",
            namespace,
            name,
            waited,
            exc,
        )
        await kube.post_event(
            ctx.client,
            raw,
            type="Warning",
            reason="PurgeAbandoned",
            message=f"could not purge the connection's events and tokens within "
            f"{ctx.settings.purge_timeout:.0f} s ({exc}); released the finalizer anyway",
        )
    else:
        metrics.PURGES.labels("ok").inc()
    metrics.forget_connection(namespace, name)


class BoundElsewhere(RuntimeError):
    """A deleted connection is bound to another event store, whose operator purges it."""


async def _purge(
    ctx: ConnectionContext, raw: dict[str, Any], bound: Any, namespace: str, name: str
) -> None:
    if bound not in (None, ctx.store_id):
        # Releasing the shared finalizer here first would leave the connection's events and
        # tokens in that store for good (a laptop's `calsync run` beside a fleet would win the
        # race whenever the fleet's operator is busy or restarting): retried like a failed
        # purge, and let go only after PURGE_TIMEOUT, with PurgeAbandoned.
        raise BoundElsewhere(
            f"{namespace}/{name} is bound to event store {bound}, not to ours "
            f"({ctx.store_id}): waiting for that store's operator to purge it"
        )
    purged = await asyncio.wait_for(
        ctx.store.purge_connection(store_key(raw)), ctx.settings.provider_timeout
    )
    log.info("purged %d events of %s/%s from the store", purged, namespace, name)
    if ctx.vault is not None:
        # Garbage collection would remove the owned token Secret too; do not wait for it.
        await asyncio.wait_for(ctx.vault.delete(raw), ctx.settings.provider_timeout)
