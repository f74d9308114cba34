"""The sync queue as a fleet: operators and workers as separate processes on one PostgreSQL store.

Every test starts real `calsync operator` / `calsync worker` (and once `calsync run`) processes
against a real kube-apiserver, a PostgreSQL database of its own and real Radicale calendars,
then checks what the design promises a fleet: at most one run per connection at any moment
(read from the workers' `run=start|end` log lines) and fence tokens in claim order; nothing
written by a worker frozen (SIGSTOP) past its lease, whether frozen between two store writes or
inside one (where it must not stall anyone else either); one attempt with refused credentials
until the Secret or the mirrored scope changes; no old events under a re-created name; one
active operator and a standby that takes over; a stray process on another store that leaves
the fleet's work alone.

The tests run on the session's quiet cluster (`quiet_kubectl` in tests/conftest.py): the
session's `operator` fixture watches the whole main cluster and would bind these tests'
connections to its SQLite store. Every process here watches its test's namespace only.

Sizes are module constants; the environment overrides them (`CALSYNC_FLEET_CONNECTIONS`,
`CALSYNC_FLEET_JOBS_PER_CONNECTION`, `CALSYNC_FLEET_EVENTS`, `CALSYNC_FLEET_SLOW_EVENTS`,
`CALSYNC_FLEET_RECREATE_EVENTS`, `CALSYNC_FLEET_REPLICA_CONNECTIONS`,
`CALSYNC_FLEET_STRAY_CONNECTIONS`, and `CALSYNC_FLEET_HOLD`, the seconds a refused connection
is watched for a second attempt). The defaults are the full size of the exclusivity test (50
connections, 10 manual SyncJobs each): the module takes about six minutes on a two-core
machine. A quicker run:

    CALSYNC_FLEET_CONNECTIONS=10 CALSYNC_FLEET_HOLD=10 \\
        .venv/bin/pytest tests/e2e/test_fleet.py -m e2e

A larger one: `CALSYNC_FLEET_CONNECTIONS=200 CALSYNC_FLEET_JOBS_PER_CONNECTION=20`.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from calsync.testing.radicale import RadicaleServer
from tests.fixtures.radicale import USERS
from tests.queue_fleet import (
    Component,
    Fleet,
    Run,
    advisory_locks,
    apply_all,
    by_connection,
    condition_of,
    connection_manifest,
    create_all,
    env_int,
    failed_logins,
    fence_regressions,
    freeze,
    is_ready,
    items,
    job_finished,
    new_calendar,
    nothing_stored,
    overlaps,
    secret_manifest,
    simple_events,
    stored_count,
    stored_pairs,
    stored_pairs_of,
    syncjob_manifest,
    wait_healthy,
)
from tests.support import Kubectl, backdate_last_attempt, holds, poll

pytestmark = pytest.mark.e2e

CONNECTIONS = env_int("CALSYNC_FLEET_CONNECTIONS", 50)
JOBS_PER_CONNECTION = env_int("CALSYNC_FLEET_JOBS_PER_CONNECTION", 10)
EVENTS_PER_CALENDAR = env_int("CALSYNC_FLEET_EVENTS", 5)
SLOW_EVENTS = env_int("CALSYNC_FLEET_SLOW_EVENTS", 1500)
# How long a refused connection whose poll would be overdue is watched for a second attempt.
HOLD = env_int("CALSYNC_FLEET_HOLD", 20)
RECREATE_EVENTS = env_int("CALSYNC_FLEET_RECREATE_EVENTS", 600)
REPLICA_CONNECTIONS = env_int("CALSYNC_FLEET_REPLICA_CONNECTIONS", 20)
STRAY_CONNECTIONS = env_int("CALSYNC_FLEET_STRAY_CONNECTIONS", 8)
WORKERS = 3

NOW = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def kc(quiet_kubectl: Kubectl) -> Kubectl:
    """The quiet cluster: no session-wide operator there binds these tests' connections."""
    return quiet_kubectl


@pytest.fixture
def ns(kc: Kubectl) -> Iterator[str]:
    name = f"f-{uuid.uuid4().hex[:10]}"
    kc("create", "namespace", name)
    yield name
    kc("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def pg(postgres_url: str) -> str:
    """The test's fresh PostgreSQL database, in the async URL form the store takes."""
    return make_url(postgres_url).set(drivername="postgresql+asyncpg").render_as_string(False)


@pytest.fixture
def fleet(kc: Kubectl, ns: str, tmp_path: Path, pg: str) -> Iterator[Fleet]:
    f = Fleet(kc, ns, tmp_path, pg)
    yield f
    f.stop()


# -- helpers ------------------------------------------------------------------------------------


def wait_all_ready(kc: Kubectl, ns: str, count: int, timeout: float = 300) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        conns = items(kc, ns, "calconn")
        return conns if len(conns) == count and all(is_ready(c) for c in conns) else None

    return list(poll(ready, timeout=timeout, interval=2, what=f"{count} connections Ready"))


# -- 1. exclusive runs --------------------------------------------------------------------------


def test_runs_of_a_connection_never_overlap(
    kc: Kubectl, ns: str, fleet: Fleet, radicale: RadicaleServer, pg: str
) -> None:
    operator = fleet.operator()
    workers = [fleet.worker(f"worker-{i}") for i in range(1, WORKERS + 1)]
    store_id = operator.store_id()
    assert store_id and all(w.store_id() == store_id for w in workers)

    calendars = {}
    for i in range(CONNECTIONS):
        cal = new_calendar(radicale, "alice", USERS["alice"], f"fleet{i:03d}")
        cal.seed(simple_events(f"c{i:03d}", EVENTS_PER_CALENDAR, NOW))
        calendars[f"conn-{i:03d}"] = cal
    apply_all(
        kc,
        ns,
        [secret_manifest("dav", "alice", USERS["alice"])]
        + [connection_manifest(name, cal.url, "dav") for name, cal in calendars.items()],
    )
    conns = wait_all_ready(kc, ns, CONNECTIONS)
    keys = {c["metadata"]["name"]: c["metadata"]["uid"] for c in conns}

    manual = [
        syncjob_manifest(f"{name}-m{j:02d}", name)
        for j in range(JOBS_PER_CONNECTION)
        for name in calendars
    ]
    create_all(kc, ns, manual)

    def all_finished() -> list[dict[str, Any]] | None:
        jobs = items(kc, ns, "sj")
        done = [j for j in jobs if job_finished(j)]
        return jobs if len(done) == len(jobs) >= len(manual) else None

    jobs = poll(all_finished, timeout=900, interval=3, what="every SyncJob finished")
    for worker in workers:
        worker.stop()  # every end line is written before a clean stop

    phases = collections.Counter(j["status"]["phase"] for j in jobs)
    failed = [
        (j["metadata"]["name"], j["status"].get("error"))
        for j in jobs
        if j["status"]["phase"] == "Failed"
    ]
    assert not failed, failed[:5]

    runs = fleet.runs()
    assert runs, fleet.dump()
    assert not [r for r in runs if r.end is None], "runs without an end line"
    clashes = overlaps(runs)
    assert not clashes, clashes[:5]
    regressions = fence_regressions(runs)
    assert not regressions, regressions[:5]
    assert {r.store for r in runs} == {store_id}
    assert set(by_connection(runs)) <= set(keys.values())

    successes = collections.Counter(r.job for r in runs if r.outcome == "succeeded")
    assert max(successes.values()) == 1, successes.most_common(3)
    for job in jobs:
        name, phase = job["metadata"]["name"], job["status"]["phase"]
        expected = 1 if phase == "Succeeded" else 0
        assert successes.get(name, 0) == expected, (name, phase, job["status"])

    for job in jobs:
        complete = condition_of(job, "Complete")
        if job["status"]["phase"] in ("Succeeded", "Superseded"):
            assert complete and complete["status"] == "True", job["status"]

    spread = collections.Counter(r.worker for r in runs)
    print(f"\nphases {dict(phases)}; runs per worker {dict(spread)}; runs {len(runs)}")
    assert len(spread) == WORKERS, spread

    # What the fleet stored is what the calendars hold.
    stored = stored_pairs_of(pg, keys.values())
    for name, cal in calendars.items():
        assert stored[keys[name]] == cal.truth(), name


# -- 2. fencing under SIGSTOP -------------------------------------------------------------------


def test_a_worker_frozen_past_its_lease_writes_nothing(
    kc: Kubectl, ns: str, fleet: Fleet, radicale: RadicaleServer, pg: str
) -> None:
    # Small pages make the first run write for a while: long enough to freeze it in between.
    fleet.extra.update(CALSYNC_SYNC_LEASE="5", CALSYNC_SYNC_BATCH_SIZE="10")
    fleet.operator()
    workers = [fleet.worker("worker-1"), fleet.worker("worker-2")]
    cal = new_calendar(radicale, "alice", USERS["alice"], "frozen")
    cal.seed(simple_events("big", SLOW_EVENTS, NOW))
    apply_all(
        kc,
        ns,
        [
            secret_manifest("dav", "alice", USERS["alice"]),
            connection_manifest("big", cal.url, "dav"),
        ],
    )
    key = poll(lambda: items(kc, ns, "calconn")[0]["metadata"]["uid"], what="the connection")

    def started() -> tuple[Component, Run] | None:
        for worker in workers:
            for run in worker.runs():
                if run.connection == key:
                    return worker, run
        return None

    frozen, run = poll(started, timeout=120, what="a run of the connection")
    # Freeze it once it has stored a page, so it holds pages it has not written yet, between
    # two page transactions (frozen inside one it keeps a lock until the server ends its
    # session: the last test).
    poll(lambda: stored_count(pg, key) > 0, timeout=120, interval=0.1, what="a first page")
    freeze(frozen, pg, inside_write=False)
    at_freeze = stored_count(pg, key)
    assert at_freeze < SLOW_EVENTS and not [
        r for r in frozen.runs() if r.connection == key and r.end
    ], f"the run finished before it was frozen; raise CALSYNC_FLEET_SLOW_EVENTS ({SLOW_EVENTS})"
    other = workers[1] if frozen is workers[0] else workers[0]

    def taken_over() -> bool:
        status = kc.json("get", f"sj/{run.job}", "-n", ns).get("status") or {}
        return status.get("phase") == "Succeeded" and status.get("claimedBy") == other.identity

    try:
        poll(taken_over, timeout=180, interval=1, what=f"{other.label} completing {run.job}")
    except BaseException:
        print("advisory locks:", advisory_locks(pg))
        raise
    takeover = [r for r in other.runs() if r.connection == key]
    assert takeover and takeover[-1].fence > run.fence

    # Change the calendar while the frozen worker still holds its old pages, then sync again.
    names = sorted(cal.files)
    cal.delete(names[::15])
    cal.put({n: cal.files[n].replace("SUMMARY:", "SUMMARY:changed ") for n in names[7::15]})
    cal.put(simple_events("late", 20, NOW))
    create_all(kc, ns, [syncjob_manifest("after-change", "big")])
    after: dict[str, Any] = {}

    def after_change_done() -> bool:
        after.update(kc.json("get", "sj/after-change", "-n", ns).get("status") or {})
        return after.get("phase") in ("Succeeded", "Superseded", "Failed")

    try:
        poll(after_change_done, timeout=180, what="the sync after the change")
    except BaseException:
        print("the job after the change:", after, "\nother worker:", other.output()[-3000:])
        raise
    assert after["phase"] == "Succeeded", after
    truth = cal.truth()
    assert stored_pairs(pg, key) == truth

    frozen.resume()
    ended = poll(
        lambda: [r for r in frozen.runs() if r.job == run.job and r.end is not None],
        timeout=120,
        what="the frozen run's end line",
    )
    assert ended[0].outcome in ("fenced", "lost"), ended
    assert (frozen.metric("calsync_sync_runs_fenced_total") or 0) >= 1
    assert stored_pairs(pg, key) == truth
    status = kc.json("get", f"sj/{run.job}", "-n", ns)["status"]
    assert (status["phase"], status["claimedBy"]) == ("Succeeded", other.identity)
    print(f"\nfrozen at {at_freeze}/{SLOW_EVENTS} events; its run ended {ended[0].outcome}")


# -- 3. refused password ------------------------------------------------------------------------


def test_a_refused_password_is_tried_once_until_the_secret_or_scope_changes(
    kc: Kubectl, ns: str, fleet: Fleet, radicale: RadicaleServer, pg: str
) -> None:
    fleet.operator()
    worker = fleet.worker("worker")
    user, password = f"carol-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    radicale.add_user(user, password)
    cal = new_calendar(radicale, user, password, "refused")
    cal.seed(simple_events("refused", 3, NOW))
    apply_all(
        kc,
        ns,
        [
            secret_manifest("dav", user, "not-the-password"),
            connection_manifest("carol", cal.url, "dav", poll_interval="1m"),
        ],
    )

    def refused() -> dict[str, Any] | None:
        ready = condition_of(kc.json("get", "calconn/carol", "-n", ns), "Ready")
        if (
            ready
            and ready["status"] == "False"
            and "no sync is attempted until" in ready["message"]
        ):
            return ready
        return None

    ready = poll(refused, timeout=120, what="Ready=False saying no sync is attempted")
    assert "Secret" in ready["message"] and "spec" in ready["message"], ready
    body = kc.json("get", "calconn/carol", "-n", ns)
    key, generation = body["metadata"]["uid"], body["metadata"]["generation"]

    def attempts() -> tuple[int, int, int]:
        runs = [r for r in worker.runs() if r.connection == key]
        return len(runs), failed_logins(radicale, user), len(items(kc, ns, "sj"))

    first = poll(lambda: (a := attempts())[0] and a, what="the worker's run")
    assert first[0] == 1 and first[1] >= 1 and first[2] == 1, first
    # As if the attempt had been two poll intervals (1m, the shortest allowed) ago: a poll
    # would be overdue, yet nothing is tried, no job and no request.
    backdate_last_attempt(kc, ns, "carol", 120)
    holds(
        lambda: attempts() == first and refused(),
        seconds=HOLD,
        what="one attempt and Ready=False",
    )

    # A change of what is mirrored (here the window) is worth one attempt more, and one only.
    window = {"spec": {"sync": {"window": {"pastDays": 300, "futureDays": 700}}}}
    kc("patch", "calconn/carol", "-n", ns, "--type=merge", "-p", json.dumps(window))

    def refused_again() -> tuple[int, int, int] | None:
        ready = refused()
        ended = [r for r in worker.runs() if r.connection == key and r.end is not None]
        if len(ended) == 2 and ready and ready["observedGeneration"] == generation + 1:
            return attempts()
        return None

    second = poll(refused_again, timeout=120, what="a second refused attempt")
    assert second == (2, 2 * first[1], 2), (first, second)

    apply_all(kc, ns, [secret_manifest("dav", user, password)])
    poll(
        lambda: is_ready(kc.json("get", "calconn/carol", "-n", ns)),
        timeout=120,
        what="Ready=True after the Secret was fixed",
    )
    assert kc.json("get", "calconn/carol", "-n", ns)["metadata"]["generation"] == generation + 1
    assert failed_logins(radicale, user) == second[1]
    assert len([r for r in worker.runs() if r.connection == key]) == 3
    assert stored_pairs(pg, key) == cal.truth()
    print(f"\nrefused requests at Radicale per attempt: {first[1]}")


# -- 4. delete during a sync, re-create with the same name --------------------------------------


def test_a_recreated_connection_never_shows_the_old_ones_events(
    kc: Kubectl, ns: str, fleet: Fleet, radicale: RadicaleServer, pg: str
) -> None:
    fleet.extra.update(CALSYNC_SYNC_BATCH_SIZE="10")
    fleet.operator()
    worker = fleet.worker("worker")
    cal = new_calendar(radicale, "alice", USERS["alice"], "recreated")
    cal.seed(simple_events("old", RECREATE_EVENTS, NOW))
    apply_all(
        kc,
        ns,
        [
            secret_manifest("dav", "alice", USERS["alice"]),
            connection_manifest("dora", cal.url, "dav"),
        ],
    )
    old = poll(lambda: items(kc, ns, "calconn")[0]["metadata"]["uid"], what="the connection")
    poll(lambda: [r for r in worker.runs() if r.connection == old], what="its first run")
    poll(lambda: stored_count(pg, old) > 0, timeout=120, interval=0.1, what="a first page")
    kc("delete", "calconn/dora", "-n", ns, "--wait=false")
    poll(
        lambda: kc("get", "calconn/dora", "-n", ns, check=False).returncode != 0,
        timeout=120,
        what="the connection gone",
    )
    assert nothing_stored(pg, old)
    interrupted = poll(
        lambda: [r for r in worker.runs() if r.connection == old and r.end is not None],
        what="the interrupted run's end line",
    )
    assert interrupted[0].outcome != "succeeded", (
        f"the sync ended before the deletion: raise CALSYNC_FLEET_RECREATE_EVENTS "
        f"({RECREATE_EVENTS})"
    )

    # The calendar changes before the connection comes back under the same name.
    names = sorted(cal.files)
    cal.delete(names[::10])
    cal.put({n: cal.files[n].replace("SUMMARY:old", "SUMMARY:new") for n in names[5::10]})
    cal.put(simple_events("added", 5, NOW))
    apply_all(kc, ns, [connection_manifest("dora", cal.url, "dav")])
    body = poll(
        lambda: (b := kc.json("get", "calconn/dora", "-n", ns)) and is_ready(b) and b,
        timeout=180,
        what="the new connection Ready",
    )
    new = body["metadata"]["uid"]
    assert new != old
    assert stored_pairs(pg, new) == cal.truth()
    assert nothing_stored(pg, old)
    print(f"\nthe deleted connection's run ended {interrupted[0].outcome}")


# -- 5. two operator replicas -------------------------------------------------------------------


def test_one_operator_acts_and_a_standby_takes_over(
    kc: Kubectl, ns: str, fleet: Fleet, radicale: RadicaleServer, pg: str
) -> None:
    fleet.extra.update(CALSYNC_OPERATOR_LEASE_DURATION="6")
    first = fleet.operator("operator-1")
    second = fleet.start("operator", "operator-2")
    poll(
        lambda: second.alive_or_fail() and any("standing by" in m for m in second.messages()),
        timeout=60,
        what="operator-2 standing by",
    )
    fleet.worker("worker")

    def holder() -> str:
        lease = kc.json("get", f"lease/{fleet.lease_name}", "-n", ns)
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    assert holder() == first.identity
    calendars = {}
    for i in range(REPLICA_CONNECTIONS):
        cal = new_calendar(radicale, "alice", USERS["alice"], f"replica{i:02d}")
        cal.seed(simple_events(f"r{i:02d}", 3, NOW))
        calendars[f"conn-{i:02d}"] = cal
    apply_all(
        kc,
        ns,
        [secret_manifest("dav", "alice", USERS["alice"])]
        + [connection_manifest(name, cal.url, "dav") for name, cal in calendars.items()],
    )
    wait_all_ready(kc, ns, REPLICA_CONNECTIONS)

    def jobs_per_connection() -> dict[str, list[str]]:
        out: dict[str, list[str]] = collections.defaultdict(list)
        for job in items(kc, ns, "sj"):
            out[job["spec"]["connection"]].append(job["spec"].get("mode", ""))
        return dict(out)

    assert jobs_per_connection() == {name: ["full"] for name in calendars}
    assert holder() == first.identity
    assert not any("acting as the operator" in m for m in second.messages())

    first.kill()
    poll(lambda: holder() == second.identity, timeout=60, what="operator-2 holding the Lease")
    wait_healthy(second)
    late = new_calendar(radicale, "alice", USERS["alice"], "late")
    late.seed(simple_events("late", 3, NOW))
    apply_all(kc, ns, [connection_manifest("late", late.url, "dav")])
    conns = wait_all_ready(kc, ns, REPLICA_CONNECTIONS + 1)
    assert jobs_per_connection() == {name: ["full"] for name in [*calendars, "late"]}
    keys = {c["metadata"]["name"]: c["metadata"]["uid"] for c in conns}
    assert stored_pairs(pg, keys["late"]) == late.truth()


# -- 6. a stray process on another store --------------------------------------------------------


def test_a_stray_process_on_another_store_leaves_the_fleet_alone(
    kc: Kubectl, ns: str, fleet: Fleet, radicale: RadicaleServer, pg: str, tmp_path: Path
) -> None:
    operator = fleet.operator()
    fleet.worker("worker-1")
    fleet.worker("worker-2")
    store_id = operator.store_id()
    calendars = {}
    for i in range(STRAY_CONNECTIONS):
        cal = new_calendar(radicale, "alice", USERS["alice"], f"stray{i:02d}")
        cal.seed(simple_events(f"s{i:02d}", 4, NOW))
        calendars[f"conn-{i:02d}"] = cal
    apply_all(
        kc,
        ns,
        [secret_manifest("dav", "alice", USERS["alice"])]
        + [connection_manifest(name, cal.url, "dav") for name, cal in calendars.items()],
    )
    conns = wait_all_ready(kc, ns, STRAY_CONNECTIONS)
    keys = {c["metadata"]["name"]: c["metadata"]["uid"] for c in conns}
    assert {c["status"]["storeId"] for c in conns} == {store_id}

    # A laptop's `calsync run` with its own SQLite file and its own operator Lease.
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'stray.db'}"
    stray = fleet.start(
        "run", "stray", CALSYNC_STORE_URL=sqlite, CALSYNC_OPERATOR_LEASE_NAME="stray-operator"
    )
    wait_healthy(stray)
    stray_store = stray.store_id()
    assert stray_store and stray_store != store_id

    for name, cal in calendars.items():
        cal.put(simple_events(f"{name}-more", 2, NOW))
    create_all(
        kc,
        ns,
        [syncjob_manifest(f"{name}-m{j}", name) for name in calendars for j in range(2)],
    )

    def all_finished() -> list[dict[str, Any]] | None:
        jobs = items(kc, ns, "sj")
        return jobs if all(job_finished(j) for j in jobs) else None

    jobs = poll(all_finished, timeout=300, interval=2, what="every SyncJob finished")
    assert len(jobs) == 3 * STRAY_CONNECTIONS
    assert not [j for j in jobs if j["status"].get("claimedBy") == stray.identity]
    # Every job that ran, ran on the fleet's store; a job superseded before it ran names none.
    ran = [j for j in jobs if j["status"].get("claimedBy")]
    assert {j["status"].get("storeId") for j in ran} == {store_id}
    unclaimed = [j["status"] for j in jobs if not j["status"].get("claimedBy")]
    assert all(st["phase"] == "Superseded" and not st.get("storeId") for st in unclaimed), unclaimed
    stored = stored_pairs_of(pg, keys.values())
    for name, cal in calendars.items():
        assert stored[keys[name]] == cal.truth(), name
    assert not any(stored_pairs_of(sqlite, keys.values()).values())

    def said_once() -> bool:
        messages = stray.messages()
        for name in calendars:
            worker_lines = [
                m for m in messages if m.startswith(f"not running SyncJobs of {ns}/{name}:")
            ]
            operator_lines = [
                m for m in messages if m.startswith(f"CalendarConnection {ns}/{name} is bound")
            ]
            if len(worker_lines) != 1 or len(operator_lines) > 1:
                return False
        return True

    assert said_once(), "\n".join(m for m in stray.messages() if "bound" in m)
    assert (stray.metric("calsync_syncjobs_skipped_total") or 0) >= STRAY_CONNECTIONS

    # Both operators handle the deletions (one finalizer name). With the fleet's operator away
    # (busy, restarting), the stray must not release the finalizer of connections bound to the
    # fleet's store: their events would stay there for good.
    assert operator.process.stop() is not None
    kc("delete", "calconn", "--all", "-n", ns, "--wait=false")

    def stray_waits() -> bool:
        waiting = [m for m in stray.messages() if "waiting for that store's operator" in m]
        return all(any(f"{ns}/{name} " in m for m in waiting) for name in calendars)

    poll(stray_waits, timeout=60, interval=0.5, what="the stray to leave the purges to the fleet")
    assert len(items(kc, ns, "calconn")) == STRAY_CONNECTIONS
    assert all(stored_pairs_of(pg, keys.values()).values())
    fleet.operator("operator-2")
    poll(lambda: not items(kc, ns, "calconn"), timeout=120, interval=1, what="purged and gone")
    leftover = {k: v for k, v in stored_pairs_of(pg, keys.values()).items() if v}
    assert not leftover, f"not purged: {sorted(leftover)}"


# -- 7. frozen inside a store write -------------------------------------------------------------


def test_a_worker_frozen_inside_a_store_write_stalls_no_other_work(
    kc: Kubectl, ns: str, fleet: Fleet, radicale: RadicaleServer, pg: str
) -> None:
    fleet.extra.update(CALSYNC_SYNC_LEASE="5", CALSYNC_SYNC_BATCH_SIZE="10")
    fleet.operator()
    frozen = fleet.worker("worker-1")
    big = new_calendar(radicale, "alice", USERS["alice"], "stall")
    big.seed(simple_events("stall", SLOW_EVENTS, NOW))
    apply_all(
        kc,
        ns,
        [
            secret_manifest("dav", "alice", USERS["alice"]),
            connection_manifest("big", big.url, "dav"),
        ],
    )
    key = poll(lambda: items(kc, ns, "calconn")[0]["metadata"]["uid"], what="the connection")
    poll(lambda: stored_count(pg, key) > 0, timeout=120, interval=0.1, what="a first page")
    freeze(frozen, pg, inside_write=True)
    job = next(r.job for r in frozen.runs() if r.connection == key)
    other = fleet.worker("worker-2")

    def lapsed() -> bool:
        status = kc.json("get", f"sj/{job}", "-n", ns).get("status") or {}
        expiry = str(status.get("leaseExpiresAt") or "")
        return bool(expiry) and dt.datetime.fromisoformat(expiry) < dt.datetime.now(dt.UTC)

    poll(lapsed, timeout=60, what="the frozen run's lease lapsed")
    # Once the lease has lapsed, the other worker both takes the connection over and goes on
    # serving the others.
    small = new_calendar(radicale, "alice", USERS["alice"], "unrelated")
    small.seed(simple_events("unrelated", 3, NOW))
    apply_all(kc, ns, [connection_manifest("unrelated", small.url, "dav")])
    try:
        poll(
            lambda: is_ready(kc.json("get", "calconn/unrelated", "-n", ns)),
            timeout=45,
            what="an unrelated connection synced by the other worker",
        )

        def taken_over() -> bool:
            status = kc.json("get", f"sj/{job}", "-n", ns).get("status") or {}
            return status.get("phase") == "Succeeded" and status.get("claimedBy") == other.identity

        poll(taken_over, timeout=90, what="the frozen run's job done by the other worker")
    except BaseException:
        print("\nadvisory locks while frozen:", advisory_locks(pg))
        raise
    finally:
        frozen.resume()
    ended = poll(
        lambda: [r for r in frozen.runs() if r.job == job and r.end is not None],
        timeout=120,
        what="the frozen run's end line",
    )
    # The resumed run fails (the server ended its session meanwhile) as a run that lost its
    # claim: it reports nothing, and the store, the job and the connection stay as they were.
    assert ended[0].outcome in ("fenced", "lost"), ended
    assert stored_pairs(pg, key) == big.truth()
    assert taken_over()
    assert is_ready(kc.json("get", "calconn/big", "-n", ns)), condition_of(
        kc.json("get", "calconn/big", "-n", ns), "Ready"
    )
    print(f"\nthe run frozen inside a write ended {ended[0].outcome}")
