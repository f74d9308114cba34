"""What should happen to a connection now: a pure function of (spec, status, Secrets, jobs, now).

The connection controller gathers the facts (the object from its watch cache, the referenced
Secrets, the SyncJobs of the connection it knows of, the queue depth) and `decide` answers with a
`Plan`: at most one SyncJob to create (with a name derived from the state, so a retried or
concurrent create of the same decision hits 409 instead of making a duplicate), when to look
again, and what the status should say. Nothing here does I/O, so every rule has a unit test.
A job with reason `poll` is carried out as a poll asked for in the event store under the same
name, not as a SyncJob (docs/decisions/0018).

The rules:
- A connection bound to another store (`status.storeId`) is not ours: nothing happens.
- Suspended, credentials missing, or credentials the provider refused (`status.refusedCredentials`
  equals the digest of the current Secrets) with nothing attempted changed since (the scope and
  the Secrets, `status.attempted`): no job, and no timer either; a change of the spec or of a
  referenced Secret brings the connection back here, and a changed scope or Secret is tried once.
- While a job of the connection is pending or running: nothing (its end brings us back).
- What is mirrored (`scope`: provider, URL, calendars, window) differs from what the last full
  sync mirrored: a `full` job now. Any other spec change (owner, poll interval, suspend) needs no
  sync; `observedGeneration` then moves to the new generation at once.
- Otherwise the next poll is due `pollInterval` after the last attempt; after failures the delay
  doubles per failed job, up to `BACKOFF_CAP` (but never below the interval). A change of what
  was attempted (the spec's scope or the credentials) since the failed attempt makes it due now.
- While every push channel of the connection is Ready (`subscribed`), polls come every
  `push_poll_interval` (or the connection's own interval, when that is longer): the safety
  net under push notifications.
- A due job is not created while the sync queue holds `queue_cap` pending jobs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calsync.api import CalendarConnectionSpec
from calsync.api.meta import parse_timestamp
from calsync.controllers import push_policy
from calsync.controllers.credentials import UnlabelledSecret

BACKOFF_CAP = 6 * 3600.0
QUEUE_FULL_RECHECK = 30.0
JOB_NAME_MAX = 253


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scope_digest(spec: CalendarConnectionSpec) -> str:
    """What a full sync mirrors: changing any of it asks for a full re-read."""
    scope: dict[str, Any] = {
        "provider": spec.provider,
        "url": spec.caldav_url,
        "include": list(spec.calendars.include),
        "exclude": list(spec.calendars.exclude),
        "window": [spec.sync.window.past_days, spec.sync.window.future_days],
    }
    if spec.caldav_domain is not None:  # only then: a URL connection keeps its old digest
        scope["domain"] = spec.caldav_domain.rstrip(".").lower()
    return _digest(scope)


def credentials_digest(secrets: Mapping[str, Mapping[str, bytes] | None]) -> str:
    """A digest of the referenced Secrets' contents (None: the Secret does not exist)."""
    h = hashlib.sha256()
    for name in sorted(secrets):
        data = secrets[name]
        h.update(b"\x00" + name.encode() + b"\x01")
        if data is None:
            h.update(b"-")
            continue
        if isinstance(data, UnlabelledSecret):
            h.update(b"?")  # exists without the opt-in label: labelling it is a change
            continue
        for key in sorted(data):
            h.update(key.encode() + b"\x02" + bytes(data[key]) + b"\x03")
        allowed = getattr(data, "allowed_host", None)
        if allowed:  # a new allowed host is a change of the credentials too
            h.update(b"\x04" + allowed.encode())
    return h.hexdigest()[:16]


def attempt_digest(scope: str, credentials: str) -> str:
    return _digest([scope, credentials])


def poll_delay(interval: float, failures: int) -> float:
    """Seconds from the last attempt to the next poll."""
    if failures <= 0:
        return interval
    return float(min(max(interval, BACKOFF_CAP), interval * 2 ** (failures - 1)))


parse_time = parse_timestamp


def job_name(connection: str, mode: str, key: str) -> str:
    """`<connection>-<f|i>-<10 hex>`, shortened to fit a name with room to spare."""
    suffix = f"-{mode[0]}-{key[:10]}"
    return connection[: JOB_NAME_MAX - len(suffix)].rstrip("-.") + suffix


@dataclass(frozen=True)
class Facts:
    """Everything `decide` looks at."""

    name: str
    uid: str
    generation: int
    spec: CalendarConnectionSpec
    status: Mapping[str, Any]
    credentials_usable: bool  # the Secrets hold what the provider needs (not: it accepts them)
    credentials: str  # credentials_digest of the referenced Secrets
    active_jobs: int  # this connection's jobs that are pending or running
    queue_pending: int  # pending jobs in the whole queue
    store_id: str
    now: dt.datetime
    default_poll_interval: float
    queue_cap: int
    subscribed: bool = False  # every push channel of the connection is Ready
    push_poll_interval: float = 3600.0  # the poll interval while `subscribed`


@dataclass(frozen=True)
class JobRequest:
    name: str
    mode: str
    reason: str


@dataclass(frozen=True)
class Plan:
    job: JobRequest | None = None
    why: str = ""  # why no job, in a few words (logs, tests)
    recheck_after: float | None = None  # seconds until the decision may change by itself
    observed_generation: int | None = None  # write status.observedGeneration (no sync needed)
    bind_store: bool = False  # write status.storeId (the connection is new to every store)
    spec_changed: bool = False  # what is mirrored changed: the current Ready is out of date
    credentials_changed: bool = False  # the Secrets changed since the provider refused them
    queue_full: bool = False
    foreign_store: bool = False


def decide(f: Facts) -> Plan:
    status = f.status
    bound = status.get("storeId")
    if bound and bound != f.store_id:
        return Plan(why=f"bound to store {bound}", foreign_store=True)
    bind = not bound
    scope = scope_digest(f.spec)
    synced_scope = status.get("syncedScope")
    scope_changed = synced_scope != scope
    observed = f.generation if synced_scope is not None and not scope_changed else None
    refused = status.get("refusedCredentials")
    common: dict[str, Any] = {
        "observed_generation": observed,
        "bind_store": bind,
        "spec_changed": synced_scope is not None and scope_changed,
        "credentials_changed": refused is not None and refused != f.credentials,
    }
    if f.spec.suspend:
        return Plan(why="suspended", **common)
    if not f.credentials_usable:
        return Plan(why="credentials incomplete", **common)
    attempted = status.get("attempted")
    current = attempt_digest(scope, f.credentials)
    changed_since_attempt = attempted is not None and attempted != current
    if refused is not None and refused == f.credentials and not changed_since_attempt:
        return Plan(why="credentials refused", **common)
    if f.active_jobs:
        return Plan(why="a job is pending or running", **common)

    interval = push_policy.effective_poll_interval(
        f.spec.sync.poll_interval_seconds or f.default_poll_interval,
        f.subscribed,
        f.push_poll_interval,
    )
    failures = int(status.get("consecutiveFailures") or 0)
    last_attempt = parse_time(status.get("lastAttemptTime"))
    mode = "full" if scope_changed else "incremental"
    immediate = (
        last_attempt is None
        or (scope_changed and not failures)
        or bool(failures and changed_since_attempt)
    )
    if immediate or last_attempt is None:
        due = f.now
    else:
        due = last_attempt + dt.timedelta(seconds=poll_delay(interval, failures))
    if due > f.now:
        return Plan(why="not due", recheck_after=(due - f.now).total_seconds(), **common)
    if f.queue_pending >= f.queue_cap:
        return Plan(why="queue full", recheck_after=QUEUE_FULL_RECHECK, queue_full=True, **common)
    reason = "lifecycle" if scope_changed or changed_since_attempt else "poll"
    key = _digest([f.uid, f.generation, status.get("lastAttemptTime"), failures, current, mode])
    return Plan(job=JobRequest(job_name(f.name, mode, key), mode, reason), **common)
