"""Mass changes: a namespace of connections deleted while another namespace fills up.

`CONNECTIONS` CalDAV connections (on a few shared Radicale calendars) are created and become
Ready under one `calsync operator` and one `calsync worker` on a PostgreSQL store. Then their
namespace is deleted while as many new connections are created in a second namespace. Within a
generous deadline every new connection must be Ready with exactly its calendar's events in the
store, the old namespace must be gone (no finalizer left hanging), every old connection must be
purged from the store, the operator must log no `PoolTimeout`, and its reconciles must not fail
(`calsync_connection_reconciles_total{result="error"}`).

The peak number of TCP connections the operator holds open to the API server (read from /proc)
is reported for both phases but not asserted: the work queue bounds calsync's own calls, but
Kopf handles every object in a worker of its own and talks to the API server through an aiohttp
connector without a limit, so adding or deleting 300 objects at once opens well over a hundred
connections (more than lightkube's pool of 100 could hold, so they are Kopf's).

The test runs its own control plane, so no other operator acts on its objects. Sizes come from
the environment; the defaults are the full size (300 + 300), which takes about 3 minutes on a
two-core machine:

    CALSYNC_MASS_CONNECTIONS=300   connections per namespace
    CALSYNC_MASS_CALENDARS=4       Radicale calendars they share
    CALSYNC_MASS_DEADLINE=900      seconds allowed for each wait

    .venv/bin/pytest tests/e2e/test_mass_changes.py -m e2e -s

(`-s` shows the figures; they are also written to `figures.json` in the test's tmp dir.)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calsync.devcluster import Cluster
from calsync.store import EventStore
from calsync.testing.radicale import RadicaleServer, put_event
from tests.fixtures.manifests import caldav_connection, secret
from tests.fixtures.radicale import USERS
from tests.stress import (
    Fleet,
    PeakSampler,
    caldav_components,
    connections_to,
    create_all,
    diff,
    metric,
    own_cluster,
    ready_names,
    scrape,
    stored_components,
    vevent,
    with_store,
)
from tests.support import BIN, Kubectl, poll

pytestmark = pytest.mark.e2e

CONNECTIONS = int(os.environ.get("CALSYNC_MASS_CONNECTIONS", "300"))
CALENDARS = int(os.environ.get("CALSYNC_MASS_CALENDARS", "4"))
DEADLINE = float(os.environ.get("CALSYNC_MASS_DEADLINE", "900"))
EVENTS_PER_CALENDAR = 6
USER = "alice"


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, Kubectl]]:
    with own_cluster("mass") as made:
        yield made


def calendars(radicale: RadicaleServer) -> list[str]:
    """A few calendars with a handful of events each (one series with a moved occurrence)."""
    auth = (USER, USERS[USER])
    base = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    urls = []
    for c in range(CALENDARS):
        slug = f"mass-{uuid.uuid4().hex[:10]}"
        url = radicale.create_calendar(USER, USERS[USER], slug, f"Mass {c}", "#22aa66ff")
        for e in range(EVENTS_PER_CALENDAR):
            start = base + dt.timedelta(days=e + 1, hours=c)
            uid = f"{slug}-{e}@calsync.test"
            if e == 0:
                text = vevent(
                    uid,
                    "Weekly",
                    start,
                    30,
                    rrule="FREQ=WEEKLY;COUNT=8",
                    moved=(
                        start + dt.timedelta(weeks=2),
                        start + dt.timedelta(weeks=2, hours=3),
                        "Moved",
                    ),
                )
            else:
                text = vevent(uid, f"Event {e}", start, 45)
            put_event(url, f"e{e}.ics", text, auth)
        urls.append(url)
    return urls


def connection_set(urls: list[str]) -> list[dict[str, Any]]:
    return [secret("dav", username=USER, password=USERS[USER])] + [
        caldav_connection(f"c{i:04d}", urls[i % len(urls)], "dav") for i in range(CONNECTIONS)
    ]


def wait_ready(kubectl: Kubectl, namespace: str, fleet: Fleet, what: str) -> dict[str, Any]:
    def all_ready() -> dict[str, Any] | None:
        assert not fleet.supervise(), f"a component exited: {fleet.exits}"
        ready, items = ready_names(kubectl, namespace)
        return items if len(ready) == CONNECTIONS else None

    items: dict[str, Any] = poll(all_ready, timeout=DEADLINE, interval=3, what=what)
    return items


def test_namespace_deleted_while_another_fills(
    cluster: tuple[Cluster, Kubectl],
    radicale: RadicaleServer,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    control_plane, kubectl = cluster
    state = control_plane.state()
    assert state is not None
    fleet = Fleet(
        kubectl.kubeconfig,
        postgres_url,
        tmp_path,
        settings={
            "CALSYNC_CALDAV_RATE_LIMIT": "1000000",
            "CALSYNC_SYNC_RETRY_BACKOFF": "1",
        },
    )
    urls = calendars(radicale)
    truth = {url: caldav_components(url, (USER, USERS[USER])) for url in urls}
    figures: dict[str, Any] = {"connections_per_namespace": CONNECTIONS, "calendars": CALENDARS}
    old, new = f"mass-old-{uuid.uuid4().hex[:6]}", f"mass-new-{uuid.uuid4().hex[:6]}"
    try:
        fleet.start_operator()
        fleet.start_worker(0)
        kubectl("create", "namespace", old)
        kubectl("create", "namespace", new)
        assert fleet.operator is not None
        operator_pid = fleet.operator.proc.pid
        with PeakSampler(lambda: connections_to(operator_pid, state.apiserver_port)) as sockets:
            sockets.phase = "first"
            began = time.monotonic()
            create_all(kubectl, old, connection_set(urls))
            olds = wait_ready(kubectl, old, fleet, f"{CONNECTIONS} connections Ready in {old}")
            figures["first_ready_seconds"] = round(time.monotonic() - began, 1)
            old_uids = sorted(o["metadata"]["uid"] for o in olds.values())
            before = scrape(fleet.operator_metrics)

            # The storm: the old namespace goes while the new one fills.
            sockets.phase = "storm"
            began = time.monotonic()
            kubectl("delete", "namespace", old, "--wait=false")
            create_all(kubectl, new, connection_set(urls))
            news = wait_ready(kubectl, new, fleet, f"{CONNECTIONS} connections Ready in {new}")
            figures["second_ready_seconds"] = round(time.monotonic() - began, 1)

            def old_gone() -> bool:
                assert not fleet.supervise(), f"a component exited: {fleet.exits}"
                result = kubectl("get", "namespace", old, check=False)
                return result.returncode != 0 and "NotFound" in result.stderr

            poll(old_gone, timeout=DEADLINE, interval=3, what=f"namespace {old} to be gone")
            figures["old_namespace_gone_seconds"] = round(time.monotonic() - began, 1)
            after = scrape(fleet.operator_metrics)
        figures["peak_operator_connections_to_apiserver"] = sockets.peaks

        # Every old connection purged; every new one holds exactly its calendar.
        new_keys = {o["metadata"]["uid"]: o["spec"]["caldav"]["url"] for o in news.values()}

        async def inspect(store: EventStore) -> tuple[list[str], list[str]]:
            left = [uid for uid in old_uids if await store.calendars(uid)]
            left += [uid for uid in old_uids if await store.count_events(uid)]
            wrong = []
            for uid, url in sorted(new_keys.items()):
                problem = diff(uid, await stored_components(store, uid), truth[url])
                if problem:
                    wrong.append(problem)
            return left, wrong

        left, wrong = with_store(postgres_url, inspect)
        assert not left, f"{len(set(left))} deleted connections still have data: {left[:5]}"
        assert not wrong, f"{len(wrong)} new connections differ from Radicale: {wrong[:3]}"
        for uid in old_uids[:3]:
            shown = subprocess.run(
                [str(BIN / "calsync"), "events", "--connection-key", uid, "--store", postgres_url],
                capture_output=True,
                text=True,
                check=False,
            )
            assert shown.returncode == 1 and "nothing is stored" in shown.stderr, shown

        def delta(name: str, **labels: str) -> float:
            return metric(after, name, **labels) - metric(before, name, **labels)

        figures |= {
            "reconciles_ok": delta("calsync_connection_reconciles_total", result="ok"),
            "reconciles_error": delta("calsync_connection_reconciles_total", result="error"),
            "purges_ok": delta("calsync_connection_purges_total", result="ok"),
            "purges_abandoned": delta("calsync_connection_purges_total", result="abandoned"),
            "events_compared": sum(len(truth[url]) for url in new_keys.values()),
        }
        lines = list(fleet.log_lines("operator"))
        figures["operator_warnings"] = sum(1 for line in lines if line.get("level") == "warning")
        figures["operator_errors"] = sum(1 for line in lines if line.get("level") == "error")
        logs = "".join(p.read_text(errors="replace") for p in fleet.every_log)
        figures["pool_timeouts"] = logs.count("PoolTimeout")
    finally:
        figures["exit_codes"] = fleet.stop()
        report = tmp_path / "figures.json"
        report.write_text(json.dumps(figures, indent=2))
        print(f"\nmass changes figures ({report}):\n{json.dumps(figures, indent=2)}")

    assert figures["pool_timeouts"] == 0, "PoolTimeout in the logs"
    assert figures["purges_ok"] == CONNECTIONS and figures["purges_abandoned"] == 0, figures
    # Conflicts with the watch are retried inside a reconcile; an error is a reconcile that
    # raised. A handful may meet a namespace in deletion; more means something is wrong.
    assert figures["reconciles_error"] <= max(5, CONNECTIONS // 100), figures
    assert figures["exit_codes"] == {"worker0": 0, "operator": 0}, fleet.exits
