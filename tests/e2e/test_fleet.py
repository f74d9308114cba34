"""The sync queue as a fleet: operators and workers as separate processes on one PostgreSQL store.

Every test starts real `calsync operator` / `calsync worker` (and once `calsync run`) processes
against a real kube-apiserver, a real PostgreSQL database of its own and real Radicale
calendars, then checks what the design promises a fleet: at most one run per connection at any
moment (read from the workers' `run=start|end` log lines), fenced writes of a worker frozen past
its lease, no retry of refused credentials, no old events under a re-created name, one active
operator, and a stray process on another store leaving the fleet's work alone.

The module runs its own control plane (a second `calsync devcluster`, removed at the end): the
session's `operator` fixture watches the whole cluster and would bind these tests' connections
to its SQLite store. With `CALSYNC_E2E_KUBECONFIG` the tests use that cluster instead, which
must then run no calsync operator of its own.

Sizes are module constants that the environment can raise. The defaults keep the module at a
few minutes on a two-core machine; the full-size run of the exclusivity test is

    CALSYNC_FLEET_CONNECTIONS=50 CALSYNC_FLEET_JOBS_PER_CONNECTION=10 \\
        .venv/bin/pytest tests/e2e/test_fleet.py -m e2e

(`CALSYNC_FLEET_SLOW_EVENTS` sizes the calendar that is frozen mid-run, `CALSYNC_FLEET_HOLD` the
seconds a refused connection is watched for a second attempt.)
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from calsync.devcluster import Cluster
from calsync.testing.radicale import RadicaleServer
from tests.fixtures.radicale import USERS
from tests.queue_fleet import (
    Component,
    Fleet,
    Run,
    advisory_locks,
    apply_all,
    by_connection,
    connection_manifest,
    create_all,
    env_int,
    fence_regressions,
    is_ready,
    items,
    job_finished,
    new_calendar,
    overlaps,
    secret_manifest,
    simple_events,
    stored_count,
    stored_pairs,
    stored_pairs_of,
    syncjob_manifest,
)
from tests.support import ROOT, Kubectl, poll

pytestmark = pytest.mark.e2e

CONNECTIONS = env_int("CALSYNC_FLEET_CONNECTIONS", 50)
JOBS_PER_CONNECTION = env_int("CALSYNC_FLEET_JOBS_PER_CONNECTION", 10)
EVENTS_PER_CALENDAR = env_int("CALSYNC_FLEET_EVENTS", 5)
SLOW_EVENTS = env_int("CALSYNC_FLEET_SLOW_EVENTS", 1500)
WORKERS = 3

NOW = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    existing = os.environ.get("CALSYNC_E2E_KUBECONFIG")
    if existing:
        yield Path(existing)
        return
    cluster = Cluster(f"fleet-{os.getpid()}", tmp_path_factory.mktemp("fleet-cluster"))
    try:
        yield cluster.up(log=False)
    finally:
        cluster.down(log=False)


@pytest.fixture(scope="module")
def kc(fleet_kubeconfig: Path) -> Kubectl:
    kubectl = Kubectl(fleet_kubeconfig)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    names = [
        yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in sorted((ROOT / "crds").glob("*.yaml"))
    ]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    return kubectl


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


def wait_all_ready(kc: Kubectl, ns: str, count: int, timeout: float = 300) -> list[dict]:
    def ready() -> list[dict] | None:
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

    def all_finished() -> list[dict] | None:
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

    spread = collections.Counter(r.worker for r in runs)
    print(f"\nphases {dict(phases)}; runs per worker {dict(spread)}; runs {len(runs)}")

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
    # Freeze it once it has stored a page, so it holds pages it has not written yet.
    poll(lambda: stored_count(pg, key) > 0, timeout=120, interval=0.1, what="a first page")
    frozen.pause()
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
    poll(
        lambda: (
            (kc.json("get", "sj/after-change", "-n", ns).get("status") or {}).get("phase")
            == "Succeeded"
        ),
        timeout=180,
        what="the sync after the change",
    )
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
