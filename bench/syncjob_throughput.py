"""SyncJobs per minute end to end: `calsync operator` + 1, then 3 `calsync worker` processes.

Everything is real and local (see bench/_platform.py): the devcluster control plane, a throwaway
PostgreSQL as the event store (more than one worker needs it), Radicale serving a few calendars
shared by the connections. The components run with the shipped defaults (sync concurrency 10
per worker, TTL 3600 s, default log level).

Set-up (not timed): `BENCH_CONNECTIONS` CalDAV connections are created and the operator's first
full sync of each is waited for. Then, per round (1 worker, then 3):

- ours: `BENCH_SYNCJOBS` manual SyncJobs (`mode: incremental`, `reason: manual`, spec.connection
  round robin over the connections, so about BENCH_SYNCJOBS / BENCH_CONNECTIONS per connection)
  are created by the benchmark (20 at a time) and followed with a watch. Time runs from just
  before the first create to the moment the watch shows the last job finished; every job must
  end Complete (Succeeded, or Superseded: a job of the same connection that started after it was
  created covered its work). A job that runs is a no-change incremental sync of its connection.
  A worker runs at most one job per connection at a time, so jobs of one connection queue
  behind each other or are superseded; the phases, and the syncs per minute, are reported.
- reference: the API server's own throughput for the same object with lightkube async: create
  a SyncJob, merge-patch its status (resourceVersion-guarded, the call the worker claims with),
  delete it, `BENCH_SYNCJOBS` objects with 10 per worker in flight (the shipped sync
  concurrency). The objects are of a copy of the SyncJob CRD in a group no calsync process
  watches (same schema and rules; a real SyncJob would be claimed and failed by the worker), so
  the reference runs right before and right after every round with the calsync processes up
  and idle; each round is set against the mean of the two.

Each (workers) case runs `BENCH_ROUNDS` rounds; medians are reported, and every round's own
figures beside them.

API requests are counted on the API server's side from its audit log (one identity per process,
see bench/_platform.py), from the first create to 3 s after the last job finished: the calsync
processes' requests per job, and the benchmark's own (one create per job, plus its watch).

`make bench BENCH=syncjob_throughput`; sizes: BENCH_SYNCJOBS (600), BENCH_CONNECTIONS (50;
600 gives one job per connection, so every job is a sync run), BENCH_WORKERS ("1,3"),
BENCH_ROUNDS (2), BENCH_CALENDARS (5), BENCH_EVENTS (20 per calendar). BENCH_KEEP=1 keeps the
temporary folder (logs, audit log).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import Counter
from typing import Any

import yaml

from bench._platform import (
    BENCH_USER,
    FINISHED,
    ROOT,
    Platform,
    bounded,
    breakdown,
    breakdown_rows,
    create_connections,
    create_namespace,
    env_int,
    env_ints,
    is_calsync,
    load_average,
    role,
    say,
    steal_seconds,
    wait_synced,
)
from bench._results import Row

NAMESPACE = "bench"
REF_NAMESPACE = "bench-ref"
PER_WORKER = 10  # the shipped sync concurrency of a worker
CREATE_CONCURRENCY = 20
SETTLE = 3.0
SEED_TARGET = 1000.0
TARGET = 3000.0
WASTEFUL = 6.0


# -- the reference -----------------------------------------------------------------------------

REF_GROUP = "bench.calsync.io"


def install_reference_kind(platform: Platform) -> None:
    """The SyncJob CRD copied into a group no calsync process watches (same schema, same rules).

    The calsync processes watch every SyncJob in the cluster: reference objects of the real kind
    would be claimed and failed by the worker while the reference patches them. A copy of the
    kind in another group is the same object for the API server and lets the reference run
    right before and after each round, with the calsync processes (idle) up.
    """
    crd = yaml.safe_load((ROOT / "crds" / "syncjobs.yaml").read_text())
    crd["metadata"]["name"] = f"syncjobs.{REF_GROUP}"
    crd["spec"]["group"] = REF_GROUP
    crd["spec"]["names"].pop("shortNames", None)
    crd["spec"]["names"].pop("categories", None)
    platform.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(crd))
    platform.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/syncjobs.{REF_GROUP}"
    )


def reference_resource() -> Any:
    from lightkube.generic_resource import create_namespaced_resource

    from calsync.api.meta import SYNC_JOB, VERSION

    return create_namespaced_resource(REF_GROUP, VERSION, SYNC_JOB.kind, SYNC_JOB.plural)


async def reference(platform: Platform, count: int, concurrency: int, tag: str) -> float:
    """Objects per minute: create + guarded status patch + delete of a SyncJob each."""
    from lightkube.models.meta_v1 import ObjectMeta

    from calsync.controllers import kube

    resource = reference_resource()
    client = platform.client()

    async def one(i: int) -> None:
        created = await client.create(
            resource(
                metadata=ObjectMeta(name=f"ref-{tag}-{i:05d}", namespace=REF_NAMESPACE),
                spec={"connection": "ref", "mode": "incremental", "reason": "manual"},
            )
        )
        meta = created.to_dict()["metadata"]
        await kube.patch_status_guarded(
            client,
            resource,
            REF_NAMESPACE,
            meta["name"],
            meta["resourceVersion"],
            {"phase": "Running", "claimedBy": "reference", "attempts": 1},
        )
        await client.delete(resource, meta["name"], namespace=REF_NAMESPACE)

    try:
        await create_namespace(client, REF_NAMESPACE)
        started = time.perf_counter()
        await bounded(concurrency, (one(i) for i in range(count)))
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    return count / seconds * 60.0


# -- one round ---------------------------------------------------------------------------------


class Follower:
    """Watches the namespace's SyncJobs; records when each job was first seen finished."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.finished: dict[str, tuple[float, str]] = {}
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        from calsync.controllers.kube import SyncJobResource

        listing = self.client.list(SyncJobResource, namespace=NAMESPACE)
        async for _ in listing:
            pass
        version = listing.resourceVersion
        self.ready.set()
        while True:
            async for kind, obj in self.client.watch(
                SyncJobResource, namespace=NAMESPACE, resource_version=version
            ):
                body = obj.to_dict()
                version = body["metadata"]["resourceVersion"]
                phase = (body.get("status") or {}).get("phase") or "Pending"
                name = body["metadata"]["name"]
                if kind != "DELETED" and phase in FINISHED and name not in self.finished:
                    self.finished[name] = (time.time(), phase)
                    self.changed.set()


async def one_round(
    platform: Platform, connections: list[str], jobs: int, label: str
) -> dict[str, Any]:
    from lightkube.models.meta_v1 import ObjectMeta

    from calsync.controllers.kube import SyncJobResource, delete_syncjob

    client = platform.client()
    follower = Follower(client)
    watcher = asyncio.create_task(follower.run())
    await follower.ready.wait()
    names = [f"bench-{label}-{i:05d}" for i in range(jobs)]
    wanted = set(names)
    created_at: dict[str, float] = {}

    async def create(i: int, name: str) -> None:
        await client.create(
            SyncJobResource(
                metadata=ObjectMeta(name=name, namespace=NAMESPACE),
                spec={
                    "connection": connections[i % len(connections)],
                    "mode": "incremental",
                    "reason": "manual",
                },
            )
        )
        created_at[name] = time.time()

    machine_before = platform.cpu_seconds()
    steal_before = steal_seconds()
    load_before = load_average()
    start = time.time()
    await bounded(CREATE_CONCURRENCY, (create(i, n) for i, n in enumerate(names)))
    created = time.time()
    deadline = time.monotonic() + max(600.0, jobs * 2.0)
    while not wanted <= follower.finished.keys():
        platform.check()
        if time.monotonic() > deadline:
            done = len(wanted & follower.finished.keys())
            raise RuntimeError(f"only {done} of {jobs} SyncJobs finished in time")
        follower.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.changed.wait(), 5.0)
    end = max(follower.finished[n][0] for n in names)
    machine = {k: v - machine_before.get(k, 0.0) for k, v in platform.cpu_seconds().items()}
    cpu = {c.user: machine[c.user] for c in platform.components}
    steal = steal_seconds() - steal_before
    await asyncio.sleep(SETTLE)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    phases = Counter(follower.finished[n][1] for n in names)
    assert platform.audit is not None
    requests = platform.audit.between(start, end + SETTLE)
    ours = [r for r in requests if is_calsync(r.user)]
    latency = sorted(follower.finished[n][0] - created_at[n] for n in names)
    # Tidy up (not timed): the jobs would otherwise stay for their TTL of an hour.
    await bounded(CREATE_CONCURRENCY, (delete_syncjob(client, NAMESPACE, n) for n in names))
    await client.close()
    seconds = end - start
    return {
        "label": label,
        "jobs": jobs,
        "seconds": seconds,
        "create_seconds": created - start,
        "per_minute": jobs / seconds * 60.0,
        "syncs_per_minute": phases.get("Succeeded", 0) / seconds * 60.0,
        "phases": phases,
        "requests": ours,
        "bench_requests": [r for r in requests if r.user == BENCH_USER],
        "per_job": len(ours) / jobs,
        # A Superseded job costs the worker one status patch; the rest is the runs' cost.
        "per_sync": (len(ours) - phases.get("Superseded", 0)) / max(1, phases.get("Succeeded", 0)),
        "latency_p50": latency[len(latency) // 2],
        "latency_max": latency[-1],
        "cpu": cpu,
        "machine": machine,
        "steal": steal,
        "load": f"{load_before} -> {load_average()}",
        "errors": Counter(
            (role(r.user), r.verb, r.resource, r.code) for r in ours if r.code >= 400
        ),
    }


# -- the whole run -----------------------------------------------------------------------------


async def measure(platform: Platform, sizes: dict[str, Any]) -> dict[str, Any]:
    jobs, reps = sizes["jobs"], sizes["rounds"]
    client = platform.client()
    platform.start_operator()
    platform.start_worker(1)
    say(f"operator and worker 1 running; creating {sizes['connections']} connections")
    connections = await create_connections(
        client, NAMESPACE, sizes["connections"], platform.calendar_urls
    )
    seconds = await wait_synced(platform, client, NAMESPACE, len(connections), limit=1800)
    say(f"{len(connections)} connections synced in {seconds:.1f} s")
    await client.close()
    await asyncio.sleep(5.0)
    results: dict[int, list[dict[str, Any]]] = {}
    running = 1
    for n in sizes["workers"]:
        while running < n:
            running += 1
            platform.start_worker(running)
        if n > 1:
            await asyncio.sleep(5.0)  # the new workers list, watch and join the store
        concurrency = PER_WORKER * n
        previous = await reference(platform, jobs, concurrency, f"w{n}-0")
        results[n] = []
        for rep in range(1, reps + 1):
            say(f"{n} worker(s), round {rep}: {jobs} SyncJobs")
            result = await one_round(platform, connections, jobs, f"w{n}-r{rep}")
            await asyncio.sleep(3.0)
            after = await reference(platform, jobs, concurrency, f"w{n}-{rep}")
            result["references"] = (previous, after)
            result["reference"] = (previous + after) / 2
            result["ratio"] = result["per_minute"] / result["reference"]
            previous = after
            say(
                f"{n} worker(s), round {rep}: {result['per_minute']:,.0f} jobs/min "
                f"({result['syncs_per_minute']:,.0f} syncs/min), reference "
                f"{result['reference']:,.0f} objects/min, {result['per_job']:.2f} requests/job"
                f" ({dict(result['phases'])})"
            )
            results[n].append(result)
            await asyncio.sleep(3.0)
    rss = {c.user: c.rss_bytes() for c in platform.components}
    return {"results": results, "rss": rss}


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def machine_figures(result: dict[str, Any]) -> tuple[float, float, float]:
    """(CPU seconds per job over every process, share of the machine's cores used during the
    round, jobs/min the cores would allow at that cost)."""
    cores = os.cpu_count() or 1
    total = sum(result["machine"].values())
    per_job = total / result["jobs"]
    busy = total / (result["seconds"] * cores)
    return per_job, busy, cores * 60.0 / per_job


def print_machine(result: dict[str, Any]) -> None:
    """Where the round's CPU went, process by process, and the ceiling that cost sets."""
    per_job, busy, ceiling = machine_figures(result)
    print(f"\n| process ({result['label']}) | CPU s in the round | CPU ms per job |\n|---|---|---|")
    for name, seconds in sorted(result["machine"].items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {seconds:.1f} | {seconds / result['jobs'] * 1000:.1f} |")
    print(
        f"| all | {sum(result['machine'].values()):.1f} | {per_job * 1000:.1f} |\n"
        f"\nThe {os.cpu_count()} cores were {busy:.0%} busy; at {per_job * 1000:.0f} ms of CPU per "
        f"job they allow at most {ceiling:,.0f} jobs/min. The hypervisor took "
        f"{result['steal']:.1f} CPU-seconds (steal) of the round's "
        f"{result['seconds'] * (os.cpu_count() or 1):.1f}."
    )


def report(sizes: dict[str, Any], out: dict[str, Any]) -> None:
    print(
        f"\n{sizes['jobs']} manual incremental SyncJobs (no change on the server) over "
        f"{sizes['connections']} synced CalDAV connections ({sizes['calendars']} Radicale "
        f"calendars of {sizes['events']} events), PostgreSQL store, shipped defaults; medians "
        f"of {sizes['rounds']} round(s), each beside the reference measured right before and "
        "after it; API requests from the API server's audit log (one identity per process)."
    )
    print(
        "\n| workers | calsync jobs/min (all Complete) | of which syncs/min (Succeeded) "
        "| reference objects/min (create + status patch + delete, same concurrency) | ratio "
        "| target | calsync requests/job | + the job's create "
        "| per sync run (1 per Superseded job off) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, rows in out["results"].items():
        per_minute = _median(rows, "per_minute")
        target = (
            f"> {SEED_TARGET:,.0f} (seed): {'PASS' if per_minute > SEED_TARGET else 'MISS'}; "
            f">= {TARGET:,.0f}: {'PASS' if per_minute >= TARGET else 'MISS'}"
        )
        each = ", ".join(f"{r['per_minute']:,.0f}" for r in rows)
        ratios = ", ".join(f"{r['ratio']:.3f}" for r in rows)
        print(
            f"| {n} | {per_minute:,.0f} ({each}) "
            f"| {_median(rows, 'syncs_per_minute'):,.0f} "
            f"| {_median(rows, 'reference'):,.0f} ({PER_WORKER * n} in flight) "
            f"| {_median(rows, 'ratio'):.3f}x ({ratios}) "
            f"| {target} | {_median(rows, 'per_job'):.2f} | {_median(rows, 'per_job') + 1:.2f} "
            f"| {_median(rows, 'per_sync'):.2f} |"
        )
    for n, rows in out["results"].items():
        for r in rows:
            phases = ", ".join(f"{k} {v}" for k, v in sorted(r["phases"].items()))
            refs = " / ".join(f"{x:,.0f}" for x in r["references"])
            print(
                f"\n{r['label']}: {r['jobs']} jobs in {r['seconds']:.1f} s ({phases}); creating "
                f"them took {r['create_seconds']:.1f} s; latency create to finished median "
                f"{r['latency_p50']:.1f} s, max {r['latency_max']:.1f} s; reference before/after "
                f"{refs} objects/min; load average {r['load']}; CPU s: "
                + ", ".join(f"{u} {s:.1f}" for u, s in sorted(r["cpu"].items()))
            )
            if r["errors"]:
                print(
                    "requests answered with an error: "
                    + ", ".join(
                        f"{w} {v} {res} {code}: {c}" for (w, v, res, code), c in r["errors"].items()
                    )
                )
        last = rows[-1]
        print_machine(last)
        print(f"\n| who | verb | resource | requests | per job ({last['label']}) |")
        print("|---|---|---|---|---|")
        for row in breakdown_rows(breakdown(last["requests"]), last["jobs"], "/job"):
            print(row)
        bench = Counter((r2.verb, r2.resource) for r2 in last["bench_requests"])
        print(
            "| (benchmark) | "
            + "; ".join(f"{verb} {res} {c}" for (verb, res), c in sorted(bench.items()))
            + " | | | |"
        )
        if _median(rows, "per_job") > WASTEFUL:
            print(f"\n{n} worker(s): more than {WASTEFUL:.0f} requests per job.")
    print(
        "\nRSS at the end: "
        + ", ".join(f"{u} {b / 2**20:.0f} MiB" for u, b in sorted(out["rss"].items()))
    )


def rows(sizes: dict[str, Any], out: dict[str, Any]) -> list[Row]:
    """Per worker count, for the table: the jobs finished per minute against the seed's
    > 1,000/min, and the syncs among them (Succeeded: each a real no-change sync) against the
    >= 3,000/min target, which asks for every job to be a sync. With fewer connections than
    jobs most jobs end Superseded without a sync, so only the second row speaks to the target;
    `BENCH_CONNECTIONS=600` makes every job a sync."""
    found = []
    for n, results in out["results"].items():
        per_minute = _median(results, "per_minute")
        syncs = _median(results, "syncs_per_minute")
        common = {
            "requests_per_job": _median(results, "per_job"),
            "requests_per_sync": _median(results, "per_sync"),
            "rounds": len(results),
            "raw_per_minute": [r["per_minute"] for r in results],
            "raw_ratio": [r["ratio"] for r in results],
            "cpu_ms_per_job": statistics.median(machine_figures(r)[0] * 1000 for r in results),
            "cores_busy": statistics.median(machine_figures(r)[1] for r in results),
            "ceiling_per_minute": statistics.median(machine_figures(r)[2] for r in results),
        }
        head = f"{sizes['jobs']} no-change SyncJobs over {sizes['connections']} connections"
        found.append(
            Row(
                benchmark="syncjob_throughput",
                case=f"{head}, {n} worker(s): jobs finished/min",
                ours=per_minute,
                reference_name="API server create + status patch + delete",
                reference=_median(results, "reference"),
                ratio=_median(results, "ratio"),
                target=f"> {SEED_TARGET:,.0f}/min",
                passed=per_minute > SEED_TARGET,
                unit="/min",
                ratio_is="our rate / the reference's rate (median of the rounds' ratios)",
                extra={**common, "syncs_per_minute": syncs},
            )
        )
        found.append(
            Row(
                benchmark="syncjob_throughput",
                case=f"{head}, {n} worker(s): of which syncs/min (Succeeded)",
                ours=syncs,
                reference_name="",
                reference=None,
                ratio=None,
                target=f">= {TARGET:,.0f}/min",
                passed=syncs >= TARGET,
                unit="/min",
                ratio_is="",
                extra=common,
            )
        )
    return found


def run() -> list[Row]:
    sizes: dict[str, Any] = {
        "jobs": env_int("BENCH_SYNCJOBS", 600),
        "connections": env_int("BENCH_CONNECTIONS", 50),
        "workers": env_ints("BENCH_WORKERS", (1, 3)),
        "rounds": env_int("BENCH_ROUNDS", 2),
        "calendars": env_int("BENCH_CALENDARS", 5),
        "events": env_int("BENCH_EVENTS", 20),
    }
    with Platform(
        "bench-sjt",
        workers=max(sizes["workers"]),
        calendars=sizes["calendars"],
        events=sizes["events"],
    ) as platform:
        install_reference_kind(platform)
        out = asyncio.run(measure(platform, sizes))
    report(sizes, out)
    return rows(sizes, out)


if __name__ == "__main__":
    run()
