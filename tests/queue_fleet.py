"""Helpers for `tests/e2e/test_fleet.py`: calsync components as processes, their run log, calendars.

A `Fleet` starts `calsync operator`, `calsync worker` or `calsync run` processes against one
cluster, namespace and store, with the environment of the session's `operator` fixture (private
addresses allowed, short retry back-off, JSON logs) minus the simulators and the gateway. Every
process gets its own identity, metrics port and log file; the operators of one fleet share a
Lease name of their own, so nothing else in the cluster competes for it.

Each worker logs one JSON line when a run starts and one when it ends (`run=start|end`, with the
connection's store key, the job, the fence token and the outcome); `pair_runs` pairs them up,
and `overlaps` / `fence_regressions` check them against the promise that at most one run of a
connection exists at any moment, in claim order.

Calendars hold plain, non-recurring events (`simple_events`), so a store read back can be
compared with the calendar's files one to one: (UID, SUMMARY) pairs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from calsync.testing.radicale import RadicaleServer
from tests.fixtures.manifests import caldav_connection, secret, sync_job
from tests.support import BIN, Kubectl, Process, free_port, poll

STORE_ID = re.compile(r"event store (\S+) \(")


def env_int(name: str, default: int) -> int:
    """A size from the environment (`name`), else `default`."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# -- processes ------------------------------------------------------------------------------


@dataclass
class RunLine:
    """One `SyncJob NS/NAME started|ended` record of a worker's log."""

    worker: str
    time: dt.datetime
    run: str  # start | end
    connection: str  # the store key (connection UID)
    job: str
    fence: int
    store: str
    outcome: str | None


@dataclass
class Run:
    """A start line and its end line (no end while the run has not ended)."""

    worker: str
    connection: str
    job: str
    fence: int
    store: str
    start: dt.datetime
    end: dt.datetime | None = None
    outcome: str | None = None


class Component:
    """One calsync process of a fleet."""

    def __init__(
        self, label: str, command: str, identity: str, env: dict[str, str], log: Path
    ) -> None:
        self.label = label
        self.command = command
        self.identity = identity
        self.env = env
        self.metrics_port = int(env["CALSYNC_METRICS_PORT"])
        self.health_port = int(env["CALSYNC_HEALTH_PORT"])
        self.process = Process([command], env, log)

    @property
    def pid(self) -> int:
        return int(self.process.proc.pid)

    @property
    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def output(self) -> str:
        return self.process.output()

    def records(self) -> list[dict[str, Any]]:
        """The JSON lines logged so far (anything else, e.g. a traceback, is skipped)."""
        out = []
        for line in self.output().splitlines():
            if not line.startswith("{"):
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line still being written
        return out

    def messages(self) -> list[str]:
        return [str(r.get("message", "")) for r in self.records()]

    def run_lines(self) -> list[RunLine]:
        lines = []
        for rec in self.records():
            if rec.get("run") not in ("start", "end") or "fence" not in rec:
                continue
            lines.append(
                RunLine(
                    worker=self.identity,
                    time=dt.datetime.fromisoformat(rec["time"]),
                    run=rec["run"],
                    connection=str(rec["connection"]),
                    job=str(rec["job"]),
                    fence=int(rec["fence"]),
                    store=str(rec["store"]),
                    outcome=rec.get("outcome"),
                )
            )
        return lines

    def runs(self) -> list[Run]:
        return pair_runs(self.run_lines())

    def store_id(self) -> str | None:
        """The store id the process logged at start ("... event store ID (dialect)")."""
        for message in self.messages():
            if message.startswith("worker ") or message.startswith("operator bound"):
                found = STORE_ID.search(message)
                if found:
                    return found.group(1)
        return None

    def metric(self, name: str) -> float | None:
        """A sample of this process's /metrics (summed over labels), None when absent."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        total: float | None = None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
        return total

    def alive_or_fail(self) -> bool:
        """True while the process runs; a test failure with its output once it has exited."""
        if not self.alive:
            pytest.fail(
                f"{self.label} exited with {self.process.proc.returncode}:\n{self.output()[-4000:]}"
            )
        return True

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind (no Lease release, no claim release)."""
        self.process.proc.kill()
        self.process.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.alive:
            os.kill(self.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        return self.process.stop()


class Fleet:
    """calsync processes sharing one cluster, namespace, store and operator Lease name."""

    def __init__(
        self,
        kubectl: Kubectl,
        namespace: str,
        folder: Path,
        store_url: str,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.folder = folder
        self.store_url = store_url
        self.lease_name = f"calsync-operator-{uuid.uuid4().hex[:8]}"
        self.extra = dict(env or {})
        self.components: list[Component] = []

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubectl.kubeconfig),
            "CALSYNC_NAMESPACES": self.namespace,
            "CALSYNC_KEYRING_NAMESPACE": self.namespace,
            "CALSYNC_OPERATOR_LEASE_NAME": self.lease_name,
            "CALSYNC_STORE_URL": self.store_url,
            "CALSYNC_BIND_ADDRESS": "127.0.0.1",
            "CALSYNC_METRICS_PORT": str(free_port()),
            "CALSYNC_HEALTH_PORT": "0",
            "CALSYNC_GATEWAY_PORT": "0",
            "CALSYNC_LOG_LEVEL": "INFO",
            "CALSYNC_LOG_FORMAT": "json",
            "CALSYNC_ALLOW_PRIVATE_ADDRESSES": "true",
            "CALSYNC_SYNC_RETRY_BACKOFF": "0.2",
            "CALSYNC_SYNC_MAX_RETRIES": "3",
            # The hourly CalDAV budget would throttle ten syncs of one connection in a minute.
            "CALSYNC_CALDAV_RATE_LIMIT": "1000000",
            **self.extra,
        }

    def start(self, command: str, label: str, **overrides: str) -> Component:
        """Start `calsync <command>`; `overrides` are environment variables."""
        identity = f"{label}-{uuid.uuid4().hex[:6]}"
        env = self.environment()
        env["CALSYNC_WORKER_IDENTITY"] = identity
        if command in ("operator", "run"):
            env["CALSYNC_HEALTH_PORT"] = str(free_port())
        env.update(overrides)
        component = Component(label, command, identity, env, self.folder / f"{label}.log")
        self.components.append(component)
        return component

    def worker(self, label: str, **overrides: str) -> Component:
        """A worker, once it has joined its store."""
        component = self.start("worker", label, **overrides)
        poll(
            lambda: component.alive_or_fail() and component.store_id(),
            timeout=90,
            what=f"{label} joined its store",
        )
        return component

    def operator(self, label: str = "operator", **overrides: str) -> Component:
        """An operator expected to win the Lease (it serves /healthz once Kopf runs)."""
        component = self.start("operator", label, **overrides)
        wait_healthy(component)
        return component

    def stop(self) -> dict[str, int]:
        """Stop every process (all asked at once, then each waited for); their exit codes."""
        for component in self.components:
            if component.alive:
                component.resume()  # a stopped process cannot act on SIGTERM
                component.process.proc.terminate()
        return {c.label: c.stop() for c in self.components}

    def runs(self) -> list[Run]:
        return pair_runs(line for c in self.components for line in c.run_lines())

    def dump(self) -> str:
        """The tail of every log, for a failure message."""
        return "\n".join(f"--- {c.label}:\n{c.output()[-3000:]}" for c in self.components)


def wait_healthy(component: Component, timeout: float = 90) -> None:
    def healthy() -> bool:
        component.alive_or_fail()
        try:
            url = f"http://127.0.0.1:{component.health_port}/healthz"
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    poll(healthy, timeout=timeout, interval=0.5, what=f"{component.label} /healthz")


# -- the run log ------------------------------------------------------------------------------


def pair_runs(lines: Iterable[RunLine]) -> list[Run]:
    """Pair each start line with the end line of the same worker, job and fence."""
    runs: list[Run] = []
    open_runs: dict[tuple[str, str, int], Run] = {}
    for line in sorted(lines, key=lambda ln: (ln.time, ln.run != "start")):
        key = (line.worker, line.job, line.fence)
        if line.run == "start":
            run = Run(line.worker, line.connection, line.job, line.fence, line.store, line.time)
            runs.append(run)
            open_runs[key] = run
        else:
            match = open_runs.pop(key, None)
            if match is None:
                raise AssertionError(f"an end line without a start: {line}")
            match.end, match.outcome = line.time, line.outcome
    return runs


def by_connection(runs: Iterable[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        out[run.connection].append(run)
    for group in out.values():
        group.sort(key=lambda r: (r.start, r.fence))
    return dict(out)


def overlaps(runs: Iterable[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one connection that were alive at the same time.

    A run that never logged its end is alive until the end of time. The timestamps are the
    host's clock at millisecond resolution, and a run logs its end before it lets its claim go,
    so the next start may carry the same millisecond but never an earlier one."""
    found = []
    for group in by_connection(runs).values():
        for i, first in enumerate(group):
            for second in group[i + 1 :]:
                if first.end is None or second.start < first.end:
                    found.append((first, second))
    return found


def fence_regressions(runs: Iterable[Run]) -> list[tuple[Run, Run]]:
    """Consecutive runs of one connection (by start) whose fence tokens do not increase."""
    found = []
    for group in by_connection(runs).values():
        for first, second in itertools.pairwise(group):
            if second.fence <= first.fence:
                found.append((first, second))
    return found


# -- cluster objects ----------------------------------------------------------------------------


def secret_manifest(name: str, username: str, password: str) -> dict[str, Any]:
    return secret(name, username=username, password=password)


def connection_manifest(
    name: str, url: str, secret: str, *, poll_interval: str | None = None
) -> dict[str, Any]:
    return caldav_connection(name, url, secret, poll_interval=poll_interval)


def syncjob_manifest(name: str, connection: str) -> dict[str, Any]:
    return sync_job(name, connection)


def apply_all(kubectl: Kubectl, namespace: str, objects: Iterable[Mapping[str, Any]]) -> None:
    """Apply many objects with one kubectl call (a multi-document YAML)."""
    text = yaml.safe_dump_all(list(objects))
    kubectl("apply", "-n", namespace, "-f", "-", input=text, timeout=600)


def create_all(kubectl: Kubectl, namespace: str, objects: Iterable[Mapping[str, Any]]) -> None:
    """Create many objects with one kubectl call (a multi-document YAML)."""
    text = yaml.safe_dump_all(list(objects))
    kubectl("create", "-n", namespace, "-f", "-", input=text, timeout=600)


def items(kubectl: Kubectl, namespace: str, kind: str) -> list[dict[str, Any]]:
    return list(kubectl.json("get", kind, "-n", namespace)["items"])


def job_finished(job: Mapping[str, Any]) -> bool:
    """Complete (Succeeded or Superseded) or Failed, by phase or by condition."""
    status = job.get("status") or {}
    if status.get("phase") in ("Succeeded", "Superseded", "Failed"):
        return True
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def condition_of(obj: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def is_ready(obj: Mapping[str, Any]) -> bool:
    cond = condition_of(obj, "Ready")
    return cond is not None and cond.get("status") == "True"


# -- calendars and the store ------------------------------------------------------------------


def vevent(uid: str, summary: str, start: dt.datetime) -> str:
    begin = start.strftime("%Y%m%dT%H%M%SZ")
    end = (start + dt.timedelta(minutes=30)).strftime("%Y%m%dT%H%M%SZ")
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//calsync tests//fleet//EN",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        "DTSTAMP:20250101T000000Z",
        f"DTSTART:{begin}",
        f"DTEND:{end}",
        f"SUMMARY:{summary}",
        "END:VEVENT",
        "END:VCALENDAR",
        "",
    ]
    return "\r\n".join(lines)


def simple_events(prefix: str, count: int, start: dt.datetime, *, first: int = 0) -> dict[str, str]:
    """`count` one-off events, `filename -> VCALENDAR`, one an hour from `start`."""
    out = {}
    for n in range(first, first + count):
        name = f"{prefix}-{n:05d}"
        when = start + dt.timedelta(hours=n)
        out[f"{name}.ics"] = vevent(f"{name}@fleet.test", f"{prefix} event {n}", when)
    return out


@dataclass
class Calendar:
    """A Radicale calendar of one user, loaded through its files, changed over HTTP."""

    server: RadicaleServer
    user: str
    password: str
    slug: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.collection_url(self.user, self.slug)

    @property
    def folder(self) -> Path:
        return self.server.storage_root / "collection-root" / self.user / self.slug

    def seed(self, objects: Mapping[str, str]) -> None:
        """Write objects straight into the storage (fast: for loading, not for changes)."""
        self.server.seed_collection_files(self.user, self.slug, objects)
        self.files.update(objects)

    def put(self, objects: Mapping[str, str]) -> None:
        """PUT objects the way a client would (the server records the change)."""
        with httpx.Client(auth=(self.user, self.password), timeout=60) as client:
            for name, text in objects.items():
                response = client.put(
                    self.url + name,
                    content=text.encode(),
                    headers={"Content-Type": "text/calendar; charset=utf-8"},
                )
                assert response.status_code in (200, 201, 204), response.text[:300]
        self.files.update(objects)

    def delete(self, names: Iterable[str]) -> None:
        with httpx.Client(auth=(self.user, self.password), timeout=60) as client:
            for name in names:
                response = client.delete(self.url + name)
                assert response.status_code in (200, 204), response.text[:300]
                self.files.pop(name, None)

    def truth(self) -> set[tuple[str, str]]:
        """(UID, SUMMARY) of every object the server holds now, read from its files."""
        pairs = set()
        for path in self.folder.glob("*.ics"):
            uid = summary = None
            for line in path.read_text().splitlines():
                if line.startswith("UID:"):
                    uid = line[4:].strip()
                elif line.startswith("SUMMARY:"):
                    summary = line[8:].strip()
            assert uid is not None and summary is not None, path
            pairs.add((uid, summary))
        return pairs


def new_calendar(server: RadicaleServer, user: str, password: str, prefix: str) -> Calendar:
    slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
    server.create_calendar(user, password, slug, slug)
    return Calendar(server, user, password, slug)


def events_cli(store_url: str, key: str) -> subprocess.CompletedProcess[str]:
    """`calsync events` for the connection whose UID is `key`: everything, as JSON."""
    return subprocess.run(
        [
            str(BIN / "calsync"),
            "events",
            "--connection-key",
            key,
            "--store",
            store_url,
            "--format",
            "json",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
            "--include-cancelled",
            "--limit",
            "1000000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def stored_pairs(store_url: str, key: str) -> set[tuple[str, str]]:
    """(UID, SUMMARY) of what `calsync events` reads for the connection whose UID is `key`."""
    done = events_cli(store_url, key)
    if done.returncode == 1 and "nothing is stored" in done.stderr:
        return set()
    assert done.returncode == 0, done.stderr
    return {(e["uid"], e["summary"]) for e in json.loads(done.stdout)}


def nothing_stored(store_url: str, key: str) -> bool:
    """`calsync events` says the store holds nothing for `key` (and exits 1)."""
    done = events_cli(store_url, key)
    return done.returncode == 1 and "nothing is stored" in done.stderr


def stored_pairs_of(store_url: str, keys: Iterable[str]) -> dict[str, set[tuple[str, str]]]:
    """`stored_pairs` for many connections from one process (the stored rows, unexpanded)."""
    from calsync.store import EventStore

    async def read() -> dict[str, set[tuple[str, str]]]:
        store = await EventStore.open(store_url)
        try:
            out = {}
            for key in keys:
                found = await store.query(key, expand=False, limit=1_000_000)
                out[key] = {(o.uid, o.summary or "") for o in found.occurrences}
            return out
        finally:
            await store.close()

    return asyncio.run(read())


def stored_count(store_url: str, key: str) -> int:
    """How many events the store holds for the connection whose UID is `key`."""
    from calsync.store import EventStore

    async def count() -> int:
        store = await EventStore.open(store_url)
        try:
            return await store.count_events(key)
        finally:
            await store.close()

    return asyncio.run(count())


def advisory_locks(store_url: str) -> list[dict[str, Any]]:
    """PostgreSQL's advisory locks with their sessions' state (for failure messages)."""
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    url = make_url(store_url).set(drivername="postgresql").render_as_string(False)

    async def read() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT l.pid, l.mode, l.granted, a.state, a.wait_event_type, "
                "left(a.query, 120) AS query FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
            )
            return [dict(r) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(read())


def failed_logins(server: RadicaleServer, user: str) -> int:
    """Requests Radicale refused for `user` (it logs each failed login as a warning)."""
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return sum(
        1 for line in text.splitlines() if "Failed login attempt" in line and repr(user) in line
    )


# Sessions holding or asking for an advisory lock: the store's claim lock ("clms") and page lock
# ("cals") are both transaction-scoped, so a holder is inside a write transaction.
_ADVISORY = """
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND a.datname = current_database() AND a.pid <> pg_backend_pid()
"""


def freeze(component: Component, store_url: str, *, inside_write: bool, within: float = 60) -> int:
    """SIGSTOP `component` while it is inside a store write (it holds an advisory lock) or
    outside any (it holds none); return the number of tries. Only `component` may be writing:
    whoever holds a lock is taken to be it. Fails when no such moment came `within` seconds."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(store_url).set(drivername="postgresql").render_as_string(False)

    async def attempt() -> int:
        conn = await asyncpg.connect(url)
        try:
            deadline = time.monotonic() + within
            tries = 0
            while time.monotonic() < deadline:
                if inside_write and not await conn.fetchval(_ADVISORY):
                    await asyncio.sleep(0.001)
                    continue
                tries += 1
                component.pause()
                # A lock request already sent is answered within milliseconds: ask twice.
                first = bool(await conn.fetchval(_ADVISORY))
                await asyncio.sleep(0.05)
                second = bool(await conn.fetchval(_ADVISORY))
                if (first and second) if inside_write else not (first or second):
                    return tries
                component.resume()
                await asyncio.sleep(0.02)
            where = "inside" if inside_write else "outside"
            pytest.fail(f"could not freeze {component.label} {where} a store write")
        finally:
            await conn.close()

    return asyncio.run(attempt())
