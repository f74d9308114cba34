"""What a worker writes when a run ends: the SyncJob's status and the connection's.

The connection is written first, then the job: by the time anyone sees a job finished, the
connection already records the attempt (`lastAttemptTime`, failures, what was attempted), so
the operator's next decision starts from it.

SyncJobs get conditions like a batch Job: `Complete=True` when the job Succeeded (or was
Superseded: the work it asked for was done by another run), `Failed=True` when it gave up, so
`kubectl wait --for=condition=Complete sj/NAME` works.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient

from calsync.api.conditions import conditions_from_status
from calsync.api.meta import format_timestamp
from calsync.controllers import kube, readiness
from calsync.controllers.status import publish, status_patch
from calsync.store import CalendarRow
from calsync.sync.engine import SyncResult

log = logging.getLogger(__name__)

COMPLETE = "Complete"
FAILED = "Failed"
FINISHED = frozenset({"Succeeded", "Failed", "Superseded"})


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ts(value: dt.datetime) -> str:
    return format_timestamp(value.replace(microsecond=0))


@dataclass
class RunContext:
    """What a run knows about its connection, captured when it started."""

    generation: int
    scope: str
    credentials: str  # digest of the referenced Secrets at the start
    attempt: str  # digest of (scope, credentials)
    started: dt.datetime
    mode: str
    server: str | None = None  # how DNS SRV discovery found the server (spec.caldav.domain)


def job_conditions(job: Mapping[str, Any], phase: str, reason: str, message: str) -> list[Any]:
    conds = readiness.Conditions(
        conditions_from_status(job.get("status")),
        int(job["metadata"].get("generation", 0)),
        now().replace(microsecond=0),
    )
    if phase in ("Succeeded", "Superseded"):
        conds.set(COMPLETE, "True", reason, message)
    elif phase == "Failed":
        conds.set(FAILED, "True", reason, message)
    return [c.to_wire() for c in conds.items]


class JobWriter:
    """Writes one job's status, guarded by the last resourceVersion this worker saw.

    A run's writer carries its `claim` (claimedBy, startedAt, attempts, ...): the run's first
    write, whichever it is, puts them on the job. A conflict means someone else wrote the job
    meanwhile; the run goes on writing unless the job ended or another worker runs it. A writer
    without a claim (superseding or failing someone else's pending job) gives up on a conflict
    unless the job names this worker.
    """

    def __init__(
        self,
        client: AsyncClient,
        job: dict[str, Any],
        identity: str,
        *,
        claim: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.job = job
        self.rv = str(job["metadata"]["resourceVersion"])
        self.identity = identity
        self._owner = claim is not None
        self._claim = dict(claim) if claim is not None else None
        self.shown = False  # a write of the run reached the job
        self.final = False  # the job's end (a finished phase) was written

    @property
    def namespace(self) -> str:
        return str(self.job["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.job["metadata"]["name"])

    async def write(
        self,
        status: Mapping[str, Any],
        *,
        still: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> bool:
        """Patch the status; False when the job was taken over or deleted meanwhile, or when,
        after a conflict, the fresh job no longer passes `still`."""
        body = {**self._claim, **status} if self._claim else dict(status)
        for _ in range(3):
            try:
                written = await kube.patch_status_guarded(
                    self.client,
                    kube.SyncJobResource,
                    self.namespace,
                    self.name,
                    self.rv,
                    body,
                )
            except kube.Conflict:
                fresh = await kube.get_syncjob(self.client, self.namespace, self.name)
                if fresh is None:
                    return False
                now_status = fresh.get("status") or {}
                phase = now_status.get("phase") or "Pending"
                mine = now_status.get("claimedBy") == self.identity
                if (
                    phase in FINISHED
                    or (phase == "Running" and not mine)
                    or (not self._owner and not mine)
                ):
                    log.warning("SyncJob %s ended or was taken over; dropping ours", self.name)
                    return False
                if still is not None and not still(fresh):
                    return False
                self.rv = str(fresh["metadata"]["resourceVersion"])
                continue
            except ApiError as exc:
                if exc.status.code == 404:  # deleted meanwhile (by a person or its owner)
                    return False
                raise
            self.rv = str(written["metadata"]["resourceVersion"])
            self.job = written
            self._claim = None
            self.shown = True
            if body.get("phase") in FINISHED:
                self.final = True
            return True
        return False

    async def finish(self, phase: str, reason: str, message: str, **fields: Any) -> bool:
        status = {
            "phase": phase,
            "completedAt": ts(now()),
            "leaseExpiresAt": None,
            "conditions": job_conditions(self.job, phase, reason, message),
            **fields,
        }
        return await self.write(status)


class PollWriter(JobWriter):
    """The writer of a poll, which has no SyncJob (decision 0018): it writes nothing.

    A poll run goes through the same steps as a job's run; where those write the job, this
    only remembers that the run ended (`final`), so the store records the poll as done. What a
    poll leaves behind is the connection's status, written by `report_success` or
    `report_failure`, and the worker's metrics and log lines."""

    def __init__(self, namespace: str, connection: str, key: str, identity: str) -> None:
        job = {
            "metadata": {"namespace": namespace, "name": key, "uid": key, "resourceVersion": ""},
            "spec": {"connection": connection, "mode": "incremental", "reason": "poll"},
            "status": {},
        }
        super().__init__(None, job, identity)  # type: ignore[arg-type]  # never used

    async def write(
        self,
        status: Mapping[str, Any],
        *,
        still: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> bool:
        if status.get("phase") in FINISHED:
            self.final = True
        return True

    async def finish(self, phase: str, reason: str, message: str, **fields: Any) -> bool:
        self.final = True
        return True


async def report_success(
    client: AsyncClient,
    cached: dict[str, Any] | None,
    namespace: str,
    name: str,
    run: RunContext,
    result: SyncResult,
    calendars: list[CalendarRow],
) -> dict[str, Any] | None:
    total = sum(c.event_count for c in calendars)
    holder: dict[str, readiness.Conditions] = {}
    stamp = now().replace(microsecond=0)

    async def mutate(body: dict[str, Any]) -> dict[str, Any]:
        status = body.get("status") or {}
        conds = readiness.Conditions(
            conditions_from_status(status), int(body["metadata"].get("generation", 0)), stamp
        )
        readiness.apply_sync_success(
            conds,
            events=total,
            calendars=len(calendars),
            duplicates=result.duplicates if result.duplicates_checked else None,
            skipped=result.skipped,
            capped=result.capped,
            server=run.server,
        )
        extra: dict[str, Any] = {
            "eventCount": total,
            "lastSyncTime": ts(stamp),
            "lastAttemptTime": ts(run.started),
            "consecutiveFailures": 0,
            "attempted": run.attempt,
            "refusedCredentials": None,
            "calendars": [
                {
                    "id": c.id,
                    "name": c.name,
                    "events": c.event_count,
                    **({"lastSyncTime": ts(c.last_sync_at)} if c.last_sync_at else {}),
                }
                for c in calendars
            ],
        }
        synced_scope = status.get("syncedScope")
        if run.mode == "full" or synced_scope in (None, run.scope):
            extra["syncedScope"] = run.scope
            # A later generation that needed no sync may already be recorded: keep it.
            extra["observedGeneration"] = max(
                run.generation, int(status.get("observedGeneration") or 0)
            )
        holder["conds"] = conds
        return status_patch(conds, **extra)

    body = await kube.update_connection_status(client, namespace, name, mutate, current=cached)
    if body is not None:
        await publish(client, body, holder["conds"])
    return body


async def report_failure(
    client: AsyncClient,
    cached: dict[str, Any] | None,
    namespace: str,
    name: str,
    run: RunContext | None,
    *,
    reason: str,
    message: str,
    auth: bool,
    final: bool,
    throttled: bool,
    consent: Any = None,
    count: bool = False,
) -> dict[str, Any] | None:
    """Record a failed attempt. `consent(body, conds)` gives the consent link for OAuth.

    `consecutiveFailures` grows for a final failure, a refused credential, or when `count`
    (every failed poll: the poll schedule backs off on it)."""
    holder: dict[str, readiness.Conditions] = {}

    async def mutate(body: dict[str, Any]) -> dict[str, Any]:
        status = body.get("status") or {}
        conds = readiness.Conditions(
            conditions_from_status(status),
            int(body["metadata"].get("generation", 0)),
            now().replace(microsecond=0),
        )
        extra: dict[str, Any] = {}
        if throttled:
            readiness.apply_throttled(conds, message)
        else:
            shown = message
            if auth:
                shown += (
                    "; no sync is attempted until a referenced Secret changes or the spec "
                    "changes what is mirrored (URL, calendars, window)"
                )
            readiness.apply_sync_failure(
                conds, reason=reason, message=shown, auth=auth, final=final
            )
        if run is not None:
            extra["lastAttemptTime"] = ts(run.started)
            extra["attempted"] = run.attempt
            if auth:
                extra["refusedCredentials"] = run.credentials
        if final or auth or count:
            extra["consecutiveFailures"] = int(status.get("consecutiveFailures") or 0) + 1
        if consent is not None:
            extra["authorizationURL"] = consent(body, conds)
        holder["conds"] = conds
        return status_patch(conds, **extra)

    body = await kube.update_connection_status(client, namespace, name, mutate, current=cached)
    if body is not None:
        await publish(client, body, holder["conds"])
    return body
