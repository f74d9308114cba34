"""Which SyncJobs a worker may start now: pure functions of the job cache, the clock and itself.

A job is startable when it is Pending and due (`nextAttemptAt` passed), or Running with a lease
that lapsed (its worker died). Per connection only the oldest startable job is offered, and
none while another job of the connection runs with a live lease or runs here: a worker never
even asks the store for a claim it cannot get. The store's claim is still what makes a run
exclusive; this only saves requests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from calsync.controllers.policy import parse_time

Key = tuple[str, str]

FINISHED = frozenset({"Succeeded", "Failed", "Superseded"})


# A status timestamp as an aware datetime (None when absent or unreadable).
parse_ts = parse_time


def connection_of(job: Mapping[str, Any]) -> tuple[str, str]:
    return job["metadata"]["namespace"], str((job.get("spec") or {}).get("connection") or "")


def phase_of(job: Mapping[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "Pending")


def lease_live(job: Mapping[str, Any], now: dt.datetime) -> bool:
    lease = parse_ts((job.get("status") or {}).get("leaseExpiresAt"))
    return lease is not None and lease > now


@dataclass
class Selection:
    startable: list[dict[str, Any]] = field(default_factory=list)
    finished: list[dict[str, Any]] = field(default_factory=list)
    pending: int = 0
    next_due: dt.datetime | None = None  # earliest nextAttemptAt or lease expiry still ahead

    def due(self, when: dt.datetime) -> None:
        if self.next_due is None or when < self.next_due:
            self.next_due = when


def _order(job: Mapping[str, Any]) -> tuple[str, str]:
    meta = job["metadata"]
    return str(meta.get("creationTimestamp") or ""), str(meta["name"])


def coalescing_until(
    job: Mapping[str, Any], window: dt.timedelta, longest: dt.timedelta
) -> dt.datetime | None:
    """When a webhook job's coalescing wait ends (None: not a webhook job, or no window).

    `window` after the later of its creation and the last notification the gateway recorded
    on it (`calsync.io/notified-at`), but no later than `longest` after its creation: a steady
    stream of notifications must not keep the job from ever running (decision 0011)."""
    if not window or (job.get("spec") or {}).get("reason") != "webhook":
        return None
    created = parse_ts(job["metadata"].get("creationTimestamp"))
    if created is None:
        return None
    notified = parse_ts((job["metadata"].get("annotations") or {}).get(NOTIFIED_AT))
    last = max(created, notified) if notified is not None else created
    return min(last + window, created + max(longest, window))


def not_before(
    job: Mapping[str, Any],
    webhook_delay: dt.timedelta,
    webhook_longest: dt.timedelta = dt.timedelta(0),
) -> dt.datetime | None:
    """When a Pending job may start: `nextAttemptAt`, and for a webhook job also the end of
    its coalescing wait (see `coalescing_until`)."""
    due = parse_ts((job.get("status") or {}).get("nextAttemptAt"))
    wait = coalescing_until(job, webhook_delay, webhook_longest)
    if wait is not None and (due is None or wait > due):
        due = wait
    return due


def select(
    jobs: Iterable[dict[str, Any]],
    now: dt.datetime,
    *,
    running_here: set[tuple[str, str]],
    capacity: int,
    webhook_delay: dt.timedelta = dt.timedelta(0),
    webhook_longest: dt.timedelta = dt.timedelta(0),
) -> Selection:
    """The jobs to try to start (oldest first, one per connection, at most `capacity`)."""
    out = Selection()
    busy = set(running_here)
    ordered = sorted(jobs, key=_order)
    for job in ordered:
        if phase_of(job) == "Running" and lease_live(job, now):
            busy.add(connection_of(job))
    for job in ordered:
        phase = phase_of(job)
        if phase in FINISHED:
            out.finished.append(job)
            continue
        if phase == "Pending":
            out.pending += 1
        key = connection_of(job)
        if key in busy:
            continue
        if phase == "Running":
            if lease_live(job, now):
                continue
        else:
            due = not_before(job, webhook_delay, webhook_longest)
            if due is not None and due > now:
                out.due(due)
                continue
        busy.add(key)
        if len(out.startable) < capacity:
            out.startable.append(job)
    for job in ordered:
        if phase_of(job) == "Running" and connection_of(job) not in running_here:
            lease = parse_ts((job.get("status") or {}).get("leaseExpiresAt"))
            if lease is not None and lease > now:
                out.due(lease)
    return out


def covers(running: Mapping[str, Any], pending: Mapping[str, Any]) -> bool:
    """Whether running `running` makes `pending` pointless."""
    r, p = running["spec"], pending["spec"]
    scope = not r.get("calendarId") or r.get("calendarId") == p.get("calendarId")
    depth = r.get("mode") == "full" or p.get("mode", "incremental") == "incremental"
    return bool(scope and depth)


NOTIFIED_AT = "calsync.io/notified-at"


def superseded_by(
    claimed: Mapping[str, Any],
    jobs: Iterable[Mapping[str, Any]],
    started: dt.datetime,
    webhook_delay: dt.timedelta = dt.timedelta(0),
    webhook_longest: dt.timedelta = dt.timedelta(0),
) -> list[Mapping[str, Any]]:
    """Pending jobs of the claimed job's connection, created before it started, that it covers.

    Jobs created in the same second as the start may postdate it (creation times have whole
    seconds), so they are left to run. So is a job the gateway touched (`calsync.io/notified-at`)
    within a second of the start or later: the notification it stands for may postdate the
    start (docs/decisions/0011). A webhook job still inside its coalescing window
    (`webhook_delay`) is left too: the gateway answers notifications for it without touching it.
    """
    key = connection_of(claimed)
    whole = started.replace(microsecond=0)
    out = []
    for other in jobs:
        if other["metadata"]["name"] == claimed["metadata"]["name"] or connection_of(other) != key:
            continue
        if phase_of(other) != "Pending":
            continue
        created = parse_ts(other["metadata"].get("creationTimestamp"))
        if created is None or created >= whole or not covers(claimed, other):
            continue
        notified = parse_ts((other["metadata"].get("annotations") or {}).get(NOTIFIED_AT))
        if notified is not None and notified >= started - dt.timedelta(seconds=1):
            continue
        window = coalescing_until(other, webhook_delay, webhook_longest)
        if window is not None and window > started:
            continue
        out.append(other)
    return out


def expired(job: Mapping[str, Any], now: dt.datetime) -> float | None:
    """Seconds since the job's TTL ran out (>= 0), or None while it has not (or has none)."""
    ends = expiry_of(job)
    if ends is None:
        return None
    left = (ends - now).total_seconds()
    return -left if left <= 0 else None


class JobIndex:
    """The job cache split the way the worker reads it, kept up to date change by change.

    A sweep looks only at unfinished jobs (`active`), a claim only at the unfinished jobs of
    its connection (`of_connection`), and finished jobs, most of the cache while they wait out
    their TTL, only when the earliest of their expiries comes (`next_expiry`). Without this,
    every watch event made the worker walk every job it knows, several times.
    """

    def __init__(self) -> None:
        self.active: dict[Key, dict[str, Any]] = {}
        self.finished: dict[Key, dict[str, Any]] = {}
        self._by_connection: dict[Key, set[Key]] = {}
        self.next_expiry: dt.datetime | None = None

    def update(self, key: Key, new: dict[str, Any] | None) -> None:
        """Record that the job at `key` is now `new` (None: gone)."""
        old = self.active.pop(key, None)
        if old is not None:
            conn = connection_of(old)
            keys = self._by_connection.get(conn)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_connection[conn]
        self.finished.pop(key, None)
        if new is None:
            return
        if phase_of(new) in FINISHED:
            self.finished[key] = new
            ends = expiry_of(new)
            if ends is not None and (self.next_expiry is None or ends < self.next_expiry):
                self.next_expiry = ends
        else:
            self.active[key] = new
            self._by_connection.setdefault(connection_of(new), set()).add(key)

    def of_connection(self, connection: Key) -> list[dict[str, Any]]:
        return [self.active[k] for k in self._by_connection.get(connection, ())]

    def expired(self, now: dt.datetime) -> list[dict[str, Any]]:
        """Finished jobs past their TTL, once `next_expiry` has come; recomputes it."""
        if self.next_expiry is None or self.next_expiry > now:
            return []
        out: list[dict[str, Any]] = []
        upcoming: dt.datetime | None = None
        for job in self.finished.values():
            ends = expiry_of(job)
            if ends is None:
                continue
            if ends <= now:
                out.append(job)
            elif upcoming is None or ends < upcoming:
                upcoming = ends
        self.next_expiry = upcoming
        return out

    def due(self, when: dt.datetime) -> None:
        """Look at the finished jobs again at `when` (e.g. another worker's turn has passed)."""
        if self.next_expiry is None or when < self.next_expiry:
            self.next_expiry = when


def expiry_of(job: Mapping[str, Any]) -> dt.datetime | None:
    """When a finished job's TTL runs out (None: it has no TTL or is not finished)."""
    ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
    completed = parse_ts((job.get("status") or {}).get("completedAt"))
    if ttl is None or completed is None:
        return None
    return completed + dt.timedelta(seconds=int(ttl))
