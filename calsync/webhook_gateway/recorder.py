"""Turn verified notifications into sync work before they are answered (decision 0011).

A calendar's notifications are recorded one *recording* at a time (single flight per
(namespace, connection, calendarId)); notifications that arrive while one is in flight join
the next one, which is what coalesces a burst into a handful of API writes. A recording:

1. touches the newest Pending webhook job of the calendar the SyncJob cache knows: a merge
   patch of the annotation `calsync.io/notified-at` guarded by the job's resourceVersion. It
   lands only if no worker claimed the job in between (workers mark webhook jobs Running with
   a patch guarded the same way), so the job's run starts after the notification. On 409 the
   job is read again and the decision made again (still Pending: touch; else create);
2. or creates `<connection>-w-<8 hex sha1(calendarId)>-<n>` with `n` one more than the
   highest the cache knows for the calendar; on AlreadyExists the job is read and the decision
   made again (Pending: touch it; otherwise n + 1).

Each recording has WEBHOOK_TIMEOUT to finish; a failed or late one raises RecordingFailed
and the gateway answers 503, so the provider retries. The decisions (`plan`, names, which job
to touch, the next n) are pure functions of the cached jobs; `Recorder` is the thin I/O.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.types import PatchType

from calsync.api.meta import API_VERSION, CALENDAR_CONNECTION
from calsync.controllers import kube
from calsync.observability import metrics
from calsync.worker.informer import Informer
from calsync.worker.queue import NOTIFIED_AT, coalescing_until, parse_ts

log = logging.getLogger(__name__)

CONNECTION_LABEL = "calsync.io/connection"
NAME_MAX = 253
MAX_STEPS = 8  # decisions per recording before it gives up (each follows a conflict)
# Recordings that talk to the API server at once. More gain nothing but a larger HTTP pool,
# and httpx checks every pooled connection on every request (measured: with 100 calendars
# recording at once, a tenth of the gateway's CPU went to that scan, and idle connections
# above the pool's keep-alive count were closed and opened again with a TLS handshake).
API_WRITERS = 4
UNTIL_CACHE = 10_000  # job revisions whose end of wait the recorder keeps (then starts over)

CalendarKey = tuple[str, str, str]  # namespace, connection, calendarId
Key = tuple[str, str]


# -- pure decisions --------------------------------------------------------------------------


def calendar_hash(calendar_id: str) -> str:
    return hashlib.sha1(calendar_id.encode(), usedforsecurity=False).hexdigest()[:8]


def job_prefix(connection: str, calendar_id: str, *, room: int = 10) -> str:
    """`<connection>-w-<8 hex>-`, the connection cut so that `room` digits of n still fit."""
    tail = f"-w-{calendar_hash(calendar_id)}-"
    keep = NAME_MAX - len(tail) - room
    return connection[:keep].rstrip("-.") + tail


def job_name(connection: str, calendar_id: str, n: int) -> str:
    return f"{job_prefix(connection, calendar_id)}{n}"


def number_of(name: str, prefix: str) -> int | None:
    """The n of a webhook job name with this prefix, None for any other name."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    return int(rest) if re.fullmatch(r"[1-9][0-9]{0,9}", rest) else None


def phase_of(job: Mapping[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "Pending")


def is_webhook_job(job: Mapping[str, Any]) -> bool:
    return (job.get("spec") or {}).get("reason") == "webhook"


def calendar_key_of(job: Mapping[str, Any]) -> CalendarKey:
    spec = job.get("spec") or {}
    return (
        str(job["metadata"]["namespace"]),
        str(spec.get("connection") or ""),
        str(spec.get("calendarId") or ""),
    )


@dataclass(frozen=True)
class Touch:
    job: Mapping[str, Any]


@dataclass(frozen=True)
class Create:
    n: int


def next_number(jobs: Iterable[Mapping[str, Any]], prefix: str, taken: Iterable[int] = ()) -> int:
    """One more than the highest n among `jobs` (and the numbers `taken` this recording)."""
    known = [number_of(str(j["metadata"]["name"]), prefix) for j in jobs]
    return max([0, *(n for n in known if n is not None), *taken]) + 1


def touchable(job: Mapping[str, Any]) -> bool:
    return (
        is_webhook_job(job)
        and phase_of(job) == "Pending"
        and not job["metadata"].get("deletionTimestamp")
    )


# How much a worker's clock may run ahead of the gateway's before an answer without a write
# could come too late (the job already started): the young-job shortcut keeps this far away.
CLOCK_MARGIN = dt.timedelta(seconds=1)
# A young job whose wait ends sooner than this gets its next recording (a touch, or its
# successor) started in the background, so that notifications rarely find it too old to answer
# at once and have to wait for a write. Between this and CLOCK_MARGIN is the time that write has.
REFRESH_AHEAD = dt.timedelta(seconds=1.5)


def young(
    jobs: Iterable[Mapping[str, Any]],
    now: dt.datetime,
    window: dt.timedelta,
    longest: dt.timedelta = dt.timedelta(0),
) -> Mapping[str, Any] | None:
    """A Pending webhook job that no worker may start yet: it covers a notification as it is.

    Workers start a webhook job only when its coalescing wait is over, and no run supersedes
    it before (calsync/worker/queue.py `coalescing_until`), so while more than CLOCK_MARGIN of
    the wait is left the notification needs no write: the job's run starts after it anyway.
    Creation times have whole seconds, truncated, which only makes a wait look shorter."""
    if window <= CLOCK_MARGIN:
        return None
    for job in jobs:
        if not touchable(job):
            continue
        until = coalescing_until(job, window, longest)
        if until is not None and now < until - CLOCK_MARGIN:
            return job
    return None


def wait_left(
    jobs: Iterable[Mapping[str, Any]],
    now: dt.datetime,
    end_of: Callable[[Mapping[str, Any]], dt.datetime | None],
) -> dt.timedelta | None:
    """How much longer the latest coalescing wait among the calendar's touchable webhook jobs
    runs (negative: over), None without one; `end_of` gives a job's end of wait
    (`coalescing_until` with the gateway's settings). While more than CLOCK_MARGIN is left
    the calendar's job is young (`young`); under REFRESH_AHEAD, its next recording is due."""
    ends = [end for job in jobs if touchable(job) and (end := end_of(job)) is not None]
    return max(ends) - now if ends else None


def plan(
    jobs: Iterable[Mapping[str, Any]],
    prefix: str,
    taken: Iterable[int] = (),
    *,
    now: dt.datetime | None = None,
    window: dt.timedelta = dt.timedelta(0),
    longest: dt.timedelta = dt.timedelta(0),
) -> Touch | Create:
    """What a recording does next, from the calendar's webhook jobs in the cache.

    Touch the newest touchable job: workers start the oldest Pending job of a connection
    first, so the newest is the least likely to be claimed while the touch is on its way.

    Except when that job is the calendar's only touchable one and its wait can no longer move
    (`spent`, given `now` and the coalescing settings): a touch would prove it unclaimed but
    buy no quiet time, so every later notification would need another write until a worker
    takes the job. The next job is created instead, and notifications are answered without a
    write again for most of its window. A second one at most: with two, the newest is touched.
    """
    jobs = list(jobs)
    candidates = [j for j in jobs if touchable(j)]
    if candidates:

        def order(job: Mapping[str, Any]) -> tuple[int, str, str]:
            meta = job["metadata"]
            n = number_of(str(meta["name"]), prefix) or 0
            return n, str(meta.get("creationTimestamp") or ""), str(meta["name"])

        newest = max(candidates, key=order)
        if len(candidates) > 1 or now is None or not spent(newest, now, window, longest):
            return Touch(newest)
    return Create(next_number(jobs, prefix, taken))


def spent(
    job: Mapping[str, Any], now: dt.datetime, window: dt.timedelta, longest: dt.timedelta
) -> bool:
    """True when a touch now could not keep the job young for long: its coalescing wait
    reaches its cap, `longest` after its creation (`coalescing_until`), within REFRESH_AHEAD
    of now. Without a window there is no wait to move, and touching stays the cheaper write."""
    created = parse_ts(job["metadata"].get("creationTimestamp"))
    if window <= CLOCK_MARGIN or created is None or not is_webhook_job(job):
        return False
    return created + max(longest, window) - now <= REFRESH_AHEAD


class WebhookJobIndex:
    """The SyncJob cache as the gateway reads it: webhook jobs per calendar, Pending count."""

    def __init__(self) -> None:
        self._by_calendar: dict[CalendarKey, dict[Key, dict[str, Any]]] = {}
        self._calendar_of: dict[Key, CalendarKey] = {}
        self._pending: set[Key] = set()

    def update(self, key: Key, job: dict[str, Any] | None) -> None:
        old = self._calendar_of.pop(key, None)
        if old is not None:
            jobs = self._by_calendar.get(old)
            if jobs is not None:
                jobs.pop(key, None)
                if not jobs:
                    del self._by_calendar[old]
        self._pending.discard(key)
        if job is None:
            return
        if phase_of(job) == "Pending":
            self._pending.add(key)
        if is_webhook_job(job):
            calendar = calendar_key_of(job)
            self._calendar_of[key] = calendar
            self._by_calendar.setdefault(calendar, {})[key] = job

    def jobs_of(self, calendar: CalendarKey) -> list[dict[str, Any]]:
        return list(self._by_calendar.get(calendar, {}).values())

    @property
    def pending(self) -> int:
        return len(self._pending)


# -- I/O ---------------------------------------------------------------------------------------


class RecordingFailed(RuntimeError):
    """Notifications could not be recorded as sync work in time; answer 503."""


@dataclass
class Work:
    """What a recording is for: a calendar of a connection, and whom it belongs to."""

    namespace: str
    connection: str
    calendar_id: str
    connection_uid: str | None
    provider: str

    @property
    def key(self) -> CalendarKey:
        return self.namespace, self.connection, self.calendar_id


@dataclass
class _Batch:
    future: asyncio.Future[str]
    size: int = 0


@dataclass
class _Flight:
    running: bool = False
    next: _Batch | None = None
    work: Work | None = None
    done: list[str] = field(default_factory=list)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(obj: Any) -> dict[str, Any]:
    body = cast(dict[str, Any], obj.to_dict())
    body.get("metadata", {}).pop("managedFields", None)
    return body


class Recorder:
    """Single-flight recordings per calendar over the SyncJob cache `jobs` / `index`."""

    def __init__(
        self,
        client: AsyncClient,
        jobs: Informer,
        index: WebhookJobIndex,
        *,
        timeout: float,
        ttl: int,
        connection_uid: Callable[[str, str], Awaitable[str | None]] | None = None,
        coalesce: float = 0.0,
        coalesce_max: float = 0.0,
    ) -> None:
        self._window = dt.timedelta(seconds=coalesce)
        self._longest = dt.timedelta(seconds=coalesce_max)
        self._client = client
        self._jobs = jobs
        self._index = index
        self._timeout = timeout
        self._ttl = ttl
        self._connection_uid = connection_uid
        self._flights: dict[CalendarKey, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers = asyncio.Semaphore(API_WRITERS)
        self._until: dict[tuple[str, str, str], dt.datetime | None] = {}
        self.in_flight = 0

    async def close(self) -> None:
        """Cancel the recordings still running (their waiters get RecordingFailed: 503)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def record(self, work: Work) -> str:
        """Wait until a recording that started after this call completed: its action
        (created, touched) for the notification that started it, covered for the others.

        A notification for a calendar whose webhook job is still inside its coalescing window
        is covered at once, without waiting or writing (see `young`); when that window is about
        to close, the next recording starts in the background (see `wait_left`)."""
        now = dt.datetime.now(dt.UTC)
        jobs = self._index.jobs_of(work.key)
        left = wait_left(jobs, now, self._end_of_wait) if self._window > CLOCK_MARGIN else None
        if left is not None and left > CLOCK_MARGIN:  # `young`
            metrics.labelled(metrics.WEBHOOK_JOBS, work.provider, "covered").inc()
            if left < REFRESH_AHEAD:
                self._ahead(work)
            return "covered"
        flight = self._flights.setdefault(work.key, _Flight())
        if flight.next is None:
            flight.next = _Batch(asyncio.get_running_loop().create_future())
        batch = flight.next
        flight.work = work
        position = batch.size
        batch.size += 1
        if not flight.running:
            flight.running = True
            task = asyncio.create_task(self._drive(work.key, flight), name=f"record {work.key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        action = await asyncio.shield(batch.future)
        return action if position == 0 else "covered"

    def _end_of_wait(self, job: Mapping[str, Any]) -> dt.datetime | None:
        """`coalescing_until` computed once per job revision, not per notification."""
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"], meta.get("resourceVersion") or "")
        if key not in self._until:
            if len(self._until) >= UNTIL_CACHE:
                self._until.clear()
            self._until[key] = coalescing_until(job, self._window, self._longest)
        return self._until[key]

    def _ahead(self, work: Work) -> None:
        """Start a recording nobody waits for, unless one for the calendar is on its way."""
        flight = self._flights.setdefault(work.key, _Flight())
        if flight.running or flight.next is not None:
            return
        flight.next = _Batch(asyncio.get_running_loop().create_future())
        flight.work = work
        flight.running = True
        task = asyncio.create_task(self._drive(work.key, flight), name=f"ahead {work.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, key: CalendarKey, flight: _Flight) -> None:
        try:
            while flight.next is not None:
                batch, flight.next = flight.next, None
                assert flight.work is not None
                work = flight.work
                self.in_flight += 1
                metrics.WEBHOOK_RECORDINGS_IN_FLIGHT.inc()
                try:
                    action = await asyncio.wait_for(self._record_slotted(work), self._timeout)
                except TimeoutError:
                    batch.future.set_exception(
                        RecordingFailed(f"recording took longer than {self._timeout:g} s")
                    )
                except asyncio.CancelledError:
                    batch.future.set_exception(RecordingFailed("the gateway is stopping"))
                    if flight.next is not None:
                        flight.next.future.set_exception(RecordingFailed("the gateway is stopping"))
                        flight.next = None
                    raise
                except Exception as exc:
                    log.warning("could not record notifications for %s: %s", key, exc)
                    batch.future.set_exception(RecordingFailed(str(exc)))
                else:
                    batch.future.set_result(action)
                    if batch.size == 0:  # made ahead, for no notification in particular
                        metrics.WEBHOOK_AHEAD.labels(work.provider, action).inc()
                    else:
                        metrics.WEBHOOK_JOBS.labels(work.provider, action).inc()
                    if batch.size > 1:
                        metrics.WEBHOOK_JOBS.labels(work.provider, "covered").inc(batch.size - 1)
                finally:
                    self.in_flight -= 1
                    metrics.WEBHOOK_RECORDINGS_IN_FLIGHT.dec()
                    # A waiter that went away must not leave "exception never retrieved".
                    if batch.future.done() and not batch.future.cancelled():
                        batch.future.exception()
        finally:
            flight.running = False
            if self._flights.get(key) is flight and flight.next is None:
                del self._flights[key]

    async def _record_slotted(self, work: Work) -> str:
        async with self._writers:  # inside the recording's deadline
            return await self._record_once(work)

    async def _record_once(self, work: Work) -> str:
        prefix = job_prefix(work.connection, work.calendar_id)
        taken: list[int] = []
        for _ in range(MAX_STEPS):
            step = plan(
                self._index.jobs_of(work.key),
                prefix,
                taken,
                now=dt.datetime.now(dt.UTC),
                window=self._window,
                longest=self._longest,
            )
            if isinstance(step, Touch):
                if await self._touch(step.job):
                    return "touched"
                continue
            name = f"{prefix}{step.n}"
            try:
                created = await self._create(work, name)
            except kube.AlreadyExists:
                taken.append(step.n)
                fresh = await kube.get_syncjob(self._client, work.namespace, name)
                if fresh is None:
                    taken.remove(step.n)  # deleted in between: the name is free again
                else:
                    fresh["metadata"].pop("managedFields", None)
                    self._jobs.put(fresh)
                continue
            self._jobs.put(created)
            return "created"
        raise RecordingFailed(f"no decision held for {work.key} after {MAX_STEPS} conflicts")

    async def _touch(self, job: Mapping[str, Any]) -> bool:
        """Guarded annotation patch; False (with the cache corrected) when it lost."""
        meta = job["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        patch = {
            "metadata": {
                "resourceVersion": meta.get("resourceVersion"),
                "annotations": {NOTIFIED_AT: _now()},
            }
        }
        try:
            obj = await self._client.patch(
                kube.SyncJobResource, name, patch, namespace=namespace, patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code not in (404, 409):
                raise
            fresh = await kube.get_syncjob(self._client, namespace, name)
            if fresh is None:
                self._jobs.forget(namespace, name)
            else:
                fresh["metadata"].pop("managedFields", None)
                self._jobs.put(fresh)
            return False
        self._jobs.put(_plain(obj))
        return True

    async def _create(self, work: Work, name: str) -> dict[str, Any]:
        uid = work.connection_uid
        if uid is None and self._connection_uid is not None:
            uid = await self._connection_uid(work.namespace, work.connection)
        if uid is None:
            raise RecordingFailed(f"CalendarConnection {work.namespace}/{work.connection} is gone")
        job = kube.SyncJobResource(
            metadata=ObjectMeta(
                name=name,
                namespace=work.namespace,
                labels={CONNECTION_LABEL: work.connection[:63].rstrip("-._")},
                annotations={NOTIFIED_AT: _now()},
                ownerReferences=[
                    OwnerReference(
                        apiVersion=API_VERSION,
                        kind=CALENDAR_CONNECTION.kind,
                        name=work.connection,
                        uid=uid,
                        controller=False,
                        blockOwnerDeletion=False,
                    )
                ],
            ),
            spec={
                "connection": work.connection,
                "calendarId": work.calendar_id,
                "mode": "incremental",
                "reason": "webhook",
                "ttlSecondsAfterFinished": self._ttl,
            },
        )
        try:
            created = await self._client.create(job)
        except ApiError as exc:
            if exc.status.code == 409:
                raise kube.AlreadyExists(f"SyncJob {work.namespace}/{name} exists") from exc
            raise
        return _plain(created)


RECORDING_ERRORS = (RecordingFailed, ApiError, httpx.HTTPError)
