"""The SyncJob worker: claim pending jobs, run the engine, report to the job and the connection.

Kopf has no leases, so workers use their own claim protocol: a job is taken by a status patch
that carries the job's resourceVersion, which the API server rejects (409) when another worker
got there first. A claimed job carries `claimedBy` and `leaseExpiresAt`; the lease is renewed
while the job runs, and a job whose lease lapsed (its worker died) is claimed again by anyone.

One connection syncs at a time: a worker does not claim a job while another job of the same
connection runs. When a job starts, the pending jobs of its connection that it covers and that
were created before it started are marked Superseded: the run will see their changes. Jobs
created after the start stay pending and run afterwards, so no notification is lost.

Failures are retried with exponential back-off (`status.nextAttemptAt`) up to
`sync_max_retries` attempts; errors the provider calls permanent (bad credentials, a broken
URL) fail the job at once. Rate limits put the job back without counting an attempt. Finished
jobs are deleted `ttlSecondsAfterFinished` after they completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from lightkube import ApiError, AsyncClient
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec, SyncJobSpec
from calsync.api.conditions import conditions_from_status
from calsync.api.meta import format_timestamp
from calsync.controllers import kube, readiness
from calsync.controllers.connection import (
    connection_key,
    consent_link_for,
    publish,
    status_patch,
)
from calsync.controllers.credentials import evaluate, referenced_secrets
from calsync.controllers.oauth_setup import OAUTH_PROVIDERS
from calsync.controllers.provider_factory import (
    ProviderDeps,
    TokensUnreadable,
    build_provider,
    stored_tokens,
)
from calsync.controllers.tokens import StoredTokens, TokenVault
from calsync.model import Window
from calsync.observability import metrics
from calsync.providers.base import (
    AuthenticationFailed,
    InvalidConfiguration,
    InvalidGrant,
    ProviderError,
    RateLimited,
)
from calsync.settings import Settings
from calsync.store import EventStore
from calsync.sync.budget import Budgets
from calsync.sync.engine import SyncEngine, SyncResult

log = logging.getLogger(__name__)

FINISHED = ("Succeeded", "Failed", "Superseded")
RESYNC_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 300.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(value: dt.datetime) -> str:
    return format_timestamp(value.replace(microsecond=0))


def _parse_ts(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class JobFailed(Exception):
    """A job cannot succeed as it stands (no connection, no credentials): fail it at once."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def backoff(attempt: int, base: float) -> float:
    return float(min(BACKOFF_CAP_SECONDS, base * 2 ** max(0, attempt - 1)))


def covers(running: dict[str, Any], pending: dict[str, Any]) -> bool:
    """Whether running `running` makes `pending` pointless."""
    r, p = running["spec"], pending["spec"]
    scope = not r.get("calendarId") or r.get("calendarId") == p.get("calendarId")
    depth = r.get("mode") == "full" or p.get("mode", "incremental") == "incremental"
    return bool(scope and depth)


class Worker:
    def __init__(
        self,
        client: AsyncClient,
        store: EventStore,
        settings: Settings,
        *,
        identity: str,
        namespaces: Sequence[str] = (),
        vault: TokenVault | None = None,
    ) -> None:
        self.client = client
        self.vault = vault
        # Token refreshes of every OAuth connection share one keep-alive client.
        self.http = httpx.AsyncClient(timeout=settings.provider_timeout, follow_redirects=False)
        self.store = store
        self.settings = settings
        self.identity = identity
        self.namespaces = list(namespaces) or ["*"]
        self.engine = SyncEngine(store, batch_size=settings.sync_batch_size)
        self.budgets = Budgets(
            {
                "caldav": settings.caldav_rate_limit,
                "icloud": settings.caldav_rate_limit,
                "google": settings.google_rate_limit,
                "microsoft": settings.microsoft_rate_limit,
            }
        )
        self.running: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self._next_due: float | None = None

    # -- loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch(), name="syncjob-watch")
        try:
            while True:
                try:
                    await self.sweep()
                except Exception:
                    log.exception("sweeping SyncJobs failed; trying again")
                timeout = RESYNC_SECONDS
                if self._next_due is not None:
                    timeout = max(0.05, min(timeout, self._next_due - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=timeout)
                self.wake.clear()
        finally:
            watcher.cancel()
            tasks = list(self.running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(watcher, *tasks, return_exceptions=True)
            await self.http.aclose()

    async def _watch(self) -> None:
        while True:
            try:
                for namespace in self.namespaces:
                    async for _ in self.client.watch(kube.SyncJobResource, namespace=namespace):
                        self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("SyncJob watch ended (%s); restarting", exc)
            await asyncio.sleep(1.0)

    async def sweep(self) -> None:
        """Look at every job once: delete expired ones, claim what is due."""
        jobs: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            jobs.extend(await kube.list_syncjobs(self.client, namespace))
        jobs.sort(
            key=lambda j: (j["metadata"].get("creationTimestamp") or "", j["metadata"]["name"])
        )
        now = _now()
        self._next_due = None
        busy = set(self.running)
        pending_count = 0
        for job in jobs:
            status = job.get("status") or {}
            if (
                status.get("phase") == "Running"
                and (_parse_ts(status.get("leaseExpiresAt")) or now) > now
            ):
                busy.add(self._key(job))
        for job in jobs:
            meta, status = job["metadata"], job.get("status") or {}
            phase = status.get("phase") or "Pending"
            if phase in FINISHED:
                await self._expire(job, now)
                continue
            if phase == "Pending":
                pending_count += 1
            key = self._key(job)
            if key in busy:
                continue
            if phase == "Running" and (_parse_ts(status.get("leaseExpiresAt")) or now) > now:
                continue
            due = _parse_ts(status.get("nextAttemptAt"))
            if phase == "Pending" and due is not None and due > now:
                self._due_in((due - now).total_seconds())
                continue
            if len(self.running) >= self.settings.sync_concurrency:
                break
            claimed = await self._claim(job, now)
            if claimed is None:
                continue
            busy.add(key)
            await self._supersede(claimed, jobs)
            self.running[key] = asyncio.create_task(
                self._execute(claimed), name=f"syncjob {meta['namespace']}/{meta['name']}"
            )
        metrics.SYNCJOBS_PENDING.set(pending_count)
        metrics.SYNCJOBS_RUNNING.set(len(self.running))

    def _due_in(self, seconds: float) -> None:
        due = time.monotonic() + seconds
        self._next_due = due if self._next_due is None else min(self._next_due, due)

    @staticmethod
    def _key(job: dict[str, Any]) -> str:
        return connection_key(job["metadata"]["namespace"], job["spec"]["connection"])

    # -- claim, supersede, expire --------------------------------------------------------------

    async def _claim(self, job: dict[str, Any], now: dt.datetime) -> dict[str, Any] | None:
        meta, status = job["metadata"], job.get("status") or {}
        patch = {
            "phase": "Running",
            "claimedBy": self.identity,
            "leaseExpiresAt": _ts(now + dt.timedelta(seconds=self.settings.sync_lease)),
            "startedAt": _ts(now),
            "attempts": int(status.get("attempts") or 0) + 1,
            "nextAttemptAt": None,
        }
        try:
            return await kube.patch_status_guarded(
                self.client,
                kube.SyncJobResource,
                meta["namespace"],
                meta["name"],
                meta["resourceVersion"],
                patch,
            )
        except kube.Conflict:
            return None

    async def _supersede(self, claimed: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
        started = _parse_ts(claimed["status"]["startedAt"])
        assert started is not None
        for other in jobs:
            meta = other["metadata"]
            if meta["name"] == claimed["metadata"]["name"] or self._key(other) != self._key(
                claimed
            ):
                continue
            if ((other.get("status") or {}).get("phase") or "Pending") != "Pending":
                continue
            created = _parse_ts(meta.get("creationTimestamp"))
            # Same-second creations might postdate the start: let them run.
            if created is None or created >= started or not covers(claimed, other):
                continue
            with contextlib.suppress(kube.Conflict):
                await kube.patch_status_guarded(
                    self.client,
                    kube.SyncJobResource,
                    meta["namespace"],
                    meta["name"],
                    meta["resourceVersion"],
                    {
                        "phase": "Superseded",
                        "completedAt": _ts(_now()),
                        "error": f"covered by {claimed['metadata']['name']}",
                    },
                )
                metrics.SYNCJOBS_FINISHED.labels("Superseded").inc()

    async def _expire(self, job: dict[str, Any], now: dt.datetime) -> None:
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        completed = _parse_ts((job.get("status") or {}).get("completedAt"))
        if ttl is None or completed is None:
            return
        left = (completed + dt.timedelta(seconds=int(ttl)) - now).total_seconds()
        if left <= 0:
            await kube.delete_syncjob(
                self.client, job["metadata"]["namespace"], job["metadata"]["name"]
            )
        else:
            self._due_in(left)

    # -- execution -----------------------------------------------------------------------------

    async def _execute(self, job: dict[str, Any]) -> None:
        key = self._key(job)
        meta = job["metadata"]
        state = {"rv": meta["resourceVersion"], "job": job}
        lease = asyncio.create_task(self._renew_lease(state))
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(self._sync(job), timeout=self.settings.sync_job_timeout)
        except asyncio.CancelledError:
            lease.cancel()
            await self._release(state)
            raise
        except Exception as exc:
            lease.cancel()
            await asyncio.gather(lease, return_exceptions=True)
            await self._failed(state, exc, time.monotonic() - started)
        else:
            lease.cancel()
            await asyncio.gather(lease, return_exceptions=True)
            await self._succeeded(state, result, time.monotonic() - started)
        finally:
            self.running.pop(key, None)
            self.wake.set()

    async def _renew_lease(self, state: dict[str, Any]) -> None:
        meta = state["job"]["metadata"]
        while True:
            await asyncio.sleep(self.settings.sync_lease / 3)
            try:
                renewed = await kube.patch_status_guarded(
                    self.client,
                    kube.SyncJobResource,
                    meta["namespace"],
                    meta["name"],
                    state["rv"],
                    {
                        "leaseExpiresAt": _ts(
                            _now() + dt.timedelta(seconds=self.settings.sync_lease)
                        )
                    },
                )
                state["rv"] = renewed["metadata"]["resourceVersion"]
            except kube.Conflict:
                log.warning("lost the lease of SyncJob %s/%s", meta["namespace"], meta["name"])
                return
            except Exception as exc:
                log.warning("could not renew the lease of %s: %s", meta["name"], exc)

    async def _write_job(self, state: dict[str, Any], status: dict[str, Any]) -> None:
        meta = state["job"]["metadata"]
        for _ in range(3):
            try:
                await kube.patch_status_guarded(
                    self.client,
                    kube.SyncJobResource,
                    meta["namespace"],
                    meta["name"],
                    state["rv"],
                    status,
                )
                return
            except kube.Conflict:
                fresh = await kube.get_syncjob(self.client, meta["namespace"], meta["name"])
                if fresh is None:
                    return
                if (fresh.get("status") or {}).get("claimedBy") != self.identity:
                    log.warning("SyncJob %s was taken over; dropping our result", meta["name"])
                    return
                state["rv"] = fresh["metadata"]["resourceVersion"]
            except ApiError as exc:
                if exc.status.code == 404:  # deleted meanwhile (by a person or its owner)
                    return
                raise

    async def _release(self, state: dict[str, Any]) -> None:
        """The worker is stopping: hand the job back so another worker can start it now."""
        with contextlib.suppress(Exception):
            await asyncio.shield(
                self._write_job(
                    state,
                    {
                        "phase": "Pending",
                        "claimedBy": None,
                        "leaseExpiresAt": None,
                        "error": "worker stopped",
                    },
                )
            )

    async def _sync(self, job: dict[str, Any]) -> SyncResult | None:
        meta = job["metadata"]
        namespace = meta["namespace"]
        spec = SyncJobSpec.model_validate(job["spec"])
        body = await kube.get_connection(self.client, namespace, spec.connection)
        if body is None or body["metadata"].get("deletionTimestamp"):
            raise JobFailed(
                "ConnectionNotFound", f"CalendarConnection {spec.connection!r} does not exist"
            )
        try:
            conn = CalendarConnectionSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            raise JobFailed("InvalidSpec", f"connection spec not understood: {exc}") from exc
        if conn.suspend:
            return None
        secrets = {
            name: await kube.read_secret(self.client, namespace, name)
            for name in sorted(referenced_secrets(conn))
        }
        stored = (
            await self._stored_tokens(body, conn, secrets)
            if conn.provider in OAUTH_PROVIDERS
            else None
        )
        verdict = evaluate(conn, secrets, tokens_stored=stored is not None)
        if verdict.ready[0] != "True":
            raise JobFailed(verdict.ready[1], verdict.ready[2])
        key = connection_key(namespace, spec.connection)
        provider = await build_provider(
            conn,
            secrets,
            budget=self.budgets.for_connection(key, conn.provider),
            deps=ProviderDeps(self.settings, self.vault, self.http),
            body=body,
            tokens=stored,
        )
        window = Window.around(_now(), conn.sync.window.past_days, conn.sync.window.future_days)
        try:
            return await self.engine.sync_connection(
                key,
                provider,
                window=window,
                mode=spec.mode,
                calendar_id=spec.calendar_id,
                include=conn.calendars.include,
                exclude=conn.calendars.exclude,
            )
        except InvalidGrant:
            metrics.TOKEN_REFRESHES.labels(conn.provider, "invalid_grant").inc()
            raise
        finally:
            await provider.aclose()

    async def _stored_tokens(
        self,
        body: dict[str, Any],
        conn: CalendarConnectionSpec,
        secrets: dict[str, Mapping[str, bytes] | None],
    ) -> StoredTokens | None:
        try:
            return await stored_tokens(self.vault, body, conn, secrets)
        except TokensUnreadable as exc:
            raise JobFailed(exc.reason, str(exc)) from None

    async def _succeeded(
        self, state: dict[str, Any], result: SyncResult | None, seconds: float
    ) -> None:
        job = state["job"]
        done = {
            "completedAt": _ts(_now()),
            "durationSeconds": round(seconds, 3),
            "claimedBy": None,
            "leaseExpiresAt": None,
            "error": None,
        }
        if result is None:
            await self._write_job(
                state, {**done, "phase": "Superseded", "error": "connection is suspended"}
            )
            metrics.SYNCJOBS_FINISHED.labels("Superseded").inc()
            return
        counts = {"fetched": result.fetched, "upserted": result.upserted, "deleted": result.deleted}
        await self._write_job(state, {**done, "phase": "Succeeded", "counts": counts})
        metrics.SYNCJOBS_FINISHED.labels("Succeeded").inc()
        metrics.SYNC_DURATION.observe(seconds)
        for op in ("fetched", "upserted", "deleted"):
            metrics.EVENTS_SYNCED.labels(op).inc(counts[op])
        log.info(
            "SyncJob %s/%s succeeded: %s",
            job["metadata"]["namespace"],
            job["metadata"]["name"],
            counts,
        )
        await self._report_success(job, result)

    async def _report_success(self, job: dict[str, Any], result: SyncResult) -> None:
        namespace, name = job["metadata"]["namespace"], job["spec"]["connection"]
        key = connection_key(namespace, name)
        calendars = await self.store.calendars(key)
        total = sum(c.event_count for c in calendars)
        holder: dict[str, readiness.Conditions] = {}
        now = _now().replace(microsecond=0)

        async def mutate(body: dict[str, Any]) -> dict[str, Any]:
            conds = readiness.Conditions(
                conditions_from_status(body.get("status")),
                int(body["metadata"].get("generation", 0)),
                now,
            )
            readiness.apply_sync_success(
                conds,
                events=total,
                calendars=len(calendars),
                duplicates=result.duplicates if result.duplicates_checked else None,
                skipped=result.skipped,
            )
            holder["conds"] = conds
            return status_patch(
                conds,
                eventCount=total,
                lastSyncTime=_ts(now),
                calendars=[
                    {
                        "id": c.id,
                        "name": c.name,
                        "events": c.event_count,
                        **({"lastSyncTime": _ts(c.last_sync_at)} if c.last_sync_at else {}),
                    }
                    for c in calendars
                ],
            )

        body = await kube.update_connection_status(self.client, namespace, name, mutate)
        if body is not None:
            await publish(self.client, body, holder["conds"])
            for cal, uid, ids in result.duplicates[:10]:
                await kube.post_event(
                    self.client,
                    body,
                    type="Warning",
                    reason="DuplicateUID",
                    message=f"UID {uid!r} appears in {len(ids)} resources of calendar {cal}: "
                    + ", ".join(ids[:3]),
                )

    async def _failed(self, state: dict[str, Any], exc: BaseException, seconds: float) -> None:
        job = state["job"]
        status = job.get("status") or {}
        attempts = int(status.get("attempts") or 1)
        message = (
            f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, TimeoutError)
            else (f"timed out after {self.settings.sync_job_timeout:.0f} s")
        )
        reason = getattr(exc, "reason", "SyncFailed")
        permanent = isinstance(exc, JobFailed | InvalidConfiguration) or (
            isinstance(exc, ProviderError) and not exc.retryable
        )
        throttled = isinstance(exc, RateLimited)
        final = permanent or (not throttled and attempts >= self.settings.sync_max_retries)
        done: dict[str, Any] = {
            "claimedBy": None,
            "leaseExpiresAt": None,
            "error": message[:2000],
            "durationSeconds": round(seconds, 3),
        }
        if final:
            done.update(phase="Failed", completedAt=_ts(_now()))
            metrics.SYNCJOBS_FINISHED.labels("Failed").inc()
        else:
            wait = (
                float(exc.retry_after or 60.0)
                if isinstance(exc, RateLimited)
                else backoff(attempts, self.settings.sync_retry_backoff)
            )
            done.update(phase="Pending", nextAttemptAt=_ts(_now() + dt.timedelta(seconds=wait)))
            if throttled:
                done["attempts"] = max(0, attempts - 1)
            self._due_in(wait)
        await self._write_job(state, done)
        meta = job["metadata"]
        log.warning(
            "SyncJob %s/%s attempt %d failed%s: %s",
            meta["namespace"],
            meta["name"],
            attempts,
            " (final)" if final else "",
            message,
        )
        await kube.post_event(
            self.client,
            job,
            type="Warning",
            reason="SyncFailed" if final else ("Throttled" if throttled else "SyncRetrying"),
            message=f"attempt {attempts}: {message}",
        )
        await self._report_failure(job, reason, message, exc, final=final, throttled=throttled)

    async def _report_failure(
        self,
        job: dict[str, Any],
        reason: str,
        message: str,
        exc: BaseException,
        *,
        final: bool,
        throttled: bool,
    ) -> None:
        namespace, name = job["metadata"]["namespace"], job["spec"]["connection"]
        holder: dict[str, readiness.Conditions] = {}

        async def mutate(body: dict[str, Any]) -> dict[str, Any]:
            conds = readiness.Conditions(
                conditions_from_status(body.get("status")),
                int(body["metadata"].get("generation", 0)),
                _now().replace(microsecond=0),
            )
            if throttled:
                readiness.apply_throttled(conds, message)
            else:
                readiness.apply_sync_failure(
                    conds,
                    reason=reason,
                    message=message,
                    auth=isinstance(exc, AuthenticationFailed),
                    final=final,
                )
            holder["conds"] = conds
            provider = (body.get("spec") or {}).get("provider")
            if provider in OAUTH_PROVIDERS:
                # A refused refresh token needs the owner's consent again: publish the link.
                link = consent_link_for(self.settings, self.vault, body, provider, conds)
                return status_patch(conds, authorizationURL=link)
            return status_patch(conds)

        if isinstance(exc, JobFailed) and exc.reason == "ConnectionNotFound":
            return
        body = await kube.update_connection_status(self.client, namespace, name, mutate)
        if body is not None:
            await publish(self.client, body, holder["conds"])
