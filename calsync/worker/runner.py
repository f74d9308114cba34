"""The SyncJob worker: claim due jobs, run them exclusively and fenced, report, expire.

Where the state comes from: watch-fed caches (`Informer`) of SyncJobs and CalendarConnections
in every configured namespace; no list per event. A change in either wakes the loop, which asks
`queue.select` what may start.

How a run is made exclusive: before touching a job the worker claims the connection in the event
store (`EventStore.claim`, keyed by the connection's UID, naming the job's UID). The store grants
one live claim per connection across all processes and hands out a fencing token that every page
write of the run carries; a write whose token is no longer current is refused inside its own
transaction. A run that ends its job for good releases the claim naming the job as done, and
the store refuses any later claim for that job: a worker whose cache still shows it Pending
cannot run it twice. The job itself is moved to Running only when the run lasts longer than
RUNNING_AFTER_SECONDS: most runs (a no-change poll) end sooner, and their one status write is
the final one, guarded by the resourceVersion the worker picked the job at. While the run lasts
the claim is renewed every third of the lease; a renewal that fails, or that cannot be
confirmed before two thirds of the lease have passed, cancels the run before the lease can
lapse, so nobody else starts while it still runs. A worker frozen past its lease (SIGSTOP) and
resumed finds its fence stale: its next page is refused, and its result is dropped.

Which connections a worker serves: only those whose `status.storeId` names its own store. A
worker on another store (a laptop's `calsync run` pointed at a production cluster) leaves them
alone and says so once per connection in its log and in `calsync_syncjobs_skipped_total`.

Provider budgets are per connection and split between the live workers of the store (found
through the store's heartbeats), so the fleet as a whole keeps to the configured rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import logging
import os
import random
import socket
import time
import zlib
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret
from pydantic import ValidationError

from calsync.api import CalendarConnectionSpec, SyncJobSpec
from calsync.controllers import kube, policy
from calsync.controllers.credentials import (
    CREDENTIALS_LABEL,
    CREDENTIALS_LABEL_VALUE,
    evaluate,
    referenced_secrets,
)
from calsync.controllers.oauth_setup import OAUTH_PROVIDERS
from calsync.controllers.provider_factory import (
    ProviderDeps,
    TokensUnreadable,
    build_provider,
    stored_tokens,
)
from calsync.controllers.status import consent_link_for, store_key
from calsync.controllers.tokens import StoredTokens, TokenVault, token_secret_name
from calsync.model import Window
from calsync.observability import metrics
from calsync.observability.logging import log_context
from calsync.providers.base import (
    AuthenticationFailed,
    InvalidConfiguration,
    ProviderError,
    RateLimited,
)
from calsync.providers.caldav import DavTransports
from calsync.settings import Settings
from calsync.store import ConnectionPurged, EventStore, Fence, Fenced, JobDone
from calsync.sync.budget import Budgets
from calsync.sync.engine import SyncEngine, SyncResult
from calsync.worker import queue, reporting
from calsync.worker.informer import Informer

log = logging.getLogger(__name__)

IDLE_WAKE_SECONDS = 60.0
# A claim the store refused (the previous holder's lease outlives the job's, which is written
# in whole seconds, or a race with another worker) is tried again this soon, not at idle wake.
CLAIM_RETRY_SECONDS = 1.0
# A run still going after this long shows as Running on its job; shorter runs write only their end.
RUNNING_AFTER_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 300.0
HEARTBEAT_SECONDS = 10.0
# How often a worker asks the store for polls due (decision 0018), and sooner when a run ends
# after a look that filled every free slot; pages of POLL_PAGE, at most POLL_PAGES per look.
POLL_CHECK_SECONDS = 2.0
POLL_PAGE = 100
POLL_PAGES = 20


class JobFailed(Exception):
    """A job cannot succeed as it stands (no connection, no credentials): fail it at once."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WorkerRefused(RuntimeError):
    """This worker must not start (another worker already uses the same SQLite store)."""


class LostClaim(Exception):
    """The run no longer holds its connection's claim."""


def dead_local_process(identity: str) -> bool:
    """Whether `identity` (hostname-pid, the default) names a process of this host that is gone.

    A worker killed a moment ago leaves a heartbeat that is still live; on SQLite, whose file
    only processes of this host share, that must not keep its successor from starting.
    """
    host, _, pid = identity.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def backoff(attempt: int, base: float) -> float:
    return float(min(BACKOFF_CAP_SECONDS, base * 2 ** max(0, attempt - 1)))


@dataclass
class Run:
    job: dict[str, Any]
    fence: Fence
    writer: reporting.JobWriter
    connection: tuple[str, str]
    claim: dict[str, Any]  # claimedBy, storeId, startedAt, attempts: written with its first patch
    task: asyncio.Task[None] | None = None
    context: reporting.RunContext | None = None
    stop: str | None = None  # why we cancelled the run ourselves: "lost" or "deleted"
    outcome: str = "stopped"  # how the run ended, for the run log line
    secrets: dict[str, Any] = field(default_factory=dict)
    sync: asyncio.Future[SyncResult | None] | None = None  # the sync itself, for its stack

    @property
    def poll(self) -> bool:
        """A poll the store asked for, not a SyncJob (decision 0018)."""
        return isinstance(self.writer, reporting.PollWriter)

    @property
    def what(self) -> str:
        return "poll" if self.poll else "SyncJob"

    @property
    def done_job(self) -> str | None:
        """The job's UID once the run wrote its end for good (it must not run again)."""
        return str(self.job["metadata"].get("uid") or "") or None if self.writer.final else None


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
        # CalDAV runs share connection pools instead of building one per run.
        self.dav_transports = DavTransports()
        self.store = store
        self.settings = settings
        self.identity = identity
        self.engine = SyncEngine(
            store, batch_size=settings.sync_batch_size, series_limit=settings.query_series_limit
        )
        self.rates = {
            "caldav": settings.caldav_rate_limit,
            "icloud": settings.caldav_rate_limit,
            "google": settings.google_rate_limit,
            "microsoft": settings.microsoft_rate_limit,
        }
        self.budgets = Budgets(dict(self.rates))
        self.share = 1
        self.wake = asyncio.Event()
        self.index = queue.JobIndex()
        self.jobs = Informer(
            client,
            kube.SyncJobResource,
            namespaces,
            on_change=lambda kind, obj: self.wake.set(),
            index=self.index.update,
            name="syncjobs",
        )
        # Credentials come from a watch-fed cache, not one GET per run; only Secrets that opt
        # in (label calsync.io/credentials=true) are ever listed.
        self.secrets = Informer(
            client,
            Secret,
            namespaces,
            name="secrets",
            labels={CREDENTIALS_LABEL: CREDENTIALS_LABEL_VALUE},
        )
        # Connections whose claim the store just refused: not asked again before this time.
        self.refused: dict[tuple[str, str], float] = {}
        self.connections = Informer(
            client,
            kube.CalendarConnectionResource,
            namespaces,
            on_change=self._connection_changed,
            name="connections",
        )
        self.running: dict[tuple[str, str], Run] = {}
        self.foreign: set[tuple[str, str]] = set()
        self.members: list[str] = []
        self.next_poll_check = 0.0
        self.polls_more = False  # the last look for polls filled every free slot

    # -- start and loop ------------------------------------------------------------------------

    async def join(self) -> None:
        """Register with the store; refuse a second worker on a SQLite store."""
        members = await self.store.heartbeat(self.identity, self.settings.sync_lease, kind="worker")
        others = [m for m in members if m != self.identity and not dead_local_process(m)]
        if self.store.dialect == "sqlite" and others:
            await self.store.leave(self.identity)
            raise WorkerRefused(
                f"another worker ({', '.join(others)}) already uses this SQLite event store; "
                "SQLite serves one worker only: stop the other one, or use PostgreSQL "
                "(--store-url postgresql://...) for several workers"
            )
        self._members(members)

    def _members(self, members: list[str]) -> None:
        self.members = members
        share = max(1, len(members))
        metrics.WORKERS_LIVE.set(share)
        if share != self.share:
            self.share = share
            self.budgets = Budgets({k: max(1, v // share) for k, v in self.rates.items()})
            log.info("%d workers share the provider budgets", share)

    async def run(self) -> None:
        await self.join()
        tasks = [
            asyncio.create_task(self.jobs.run(), name="syncjob-informer"),
            asyncio.create_task(self.connections.run(), name="connection-informer"),
            asyncio.create_task(self.secrets.run(), name="secret-informer"),
            asyncio.create_task(self._heartbeat(), name="worker-heartbeat"),
        ]
        try:
            await self.jobs.ready.wait()
            await self.connections.ready.wait()
            await self.secrets.ready.wait()
            while True:
                timeout = IDLE_WAKE_SECONDS
                try:
                    due = await self.sweep()
                except Exception:
                    log.exception("sweeping SyncJobs failed; trying again")
                    due = 5.0
                if due is not None:
                    timeout = max(0.05, min(timeout, due))
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives
                # while the wake event is set, and a stopping worker went on claiming jobs.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self.wake.wait()
                self.wake.clear()
        finally:
            runs = list(self.running.values())
            for run in runs:
                if run.task is not None:
                    run.task.cancel()
            await asyncio.gather(
                *[r.task for r in runs if r.task is not None], return_exceptions=True
            )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.leave(self.identity))
            await self.http.aclose()
            await self.dav_transports.aclose()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                self._members(
                    await self.store.heartbeat(
                        self.identity, self.settings.sync_lease, kind="worker"
                    )
                )
            except Exception as exc:
                log.warning("worker heartbeat failed: %s", exc)

    def _connection_changed(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        run = self.running.get(key)
        if run is not None and (kind == "DELETED" or meta.get("deletionTimestamp")):
            log.info("connection %s/%s is being deleted: stopping its sync", *key)
            run.stop = "deleted"
            if run.task is not None:
                run.task.cancel()
        self.wake.set()

    async def sweep(self) -> float | None:
        """Start what may start, expire what is old; return seconds until something is due."""
        now = reporting.now()
        clock = time.monotonic()
        self.refused = {k: t for k, t in self.refused.items() if t > clock}
        picked = queue.select(
            self.index.active.values(),
            now,
            running_here=set(self.running) | set(self.refused),
            capacity=max(0, self.settings.sync_concurrency - len(self.running)),
            webhook_delay=dt.timedelta(seconds=self.settings.webhook_coalesce),
            webhook_longest=dt.timedelta(seconds=self.settings.webhook_coalesce_max),
        )
        metrics.SYNCJOBS_PENDING.set(picked.pending)
        due: float | None = None
        for job in picked.startable:
            if await self._try_start(job, now):
                self.refused[queue.connection_of(job)] = clock + CLAIM_RETRY_SECONDS
                due = CLAIM_RETRY_SECONDS
        if clock >= self.next_poll_check:
            self.next_poll_check = clock + POLL_CHECK_SECONDS
            room = self.settings.sync_concurrency - len(self.running)
            await self._start_polls(max(0, room), now, clock)
        poll_wait = max(0.0, self.next_poll_check - clock)
        due = poll_wait if due is None else min(due, poll_wait)
        metrics.SYNCJOBS_RUNNING.set(sum(1 for r in self.running.values() if not r.poll))
        for job in self.index.expired(now):
            wait = await self._expire(job, now)
            if wait is not None:
                self.index.due(now + dt.timedelta(seconds=wait))
        if self.index.next_expiry is not None:
            wait = max(0.0, (self.index.next_expiry - now).total_seconds())
            due = wait if due is None else min(due, wait)
        if picked.next_due is not None:
            wait = max(0.0, (picked.next_due - now).total_seconds())
            due = wait if due is None else min(due, wait)
        return due

    # -- claim ---------------------------------------------------------------------------------

    async def _try_start(self, job: dict[str, Any], now: dt.datetime) -> bool:
        """Claim and start `job`; True when the store refused the claim: try again soon."""
        key = queue.connection_of(job)
        body = self.connections.get(*key)
        if body is None:
            # The cache may lag behind a connection created a moment ago: ask once.
            body = await kube.get_connection(self.client, *key)
            if body is not None:
                self.connections.put(body)
        if body is None:
            await self._fail_unclaimed(
                job, "ConnectionNotFound", f"CalendarConnection {key[1]!r} does not exist"
            )
            return False
        if body["metadata"].get("deletionTimestamp"):
            return False  # the purge stops it; owner references remove the job
        bound = (body.get("status") or {}).get("storeId")
        if bound != self.store.store_id:
            if bound and key not in self.foreign:
                self.foreign.add(key)
                metrics.SYNCJOBS_SKIPPED.labels("foreign_store").inc()
                log.warning(
                    "not running SyncJobs of %s/%s: the connection is bound to event store %s, "
                    "this worker writes to %s",
                    key[0],
                    key[1],
                    bound,
                    self.store.store_id,
                )
            return False  # unbound: the operator binds it first
        meta = job["metadata"]
        try:
            fence = await self.store.claim(
                store_key(body), self.identity, self.settings.sync_lease, job=meta.get("uid")
            )
        except ConnectionPurged:
            return False
        except JobDone:
            return True  # finished a moment ago; the watch has not told us yet
        if fence is None:
            return True  # another claim on the connection is live (it may be lapsing)
        status = job.get("status") or {}
        claim = {
            "claimedBy": self.identity,
            "storeId": self.store.store_id,
            "startedAt": reporting.ts(now),
            "attempts": int(status.get("attempts") or 0) + 1,
            "nextAttemptAt": None,
        }
        writer = reporting.JobWriter(self.client, job, self.identity, claim=claim)
        if (job.get("spec") or {}).get("reason") == "webhook" and not await self._show_running(
            writer
        ):
            await self.store.release(fence)
            return False
        await self._supersede(job, now)
        run = Run(job, fence, writer, key, claim)
        self.running[key] = run
        run.task = asyncio.create_task(
            self._execute(run, body), name=f"syncjob {meta['namespace']}/{meta['name']}"
        )
        return False

    async def _start_polls(self, room: int, now: dt.datetime, clock: float) -> None:
        """Claim and start the oldest polls this worker may run; keep the backlog gauge.

        Pages on past polls it must leave (another namespace's connection, one gone whose purge
        was abandoned, one with a job waiting or suspended), so those never hold up the rest.
        """
        by_uid: dict[str, dict[str, Any]] | None = None
        oldest: dt.datetime | None = None
        after: tuple[dt.datetime, str] | None = None
        self.polls_more = False
        for _ in range(POLL_PAGES):
            try:
                page = await self.store.due_polls(POLL_PAGE, after)
            except Exception as exc:
                log.warning("could not read the polls due from the event store: %s", exc)
                return
            if not page:
                break
            if by_uid is None:
                by_uid = {store_key(c): c for c in self.connections.values()}
            after = (page[-1][2], page[-1][0])
            startable: list[tuple[str, str, tuple[str, str], dict[str, Any]]] = []
            for uid, poll_key, asked in page:
                body = by_uid.get(uid)
                if body is None:
                    continue  # not in this worker's namespaces, or gone
                meta = body["metadata"]
                if (
                    meta.get("deletionTimestamp")
                    or (body.get("spec") or {}).get("suspend")
                    or (body.get("status") or {}).get("storeId") != self.store.store_id
                ):
                    continue  # not this worker's to run, now or soon: not counted as late
                if oldest is None:
                    oldest = asked
                key = (str(meta["namespace"]), str(meta["name"]))
                if (
                    key in self.running
                    or key in self.refused
                    or self.index.of_connection(key)  # a job's run will cover the poll
                ):
                    continue
                startable.append((uid, poll_key, key, body))
            # Workers of one store read the same polls: each starts from different ones.
            random.shuffle(startable)
            for uid, poll_key, key, body in startable:
                if room <= 0:
                    break
                if await self._start_poll(uid, poll_key, key, body, now, clock):
                    room -= 1
            if room <= 0:
                self.polls_more = True  # more may wait: look again when a run ends
                break
            if len(page) < POLL_PAGE:
                break
        metrics.POLLS_OLDEST_WAITING.set(
            0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        )

    async def _start_poll(
        self,
        uid: str,
        poll_key: str,
        key: tuple[str, str],
        body: dict[str, Any],
        now: dt.datetime,
        clock: float,
    ) -> bool:
        try:
            fence = await self.store.claim(
                uid, self.identity, self.settings.sync_lease, job=poll_key
            )
        except (ConnectionPurged, JobDone):
            return False
        if fence is None:
            self.refused[key] = clock + CLAIM_RETRY_SECONDS
            return False
        claim = {
            "claimedBy": self.identity,
            "storeId": self.store.store_id,
            "startedAt": reporting.ts(now),
            "attempts": 1,
        }
        writer = reporting.PollWriter(key[0], key[1], poll_key, self.identity)
        run = Run(writer.job, fence, writer, key, claim)
        self.running[key] = run
        run.task = asyncio.create_task(self._execute(run, body), name=f"poll {key[0]}/{key[1]}")
        return True

    async def _show_running(self, writer: reporting.JobWriter) -> bool:
        """Mark the job Running now, guarded by the resourceVersion it was picked at.

        Webhook jobs need this before their run reads anything: the gateway covers new
        notifications by touching a Pending webhook job with a patch guarded the same way, so
        one of the two writes fails, and either the run starts after the touch or the gateway
        knows to create another job (docs/decisions/0011)."""
        lease = self.settings.sync_lease
        delay = dt.timedelta(seconds=self.settings.webhook_coalesce)
        longest = dt.timedelta(seconds=self.settings.webhook_coalesce_max)

        def still_due(fresh: Mapping[str, Any]) -> bool:
            # A conflict may be the gateway's touch, which moves the job's coalescing wait on:
            # then it must not start yet (the gateway answers without writes until then).
            due = queue.not_before(fresh, delay, longest)
            return due is None or due <= reporting.now()

        try:
            return await writer.write(
                {
                    "phase": "Running",
                    "leaseExpiresAt": reporting.ts(reporting.now() + dt.timedelta(seconds=lease)),
                    "conditions": [],
                },
                still=still_due,
            )
        except Exception as exc:
            log.warning("could not mark SyncJob %s Running: %s", writer.name, exc)
            return False

    async def _fail_unclaimed(self, job: dict[str, Any], reason: str, message: str) -> None:
        writer = reporting.JobWriter(self.client, job, self.identity)
        await writer.finish("Failed", reason, message, error=message)
        metrics.SYNCJOBS_FINISHED.labels("Failed").inc()

    async def _supersede(self, claimed: dict[str, Any], started: dt.datetime) -> None:
        key = queue.connection_of(claimed)
        delay = dt.timedelta(seconds=self.settings.webhook_coalesce)
        longest = dt.timedelta(seconds=self.settings.webhook_coalesce_max)
        jobs = self.index.of_connection(key)
        for other in queue.superseded_by(claimed, jobs, started, delay, longest):
            message = f"covered by {claimed['metadata']['name']}"
            writer = reporting.JobWriter(self.client, dict(other), self.identity)
            with contextlib.suppress(kube.Conflict):
                if await writer.finish("Superseded", "Superseded", message, error=message):
                    metrics.SYNCJOBS_FINISHED.labels("Superseded").inc()

    async def _expire(self, job: dict[str, Any], now: dt.datetime) -> float | None:
        """Delete a finished job past its TTL: its runner does, or anyone once it is gone."""
        over = queue.expired(job, now)
        if over is None:
            ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
            completed = queue.parse_ts((job.get("status") or {}).get("completedAt"))
            if ttl is None or completed is None:
                return None
            return (completed + dt.timedelta(seconds=int(ttl)) - now).total_seconds()
        meta = job["metadata"]
        owner = (job.get("status") or {}).get("claimedBy")
        if owner is None or owner not in self.members:
            # Nobody ran it (Superseded before it started), or its runner is gone: one worker,
            # picked by the job's name, deletes it, so the fleet sends one DELETE, not one each.
            members = sorted(self.members) or [self.identity]
            owner = members[zlib.crc32(str(meta["name"]).encode()) % len(members)]
        if owner != self.identity and over < self.settings.sync_lease:
            return self.settings.sync_lease - over  # its worker's turn first
        await kube.delete_syncjob(self.client, meta["namespace"], meta["name"])
        # Out of the cache at once: a sweep before the watch reports the deletion would
        # otherwise send the DELETE again.
        self.jobs.forget(meta["namespace"], meta["name"])
        return None

    # -- execution -----------------------------------------------------------------------------

    async def _execute(self, run: Run, body: dict[str, Any]) -> None:
        started = time.monotonic()
        probe = {
            "run": "start",
            "connection": run.fence.connection,
            "job": run.writer.name,
            "fence": run.fence.token,
            "store": self.store.store_id,
        }
        if run.poll:
            probe["poll"] = True
        log.info("%s %s/%s started", run.what, run.connection[0], run.writer.name, extra=probe)
        try:
            with log_context(connection="/".join(run.connection), job=run.writer.name):
                await self._execute_inner(run, body, started)
        finally:
            probe["run"] = "end"
            probe["outcome"] = run.outcome
            log.info("%s %s/%s ended", run.what, run.connection[0], run.writer.name, extra=probe)
            if run.outcome in ("succeeded", "failed"):
                # Only now may another run of the connection start. A job that ended for good
                # is recorded as done, so nobody runs it again.
                with contextlib.suppress(Exception):
                    await self.store.release(run.fence, done_job=run.done_job)

    async def _execute_inner(self, run: Run, body: dict[str, Any], started: float) -> None:
        keeper = asyncio.create_task(self._keep_claim(run, asyncio.current_task()))
        try:
            run.sync = asyncio.ensure_future(self._sync(run, body))
            result = await asyncio.wait_for(run.sync, timeout=self.settings.sync_job_timeout)
        except asyncio.CancelledError:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            run.outcome = run.stop or "stopped"
            if run.stop == "lost":
                metrics.SYNC_RUNS_FENCED.inc()
                log.warning("stopped %s %s: its claim was lost", run.what, run.writer.name)
                return
            if run.stop == "deleted":
                with contextlib.suppress(Exception):
                    await self.store.release(run.fence)
                return
            await asyncio.shield(self._handback(run))
            raise
        except Fenced as exc:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            metrics.SYNC_RUNS_FENCED.inc()
            run.outcome = "fenced"
            log.warning(
                "%s %s lost its claim mid-run (%s); result dropped", run.what, run.writer.name, exc
            )
        except Exception as exc:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            if await self._claim_passed_on(run):
                # Its failure (e.g. the server ended the session of a worker frozen inside a
                # write) concerns a job and a connection that are the new holder's now.
                metrics.SYNC_RUNS_FENCED.inc()
                run.outcome = "lost"
                log.warning(
                    "%s %s failed after losing its claim (%s); result dropped",
                    run.what,
                    run.writer.name,
                    exc,
                )
            else:
                run.outcome = "failed"
                await self._report(self._failed(run, exc, time.monotonic() - started), run)
        else:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            if run.stop == "lost":  # abandoned: the connection may be another run's by now
                run.outcome = "lost"
                metrics.SYNC_RUNS_FENCED.inc()
                return
            run.outcome = "succeeded"
            await self._report(self._succeeded(run, result, time.monotonic() - started), run)
        finally:
            if run.writer.shown:
                self.jobs.put(run.writer.job)  # ahead of the watch: the next sweep sees the end
            if self.running.get(run.connection) is run:
                del self.running[run.connection]
            if self.polls_more:
                self.next_poll_check = 0.0
            self.wake.set()

    async def _report(self, reporting_done: Awaitable[None], run: Run) -> None:
        """Report a run's end; when that fails (the API server is away), say so and go on.

        The job stays Running until its lease lapses and then runs again: the store is right
        either way, and the next run reports.
        """
        try:
            await reporting_done
        except Exception as exc:
            run.outcome = "unreported"
            log.warning(
                "could not report the end of %s %s/%s (%s: %s); it runs again once its "
                "lease lapses",
                run.what,
                run.connection[0],
                run.writer.name,
                type(exc).__name__,
                exc,
            )

    async def _claim_passed_on(self, run: Run) -> bool:
        """Whether the store says the run's claim is gone (taken over, released or purged)."""
        try:
            return not await self.store.renew(run.fence, self.settings.sync_lease)
        except Exception:
            return False  # the store cannot tell: report the failure as usual

    async def _handback(self, run: Run) -> None:
        """The worker stops or the connection goes: release the claim and hand the job back."""
        with contextlib.suppress(Exception):
            await self.store.release(run.fence)
        if not run.writer.shown:
            return  # the job never left Pending
        with contextlib.suppress(Exception):
            await run.writer.write(
                {"phase": "Pending", "leaseExpiresAt": None, "error": "worker stopped"}
            )

    async def _keep_claim(self, run: Run, task: asyncio.Task[Any] | None) -> None:
        """Renew the store claim and the job's lease; cancel the run when the claim is lost.

        A run is cancelled at `SYNC_JOB_TIMEOUT`; one still going a whole lease later did not
        stop when told to (something in it does not yield to cancellation). Its renewals stop
        then, so the claim and the job's lease lapse and another run takes the connection over
        (the stuck one's writes, should it ever go on, are refused by the store's fence)."""
        lease = self.settings.sync_lease
        confirmed = time.monotonic()
        give_up = confirmed + self.settings.sync_job_timeout + lease
        # A run still going after a moment shows as Running, with its lease, on its job.
        await asyncio.sleep(min(RUNNING_AFTER_SECONDS, lease / 3))
        if not run.writer.shown:
            await self._show_running(run.writer)
        while True:
            wake = min(confirmed + lease / 3, give_up)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
            if time.monotonic() >= give_up:
                self._abandon(run, task)
                return
            held: bool | None
            try:
                held = await asyncio.wait_for(self.store.renew(run.fence, lease), lease / 3)
            except Exception as exc:
                log.warning("could not renew the claim of %s: %s", run.writer.name, exc)
                held = None
            if held:
                confirmed = time.monotonic()
            elif held is False or time.monotonic() - confirmed >= lease * 2 / 3:
                # Lost, or not confirmed for so long that the lease may lapse: stop first.
                run.stop = "lost"
                if task is not None:
                    task.cancel()
                return
            with contextlib.suppress(Exception):
                await run.writer.write(
                    {"leaseExpiresAt": reporting.ts(reporting.now() + dt.timedelta(seconds=lease))}
                )

    def _abandon(self, run: Run, task: asyncio.Task[Any] | None) -> None:
        """Let go of a run that did not stop at its timeout (see `_keep_claim`)."""
        metrics.SYNC_RUNS_ABANDONED.inc()
        # Where it hangs, for the report this asks for.
        stack = io.StringIO()
        if isinstance(run.sync, asyncio.Task) and not run.sync.done():
            run.sync.print_stack(file=stack)
        log.error(
            "%s %s/%s did not stop %.0f s after its %.0f s timeout; no longer renewing its "
            "claim, so another run takes the connection over once the lease lapses",
            run.what,
            run.connection[0],
            run.writer.name,
            self.settings.sync_lease,
            self.settings.sync_job_timeout,
            extra={"stack": stack.getvalue()[-4000:]},
        )
        run.stop = "lost"
        if task is not None:
            task.cancel()
        if self.running.get(run.connection) is run:
            del self.running[run.connection]
        self.wake.set()

    async def _sync(self, run: Run, body: dict[str, Any]) -> SyncResult | None:
        namespace = run.connection[0]
        spec = SyncJobSpec.model_validate(run.job["spec"])
        try:
            conn = CalendarConnectionSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            raise JobFailed("InvalidSpec", f"connection spec not understood: {exc}") from exc
        if conn.suspend:
            return None
        names = referenced_secrets(conn)
        all_names = set(names)
        if conn.provider in OAUTH_PROVIDERS:
            all_names.add(token_secret_name(spec.connection))
        secrets = {name: await self._secret(namespace, name) for name in sorted(all_names)}
        scope = policy.scope_digest(conn)
        credentials = policy.credentials_digest(secrets)
        run.context = reporting.RunContext(
            generation=int(body["metadata"].get("generation", 0)),
            scope=scope,
            credentials=credentials,
            attempt=policy.attempt_digest(scope, credentials),
            started=queue.parse_ts(run.claim["startedAt"]) or reporting.now(),
            mode=spec.mode,
        )
        referenced = {k: v for k, v in secrets.items() if k in names}
        stored = (
            await self._stored_tokens(body, conn, referenced)
            if conn.provider in OAUTH_PROVIDERS
            else None
        )
        verdict = evaluate(conn, referenced, tokens_stored=stored is not None, namespace=namespace)
        if verdict.ready[0] != "True":
            raise JobFailed(verdict.ready[1], verdict.ready[2])
        key = store_key(body)
        provider = await build_provider(
            conn,
            referenced,
            budget=self.budgets.for_connection(key, conn.provider),
            deps=ProviderDeps(
                self.settings, self.vault, self.http, dav_transports=self.dav_transports
            ),
            body=body,
            tokens=stored,
        )
        found = getattr(provider, "discovered", None)
        if found is not None:
            run.context.server = found.describe()
        window = Window.around(
            reporting.now(), conn.sync.window.past_days, conn.sync.window.future_days
        )
        try:
            return await self.engine.sync_connection(
                key,
                provider,
                window=window,
                mode=spec.mode,
                calendar_id=spec.calendar_id,
                include=conn.calendars.include,
                exclude=conn.calendars.exclude,
                fence=run.fence,
            )
        finally:  # refresh failures are counted where tokens are refreshed (provider_factory)
            await provider.aclose()

    async def _secret(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        """A Secret's decoded data, from the watch-fed cache (read once when not there yet)."""
        cached = self.secrets.get(namespace, name)
        if cached is None:  # missing, not labelled, or not seen by the watch yet
            return await kube.read_credentials_secret(self.client, namespace, name)
        return kube.secret_credentials(cached)

    async def _stored_tokens(
        self,
        body: dict[str, Any],
        conn: CalendarConnectionSpec,
        secrets: Mapping[str, Mapping[str, bytes] | None],
    ) -> StoredTokens | None:
        try:
            return await stored_tokens(self.vault, body, conn, dict(secrets))
        except TokensUnreadable as exc:
            raise JobFailed(exc.reason, str(exc)) from None

    # -- outcomes ------------------------------------------------------------------------------

    async def _succeeded(self, run: Run, result: SyncResult | None, seconds: float) -> None:
        namespace, name = run.connection
        done = {"durationSeconds": round(seconds, 3), "error": None}
        if result is None:
            if run.poll:
                return  # not done: it runs once the connection is resumed
            await run.writer.finish(
                "Superseded", "Suspended", "the connection is suspended", **done
            )
            metrics.SYNCJOBS_FINISHED.labels("Superseded").inc()
            return
        assert run.context is not None
        counts = {"fetched": result.fetched, "upserted": result.upserted, "deleted": result.deleted}
        body = self.connections.get(namespace, name)
        if result.calendars_unchanged:
            # Nothing but sync times moved: report the rows read when the run began.
            stamp = reporting.now()
            synced = {c.calendar_id for c in result.calendars}
            calendars = [
                dataclasses.replace(row, last_sync_at=stamp) if row.id in synced else row
                for row in result.stored
            ]
        else:
            calendars = await self.store.calendars(run.fence.connection)
        await reporting.report_success(
            self.client, body, namespace, name, run.context, result, calendars
        )
        message = (
            f"fetched {counts['fetched']}, upserted {counts['upserted']}, "
            f"deleted {counts['deleted']} events (store {self.store.store_id})"
        )
        await run.writer.finish("Succeeded", "Synced", message, counts=counts, **done)
        if run.poll:
            metrics.POLLS.labels("Succeeded").inc()
        else:
            metrics.SYNCJOBS_FINISHED.labels("Succeeded").inc()
        metrics.SYNC_DURATION.observe(seconds)
        for op in ("fetched", "upserted", "deleted"):
            metrics.EVENTS_SYNCED.labels(op).inc(counts[op])
        log.info(
            "%s %s/%s succeeded: %s",
            run.what,
            namespace,
            run.writer.name,
            counts,
            extra={"store": self.store.store_id},
        )
        if result.duplicates:
            target = self.connections.get(namespace, name) or body
            for cal, uid, ids in result.duplicates[:10]:
                if target is None:
                    break
                await kube.post_event(
                    self.client,
                    target,
                    type="Warning",
                    reason="DuplicateUID",
                    message=f"UID {uid!r} appears in {len(ids)} resources of calendar {cal}: "
                    + ", ".join(ids[:3]),
                )

    async def _failed(self, run: Run, exc: BaseException, seconds: float) -> None:
        namespace, name = run.connection
        attempts = int(run.claim["attempts"])
        message = (
            f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, TimeoutError)
            else f"timed out after {self.settings.sync_job_timeout:.0f} s"
        )
        reason = getattr(exc, "reason", "SyncFailed")
        log.warning(
            "%s %s attempt %d failed: %s",
            run.what,
            run.writer.name,
            int(run.claim["attempts"]),
            message,
            extra={"reason": reason},
        )
        auth = isinstance(exc, AuthenticationFailed)
        permanent = (
            auth
            or isinstance(exc, JobFailed | InvalidConfiguration)
            or (isinstance(exc, ProviderError) and not exc.retryable)
        )
        throttled = isinstance(exc, RateLimited)
        final = permanent or (not throttled and attempts >= self.settings.sync_max_retries)
        if run.poll:
            # A poll is one attempt: its retry is the next poll, after the back-off the
            # operator derives from the failures the status counts (a throttled poll's from
            # the interval alone). Like a job's retries, only a permanent error or the
            # SYNC_MAX_RETRIES-th failure in a row shows as failed.
            status = (self.connections.get(namespace, name) or {}).get("status") or {}
            failures = int(status.get("consecutiveFailures") or 0)
            final = permanent or (not throttled and failures + 1 >= self.settings.sync_max_retries)
        if not (isinstance(exc, JobFailed) and exc.reason == "ConnectionNotFound"):
            provider = ((self.connections.get(namespace, name) or {}).get("spec") or {}).get(
                "provider"
            )
            consent = None
            if provider in OAUTH_PROVIDERS:

                def consent(body: dict[str, Any], conds: Any) -> str | None:
                    return consent_link_for(self.settings, self.vault, body, provider, conds)

            await reporting.report_failure(
                self.client,
                self.connections.get(namespace, name),
                namespace,
                name,
                run.context,
                reason=reason,
                message=message,
                auth=auth,
                final=final,
                throttled=throttled,
                consent=consent,
                count=run.poll and not throttled,
            )
        done: dict[str, Any] = {"error": message[:2000], "durationSeconds": round(seconds, 3)}
        if run.poll:
            await run.writer.finish("Failed", reason, message[:2000], **done)
            metrics.POLLS.labels("Failed" if final else "Retried").inc()
        elif final:
            await run.writer.finish("Failed", reason, message[:2000], **done)
            metrics.SYNCJOBS_FINISHED.labels("Failed").inc()
        else:
            wait = (
                float(exc.retry_after or 60.0)
                if isinstance(exc, RateLimited)
                else backoff(attempts, self.settings.sync_retry_backoff)
            )
            done.update(
                phase="Pending",
                leaseExpiresAt=None,
                nextAttemptAt=reporting.ts(reporting.now() + dt.timedelta(seconds=wait)),
            )
            if throttled:
                done["attempts"] = max(0, attempts - 1)
            await run.writer.write(done)
        log.warning(
            "%s %s/%s attempt %d failed%s: %s",
            run.what,
            namespace,
            run.writer.name,
            attempts,
            " (final)" if final else "",
            message,
        )
        target = self.connections.get(namespace, name) if run.poll else run.writer.job
        if target is None:
            return
        await kube.post_event(
            self.client,
            target,
            type="Warning",
            reason="SyncFailed" if final else ("Throttled" if throttled else "SyncRetrying"),
            message=f"poll: {message}" if run.poll else f"attempt {attempts}: {message}",
        )
