"""Soak: 1,000 connections for ten minutes of steady change and push traffic.

One `calsync operator`, `SOAK_WORKERS` `calsync worker` processes and one `calsync gateway`
share a PostgreSQL store on a control plane of the test's own. The connections are a third
each CalDAV (Radicale), Google (the Google simulator) and Microsoft (the Graph simulator):

- CalDAV: one Radicale user; the connections share calendars, `SOAK_PER_CALENDAR` to a
  calendar, each calendar starting with `SOAK_EVENTS` events (a tenth of them weekly series with
  a moved occurrence). Thousands of Radicale users or calendars would measure Radicale's
  file-system storage on this machine more than calsync; shared calendars still give every
  connection its own sync state, store rows and jobs. They poll every `SOAK_CALDAV_POLL`.
- Google and Microsoft: one simulated account per connection (eight generated events; on Graph
  every fourth is a series), with pre-provisioned refresh tokens in Secrets and
  `spec.sync.push: true`. The simulators deliver their notifications over HTTP to the gateway,
  which turns them into SyncJobs; the poll interval (`SOAK_PUSH_POLL`) is only a backstop.

Once every connection is Ready (and every push connection Subscribed), the soak runs for
`SOAK_MINUTES`: a thread makes `SOAK_CHANGE_RATE` changes a second (adds, edits, moves and
deletes, an equal share at each provider), the components' VmRSS is sampled every
`SOAK_SAMPLE_EVERY` seconds, and whatever exits is started again and recorded (there must be
nothing). Finished SyncJobs are deleted after `SOAK_JOB_HISTORY` seconds rather than the
shipped hour, so the number of SyncJob objects, which every component caches, levels off
within the first minutes and RSS growth after that shows leaks rather than a growing working
set.

Then the changes stop. CalDAV has no push, so each CalDAV connection gets one final
`incremental` SyncJob (the "sync now" of a poll that would otherwise come within its
interval); the push connections get nothing: their notifications alone must bring them level.
The test waits (with a deadline, printing what it waits for) until the Google simulator has
delivered every notification, the gateway records nothing more, no SyncJob is Pending or
Running and every connection is Ready, and then asserts:

- the store equals every provider (the chaos test's comparison: CalDAV components against a
  REPORT of the collection, Google and Graph occurrences against the provider's own expansion);
  if not, it settles and compares again until the deadline;
- no SyncJob is stuck, every Failed one says why, every final CalDAV job Succeeded;
- notifications arrived at the gateway and became SyncJobs during the soak;
- nothing exited, and the RSS of each component (operator, each worker, gateway) grew by less
  than `SOAK_RSS_GROWTH` % between the baseline sample (minute 2; half the soak when it is
  shorter than four minutes) and the last sample.

It reports memory per connection (the components' total RSS at the end / connections) and
API requests per minute (kube-apiserver's own `apiserver_request_total` before and after the
soak; during it the test itself makes no API requests, so they are calsync's and the control
plane's own), prints a summary and writes it as JSON to `SOAK_REPORT`.

    make soak                                   # the full size, about 25 minutes
    SOAK_CONNECTIONS=60 SOAK_MINUTES=2 make soak  # a quick look

    SOAK_CONNECTIONS=1000   SOAK_MINUTES=10   SOAK_WORKERS=3   SOAK_CHANGE_RATE=2
    SOAK_PER_CALENDAR=5     SOAK_EVENTS=20    SOAK_CALDAV_POLL=5m   SOAK_PUSH_POLL=15m
    SOAK_SAMPLE_EVERY=15    SOAK_JOB_HISTORY=60   SOAK_RSS_GROWTH=10   SOAK_DEADLINE=1800
    SOAK_SEED=...           SOAK_REPORT=soak-report.json
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calsync.devcluster import Cluster
from calsync.store import EventStore
from calsync.testing.radicale import RadicaleServer
from tests.e2e.test_chaos import FINISHED, jobs, phase, provider_truths
from tests.fixtures.manifests import sync_job
from tests.fixtures.simulators import Simulator
from tests.soak.harness import (
    RssSampler,
    Sizes,
    apiserver_requests,
    build_world,
    env_number,
    per_minute,
    pick_change,
    start_gateway,
)
from tests.stress import (
    Fleet,
    create_all,
    diff,
    metric,
    own_cluster,
    ready_names,
    scrape,
    stored_components,
    stored_occurrences,
    with_store,
)
from tests.support import Kubectl, Process, free_port, poll

pytestmark = [pytest.mark.soak, pytest.mark.e2e]

CONNECTIONS = int(env_number("SOAK_CONNECTIONS", 1000))
MINUTES = env_number("SOAK_MINUTES", 10)
WORKERS = int(env_number("SOAK_WORKERS", 3))
CHANGE_RATE = env_number("SOAK_CHANGE_RATE", 2)
SAMPLE_EVERY = env_number("SOAK_SAMPLE_EVERY", 15)
JOB_HISTORY = int(env_number("SOAK_JOB_HISTORY", 60))
RSS_GROWTH = env_number("SOAK_RSS_GROWTH", 10)
DEADLINE = env_number("SOAK_DEADLINE", 1800)
BASELINE_MINUTE = 2.0 if MINUTES >= 4 else MINUTES / 2
SIZES = Sizes(
    connections=CONNECTIONS,
    per_calendar=int(env_number("SOAK_PER_CALENDAR", 5)),
    events=int(env_number("SOAK_EVENTS", 20)),
    caldav_poll=os.environ.get("SOAK_CALDAV_POLL", "5m"),
    push_poll=os.environ.get("SOAK_PUSH_POLL", "15m"),
)
REPORT = Path(os.environ.get("SOAK_REPORT") or "soak-report.json")


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, Kubectl]]:
    with own_cluster("soak") as made:
        yield made


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", []) or []}


def explain(obj: dict[str, Any]) -> list[str]:
    return [
        f"{c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"[:200]
        for c in (obj.get("status") or {}).get("conditions", []) or []
    ]


def delta(
    before: dict[tuple[str, frozenset[tuple[str, str]]], float],
    after: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    *keys: str,
) -> dict[str, float]:
    """The increase of counter `name` between two scrapes, per value of the labels `keys`."""
    out: Counter[str] = Counter()
    for (sample, labels), value in after.items():
        if sample != name:
            continue
        got = dict(labels)
        out[" ".join(got.get(k, "") for k in keys)] += value - before.get((sample, labels), 0.0)
    return {k: v for k, v in sorted(out.items()) if v}


def test_soak(
    cluster: tuple[Cluster, Kubectl],
    radicale: RadicaleServer,
    google_sim: Simulator,
    microsoft_sim: Simulator,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    _, kubectl = cluster
    began = time.monotonic()
    seed = int(os.environ.get("SOAK_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    n_dav, n_google, n_graph = SIZES.split
    figures: dict[str, Any] = {
        "connections": {"caldav": n_dav, "google": n_google, "microsoft": n_graph},
        "minutes": MINUTES,
        "workers": WORKERS,
        "change_rate_per_second": CHANGE_RATE,
        "seed": seed,
        "logs": str(tmp_path),
    }
    gateway_port = free_port()
    fleet = Fleet(
        kubectl.kubeconfig,
        postgres_url,
        tmp_path,
        google=google_sim,
        microsoft=microsoft_sim,
        settings={
            "CALSYNC_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
            "CALSYNC_WEBHOOK_ALLOW_INSECURE": "true",
            "CALSYNC_SYNCJOB_HISTORY": str(JOB_HISTORY),
            # The local servers are not the providers whose quotas these limits protect.
            "CALSYNC_WEBHOOK_RATE_LIMIT": "1000000",
            "CALSYNC_CALDAV_RATE_LIMIT": "1000000",
            "CALSYNC_GOOGLE_RATE_LIMIT": "1000000",
            "CALSYNC_MICROSOFT_RATE_LIMIT": "1000000",
        },
    )
    gateway: list[Process] = []
    namespace = f"soak-{uuid.uuid4().hex[:6]}"
    problems: list[str] = []
    try:
        world, objects = build_world(SIZES, radicale, google_sim, microsoft_sim, rng)
        specs = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] != "Secret"}
        names = sorted(specs)
        push = {n for n, s in specs.items() if s["provider"] != "caldav"}
        fleet.start_operator()
        for slot in range(WORKERS):
            fleet.start_worker(slot)
        gateway.append(start_gateway(fleet, gateway_port))
        kubectl("create", "namespace", namespace)
        create_all(kubectl, namespace, objects)
        figures["build_seconds"] = round(time.monotonic() - began, 1)

        def watch_components() -> None:
            fleet.supervise()
            if gateway[-1].proc.poll() is not None:
                code = gateway[-1].stop()
                problems.append(f"the gateway exited with {code}: {gateway[-1].output()[-500:]}")
                gateway.append(start_gateway(fleet, gateway_port))

        def all_ready() -> dict[str, Any] | None:
            watch_components()
            ready, items = ready_names(kubectl, namespace)
            waiting = sorted(
                n
                for n in names
                if n not in ready
                or (n in push and conditions(items[n]).get("Subscribed") != "True")
            )
            figures["waiting"] = {
                "count": len(waiting),
                "first": {n: explain(items.get(n, {})) for n in waiting[:5]},
            }
            return items if not waiting else None

        poll(all_ready, timeout=DEADLINE, interval=5, what="every connection Ready and Subscribed")
        del figures["waiting"]
        figures["setup_seconds"] = round(time.monotonic() - began, 1)

        # -- the soak ------------------------------------------------------------------------
        stop = threading.Event()
        made: Counter[str] = Counter()

        def keep_changing() -> None:
            first = time.monotonic()
            while not stop.wait(
                max(0.0, first + sum(made.values()) / CHANGE_RATE - time.monotonic())
            ):
                try:
                    made[pick_change(world, rng)] += 1
                except Exception as exc:
                    problems.append(f"changing data: {type(exc).__name__}: {exc}")
                    return

        def components() -> dict[str, int]:
            found = {f"worker{s}": p.proc.pid for s, p in sorted(fleet.workers.items())}
            if fleet.operator is not None:
                found["operator"] = fleet.operator.proc.pid
            found["gateway"] = gateway[-1].proc.pid
            return found

        sampler = RssSampler(components, every=SAMPLE_EVERY)
        api_before = apiserver_requests(kubectl)
        gw_before = scrape(gateway_port)
        changer = threading.Thread(target=keep_changing, name="changer", daemon=True)
        soak_began_at = dt.datetime.now(dt.UTC)
        soak_began = time.monotonic()
        sampler.start()
        changer.start()
        while time.monotonic() < soak_began + MINUTES * 60:
            watch_components()
            stop.wait(1)
        stop.set()
        changer.join()
        sampler.stop()
        soak_minutes = (time.monotonic() - soak_began) / 60
        api_after = apiserver_requests(kubectl)
        gw_after = scrape(gateway_port)
        soak_ended_at = dt.datetime.now(dt.UTC)
        assert not problems, f"problems during the soak: {problems}"

        memory = sampler.growth(BASELINE_MINUTE * 60)
        total_kib = sum(sampler.samples[-1].rss.values())
        figures["changes"] = dict(sorted(world.changes.items()))
        figures["changes_total"] = sum(made.values())
        figures["webhooks"] = delta(
            gw_before, gw_after, "calsync_webhook_requests_total", "provider", "result"
        )
        figures["webhook_jobs"] = delta(
            gw_before, gw_after, "calsync_webhook_jobs_total", "provider", "action"
        )
        ends = [
            line
            for line in fleet.log_lines("worker")
            if line.get("run") == "end"
            and soak_began_at <= dt.datetime.fromisoformat(line["time"]) <= soak_ended_at
        ]
        figures["syncs"] = {
            "total": len(ends),
            "by_outcome": dict(Counter(str(e.get("outcome")) for e in ends)),
            "by_job_kind": dict(
                Counter("poll" if e.get("poll") else job_kind(str(e["job"])) for e in ends)
            ),
        }
        figures["rss"] = memory
        figures["rss_baseline_minute"] = BASELINE_MINUTE
        figures["rss_samples"] = [
            {"seconds": x.seconds, **{k: round(v / 1024, 1) for k, v in sorted(x.rss.items())}}
            for x in sampler.samples
        ]
        figures["memory_per_connection_kib"] = round(total_kib / CONNECTIONS, 1)
        figures["memory_total_mib"] = round(total_kib / 1024, 1)
        figures["api_requests"] = per_minute(api_before, api_after, soak_minutes)
        figures["soak_minutes_measured"] = round(soak_minutes, 2)

        # -- quiet: everything must come level ---------------------------------------------
        stopped = time.monotonic()
        finals = {f"final-{n}": n for n in names if n not in push}
        create_all(
            kubectl,
            namespace,
            [sync_job(job, conn, "incremental", "manual") for job, conn in finals.items()],
        )
        final_phase: dict[str, str] = {}
        last_seen: dict[str, float] = {}

        def settled() -> dict[str, Any] | None:
            watch_components()
            google_sim.admin("POST", "push/idle")
            samples = scrape(gateway_port)
            received = metric(samples, "calsync_webhook_requests_total")
            in_flight = metric(samples, "calsync_webhook_recordings_in_flight")
            quiet = received == last_seen.get("received") and in_flight == 0
            last_seen["received"] = received
            listed = jobs(kubectl, namespace)
            if listed is None:
                return None
            for job in finals:
                if job in listed:
                    final_phase[job] = phase(listed[job])
            ready, items = ready_names(kubectl, namespace)
            running = sorted(n for n, j in listed.items() if phase(j) not in FINISHED)
            not_ready = sorted(set(names) - ready)
            figures["settling"] = {
                "unfinished_jobs": len(running),
                "unfinished_first": {n: phase(listed[n]) for n in running[:5]},
                "not_ready": len(not_ready),
                "not_ready_first": {n: explain(items.get(n, {})) for n in not_ready[:5]},
                "webhooks_in_flight": in_flight,
                "webhooks_still_arriving": not quiet,
            }
            if running or not_ready or not quiet:
                return None
            failed = {
                n: (j.get("status") or {}).get("error")
                for n, j in listed.items()
                if phase(j) == "Failed"
            }
            return {"jobs": listed, "items": items, "failed": failed}

        def compare(items: dict[str, Any]) -> tuple[list[str], int]:
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            start, end = now - dt.timedelta(days=300), now + dt.timedelta(days=700)
            dav, google, graph = provider_truths(world, google_sim, microsoft_sim, start, end)

            async def check(store: EventStore) -> tuple[list[str], int]:
                wrong, rows = [], 0
                for name in names:
                    spec, key = specs[name], items[name]["metadata"]["uid"]
                    if spec["provider"] == "caldav":
                        truth = dav[spec["caldav"]["url"]]
                        stored = await stored_components(store, key)
                    elif spec["provider"] == "google":
                        truth = google[spec["owner"]]
                        stored = await stored_occurrences(store, key, start, end, by="uid")
                    else:
                        truth = graph[spec["owner"]]
                        stored = await stored_occurrences(store, key, start, end, by="provider_id")
                    rows += len(truth)
                    if problem := diff(name, stored, truth):
                        wrong.append(problem)
                return wrong, rows

            return with_store(postgres_url, check)

        rounds = 0
        while True:
            rounds += 1
            left = DEADLINE - (time.monotonic() - stopped)
            state = poll(settled, timeout=max(left, 30), interval=5, what="the fleet to settle")
            wrong, rows = compare(state["items"])
            if not wrong or time.monotonic() - stopped > DEADLINE:
                break
            figures["differing_before_round"] = wrong[:5]
        del figures["settling"]
        figures["settle_seconds"] = round(time.monotonic() - stopped, 1)
        figures["compare_rounds"] = rounds
        figures["rows_compared"] = rows
        figures["connections_differing"] = len(wrong)
        figures["jobs_left"] = dict(Counter(phase(j) for j in state["jobs"].values()))
        figures["final_caldav_jobs"] = dict(Counter(final_phase.values()))
        figures["error_log_lines"] = dict(
            Counter(
                str(line.get("message", "")).splitlines()[0][:120]
                for line in fleet.log_lines()
                if line.get("level") in ("error", "critical")
            ).most_common(10)
        )

        assert not fleet.exits, f"components exited during the soak: {fleet.exits}"
        assert not problems, f"problems: {problems}"
        silent = [n for n, error in state["failed"].items() if not error]
        assert not silent, f"Failed SyncJobs without an error: {silent[:5]}"
        not_done = {j: p for j, p in final_phase.items() if p not in ("Succeeded", "Superseded")}
        assert not not_done, f"final CalDAV syncs that did not succeed: {not_done}"
        assert set(final_phase) == set(finals), "final CalDAV jobs never seen finished"
        assert not wrong, f"{len(wrong)} connections differ from their provider:\n" + "\n".join(
            wrong[:5]
        )
        if made["google"] or made["microsoft"]:
            accepted = sum(v for k, v in figures["webhooks"].items() if k.endswith(" accepted"))
            created = sum(v for k, v in figures["webhook_jobs"].items() if k.endswith(" created"))
            assert accepted > 0 and created > 0, f"no push traffic: {figures['webhooks']}"
        grown = {
            name: m
            for name, m in memory.items()
            if not m["same_process"]
            or m["growth_percent"] is None
            or m["growth_percent"] >= RSS_GROWTH
        }
        assert not grown, (
            f"RSS grew by {RSS_GROWTH} % or more between minute {BASELINE_MINUTE:g} and the end "
            f"(or the process changed): {grown}"
        )
    finally:
        figures["total_seconds"] = round(time.monotonic() - began, 1)
        figures["exit_codes"] = fleet.stop()
        if gateway:
            figures["exit_codes"]["gateway"] = gateway[-1].stop()
        figures["unexpected_exits"] = [
            {"component": e.component, "code": e.code, "last": e.tail[-300:]} for e in fleet.exits
        ]
        figures["problems"] = problems
        REPORT.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        print(summary(figures))
        print(f"soak report: {REPORT.resolve()}")


JOB_KINDS = {"f": "full", "i": "incremental", "w": "webhook", "final": "final"}


def job_kind(job: str) -> str:
    """What made a SyncJob, from its name: the operator (`<connection>-f-...` full,
    `<connection>-i-...` incremental), the gateway (`-w-`), or this test. (A poll's run, which
    has no SyncJob, is marked `poll` in the worker's log line.)"""
    rest = re.sub(r"^(dav|google|ms)-\d+-", "", job)
    return JOB_KINDS.get(rest.split("-")[0], "other")


def summary(figures: dict[str, Any]) -> str:
    """The figures as a few readable lines (the JSON report has everything)."""
    lines = ["", "soak summary"]
    conns = figures.get("connections", {})
    mix = ", ".join(f"{k} {v}" for k, v in conns.items())
    lines.append(
        f"  connections     {sum(conns.values())} ({mix}), {figures.get('workers')} workers"
    )
    lines.append(
        f"  minutes         {figures.get('soak_minutes_measured', figures.get('minutes'))}"
        f" (setup {figures.get('setup_seconds')} s, settle {figures.get('settle_seconds')} s)"
    )
    if "changes_total" in figures:
        lines.append(f"  changes made    {figures['changes_total']}: {figures['changes']}")
        lines.append(f"  webhooks        {figures['webhooks']}")
        lines.append(f"  webhook jobs    {figures['webhook_jobs']}")
        lines.append(f"  syncs run       {figures['syncs']}")
    for name, m in sorted(figures.get("rss", {}).items()):
        lines.append(
            f"  RSS {name:<11} minute {figures['rss_baseline_minute']:g}: {m['baseline_mib']} MiB,"
            f" final {m['final_mib']} MiB, growth {m['growth_percent']} %"
            f" ({m['growth_mib_per_minute']} MiB/min), peak {m['peak_mib']} MiB"
        )
    if "memory_per_connection_kib" in figures:
        lines.append(
            f"  memory          {figures['memory_total_mib']} MiB in all,"
            f" {figures['memory_per_connection_kib']} KiB per connection"
        )
        api = figures["api_requests"]
        lines.append(
            f"  API requests    {api['total_per_minute']}/min"
            f" ({api['calsync_io_per_minute']}/min on calsync.io kinds)"
        )
    for key in ("waiting", "settling", "rows_compared", "connections_differing", "problems"):
        if figures.get(key):
            lines.append(f"  {key:<15} {figures[key]}")
    return "\n".join(lines)
