"""Chaos: workers killed with SIGKILL and the API server restarted while data keeps changing.

One `calsync operator` and three `calsync worker` processes share a PostgreSQL store. They
serve a mix of connections: most are CalDAV connections on a few shared Radicale calendars,
a tenth are Google accounts on the Google simulator and a tenth Microsoft mailboxes on the Graph
simulator (with pre-provisioned refresh tokens in Secrets). Once all are Ready, for
`CHAOS_SECONDS`:

- a background thread keeps changing the providers' data (adds, changes and deletes events,
  moves occurrences of series) and now and then creates a manual SyncJob;
- every `KILL_EVERY` seconds a random worker (one in the middle of a run, when there is one) is
  killed with SIGKILL and a new one started;
- half way through, the kube-apiserver is killed and started again; from then on one worker
  is spared, and it must go on running jobs after the restart;
- whatever exits on its own is started again, as its Deployment would (and recorded).

A component may stop by itself, saying why (the operator when the loaded API server does not
renew its Lease in time, a worker that starts while the API server is down); it must not crash.

Then the data stops changing, one final `full` SyncJob per connection is created, and the test
waits until every SyncJob has finished. Afterwards no job may be stuck (each is Succeeded,
Superseded or Failed, and each Failed one says why), no two runs of a connection may have held
the same fence token, and the store must equal every provider exactly: for CalDAV every stored
component (href, UID, RECURRENCE-ID, summary, start, end) against the collection's REPORT, for
Google and Graph every occurrence in a range of nearly three years (UID or instance id, summary,
start, end) against the provider's own expansion (`singleEvents`, `calendarView`).

The figures (kills, restarts, changes, jobs, runs, rows compared) are printed and written to
`chaos-figures.json` in the test's tmp dir. The test runs its own control plane, so no other
operator acts on its objects and its API server can be restarted. Sizes come from the
environment; the defaults keep the test at about four minutes on a two-core machine. Full size:

    CALSYNC_CHAOS_CONNECTIONS=200 .venv/bin/pytest tests/e2e/test_chaos.py -m e2e -s

    CALSYNC_CHAOS_CONNECTIONS=40     connections: a tenth Google, a tenth Microsoft, the rest CalDAV
    CALSYNC_CHAOS_SECONDS=60         how long the chaos lasts
    CALSYNC_CHAOS_KILL_EVERY=5       seconds between two kills
    CALSYNC_CHAOS_WORKERS=3          workers
    CALSYNC_CHAOS_POLL_INTERVAL=1m   every connection's spec.sync.pollInterval
    CALSYNC_CHAOS_DEADLINE=900       seconds allowed for each wait
    CALSYNC_CHAOS_EVENTS=100         events in each CalDAV calendar at the start
    CALSYNC_CHAOS_SEED=...           the random seed (printed with the figures)

Runs must be in flight when a worker dies, so they are made to take a while: CalDAV calendars
start with a hundred events and the workers commit 20 events per page; the Graph simulator
answers after 0.2 s with at most 5 items per delta page (reset afterwards).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from calsync.devcluster import Cluster
from calsync.store import EventStore
from calsync.testing.radicale import RadicaleServer, delete_event, put_event
from tests.fixtures.manifests import caldav_connection, oauth_connection, secret, sync_job
from tests.fixtures.radicale import USERS
from tests.fixtures.simulators import Simulator
from tests.stress import (
    Fleet,
    caldav_components,
    create_all,
    diff,
    own_cluster,
    ready_names,
    stored_components,
    stored_occurrences,
    vevent,
    with_store,
)
from tests.stress import (
    google_occurrences as google_truth,
)
from tests.stress import (
    graph_occurrences as graph_truth,
)
from tests.support import Kubectl, Process, poll

pytestmark = pytest.mark.e2e

CONNECTIONS = int(os.environ.get("CALSYNC_CHAOS_CONNECTIONS", "40"))
CHAOS_SECONDS = float(os.environ.get("CALSYNC_CHAOS_SECONDS", "60"))
KILL_EVERY = float(os.environ.get("CALSYNC_CHAOS_KILL_EVERY", "5"))
WORKERS = int(os.environ.get("CALSYNC_CHAOS_WORKERS", "3"))
POLL_INTERVAL = os.environ.get("CALSYNC_CHAOS_POLL_INTERVAL", "1m")
DEADLINE = float(os.environ.get("CALSYNC_CHAOS_DEADLINE", "900"))
EVENTS = int(os.environ.get("CALSYNC_CHAOS_EVENTS", "100"))

USER = "alice"
AUTH = (USER, USERS[USER])
FINISHED = ("Succeeded", "Superseded", "Failed")
GRAPH_SCOPE = "offline_access https://graph.microsoft.com/Calendars.ReadWrite"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def soon(rng: random.Random) -> dt.datetime:
    """A start time in the next two months, on the quarter hour."""
    return utc_now().replace(minute=0, second=0) + dt.timedelta(
        days=rng.randint(1, 60), minutes=15 * rng.randint(0, 40)
    )


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, Kubectl]]:
    with own_cluster("chaos") as made:
        yield made


# -- the providers' data, and how it changes ----------------------------------------------------


@dataclass
class DavCalendar:
    url: str
    objects: dict[str, str] = field(default_factory=dict)  # file name -> kind (single/series)
    made: int = 0

    def text(self, rng: random.Random, name: str, kind: str) -> str:
        uid = f"{self.url.rstrip('/').rsplit('/', 1)[1]}-{name}@calsync.test"
        start = soon(rng)
        title = f"{kind} {rng.randint(0, 99999)}"
        if kind == "series":
            moved = start + dt.timedelta(weeks=2)
            return vevent(
                uid,
                title,
                start,
                30,
                rrule="FREQ=WEEKLY;COUNT=6",
                moved=(moved, moved + dt.timedelta(hours=rng.randint(1, 5)), title + " moved"),
            )
        return vevent(uid, title, start, 15 * rng.randint(1, 8))

    def new_name(self) -> str:
        self.made += 1
        return f"o{self.made:04d}.ics"

    def write(self, rng: random.Random, name: str | None = None, kind: str = "single") -> None:
        name = name or self.new_name()
        put_event(self.url, name, self.text(rng, name, kind), AUTH)
        self.objects[name] = kind


@dataclass
class GoogleAccount:
    email: str
    mine: list[str] = field(default_factory=list)  # ids of events this test created


@dataclass
class GraphAccount:
    address: str
    calendar: str
    mine: list[str] = field(default_factory=list)


@dataclass
class World:
    """Every provider account and calendar the connections mirror, and what changed there."""

    google: Simulator
    microsoft: Simulator
    calendars: list[DavCalendar] = field(default_factory=list)
    google_accounts: list[GoogleAccount] = field(default_factory=list)
    graph_accounts: list[GraphAccount] = field(default_factory=list)
    google_client: tuple[str, str] = ("", "")
    graph_client: tuple[str, str] = ("", "")
    changes: Counter[str] = field(default_factory=Counter)

    def change(self, rng: random.Random) -> None:
        """One change at a random provider."""
        pick = rng.random()
        if pick < 0.6 and self.calendars:
            self.change_caldav(rng, rng.choice(self.calendars))
        elif pick < 0.8 and self.google_accounts:
            self.change_google(rng, rng.choice(self.google_accounts))
        elif self.graph_accounts:
            self.change_graph(rng, rng.choice(self.graph_accounts))

    def change_caldav(self, rng: random.Random, cal: DavCalendar) -> None:
        action = rng.choice(["add", "change", "change", "delete"])
        if action == "add" or len(cal.objects) < 3:
            cal.write(rng, kind=rng.choice(["single", "single", "series"]))
        elif action == "change":
            name = rng.choice(sorted(cal.objects))
            cal.write(rng, name, cal.objects[name])
        else:
            name = rng.choice(sorted(cal.objects))
            delete_event(cal.url, name, AUTH)
            del cal.objects[name]
        self.changes[f"caldav {action}"] += 1

    def change_google(self, rng: random.Random, account: GoogleAccount) -> None:
        sim, email = self.google, account.email
        live = [
            e
            for e in sim.admin("GET", f"calendars/{email}/events", live="true")
            if e.get("status") != "cancelled" and not e.get("recurringEventId")
        ]
        action = rng.choice(["add", "change", "change", "delete"])
        if action == "add" or len(live) < 3:
            action = "add"
            start = soon(rng)
            made = sim.admin(
                "POST",
                f"calendars/{email}/events",
                {
                    "summary": f"added {rng.randint(0, 99999)}",
                    "start": {"dateTime": start.isoformat()},
                    "end": {"dateTime": (start + dt.timedelta(minutes=45)).isoformat()},
                },
            )
            account.mine.append(made["id"])
        elif action == "change":
            target = rng.choice(live)
            patch: dict[str, Any] = {"summary": f"changed {rng.randint(0, 99999)}"}
            if target["id"] in account.mine:  # our own UTC events may move too
                start = soon(rng)
                patch["start"] = {"dateTime": start.isoformat()}
                patch["end"] = {"dateTime": (start + dt.timedelta(minutes=30)).isoformat()}
            sim.admin("PATCH", f"calendars/{email}/events/{target['id']}", patch)
        else:
            target = rng.choice(live)
            sim.admin("DELETE", f"calendars/{email}/events/{target['id']}")
        self.changes[f"google {action}"] += 1

    def change_graph(self, rng: random.Random, account: GraphAccount) -> None:
        sim = self.microsoft
        now = utc_now()
        view = sim.admin(
            "GET",
            f"users/{account.address}/calendars/{account.calendar}/view",
            start=(now - dt.timedelta(days=200)).isoformat(),
            end=(now + dt.timedelta(days=400)).isoformat(),
        )["value"]
        view = [i for i in view if not i.get("isCancelled")]
        action = rng.choice(["add", "change", "change", "delete"])
        if action == "add" or len(view) < 3:
            action = "add"
            start = soon(rng)
            made = sim.admin(
                "POST",
                f"users/{account.address}/calendars/{account.calendar}/events",
                {
                    "subject": f"added {rng.randint(0, 99999)}",
                    "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                    "end": {
                        "dateTime": (start + dt.timedelta(minutes=45)).strftime(
                            "%Y-%m-%dT%H:%M:%S"
                        ),
                        "timeZone": "UTC",
                    },
                },
            )
            account.mine.append(made["id"])
        elif action == "change":
            target = rng.choice(view)
            patch: dict[str, Any] = {"subject": f"changed {rng.randint(0, 99999)}"}
            if target["id"] in account.mine or target.get("type") == "occurrence":
                start = soon(rng)
                patch["start"] = {
                    "dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"),
                    "timeZone": "UTC",
                }
                patch["end"] = {
                    "dateTime": (start + dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"),
                    "timeZone": "UTC",
                }
            sim.admin("PATCH", f"users/{account.address}/events/{target['id']}", patch)
        else:
            target = rng.choice(view)
            sim.admin("DELETE", f"users/{account.address}/events/{target['id']}")
        self.changes[f"microsoft {action}"] += 1


def seed_dav_calendar(
    radicale: RadicaleServer, rng: random.Random, slug: str, title: str, events: int
) -> DavCalendar:
    """A Radicale calendar of `events` objects, one in ten a weekly series."""
    cal = DavCalendar(radicale.collection_url(USER, slug))
    kinds = {cal.new_name(): "series" if e % 10 == 0 else "single" for e in range(events)}
    texts = {name: cal.text(rng, name, kind) for name, kind in kinds.items()}
    radicale.seed_collection_files(USER, slug, texts, name=title)
    cal.objects.update(kinds)
    return cal


def add_google_client(google: Simulator, world: World) -> dict[str, Any]:
    """An OAuth client at the Google simulator; its Secret `g-client`."""
    client = google.admin("POST", "clients", {"redirect_uris": ["http://127.0.0.1/callback"]})
    world.google_client = (client["client_id"], client["client_secret"])
    return secret("g-client", client_id=client["client_id"], client_secret=client["client_secret"])


def add_google_account(google: Simulator, world: World, email: str, i: int) -> dict[str, Any]:
    """A Google account with 8 generated events; its token Secret `g-token-<i>`."""
    google.admin("POST", "users", {"email": email})
    google.admin(
        "POST",
        f"calendars/{email}/generate",
        {"count": 8, "seed": i, "start": utc_now().isoformat()},
    )
    token = google.admin(
        "POST", "tokens/refresh", {"user": email, "client_id": world.google_client[0]}
    )
    world.google_accounts.append(GoogleAccount(email))
    return secret(f"g-token-{i}", refresh_token=token["refresh_token"])


def add_graph_client(microsoft: Simulator, world: World) -> dict[str, Any]:
    """An app registration at the Graph simulator; its Secret `ms-client`."""
    app = (f"app-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
    microsoft.admin(
        "POST",
        "clients",
        {
            "client_id": app[0],
            "client_secret": app[1],
            "redirect_uris": ["http://127.0.0.1/callback"],
        },
    )
    world.graph_client = app
    return secret("ms-client", client_id=app[0], client_secret=app[1])


def add_graph_account(microsoft: Simulator, world: World, address: str, i: int) -> dict[str, Any]:
    """A Graph mailbox with 8 generated events (every fourth a series); its token Secret
    `ms-token-<i>`."""
    microsoft.admin("POST", "users", {"address": address})
    calendar = microsoft.admin("GET", f"users/{address}/calendars")["value"][0]["id"]
    microsoft.admin(
        "POST",
        f"users/{address}/calendars/{calendar}/generate",
        {
            "count": 8,
            "seed": i,
            "recurringEvery": 4,
            "start": utc_now().isoformat(),
            "pastDays": 100,
            "futureDays": 200,
        },
    )
    token = microsoft.admin(
        "POST",
        "tokens/mint",
        {"user": address, "client_id": world.graph_client[0], "scope": GRAPH_SCOPE},
    )
    world.graph_accounts.append(GraphAccount(address, calendar))
    return secret(f"ms-token-{i}", refresh_token=token["refresh_token"])


def provider_truths(
    world: World, google: Simulator, microsoft: Simulator, start: dt.datetime, end: dt.datetime
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """What every calendar of the world holds, read through each provider's own API: CalDAV by
    collection URL, Google by account, Graph by mailbox."""
    dav = {cal.url: caldav_components(cal.url, AUTH) for cal in world.calendars}
    by_google = {
        a.email: google_truth(google, a.email, world.google_client[0], start, end)
        for a in world.google_accounts
    }
    by_graph = {
        a.address: graph_truth(microsoft, a.address, a.calendar, world.graph_client[0], start, end)
        for a in world.graph_accounts
    }
    return dav, by_google, by_graph


def build_world(
    radicale: RadicaleServer, google: Simulator, microsoft: Simulator, rng: random.Random
) -> tuple[World, list[dict[str, Any]]]:
    """Accounts, calendars and events at the providers; the Secrets and connections for them."""
    world = World(google, microsoft)
    n_google = max(1, CONNECTIONS // 10)
    n_graph = max(1, CONNECTIONS // 10)
    n_dav = max(1, CONNECTIONS - n_google - n_graph)
    objects: list[dict[str, Any]] = [secret("dav", username=USER, password=USERS[USER])]

    for c in range(max(2, n_dav // 20)):
        slug = f"chaos-{uuid.uuid4().hex[:10]}"
        world.calendars.append(seed_dav_calendar(radicale, rng, slug, f"Chaos {c}", EVENTS))
    for i in range(n_dav):
        cal = world.calendars[i % len(world.calendars)]
        objects.append(caldav_connection(f"dav-{i:03d}", cal.url, "dav", POLL_INTERVAL))

    objects.append(add_google_client(google, world))
    for i in range(n_google):
        email = f"chaos{i}-{uuid.uuid4().hex[:8]}@example.com"
        objects.append(add_google_account(google, world, email, i))
        objects.append(
            oauth_connection(
                f"google-{i:03d}", "google", email, "g-client", f"g-token-{i}", POLL_INTERVAL
            )
        )

    objects.append(add_graph_client(microsoft, world))
    for i in range(n_graph):
        address = f"chaos{i}-{uuid.uuid4().hex[:8]}@example.com"
        objects.append(add_graph_account(microsoft, world, address, i))
        objects.append(
            oauth_connection(
                f"ms-{i:03d}", "microsoft", address, "ms-client", f"ms-token-{i}", POLL_INTERVAL
            )
        )
    return world, objects


# -- the test ------------------------------------------------------------------------------------


def jobs(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, Any]] | None:
    result = kubectl("get", "sj", "-n", namespace, "-o", "json", check=False, timeout=120)
    if result.returncode != 0:
        return None
    return {j["metadata"]["name"]: j for j in json.loads(result.stdout)["items"]}


def phase(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "Pending")


def abandoned_stacks(fleet: Any) -> list[str]:
    """Where runs that did not stop at their timeout hung (the worker logs it as it lets go)."""
    return [
        str(line.get("stack", ""))[-1500:]
        for line in fleet.log_lines()
        if "did not stop" in str(line.get("message", ""))
    ]


def test_store_converges_through_worker_kills_and_an_apiserver_restart(
    cluster: tuple[Cluster, Kubectl],
    radicale: RadicaleServer,
    google_sim: Simulator,
    microsoft_sim: Simulator,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    control_plane, kubectl = cluster
    began = time.monotonic()
    seed = int(os.environ.get("CALSYNC_CHAOS_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    figures: dict[str, Any] = {"seed": seed, "workers": WORKERS, "chaos_seconds": CHAOS_SECONDS}
    fleet = Fleet(
        kubectl.kubeconfig,
        postgres_url,
        tmp_path,
        google=google_sim,
        microsoft=microsoft_sim,
        settings={
            "CALSYNC_SYNC_LEASE": "15",
            # A run that hangs past this is let go a lease later (and its stack logged, kept in
            # the figures): the test goes on instead of waiting out the 10-minute default.
            "CALSYNC_SYNC_JOB_TIMEOUT": "120",
            "CALSYNC_SYNC_RETRY_BACKOFF": "1",
            "CALSYNC_CALDAV_RATE_LIMIT": "1000000",
            "CALSYNC_GOOGLE_RATE_LIMIT": "1000000",
            "CALSYNC_MICROSOFT_RATE_LIMIT": "1000000",
            "CALSYNC_SYNC_BATCH_SIZE": "20",
        },
    )
    paging = microsoft_sim.admin("POST", "delta/page-size", {})
    microsoft_sim.admin("POST", "delta/page-size", {"max": 5})
    microsoft_sim.admin("POST", "throttle", {"latency": 0.2})
    namespace = f"chaos-{uuid.uuid4().hex[:6]}"
    report = tmp_path / "chaos-figures.json"
    try:
        world, objects = build_world(radicale, google_sim, microsoft_sim, rng)
        connections = [o["metadata"]["name"] for o in objects if o["kind"] == "CalendarConnection"]
        figures["connections"] = dict(
            Counter(o["spec"]["provider"] for o in objects if o["kind"] == "CalendarConnection")
        )
        fleet.start_operator()
        for slot in range(WORKERS):
            fleet.start_worker(slot)
        kubectl("create", "namespace", namespace)
        create_all(kubectl, namespace, objects)

        def all_ready() -> dict[str, Any] | None:
            fleet.supervise()
            ready, items = ready_names(kubectl, namespace)
            # What the connections still waiting say, printed with the figures if this times out.
            figures["not_ready"] = {
                name: [
                    f"{c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"[:200]
                    for c in (items.get(name, {}).get("status") or {}).get("conditions", [])
                ]
                for name in sorted(set(connections) - ready)[:5]
            }
            figures["not_ready_count"] = len(set(connections) - ready)
            return items if len(ready) == len(connections) else None

        items = poll(all_ready, timeout=DEADLINE, interval=3, what="every connection Ready")
        del figures["not_ready"], figures["not_ready_count"]
        figures["setup_seconds"] = round(time.monotonic() - began, 1)

        # The chaos.
        stop = threading.Event()
        manual = Counter[str]()
        problems: list[str] = []

        def keep_changing() -> None:
            while not stop.wait(0.05):
                try:
                    world.change(rng)
                except Exception as exc:
                    problems.append(f"changing data: {type(exc).__name__}: {exc}")
                    return

        def keep_asking() -> None:
            picker = random.Random(seed + 1)
            while not stop.wait(0.2):
                name = f"manual-{sum(manual.values()):05d}"
                mode = picker.choice(["incremental", "incremental", "full"])
                job = sync_job(name, picker.choice(connections), mode, "manual")
                created = kubectl(
                    "create", "-n", namespace, "-f", "-", input=json.dumps(job), check=False
                )
                manual["created" if created.returncode == 0 else "refused"] += 1

        changer = threading.Thread(target=keep_changing, name="changer", daemon=True)
        asker = threading.Thread(target=keep_asking, name="asker", daemon=True)
        restarts: list[float] = []
        restarted_at: list[dt.datetime] = []

        def restart() -> None:
            t0 = time.monotonic()
            try:
                control_plane.restart_apiserver()
            except Exception as exc:
                problems.append(f"restarting the API server: {type(exc).__name__}: {exc}")
                return
            restarts.append(round(time.monotonic() - t0, 1))
            restarted_at.append(dt.datetime.now(dt.UTC))

        restarter = threading.Thread(target=restart, name="apiserver-restart", daemon=True)
        chaos_began = time.monotonic()
        changer.start()
        asker.start()
        next_kill = chaos_began + KILL_EVERY
        killer = random.Random(seed + 2)
        mid_run = 0
        # Worker 0 as it is when the API server restarts is spared from then on: one worker
        # must live through the restart and go on working.
        survivor: Process | None = None
        while (now := time.monotonic()) < chaos_began + CHAOS_SECONDS:
            fleet.supervise()
            if now >= next_kill:
                next_kill += KILL_EVERY
                spared = {0} if survivor is not None else set()
                busy = [s for s in fleet.busy_workers() if s not in spared]
                idle = [s for s in sorted(fleet.workers) if s not in spared]
                if busy or idle:  # rather one that is in the middle of a run
                    fleet.kill_worker(killer.choice(busy or idle))
                    mid_run += bool(busy)
            if survivor is None and now >= chaos_began + CHAOS_SECONDS / 2:
                survivor = fleet.workers[0]
                restarter.start()
            stop.wait(0.25)
        stop.set()
        changer.join()
        asker.join()
        restarter.join()
        assert not problems, f"changing the providers' data failed: {problems}"
        figures |= {
            "kills": fleet.kills,
            "kills_mid_run": mid_run,
            "apiserver_restarts": len(restarts),
            "apiserver_restart_seconds": restarts,
            "changes": dict(sorted(world.changes.items())),
            "manual_jobs": dict(manual),
        }

        # Quiet: one final full sync per connection, then every job must finish.
        create_all(
            kubectl, namespace, [sync_job(f"final-{c}", c, "full", "manual") for c in connections]
        )
        finals = {f"final-{c}" for c in connections}

        def finals_done() -> dict[str, dict[str, Any]] | None:
            fleet.supervise()
            listed = jobs(kubectl, namespace)
            if listed is None or not finals <= set(listed):
                return None
            return listed if all(phase(listed[f]) in FINISHED for f in finals) else None

        poll(finals_done, timeout=DEADLINE, interval=3, what="every final SyncJob finished")
        figures["converged_seconds"] = round(time.monotonic() - chaos_began - CHAOS_SECONDS, 1)
        snapshot = jobs(kubectl, namespace) or {}

        def none_stuck() -> dict[str, dict[str, Any]] | None:
            fleet.supervise()
            listed = jobs(kubectl, namespace)
            if listed is None:
                return None
            left = [n for n in snapshot if n in listed and phase(listed[n]) not in FINISHED]
            return None if left else listed

        listed = poll(none_stuck, timeout=DEADLINE, interval=3, what="no SyncJob left unfinished")
        everything = {n: listed.get(n, j) for n, j in snapshot.items()}
        figures["jobs"] = dict(Counter(phase(j) for j in everything.values()))
        figures["final_jobs"] = dict(Counter(phase(everything[f]) for f in finals))
        figures["jobs_by_reason"] = dict(
            Counter(j["spec"].get("reason", "") for j in everything.values())
        )
        silent = [
            n
            for n, j in everything.items()
            if phase(j) == "Failed" and not (j.get("status") or {}).get("error")
        ]
        assert not silent, f"Failed SyncJobs without an error: {silent[:5]}"
        failed_finals = {
            f: everything[f]["status"].get("error")
            for f in finals
            if phase(everything[f]) == "Failed"  # Superseded: a full run started after it
        }

        # The worker that lived through the API server restart went on running jobs.
        assert survivor is not None and restarted_at
        assert fleet.workers[0] is survivor and survivor.proc.poll() is None, fleet.exits
        after = [
            line
            for line in survivor.output().splitlines()
            if '"run": "start"' in line
            and dt.datetime.fromisoformat(json.loads(line)["time"]) > restarted_at[0]
        ]
        figures["survivor_runs_after_restart"] = len(after)
        assert after, "the worker that lived through the API server restart ran nothing after it"

        # Runs: never two with the same fence token on one connection.
        starts = [line for line in fleet.log_lines("worker") if line.get("run") == "start"]
        ends = [line for line in fleet.log_lines("worker") if line.get("run") == "end"]
        fences = Counter((s["connection"], s["fence"]) for s in starts)
        figures["runs"] = {
            "started": len(starts),
            "ended": dict(Counter(e.get("outcome") for e in ends)),
            "cut_short_by_kills": len(starts) - len(ends),
        }
        shared = [key for key, n in fences.items() if n > 1]
        assert not shared, f"runs that shared a fence token: {shared[:5]}"

        # The store equals every provider.
        uids = {name: items[name]["metadata"]["uid"] for name in connections}
        now = utc_now()
        start, end = now - dt.timedelta(days=300), now + dt.timedelta(days=700)
        dav_truth, g_truth, ms_truth = provider_truths(world, google_sim, microsoft_sim, start, end)

        async def compare(store: EventStore) -> tuple[list[str], int]:
            wrong, rows = [], 0
            for name in connections:
                spec = items[name]["spec"]
                key = uids[name]
                if spec["provider"] == "caldav":
                    truth = dav_truth[spec["caldav"]["url"]]
                    stored = await stored_components(store, key)
                elif spec["provider"] == "google":
                    truth = g_truth[spec["owner"]]
                    stored = await stored_occurrences(store, key, start, end, by="uid")
                else:
                    truth = ms_truth[spec["owner"]]
                    stored = await stored_occurrences(store, key, start, end, by="provider_id")
                rows += len(truth)
                problem = diff(name, stored, truth)
                if problem:
                    wrong.append(problem)
            return wrong, rows

        wrong, rows = with_store(postgres_url, compare)
        figures["rows_compared"] = rows
        figures["connections_differing"] = len(wrong)
        errors = Counter(
            line["message"].splitlines()[0][:120]
            for line in fleet.log_lines()
            if line.get("level") in ("error", "critical")
        )
        figures["error_log_lines"] = dict(errors.most_common(10))
        figures["abandoned_runs"] = abandoned_stacks(fleet)
        figures["total_seconds"] = round(time.monotonic() - began, 1)
        # A component may stop on its own (the operator when it cannot renew its Lease in time,
        # anything that starts while the API server is down), saying why; it must not crash.
        crashes = [e for e in fleet.exits if e.code != 2 or "cannot start" not in e.tail]
        assert not crashes, f"components that crashed: {crashes}"
        assert not failed_finals, f"final full syncs that did not succeed: {failed_finals}"
        assert not wrong, f"{len(wrong)} connections differ from their provider:\n" + "\n".join(
            wrong[:5]
        )
    finally:
        if "error_log_lines" not in figures:  # cut short: say what the components complained of
            figures["error_log_lines"] = dict(
                Counter(
                    f"{line.get('level')}: {str(line.get('message', '')).splitlines()[0][:120]}"
                    for line in fleet.log_lines()
                    if line.get("level") in ("warning", "error", "critical")
                ).most_common(15)
            )
            figures["abandoned_runs"] = abandoned_stacks(fleet)
            listed = jobs(kubectl, namespace) or {}
            figures["jobs_when_cut_short"] = dict(Counter(phase(j) for j in listed.values()))
        figures["exit_codes"] = fleet.stop()
        figures["unexpected_exits"] = [
            {"component": e.component, "code": e.code, "log": str(e.log), "last": e.tail[-300:]}
            for e in fleet.exits
        ]
        microsoft_sim.admin("POST", "throttle", {"latency": 0})
        microsoft_sim.admin("POST", "delta/page-size", {"max": paging["max"]})
        report.write_text(json.dumps(figures, indent=2, default=str))
        print(f"\nchaos figures ({report}):\n{json.dumps(figures, indent=2, default=str)}")
